"""Access-log lines match the reference format; metrics carry the reference names and bounded labels."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ambient.runtime.accesslog import ConnectionRecord, format_failed, format_json, format_text, parse_fields
from ambient.ztunnel.metrics import LABELS, ConnectionLabels, ProxyMetrics


def _record() -> ConnectionRecord:
    return ConnectionRecord(
        direction="outbound",
        src_addr="10.244.1.7:53265",
        src_workload="curl-7d9c",
        src_namespace="shop",
        src_identity="spiffe://cluster.local/ns/shop/sa/curl",
        dst_addr="10.244.2.6:15008",
        dst_hbone_addr="10.244.2.6:8080",
        dst_service="web.shop.svc.cluster.local",
        dst_workload="web-5dpz9",
        dst_namespace="shop",
        dst_identity="spiffe://cluster.local/ns/shop/sa/web",
        src_cluster="Kubernetes",
        dst_cluster="Kubernetes",
        bytes_sent=84,
        bytes_recv=9832,
        started=100.0,
        ended=100.061,
    )


def test_text_line_matches_reference_example() -> None:
    # ztunnel src/proxy/metrics.rs: string fields go through tracing's Debug formatting (quoted), addresses
    # (`%addr`, `display`) and integers do not; src.cluster / dst.cluster follow the identities.
    line = format_text(_record(), now=0)
    expected_tail = (
        'src.addr=10.244.1.7:53265 src.workload="curl-7d9c" src.namespace="shop" '
        'src.identity="spiffe://cluster.local/ns/shop/sa/curl" src.cluster="Kubernetes" dst.addr=10.244.2.6:15008 '
        'dst.hbone_addr=10.244.2.6:8080 dst.service="web.shop.svc.cluster.local" dst.workload="web-5dpz9" '
        'dst.namespace="shop" dst.identity="spiffe://cluster.local/ns/shop/sa/web" dst.cluster="Kubernetes" '
        'direction="outbound" bytes_sent=84 bytes_recv=9832 duration="61ms"'
    )
    assert line == "1970-01-01T00:00:00.000000Z\tinfo\taccess\tconnection complete\t" + expected_tail


def test_missing_fields_are_omitted_and_errors_are_error_level() -> None:
    rec = ConnectionRecord(direction="inbound", src_addr="10.0.0.1:1", dst_addr="10.0.0.2:15008",
                           error="connection closed due to policy rejection: denied by policy ns/deny")
    line = format_text(rec, now=0)
    assert "\terror\taccess\tconnection complete\t" in line
    fields = parse_fields(line)
    assert "src.identity" not in fields and "dst.service" not in fields
    assert fields["error"] == "connection closed due to policy rejection: denied by policy ns/deny"
    assert fields["direction"] == "inbound"


def test_failed_line_and_json() -> None:
    line = format_failed(src_addr="10.0.0.1:1", dst_addr="10.0.0.9:80", direction="outbound",
                         error="unknown source", now=0)
    assert "\twarn\taccess\tconnection failed\t" in line
    assert parse_fields(line) == {"src.addr": "10.0.0.1:1", "dst.addr": "10.0.0.9:80",
                                  "direction": "outbound", "error": "unknown source"}
    assert '"bytes_sent": 84' in format_json(_record(), now=0)


def test_json_line_carries_every_field_of_the_text_line() -> None:
    """`--log-format json` says what the text line says, tracing fields included (same names, same values)."""
    import json

    record = _record()
    record.route, record.authz, record.original = "hbone", "no allow policies", "10.96.0.10:80"
    record.hbone_conn, record.closed_by, record.trace_id = "pooled", "client", "4bf92f3577b34da6a3ce929d0e0e4736"
    record.ended = record.started + 0.061
    text = {k: str(v) for k, v in parse_fields(format_text(record, now=0)).items()}
    body = json.loads(format_json(record, now=0))
    assert {"dst.original", "hbone_conn", "closed_by", "route", "authz", "trace_id"} <= set(text)
    assert {k: str(body[k]) for k in text} == text


def test_metrics_names_labels_and_values() -> None:
    metrics = ProxyMetrics()
    labels = ConnectionLabels.build(reporter="source", source_workload="curl", destination_service="")
    metrics.connection_opened(labels)
    metrics.connection_closed(labels.with_flags("DENY"), sent=10, received=20)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert {"istio_tcp_connections_opened", "istio_tcp_connections_closed", "istio_tcp_sent_bytes",
            "istio_tcp_received_bytes"} <= set(families)
    opened = [s for s in families["istio_tcp_connections_opened"].samples if s.name.endswith("_total")]
    assert opened[0].value == 1
    assert set(opened[0].labels) == set(LABELS)
    assert opened[0].labels["destination_service"] == "unknown"
    assert opened[0].labels["request_protocol"] == "tcp"
    closed = [s for s in families["istio_tcp_connections_closed"].samples if s.name.endswith("_total")]
    assert closed[0].labels["response_flags"] == "DENY"
    sent = [s for s in families["istio_tcp_sent_bytes"].samples if s.name.endswith("_total")]
    assert sent[0].value == 10
    # ztunnel (and Envoy) export no `_created` series
    assert not [s for f in families.values() for s in f.samples if s.name.endswith("_created")]
    assert "_created" not in metrics.exposition().decode()


def test_access_log_fast_path_writes_the_same_bytes_as_logging() -> None:
    import io
    import logging

    from ambient.ztunnel.telemetry import AccessLog

    def lines_via(logger_name: str, extra_handler: bool) -> str:
        out = io.StringIO()
        logger = logging.getLogger(logger_name)
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._ambient_access = True  # type: ignore[attr-defined]
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO)
        seen: list[str] = []
        if extra_handler:  # forces the logging path; must produce the same stream bytes
            class Keep(logging.Handler):
                def emit(self, record: logging.LogRecord) -> None:
                    seen.append(record.getMessage())

            logger.addHandler(Keep())
        log = AccessLog("text", logger)
        ok = _record()
        failed = _record()
        failed.error = "connection reset"
        log.complete(ok)
        log.complete(failed)
        if extra_handler:
            assert len(seen) == 2
        return out.getvalue()

    def untimed(text: str) -> list[str]:  # the first field is the wall-clock timestamp of the line
        return [line.split("\t", 1)[1] for line in text.split("\n") if line]

    fast, slow = lines_via("test-access-fast", False), lines_via("test-access-slow", True)
    assert fast.endswith("\n") and fast.count("\n") == slow.count("\n") == 2
    assert untimed(fast) == untimed(slow)
    assert untimed(fast)[0] == untimed(format_text(_record()))[0]
    assert "error=" in fast.splitlines()[1]


def test_metric_children_are_cached_without_changing_the_exposition() -> None:
    cached, plain = ProxyMetrics(), ProxyMetrics()
    labels = ConnectionLabels.build(reporter="source", source_workload="curl")
    for _ in range(3):
        cached.connection_opened(labels)
        cached.connection_closed(labels, sent=0, received=5)
        plain.opened.labels(*labels.values).inc()
        plain.closed.labels(*labels.values).inc()
        plain.received.labels(*labels.values).inc(5)
    def untimed(m: ProxyMetrics) -> list[str]:  # `_created` samples carry creation timestamps
        return [ln for ln in m.exposition().decode().splitlines() if "_created" not in ln]

    assert untimed(cached) == untimed(plain)
    assert "istio_tcp_sent_bytes_total{" not in cached.exposition().decode()  # never sent: no series


def _telemetry() -> tuple[Any, list[str], ProxyMetrics]:
    from ambient.ztunnel.telemetry import AccessLog, Connections, Telemetry

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("test-access-directions")
    logger.handlers = [Keep()]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    metrics = ProxyMetrics()
    return Telemetry(metrics, AccessLog("text", logger), Connections()), lines, metrics


def _sample(metrics: ProxyMetrics, name: str) -> float:
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    return sum(s.value for s in families[name].samples if s.name == name + "_total")


@pytest.mark.parametrize("reporter,direction,log_sent,log_recv", [
    # ztunnel tests/namespaced.rs: the client sends 11 bytes, the server answers 22.
    ("source", "outbound", "11", "22"),
    ("destination", "inbound", "22", "11"),
])
def test_byte_directions_follow_ztunnel(reporter: str, direction: str, log_sent: str, log_recv: str) -> None:
    """Both reporters count request bytes in istio_tcp_received_bytes_total and response bytes in
    istio_tcp_sent_bytes_total (Istio's convention, istio/istio#32399); the access line is each proxy's own
    view (`Unflip for logs` in ztunnel's metrics.rs)."""
    from ambient.ztunnel.copy import CopyStats

    tel, lines, metrics = _telemetry()
    labels = ConnectionLabels.build(reporter=reporter, source_workload="client", source_cluster="Kubernetes",
                                    destination_workload="server", destination_cluster="Kubernetes")
    tel.opened(labels)
    record = ConnectionRecord(direction=direction, src_addr="10.0.0.1:5000", dst_addr="10.0.0.2:15008")  # type: ignore[arg-type]
    tel.finish(record, labels, CopyStats(sent=11, received=22))  # sent = client -> server
    assert _sample(metrics, "istio_tcp_received_bytes") == 11
    assert _sample(metrics, "istio_tcp_sent_bytes") == 22
    fields = parse_fields(lines[-1])
    assert (fields["direction"], fields["bytes_sent"], fields["bytes_recv"]) == (direction, log_sent, log_recv)
    assert fields["src.cluster"] == fields["dst.cluster"] == "Kubernetes"
    assert list(fields)[:4] == ["src.addr", "src.cluster", "dst.addr", "dst.cluster"]


async def test_copy_stats_sent_is_the_first_end_to_the_second() -> None:
    """The premise of `Telemetry.finish`: `CopyStats.sent` counts a -> b (outbound: app -> tunnel; inbound:
    tunnel -> app), i.e. the request direction for both proxies."""
    import asyncio
    import socket

    from ambient.ztunnel.copy import CopyStats, SocketEnd, copy_bidirectional

    a_outer, a_inner = socket.socketpair()
    b_inner, b_outer = socket.socketpair()
    for s in (a_inner, b_inner, a_outer, b_outer):
        s.setblocking(False)
    loop = asyncio.get_running_loop()
    stats = CopyStats()
    task = asyncio.create_task(copy_bidirectional(SocketEnd(a_inner, "a"), SocketEnd(b_inner, "b"), stats))
    await loop.sock_sendall(a_outer, b"x" * 11)
    a_outer.shutdown(socket.SHUT_WR)
    got = b""
    while len(got) < 11:
        got += await asyncio.wait_for(loop.sock_recv(b_outer, 64), 5)
    await loop.sock_sendall(b_outer, b"y" * 22)
    b_outer.shutdown(socket.SHUT_WR)
    back = b""
    while len(back) < 22:
        back += await asyncio.wait_for(loop.sock_recv(a_outer, 64), 5)
    await asyncio.wait_for(task, 5)
    assert (stats.sent, stats.received) == (11, 22)
    for s in (a_outer, a_inner, b_inner, b_outer):
        s.close()


def test_identities_are_logged_for_mutual_tls_connections_only() -> None:
    """ztunnel: `src.identity = ...filter(|_| mtls)`, the same for dst.identity."""
    from ambient.ztunnel.copy import CopyStats

    tel, lines, _ = _telemetry()
    for policy in ("mutual_tls", "unknown"):
        labels = ConnectionLabels.build(reporter="destination", connection_security_policy=policy)
        tel.opened(labels)
        tel.finish(ConnectionRecord(direction="inbound", src_addr="10.0.0.1:5000", dst_addr="10.0.0.2:8080",
                                    src_identity="spiffe://cluster.local/ns/a/sa/c",
                                    dst_identity="spiffe://cluster.local/ns/a/sa/s"), labels, CopyStats())
    mtls, plain = parse_fields(lines[0]), parse_fields(lines[1])
    assert mtls["src.identity"] == "spiffe://cluster.local/ns/a/sa/c"
    assert mtls["dst.identity"] == "spiffe://cluster.local/ns/a/sa/s"
    assert "src.identity" not in plain and "dst.identity" not in plain
