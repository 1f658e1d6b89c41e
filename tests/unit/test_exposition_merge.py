"""Merging worker processes' Prometheus expositions: per-series sums, first declaration wins, order kept."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ambient.runtime.exposition import ExpositionError, WorkerMetrics, merge_expositions

A = b"""# HELP c_total Things.
# TYPE c_total counter
c_total{k="a"} 1.0
c_total{k="b b}"} 2.0
# HELP g Active.
# TYPE g gauge
g 3.0
"""
B = b"""# HELP c_total Things.
# TYPE c_total counter
c_total{k="a"} 10.0
c_total{k="c"} 5.0
# HELP h New.
# TYPE h counter
h_total 1.0
"""


@pytest.mark.parametrize(("texts", "want"), [
    ([A], A),
    ([A, B], b"""# HELP c_total Things.
# TYPE c_total counter
c_total{k="a"} 11.0
c_total{k="b b}"} 2.0
c_total{k="c"} 5.0
# HELP g Active.
# TYPE g gauge
g 3.0
# HELP h New.
# TYPE h counter
h_total 1.0
"""),
    ([b"", A], A),
    ([b"x 1\n", b"x 2.5\n"], b"x 3.5\n"),
    ([b"", b""], b""),
])
def test_merge_table(texts: list[bytes], want: bytes) -> None:
    assert merge_expositions(texts) == want


@pytest.mark.parametrize("bad", [b'c{k="a" 1\n', b"c\n", b"c one\n"])
def test_garbage_is_refused(bad: bytes) -> None:
    with pytest.raises(ExpositionError):
        merge_expositions([A, bad])


def test_real_registries_sum_and_stay_parseable() -> None:
    texts = []
    for n in (3, 4):
        reg = CollectorRegistry()
        c = Counter("istio_tcp_connections_opened", "TCP connections opened", ["reporter"], registry=reg)
        c.labels("source").inc(n)
        Gauge("ambient_active", "active", registry=reg).set(n)
        texts.append(generate_latest(reg))
    merged = merge_expositions(texts).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(merged) for s in f.samples}
    assert samples[("istio_tcp_connections_opened_total", (("reporter", "source"),))] == 7
    assert samples[("ambient_active", ())] == 7


def _counter(n: float) -> bytes:
    return (f"# HELP c_total Things.\n# TYPE c_total counter\nc_total {n}\n"
            f"# HELP g Open.\n# TYPE g gauge\ng {n}\n").encode()


def _values(text: bytes) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_counters_never_go_down_when_a_worker_is_replaced() -> None:
    merged = WorkerMetrics()
    assert _values(merged.merge(_counter(1), {1: (100, _counter(5))})) == {"c_total": 6, "g": 6}
    # down: its counters as last seen, its gauges gone (no longer current)
    assert _values(merged.merge(_counter(1), {1: (0, None)})) == {"c_total": 6, "g": 1}
    # its successor (new pid) starts from zero: the predecessor's counts stay in the sum for good
    assert _values(merged.merge(_counter(2), {1: (200, _counter(0))})) == {"c_total": 7, "g": 2}
    assert _values(merged.merge(_counter(2), {1: (200, _counter(3))})) == {"c_total": 10, "g": 5}
