"""Who closed a relayed connection first (`closed_by=`), and the DNS proxy's answers as its log describes them.

The relay notes the first end event (side and kind) per connection; `close_reason` turns it and the logged
error into the access line's value; a policy revocation and the drain deadline override it. In-process:
socket pairs on loopback, no network.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from ipaddress import ip_address
from types import SimpleNamespace
from typing import Any

import pytest

from ambient.hbone.errors import HboneConnectError, HboneStreamError
from ambient.protocol import dnswire
from ambient.runtime.accesslog import ConnectionRecord, parse_fields
from ambient.state.model import NetworkAddress, Service
from ambient.state.store import view_of
from ambient.ztunnel.copy import DRAIN_CUT, CopyStats, DrainCut, SocketEnd, close_reason, copy_bidirectional, end_kind
from ambient.ztunnel.dnsproxy import describe_state, describe_upstream, state_answer
from ambient.ztunnel.metrics import ConnectionLabels, ProxyMetrics
from helpers import tcp_pair


@pytest.mark.parametrize(("error", "kind"), [
    (None, ""),
    (ConnectionResetError(104, "reset"), "_reset"),
    (BrokenPipeError(32, "pipe"), "_reset"),
    (HboneStreamError("stream 1 reset by x (CANCEL)", error_code=8), "_reset"),
    (HboneStreamError("HBONE connection to x lost"), "_error"),
    (HboneConnectError("dial failed"), "_error"),
    (OSError(113, "no route"), "_error"),
])
def test_end_kind(error: BaseException | None, kind: str) -> None:
    assert end_kind(error) == kind


@pytest.mark.parametrize(("first", "error", "value"), [
    ("client", "", "client"),
    ("server", "", "server"),
    ("server_reset", "ConnectionResetError: [Errno 104] reset", "server_reset"),
    ("client", DRAIN_CUT, "drain"),  # the deadline cut it, whatever had half-closed before
    ("", DRAIN_CUT, "drain"),
    ("policy", "connection closed due to policy rejection: denied", "policy"),
    ("", "HBONE CONNECT to 10.0.0.1:80 failed: 401 Unauthorized", "error"),  # before either side ended
    ("", "", ""),
])
def test_close_reason(first: str, error: str, value: str) -> None:
    assert close_reason(first, error) == value
    assert str(DrainCut()) == DRAIN_CUT


async def _relay(first: str) -> CopyStats:
    """A request/response through the copy path; `first` ends: "client" (FIN after the answer, like curl),
    "server" (FIN after answering, like Connection: close) or "server_reset" (RST)."""
    loop = asyncio.get_running_loop()
    client, app = tcp_pair()  # the client talks through `client`
    up, server = tcp_pair()  # the server is behind `server`
    stats = CopyStats()

    async def client_side() -> None:
        await loop.sock_sendall(client, b"GET / HTTP/1.1\r\n\r\n")
        assert await loop.sock_recv(client, 100) == b"answer"
        if first == "client":
            client.shutdown(socket.SHUT_WR)
        try:
            while await loop.sock_recv(client, 100):
                pass
        except ConnectionResetError:
            assert first == "server_reset"  # the proxy passes the server's reset on
        client.close()

    async def server_side() -> None:
        assert await loop.sock_recv(server, 100) == b"GET / HTTP/1.1\r\n\r\n"
        await loop.sock_sendall(server, b"answer")
        if first == "server":
            server.shutdown(socket.SHUT_WR)
        elif first == "server_reset":
            await asyncio.sleep(0.05)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            server.close()
            return
        while await loop.sock_recv(server, 100):
            pass
        server.close()

    a, b = SocketEnd(app, "app"), SocketEnd(up, "up")
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(client_side())
            tg.create_task(server_side())
            await asyncio.wait_for(copy_bidirectional(a, b, stats), 5)
            a.reset() if first == "server_reset" else a.close()
            b.close()
    finally:
        for s in (client, server):
            s.close()
    return stats


@pytest.mark.parametrize("first", ["client", "server", "server_reset"])
async def test_the_relay_notes_which_side_ended_first(first: str) -> None:
    stats = await _relay(first)
    assert stats.closed_by == first
    assert (stats.sent, stats.received) == (len(b"GET / HTTP/1.1\r\n\r\n"), len(b"answer"))


def _telemetry() -> tuple[Any, list[str]]:
    from ambient.ztunnel.telemetry import AccessLog, Connections, Telemetry

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("test-access-closed-by")
    logger.handlers = [Keep()]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return Telemetry(ProxyMetrics(), AccessLog("text", logger), Connections()), lines


@pytest.mark.parametrize(("trace_id", "error", "first", "logged"), [
    ("ab" * 16, "", "server", "server"),
    ("ab" * 16, DRAIN_CUT, "client", "drain"),
    ("", "", "server", None),  # trace ids off: the reference line, no tracing field
])
def test_the_connection_line_says_who_closed(trace_id: str, error: str, first: str, logged: str | None) -> None:
    tel, lines = _telemetry()
    labels = ConnectionLabels.build(reporter="source")
    tel.opened(labels)
    record = ConnectionRecord("outbound", src_addr="10.0.0.1:5000", dst_addr="10.0.0.2:15008", trace_id=trace_id,
                              error=error)
    tel.finish(record, labels, CopyStats(sent=1, received=2, closed_by=first))
    assert parse_fields(lines[-1]).get("closed_by") == logged


def test_a_policy_revocation_is_what_closed_it() -> None:
    tel, _ = _telemetry()
    cuts: list[str] = []
    stats = CopyStats(closed_by="client")  # the client had half-closed; the revocation still ended it
    tel.connections.open(workload="ns/web", pod_uid="u", direction="inbound", local="10.0.0.2:80",
                         remote="10.0.0.1:5000", remote_target="10.0.0.2:80", protocol="HBONE", stats=stats,
                         authz=object(), dst_uid="gone", cut=cuts.append)
    tel.connections.revoke(SimpleNamespace(policies_changed=True, workloads_removed=True, current=view_of()))
    assert cuts == ["destination workload removed"] and stats.closed_by == "policy"


WEB = Service(name="web", namespace="shop", hostname="web.shop.svc.cluster.local",
              addresses=(NetworkAddress(ip_address("10.96.0.7")),))
EXT = Service(name="ext-api", namespace="shop", hostname="api.example.test",
              addresses=(NetworkAddress(ip_address("240.240.0.3")),))
VIEW = view_of(services=[WEB, EXT])


@pytest.mark.parametrize(("name", "qtype", "by", "addresses", "result"), [
    ("web.shop.svc.cluster.local", dnswire.TYPE_A, "Service shop/web", ("10.96.0.7",), "success"),
    ("api.example.test", dnswire.TYPE_A, "ServiceEntry shop/ext-api", ("240.240.0.3",), "success"),
    ("api.example.test", dnswire.TYPE_AAAA, "ServiceEntry shop/ext-api", (), "no records"),
])
def test_answers_from_the_mesh_state_name_what_answered(name: str, qtype: int, by: str,
                                                        addresses: tuple[str, ...], result: str) -> None:
    answer = state_answer(dnswire.build_query(name, qtype, msg_id=5), VIEW)
    assert answer is not None and answer.answered_by == by and answer.addresses == addresses
    assert dnswire.parse_response(answer.response).addresses == list(addresses)
    rec = describe_state(answer, "10.244.1.5:3000", "client/curl-1", 0.0002)
    assert (rec.src_namespace, rec.src_workload, rec.domain, rec.result, rec.rcode) == (
        "client", "curl-1", name, result, "NOERROR")
    assert rec.query == ("A" if qtype == dnswire.TYPE_A else "AAAA")


def test_forwarded_answers_say_upstream_with_its_rcode_and_addresses() -> None:
    query = dnswire.build_query("example.com", msg_id=9)
    msg = dnswire.parse_message(query)
    ok = dnswire.build_response(msg, dnswire.Answer(dnswire.RCODE_NOERROR, ["93.184.216.34"], authoritative=False))
    rec = describe_upstream(query, ok, "", "10.96.0.10:53", "10.244.1.5:3000", "client/curl-1", 0.004)
    assert (rec.domain, rec.query, rec.result, rec.rcode, rec.answer, rec.answered_by) == (
        "example.com", "A", "forwarded", "NOERROR", ("93.184.216.34",), "upstream 10.96.0.10:53")
    nx = dnswire.build_response(msg, dnswire.Answer(dnswire.RCODE_NXDOMAIN))
    assert describe_upstream(query, nx, "", "u:53", "", "a/b", 0).rcode == "NXDOMAIN"
    servfail = dnswire.error_response(query, dnswire.RCODE_SERVFAIL) or b""
    failed = describe_upstream(query, servfail, "no answer within 2s", "u:53", "", "a/b", 2.0)
    assert (failed.result, failed.rcode) == ("forwarding failed (no answer within 2s)", "SERVFAIL")
    assert state_answer(query, VIEW) is None  # not the mesh's: forwarded
