"""The waypoint primary's merged metrics stay monotonic across a worker's restart: a worker that is down
counts with its last exposition, and a departed process's counters stay in the sum once its successor
answers (Prometheus would otherwise read a counter reset)."""

from __future__ import annotations

import pytest

from ambient.runtime.exposition import monotonic_part
from ambient.waypoint.workers import WorkerPool

TEXT = b"""# HELP istio_requests_total Requests handled by the waypoint
# TYPE istio_requests_total counter
istio_requests_total{code="200"} 5.0
# HELP open_things Open things
# TYPE open_things gauge
open_things 3.0
# HELP istio_request_duration_milliseconds Request duration
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_bucket{le="+Inf"} 5.0
istio_request_duration_milliseconds_count 5.0
istio_request_duration_milliseconds_sum 12.5
"""


def test_monotonic_part_keeps_counters_and_histograms_only() -> None:
    kept = monotonic_part(TEXT).decode()
    assert 'istio_requests_total{code="200"} 5.0' in kept and "# TYPE istio_requests_total counter" in kept
    assert "istio_request_duration_milliseconds_sum 12.5" in kept and "_bucket" in kept
    assert "open_things" not in kept


@pytest.mark.parametrize("text", [b"", b"untyped_thing 1\n", b"# TYPE g gauge\ng 1\n", b"# just a comment\n"])
def test_monotonic_part_of_nothing_monotonic_is_empty(text: bytes) -> None:
    assert monotonic_part(text) == b""


def _count(text: bytes) -> float:
    line = next(ln for ln in text.decode().splitlines() if ln.startswith("istio_requests_total{"))
    return float(line.rsplit(" ", 1)[1])


def _exposition(n: int) -> bytes:
    return TEXT.replace(b'code="200"} 5.0', b'code="200"} %d.0' % n)


class _FakeWorkers:
    indexes = [1]

    def __init__(self) -> None:
        self.pids = {1: 100}


async def test_merged_counters_never_go_down_across_a_restart() -> None:
    pool = WorkerPool(2, ("127.0.0.1", 15008))
    try:
        fake = _FakeWorkers()
        pool.workers = fake  # type: ignore[assignment]
        answers: dict[int, bytes] = {}

        async def gather(_target: str) -> list[tuple[int, bytes]]:
            return list(answers.items())

        pool._gather = gather  # type: ignore[method-assign, assignment]
        own = _exposition(10)
        answers[1] = _exposition(7)
        assert _count(await pool.metrics(own)) == 17
        answers.clear()  # the worker died: it counts as last seen
        assert _count(await pool.metrics(own)) == 17
        fake.pids = {1: 200}  # its successor, starting from zero
        answers[1] = _exposition(0)
        assert _count(await pool.metrics(own)) == 17
        answers[1] = _exposition(2)
        assert _count(await pool.metrics(own)) == 19
        fake.pids = {1: 300}  # and again: both predecessors' counts stay
        answers[1] = _exposition(1)
        assert _count(await pool.metrics(own)) == 20
        merged = await pool.metrics(own)
        assert b"open_things 6.0" in merged  # a gauge: the live processes' only (the departed two dropped)
        assert b"istio_request_duration_milliseconds_count 20.0" in merged  # histograms carried like counters
    finally:
        pool.cleanup()
