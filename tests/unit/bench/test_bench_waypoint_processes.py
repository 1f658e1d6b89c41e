"""The waypoint bench's own-processes figures (1 process and AMBIENT_WAYPOINT_WORKERS=auto): medians of
alternating rounds, each against the path without the waypoint; the workers' CPU against one process's."""

from __future__ import annotations

import pytest

from ambient.bench.waypoint import ProcRound, process_figures, standalone_state


def _round(mode: str, processes: int, requests: int, cpu: float) -> ProcRound:
    return ProcRound(mode, processes, requests, 2.0, cpu, [0.001, 0.002, 0.010])


ROUNDS = {
    "direct": [_round("direct", 0, 20_000, 0.0), _round("direct", 0, 10_000, 0.0), _round("direct", 0, 16_000, 0.0)],
    "1": [_round("1", 1, 6_000, 1.2), _round("1", 1, 8_000, 1.6), _round("1", 1, 2_000, 0.5)],
    "auto": [_round("auto", 2, 9_000, 2.7), _round("auto", 2, 12_000, 3.0), _round("auto", 2, 3_000, 0.9)],
}


def test_medians_per_mode_against_the_path_without_the_waypoint() -> None:
    figs = {f["name"]: f for f in process_figures(ROUNDS)}
    assert figs["without waypoint (own processes)"]["value"] == 8_000  # median of 10k/5k/8k req/s
    one = figs["through waypoint, 1 process"]
    assert (one["value"], one["baseline_value"]) == (3_000, 8_000)
    auto = figs["through waypoint, workers=auto (2 processes)"]
    assert (auto["value"], auto["baseline"]) == (4_500, "without waypoint (own processes)")
    cpu1 = figs["waypoint CPU per 1,000 req/s, 1 process (process tree)"]
    assert cpu1["value"] == pytest.approx(0.2)  # 1.2 s / 6,000 requests = 0.2 ms per request
    cpu2 = figs["waypoint CPU per 1,000 req/s, workers=auto (2 processes) (process tree)"]
    assert cpu2["value"] == pytest.approx(0.3)
    assert (cpu2["baseline"], cpu2["baseline_value"]) == (cpu1["name"], pytest.approx(0.2))
    assert figs["waypoint req/s, workers=auto (2 processes) / 1 process"]["value"] == pytest.approx(1.5)
    assert figs["waypoint cores used, workers=auto (2 processes)"]["value"] == pytest.approx(1.35)


def test_the_goals_keep_reading_the_loopback_figures() -> None:
    """The goals match `through waypoint` by exact name: the own-processes figures never replace it."""
    assert all(f["name"] != "through waypoint" for f in process_figures(ROUNDS))


def test_static_state_routes_the_vip_to_the_backend() -> None:
    text = standalone_state(40123)
    assert 'vips: ["10.96.0.50"]' in text and "{80: 40123}" in text and "targetPort: 40123" in text
