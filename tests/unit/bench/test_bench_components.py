"""Component benches: result conversion, baseline matching, and the child-process runner."""

from __future__ import annotations

import time

import pytest

from ambient.bench.components import attach_baselines, call_in_child, derive_added, figures_from_result
from ambient.bench.errors import BenchError
from ambient.bench.harness import Figure


def test_flat_dict_units_come_from_key_suffixes() -> None:
    figures, conditions = figures_from_result(
        {
            "sync_s": 1.5,
            "memory_mib": 40,
            "change_p99_ms": 12.0,
            "certs_per_s": 300,
            "workloads": 10000,
            "mode": "inproc",
            "conditions": {"services": 1000},
        }
    )
    by_name = {f.name: f for f in figures}
    assert (by_name["sync"].value, by_name["sync"].unit, by_name["sync"].better) == (1.5, "s", "lower")
    assert by_name["memory"].unit == "MiB"
    assert by_name["change p99"].unit == "ms"
    assert (by_name["certs"].unit, by_name["certs"].better) == ("/s", "higher")
    assert conditions == {"services": 1000, "workloads": 10000, "mode": "inproc"}


def test_nested_dicts_name_figures_by_path_and_bytes_per_s_become_gbps() -> None:
    figures, _ = figures_from_result({"throughput": {"mesh_bytes_per_s": 1.25e9}})
    assert len(figures) == 1
    assert figures[0].name == "throughput mesh"
    assert figures[0].value == pytest.approx(10.0)
    assert figures[0].unit == "Gb/s"


def test_explicit_figures_keep_their_own_baseline() -> None:
    figures, conditions = figures_from_result(
        {
            "figures": [
                {"name": "req/s", "value": 900, "unit": "req/s", "baseline": "no waypoint", "baseline_value": 1800}
            ],
            "conditions": {"rate": 500},
        }
    )
    assert figures[0].ratio == pytest.approx(0.5)
    assert conditions == {"rate": 500}


def test_results_without_any_unit_are_refused() -> None:
    with pytest.raises(BenchError, match="no figure"):
        figures_from_result({"workloads": 10})
    with pytest.raises(BenchError, match="expected a dict"):
        figures_from_result(["x"])


def test_mesh_figures_get_the_matching_stunnel_baseline() -> None:
    mesh = [
        Figure("mesh throughput", 3.0, "Gb/s"),
        Figure("mesh p99", 900.0, "µs", "lower"),
        Figure("mesh added p99", 0.4, "ms", "lower"),
        Figure("direct throughput", 9.0, "Gb/s"),
        Figure("mesh connections", 2500.0, "/s"),
    ]
    candidates = [
        Figure("stunnel mTLS pair", 2.0, "Gb/s"),
        Figure("stunnel p50", 0.3, "ms", "lower"),
        Figure("stunnel p99", 0.6, "ms", "lower"),
        Figure("stunnel added p99", 0.2, "ms", "lower"),
        Figure("stunnel mTLS pair", 500.0, "conn/s"),
    ]
    attach_baselines(mesh, candidates)
    assert (mesh[0].baseline, mesh[0].ratio) == ("stunnel mTLS pair", pytest.approx(1.5))
    assert mesh[1].baseline == "stunnel p99" and mesh[1].baseline_value == pytest.approx(600.0)  # ms -> µs
    assert mesh[2].baseline == "stunnel added p99" and mesh[2].ratio == pytest.approx(2.0)
    assert mesh[3].baseline is None  # a direct figure is itself a baseline
    assert mesh[4].ratio == pytest.approx(5.0)


def test_child_runs_function_with_only_the_options_it_accepts() -> None:
    # format_number(value) does not take `quick`: the child drops it instead of failing
    assert call_in_child("ambient.bench.report", "format_number", {"value": 3.14159, "quick": True}, 60) == "3.14"


def test_child_failures_and_missing_modules_become_bench_errors() -> None:
    with pytest.raises(BenchError, match="does not exist"):
        call_in_child("ambient.no_such_package.bench", "run", {}, 60)
    with pytest.raises(BenchError, match=r"JSONDecodeError|Expecting"):
        call_in_child("json", "loads", {"s": "{"}, 60)


def test_child_that_overruns_its_time_limit_is_stopped() -> None:
    started = time.monotonic()
    # the bench HTTP server would serve (on a free loopback port) for 60 s: the 1 s limit stops it
    with pytest.raises(BenchError, match="did not finish within 1 s"):
        call_in_child("ambient.bench.httpserver", "run", {"host": "127.0.0.1", "port": 0, "max_seconds": 60}, 1)
    assert time.monotonic() - started < 20


def test_node_proxy_result_shape_gets_units_added_latency_and_stunnel_baselines() -> None:
    # the shape ambient.bench.ztunnel.run_bench returns: units on the outer keys, roles inside
    result = {
        "throughput_gbps": {"direct": 9.0, "stunnel": 2.0, "mesh": 3.0},
        "latency": {
            "direct": {"requests": 2500, "p50_ms": 0.1, "p99_ms": 0.5},
            "stunnel": {"requests": 2500, "p50_ms": 0.2, "p99_ms": 0.8},
            "mesh": {"requests": 2500, "p50_ms": 0.3, "p99_ms": 1.1},
        },
        "mesh_proxy_cores_per_1000_rps": 0.15,
        "connections_per_s": {"direct": 4000.0, "mesh": 2100.0},
        "conditions": {"iperf_seconds": 5},
    }
    figures, conditions = figures_from_result(result)
    derive_added(figures)
    external = [Figure("stunnel CPU per 1,000 req/s", 0.3, "cores", "lower"), Figure("stunnel", 500.0, "conn/s")]
    attach_baselines(figures, external)
    by = {f.name: f for f in figures}
    assert by["throughput mesh"].unit == "Gb/s" and by["throughput mesh"].ratio == pytest.approx(1.5)
    assert by["latency mesh p99"].baseline == "latency stunnel p99"
    assert by["mesh added p99"].value == pytest.approx(0.6)
    assert by["mesh added p99"].ratio == pytest.approx(2.0)  # (1.1 - 0.5) / (0.8 - 0.5)
    cpu = by["mesh proxy CPU per 1,000 req/s"]
    assert (cpu.unit, cpu.ratio) == ("cores", pytest.approx(0.5))
    # a rate is compared with the same client's direct figure, not with a stunnel rate from another client
    assert (by["connections mesh"].unit, by["connections mesh"].baseline) == ("/s", "connections direct")
    assert conditions["iperf_seconds"] == 5 and conditions["latency mesh requests"] == 2500
