"""Goals of the issues checked against a run: found by loose names, "not measured" when absent."""

from __future__ import annotations

from ambient.bench.goals import evaluate
from ambient.bench.harness import BenchRun, Figure, SectionResult
from ambient.bench.report import render_run


def _run(*sections: SectionResult) -> BenchRun:
    return BenchRun("2026-11-22T03:00:00Z", {"nproc": 2}, {"quick": False, "only": []}, list(sections))


def _verdicts(run: BenchRun) -> dict[str, tuple[str, str]]:
    return {g.what: (g.measured, g.verdict) for g in evaluate(run)}


def test_node_proxy_goals_read_the_mesh_figures_not_the_baselines() -> None:
    ztunnel = SectionResult(
        "ztunnel",
        "Node proxy",
        "ok",
        "",
        [
            Figure("direct throughput", 9.0, "Gb/s"),
            Figure("mesh throughput", 1.5, "Gb/s", baseline="stunnel mTLS pair", baseline_value=2.0),
            Figure("mesh added p99", 0.9, "ms", "lower", baseline="stunnel added p99", baseline_value=0.3),
            Figure("mesh CPU per 1,000 req/s", 0.08, "cores", "lower"),
            Figure("stunnel CPU per 1,000 req/s", 0.5, "cores", "lower"),
            Figure("mesh connections", 900.0, "/s"),  # 8 clients: not the goal's figure
            Figure("capacity connections mesh", 2500.0, "/s"),
        ],
    )
    v = _verdicts(_run(ztunnel))
    assert v["node proxy single-stream throughput"] == ("0.750x stunnel", "floor met")
    assert v["node proxy added p99 latency"] == ("3.00x stunnel's added p99", "missed")
    assert v["node proxy CPU per 1,000 req/s"] == ("0.08 cores", "met")
    assert v["node proxy new connections (capacity: 32 concurrent clients)"] == ("2,500 conn/s", "met")
    assert v["waypoint CPU per 1,000 req/s"] == ("-", "not measured")


def test_failed_sections_and_units_are_handled() -> None:
    cp = SectionResult("controlplane", "CP", "ok", "", [Figure("change p99", 150_000.0, "µs", "lower")])
    broken = SectionResult("ztunnel", "Node proxy", "not available", "", reason="no module")
    v = _verdicts(_run(cp, broken))
    assert v["control plane change-to-applied p99"] == ("150 ms", "missed")
    assert v["node proxy single-stream throughput"] == ("-", "not measured")
    assert "| control plane change-to-applied p99 | <= 100 ms | 150 ms | missed |" in render_run(_run(cp, broken))


def test_absolute_goals_show_the_in_run_baseline_beside_the_figure() -> None:
    ztunnel = SectionResult(
        "ztunnel",
        "Node proxy",
        "ok",
        "",
        [
            Figure("mesh proxy CPU per 1,000 req/s", 0.19, "cores", "lower",
                   baseline="stunnel CPU per 1,000 req/s", baseline_value=0.124),
            Figure("capacity connections mesh", 1276.0, "/s", baseline="capacity connections stunnel",
                   baseline_value=779.0),
        ],
    )
    v = _verdicts(_run(ztunnel))
    assert v["node proxy CPU per 1,000 req/s"] == ("0.19 cores (stunnel CPU per 1,000 req/s: 0.124)", "missed")
    assert v["node proxy new connections (capacity: 32 concurrent clients)"] == (
        "1,276 conn/s (capacity connections stunnel: 779)", "missed")
