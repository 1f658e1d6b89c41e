"""Performance goals checked against a run: found by loose names, "not measured" when absent."""

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


def test_wave2_ratio_goals_compare_with_the_in_run_baselines() -> None:
    hbone = SectionResult("hbone", "HBONE", "ok", "", [
        Figure("plain TLS 1.3, one connection", 5.0, "Gb/s"),
        Figure("HBONE tunnel, one stream", 4.5, "Gb/s", baseline="plain TLS", baseline_value=5.0)])
    ztunnel = SectionResult("ztunnel", "Node proxy", "ok", "", [
        Figure("throughput mesh", 6.0, "Gb/s", baseline="throughput stunnel", baseline_value=5.0),
        Figure("mesh proxy CPU per 1,000 req/s", 0.15, "cores", "lower",
               baseline="stunnel CPU per 1,000 req/s", baseline_value=0.1),
        Figure("capacity connections mesh", 4000.0, "/s", baseline="capacity connections stunnel",
               baseline_value=900.0)])
    waypoint = SectionResult("waypoint", "Waypoint", "ok", "", [
        Figure("without waypoint", 1000.0, "req/s"),
        Figure("through waypoint", 500.0, "req/s", baseline="without waypoint", baseline_value=1000.0),
        Figure("waypoint CPU per 1,000 req/s", 0.2, "cores", "lower",
               baseline="haproxy CPU per 1,000 req/s", baseline_value=0.16)])
    v = _verdicts(_run(hbone, ztunnel, waypoint))
    assert v["HBONE stream / plain TLS (loopback)"] == ("0.90x (plain TLS)", "met")
    assert v["single-stream throughput / stunnel pair, quiet"] == ("1.20x (throughput stunnel)", "met")
    assert "single-stream throughput / stunnel pair, CPU hog running" not in v  # a quiet run
    assert v["node proxy CPU per 1,000 req/s / stunnel pair's"][1] == "missed"
    assert v["new connections/s (capacity) / stunnel pair's"] == ("4.44x (capacity connections stunnel)", "met")
    assert v["waypoint CPU per 1,000 req/s / HAProxy's (mTLS in and out)"] == (
        "1.25x (haproxy CPU per 1,000 req/s)", "met")
    assert v["waypoint requests/s / path without it"] == ("0.50x (without waypoint)", "missed")
    assert v["aggregate throughput, 4 streams / 1 stream"] == ("-", "not measured")
    assert v["memory per idle meshed connection"] == ("-", "not measured")


def test_the_hog_goal_is_checked_only_in_a_hog_run() -> None:
    ztunnel = SectionResult("ztunnel", "Node proxy", "ok", "", [
        Figure("throughput mesh", 4.0, "Gb/s", baseline="throughput stunnel", baseline_value=5.0)])
    run = BenchRun("2026-11-22T03:00:00Z", {"nproc": 2}, {"quick": False, "only": [], "cpu_hog": True}, [ztunnel])
    v = _verdicts(run)
    assert v["single-stream throughput / stunnel pair, CPU hog running"] == ("0.80x (throughput stunnel)", "missed")
    assert "single-stream throughput / stunnel pair, quiet" not in v


def test_aggregate_throughput_is_compared_with_the_single_mesh_stream() -> None:
    from ambient.bench.components import aggregate_against_single, figures_from_result

    figures, _ = figures_from_result({
        "throughput_gbps": {"stunnel": 5.0, "mesh": 4.0},
        "aggregate_throughput_gbps": {"mesh 4 streams 2 pod pairs": 7.0},
        "idle": {"per_connection_per_proxy_kib": 12.5},
    })
    aggregate_against_single(figures)
    agg = next(f for f in figures if "aggregate" in f.name)
    assert (agg.baseline, agg.baseline_value) == ("throughput mesh (1 stream)", 4.0)
    v = _verdicts(_run(SectionResult("ztunnel", "Node proxy", "ok", "", figures)))
    assert v["aggregate throughput, 4 streams / 1 stream"] == ("1.75x (throughput mesh (1 stream))", "met")
    assert v["memory per idle meshed connection"] == ("12.5 KiB", "met")
