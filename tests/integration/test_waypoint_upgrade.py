"""HTTP/1.1 upgrades (WebSocket) through the waypoint on loopback: client -> HBONE -> waypoint -> HBONE ->
backend HBONE server -> a small app that answers 101 and then echoes bytes.

Asserts: bytes flow both ways after the 101 (including bytes sent in the same write as either head), half-close
propagates, the downstream connection is not reused afterwards, the upstream connection is dedicated (never
pooled), a non-101 answer is passed through as a normal response, L7 DENY answers 403 without reaching the
backend, an upgrade with a body is refused with 400, the route's request timeout does not cut a session, the
access log and metrics count the session as one request with code 101, and HTTP/2 is unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h11
import pytest

from ambient.bench.loopback import PODS, loopback
from ambient.hbone.errors import HboneError

pytestmark = pytest.mark.timeout(60)

HOST = "reviews.shop.svc.cluster.local"
WS_HEADERS = [("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-version", "13"),
              ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")]


def _v1_route(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "v1", "namespace": "shop", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 80}],
                     "rules": [{"backendRefs": [{"name": "reviews-v1", "port": 80}], **(extra or {})}]}}


V1_ONLY = _v1_route()


@dataclass
class UpgradeApp:
    """Answers an upgrade request on `/ws` with 101 (+ b"hi:" in the same write) and then echoes every byte
    until EOF; answers 426 elsewhere and 200 to plain requests (keep-alive). Records what it saw."""

    connections: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    sessions_ended: int = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                    continue
                if not isinstance(event, h11.Request):
                    return
                while not isinstance(conn.next_event(), h11.EndOfMessage):
                    conn.receive_data(await reader.read(65536))
                target = event.target.decode()
                headers = {k.decode(): v.decode() for k, v in event.headers}
                self.requests.append((target, headers))
                if target.startswith("/ws") and "upgrade" in headers:
                    writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=[
                        ("upgrade", "websocket"), ("connection", "Upgrade"),
                        ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")])) + b"hi:")
                    leftover = conn.trailing_data[0]
                    if leftover:
                        writer.write(leftover)
                    while data := await reader.read(65536):
                        writer.write(data)
                        await writer.drain()
                    writer.write(b":bye")
                    writer.write_eof()
                    await writer.drain()
                    self.sessions_ended += 1
                    return
                status = 426 if target.startswith("/ws") else 200
                body = f"{status} {target}".encode()
                writer.write(conn.send(h11.Response(status_code=status, headers=[
                    ("content-length", str(len(body)))])) + conn.send(h11.Data(data=body))
                             + conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            return
        finally:
            writer.close()


async def _with_app(lb: Any) -> tuple[UpgradeApp, asyncio.Server]:
    app = UpgradeApp()
    server = await asyncio.start_server(app, "127.0.0.1", 0)
    for ip in PODS:  # both reviews pods are this app
        lb.apps[ip] = server.sockets[0].getsockname()[1]
    return app, server


async def _read_head(stream: Any, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.read())
            continue
        return event


async def _read_to_eof(stream: Any, got: bytes = b"") -> bytes:
    buf = bytearray(got)
    while data := await stream.read():
        buf += data
    return bytes(buf)


async def _read_at_least(stream: Any, n: int, got: bytes = b"") -> bytes:
    buf = bytearray(got)
    while len(buf) < n:
        data = await stream.read()
        assert data, f"EOF after {bytes(buf)!r}"
        buf += data
    return bytes(buf)


async def _upgrade(stream: Any, path: str = "/ws", early: bytes = b"",
                   extra: list[tuple[str, str]] | None = None) -> tuple[h11.Connection, Any]:
    conn = h11.Connection(h11.CLIENT)
    data = conn.send(h11.Request(method="GET", target=path, headers=[("host", HOST), *WS_HEADERS, *(extra or [])]))
    data += conn.send(h11.EndOfMessage())
    await stream.write(data + early)
    return conn, await _read_head(stream, conn)


async def test_websocket_session_echoes_both_ways_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ambient.waypoint.access")
    async with loopback() as lb:
        app, server = await _with_app(lb)
        async with server:
            stream = await lb.open()
            conn, head = await _upgrade(stream, early=b"early;")
            assert isinstance(head, h11.InformationalResponse) and head.status_code == 101
            headers = {k.decode(): v.decode() for k, v in head.headers}
            assert headers["upgrade"] == "websocket" and headers["connection"].lower() == "upgrade"
            assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
            # the backend got the upgrade and the end-to-end WebSocket headers
            target, seen = app.requests[-1]
            assert target == "/ws" and seen["upgrade"] == "websocket" and seen["connection"].lower() == "upgrade"
            assert seen["sec-websocket-key"] == "dGhlIHNhbXBsZSBub25jZQ=="
            assert seen["sec-websocket-version"] == "13"
            got = await _read_at_least(stream, len(b"hi:early;"), conn.trailing_data[0])
            assert got == b"hi:early;"
            await stream.write(b"\x81\x05hello")
            assert await _read_at_least(stream, 7) == b"\x81\x05hello"
            await stream.write(b"x" * 200_000)  # more than one read chunk
            assert await _read_at_least(stream, 200_000) == b"x" * 200_000
            await stream.write_eof()  # half-close: the backend sees EOF, answers its last bytes and EOF
            assert await _read_to_eof(stream) == b":bye"
            stream.close()
        for _ in range(100):
            if any("http.status=101" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.02)
        lines = [r.getMessage() for r in caplog.records if r.name == "ambient.waypoint.access"]
        line = next(x for x in lines if "http.status=101" in x)
        assert "http.method=GET" in line and 'http.path="/ws"' in line
        assert f"bytes_sent={len(b'early;') + 7 + 200_000}" in line
        assert f"bytes_recv={len(b'hi:early;') + 7 + 200_000 + 4}" in line
        text = lb.metrics.exposition().decode()
        counts = [ln for ln in text.splitlines() if ln.startswith("istio_requests_total{") and 'code="101"' in ln]
        assert len(counts) == 1 and counts[0].endswith(" 1.0")
        assert app.sessions_ended == 1


async def test_downstream_not_reused_and_upstream_dedicated() -> None:
    async with loopback([V1_ONLY]) as lb:  # one endpoint: one pool key
        app, server = await _with_app(lb)
        async with server:
            stream = await lb.open()
            # a plain request first: its upstream connection is pooled
            conn = h11.Connection(h11.CLIENT)
            await stream.write(conn.send(h11.Request(method="GET", target="/plain", headers=[("host", HOST)]))
                               + conn.send(h11.EndOfMessage()))
            head = await _read_head(stream, conn)
            assert isinstance(head, h11.Response) and head.status_code == 200
            while not isinstance(await _read_head(stream, conn), h11.EndOfMessage):
                pass
            assert app.connections == 1
            conn.start_next_cycle()
            # the upgrade on the same downstream connection: a new upstream connection of its own
            await stream.write(conn.send(h11.Request(method="GET", target="/ws", headers=[("host", HOST),
                                                                                          *WS_HEADERS]))
                               + conn.send(h11.EndOfMessage()))
            head = await _read_head(stream, conn)
            assert isinstance(head, h11.InformationalResponse) and head.status_code == 101
            assert app.connections == 2
            await stream.write(b"ping")
            assert await _read_at_least(stream, 7, conn.trailing_data[0]) == b"hi:ping"
            await stream.write_eof()
            assert await _read_to_eof(stream) == b":bye"
            # a request written after the session goes nowhere: the downstream connection is closed
            with contextlib.suppress(HboneError, OSError):  # the tunnel may already be gone
                await stream.write(f"GET /plain HTTP/1.1\r\nhost: {HOST}\r\n\r\n".encode())
                assert await stream.read() == b""
            stream.close()
            assert len(app.requests) == 2
            # the pooled plain connection is still the one used for plain requests; the upgraded one is gone
            stream = await lb.open()
            conn = h11.Connection(h11.CLIENT)
            await stream.write(conn.send(h11.Request(method="GET", target="/plain", headers=[("host", HOST)]))
                               + conn.send(h11.EndOfMessage()))
            head = await _read_head(stream, conn)
            assert isinstance(head, h11.Response) and head.status_code == 200
            assert app.connections == 2
            stream.close()


async def test_non_101_answer_is_passed_through_and_connection_kept() -> None:
    async with loopback() as lb:
        app, server = await _with_app(lb)
        async with server:
            stream = await lb.open()
            conn = h11.Connection(h11.CLIENT)  # the app upgrades only /ws: it answers 200 to /other
            await stream.write(conn.send(h11.Request(method="GET", target="/other", headers=[
                ("host", HOST), *WS_HEADERS])) + conn.send(h11.EndOfMessage()))
            head = await _read_head(stream, conn)
            assert isinstance(head, h11.Response) and head.status_code == 200
            body = bytearray()
            while not isinstance(ev := await _read_head(stream, conn), h11.EndOfMessage):
                body += ev.data
            assert bytes(body) == b"200 /other"
            assert dict(app.requests[-1][1])["upgrade"] == "websocket"  # it was asked to upgrade
            # the downstream connection serves the next request as usual
            conn.start_next_cycle()
            await stream.write(conn.send(h11.Request(method="GET", target="/plain", headers=[("host", HOST)]))
                               + conn.send(h11.EndOfMessage()))
            head = await _read_head(stream, conn)
            assert isinstance(head, h11.Response) and head.status_code == 200
            stream.close()


async def test_l7_deny_answers_403_without_reaching_backend() -> None:
    deny = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "deny-ws", "namespace": "shop"},
            "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}], "action": "DENY",
                     "rules": [{"to": [{"operation": {"paths": ["/ws*"]}}]}]}}
    async with loopback([deny]) as lb:
        app, server = await _with_app(lb)
        async with server:
            stream = await lb.open()
            _, head = await _upgrade(stream)
            assert isinstance(head, h11.Response) and head.status_code == 403
            assert app.requests == [] and app.connections == 0
            stream.close()


async def test_upgrade_to_another_protocol_is_refused_without_reaching_backend() -> None:
    async with loopback() as lb:
        app, server = await _with_app(lb)
        async with server:
            stream = await lb.open()
            await stream.write(f"GET /ws HTTP/1.1\r\nhost: {HOST}\r\nconnection: upgrade\r\nupgrade: foo/1\r\n"
                               "\r\n".encode())
            got = b""
            while b"not allowed" not in got and (chunk := await stream.read()):  # the 403 and its text
                got += chunk
            assert got.startswith(b"HTTP/1.1 403 ") and b"upgrade to 'foo/1' is not allowed" in got
            assert app.requests == [] and app.connections == 0
            stream.close()


async def test_upgrade_with_body_is_refused() -> None:
    async with loopback() as lb:
        app, server = await _with_app(lb)
        async with server:
            stream = await lb.open()
            await stream.write(f"GET /ws HTTP/1.1\r\nhost: {HOST}\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
                               "content-length: 5\r\n\r\nhello".encode())
            got = await _read_to_eof(stream)
            assert got.startswith(b"HTTP/1.1 400 ")
            assert app.requests == []
            stream.close()


async def test_request_timeout_does_not_cut_an_established_session() -> None:
    async with loopback([_v1_route({"timeouts": {"request": "200ms"}})]) as lb:
        app, server = await _with_app(lb)
        async with server:
            stream = await lb.open()
            conn, head = await _upgrade(stream)
            assert isinstance(head, h11.InformationalResponse) and head.status_code == 101
            await asyncio.sleep(0.5)
            await stream.write(b"late")
            assert await _read_at_least(stream, 7, conn.trailing_data[0]) == b"hi:late"
            await stream.write_eof()
            assert await _read_to_eof(stream) == b":bye"
            stream.close()
        assert app.sessions_ended == 1


async def test_http2_request_with_upgrade_headers_is_refused_as_before(caplog: pytest.LogCaptureFixture) -> None:
    """HTTP/2 has no Upgrade (RFC 9113 8.2.2): such a request is malformed: GOAWAY PROTOCOL_ERROR, as it always was."""
    async with loopback() as lb:
        app, server = await _with_app(lb)
        async with server:
            stream = await lb.open()
            h2c = h2.connection.H2Connection(h2.config.H2Configuration(
                client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
                normalize_outbound_headers=False))
            h2c.initiate_connection()
            h2c.send_headers(1, [(":method", "GET"), (":path", "/ws"), (":scheme", "http"), (":authority", HOST),
                                 ("connection", "upgrade"), ("upgrade", "websocket")], end_stream=True)
            await stream.write(h2c.data_to_send())
            outcome = None
            with contextlib.suppress(HboneError):  # the waypoint closes the tunnel after its GOAWAY
                while outcome is None and (data := await stream.read()):
                    for ev in h2c.receive_data(data):
                        if isinstance(ev, h2.events.ResponseReceived):
                            outcome = dict(ev.headers)[":status"]
                        elif isinstance(ev, h2.events.StreamReset):
                            outcome = f"reset {ev.error_code!r}"
                        elif isinstance(ev, h2.events.ConnectionTerminated):
                            outcome = f"goaway {ev.error_code!r}"
                    if outcome is None:
                        await stream.write(h2c.data_to_send())
            stream.close()
            # the GOAWAY may be lost to the tunnel's reset; never a response
            assert outcome in (None, "goaway <ErrorCodes.PROTOCOL_ERROR: 1>"), outcome
            assert any("GOAWAY PROTOCOL_ERROR" in r.getMessage() and "connection" in r.getMessage()
                       for r in caplog.records if r.name == "ambient.waypoint.http2")
            assert app.requests == []


async def test_route_filters_and_redirect_apply_to_an_upgrade() -> None:
    filters = _v1_route({"filters": [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-Env", "value": "prod"}]}},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
            "add": [{"name": "X-Served-By", "value": "waypoint"}]}}]})
    redirect = {**filters, "metadata": {**filters["metadata"], "name": "old"},
                "spec": {**filters["spec"], "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}], "filters": [
                        {"type": "RequestRedirect", "requestRedirect": {"hostname": "new.example.com"}}]}]}}
    async with loopback([filters, redirect]) as lb:
        app, server = await _with_app(lb)
        async with server:
            stream = await lb.open()
            conn, head = await _upgrade(stream)
            assert isinstance(head, h11.InformationalResponse) and head.status_code == 101
            assert (b"x-served-by", b"waypoint") in list(head.headers)
            assert app.requests[-1][1]["x-env"] == "prod"
            await stream.write_eof()
            assert await _read_to_eof(stream, conn.trailing_data[0]) == b"hi::bye"
            stream.close()
            stream = await lb.open()
            _, head = await _upgrade(stream, path="/old/ws")
            assert isinstance(head, h11.Response) and head.status_code == 302
            assert dict(head.headers)[b"location"].startswith(b"http://new.example.com/old/ws")
            assert len(app.requests) == 1
            stream.close()
