"""HTTP/1.1 upgrades in the waypoint without sockets: the decision and header functions of `upgrade`, the
downstream server (101, raw hand-over with bytes already buffered, no HTTP afterwards; a body refused with 400;
a non-101 answer keeps the connection), the upstream client (`exchange_upgrade`), `splice`, the access log."""

from __future__ import annotations

import asyncio

import pytest
from memstream import End, pair

from ambient.waypoint.http1 import Http1Upstream, serve_http1
from ambient.waypoint.messages import Limits, Request, ResponseWriter, respond_text
from ambient.waypoint.telemetry import RequestRecord, format_request
from ambient.waypoint.upgrade import allowed, requested_upgrade, splice, switching_headers, upstream_headers

pytestmark = pytest.mark.timeout(30)


async def read_until(end: End, marker: bytes) -> bytes:
    out = bytearray()
    async with asyncio.timeout(5):
        while marker not in out:
            data = await end.read()
            assert data, f"EOF after {bytes(out)!r}"
            out += data
    return bytes(out)


async def read_all(end: End) -> bytes:
    out = bytearray()
    async with asyncio.timeout(5):
        while data := await end.read():
            out += data
    return bytes(out)


# ------------------------------------------------------------------------------------------ decisions


@pytest.mark.parametrize(("headers", "expected"), [
    ([("connection", "Upgrade"), ("upgrade", "websocket")], "websocket"),
    ([("connection", "keep-alive, upgrade"), ("upgrade", "WebSocket")], "WebSocket"),
    ([("connection", "keep-alive"), ("connection", "Upgrade"), ("upgrade", "foo/2, bar")], "foo/2, bar"),
    ([("upgrade", "websocket")], None),  # Connection must name upgrade
    ([("connection", "upgrade")], None),  # nothing to upgrade to
    ([("connection", "upgrade"), ("upgrade", " ")], None),
    ([("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c")], None),  # h2c: never performed
    ([("connection", "upgrade"), ("upgrade", "h2c, websocket")], "websocket"),
    ([("connection", "close"), ("upgrade", "websocket")], None),
])
def test_requested_upgrade(headers: list[tuple[str, str]], expected: str | None) -> None:
    assert requested_upgrade(headers) == expected


def test_only_websocket_is_allowed() -> None:
    assert allowed("websocket") and allowed("WebSocket") and allowed("websocket/13")
    assert not allowed("foo") and not allowed("websocket, foo") and not allowed("TLS/1.2")


def test_upstream_headers_add_the_upgrade_ones() -> None:
    out = upstream_headers([("host", "h"), ("sec-websocket-key", "k")], "websocket")
    assert out == [("host", "h"), ("sec-websocket-key", "k"), ("connection", "upgrade"), ("upgrade", "websocket")]


def test_switching_headers_keep_end_to_end_and_drop_hop_by_hop() -> None:
    backend = [("upgrade", "websocket"), ("connection", "Upgrade, x-private"), ("x-private", "1"),
               ("keep-alive", "timeout=5"), ("sec-websocket-accept", "abc"), ("sec-websocket-protocol", "chat")]
    assert switching_headers(backend, "websocket, foo") == [
        ("sec-websocket-accept", "abc"), ("sec-websocket-protocol", "chat"), ("connection", "upgrade"),
        ("upgrade", "websocket")]
    # a backend 101 without Upgrade: the requested protocol is named
    assert switching_headers([], "websocket") == [("connection", "upgrade"), ("upgrade", "websocket")]


async def test_splice_moves_buffered_bytes_first_and_propagates_half_close() -> None:
    down_wp, client = pair()
    up_wp, backend = pair()
    task = asyncio.create_task(splice(down_wp, b"early-c;", up_wp, b"early-b;"))
    assert await read_until(client, b"early-b;") == b"early-b;"
    assert await read_until(backend, b"early-c;") == b"early-c;"
    await client.write(b"ping")
    assert await read_until(backend, b"ping") == b"ping"
    await client.write_eof()  # client -> backend ends; backend -> client still flows
    assert await read_all(backend) == b""
    await backend.write(b"pong")
    assert await read_until(client, b"pong") == b"pong"
    await backend.write_eof()
    assert await read_all(client) == b""
    result = await asyncio.wait_for(task, 5)
    assert (result.a_to_b, result.b_to_a) == (len(b"early-c;ping"), len(b"early-b;pong"))


def test_access_log_counts_bytes_of_an_upgraded_session_only() -> None:
    rec = RequestRecord(method="GET", path="/ws", status=101, protocol="HTTP/1.1", bytes_sent=12, bytes_recv=0)
    line = format_request(rec)
    assert "http.status=101" in line and "bytes_sent=12 bytes_recv=0 duration=" in line
    plain = format_request(RequestRecord(method="GET", path="/", status=200, protocol="HTTP/1.1"))
    assert "bytes_sent" not in plain


# ------------------------------------------------------------------------------------------ downstream


def _upgrade_handler(seen: list[Request]) -> object:
    async def handler(req: Request, writer: ResponseWriter) -> None:
        seen.append(req)
        if req.upgrade is None or req.target != "/ws":
            await respond_text(writer, 200, f"plain {req.upgrade}")
            return
        await req.body.read()
        stream, buffered = await writer.upgrade([("connection", "upgrade"), ("upgrade", req.upgrade)])  # type: ignore[attr-defined]
        await stream.write(b"got:" + buffered)
        while data := await stream.read():
            await stream.write(data)
        await stream.write_eof()

    return handler


UPGRADE_HEAD = (b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Key: k\r\n\r\n")


async def test_server_switches_and_hands_over_buffered_bytes() -> None:
    seen: list[Request] = []
    server_end, client = pair()
    task = asyncio.create_task(serve_http1(server_end, _upgrade_handler(seen), Limits(), b""))  # type: ignore[arg-type]
    # a plain request first (fast path), then the upgrade with bytes of the new protocol in the same write
    await client.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n" + UPGRADE_HEAD + b"raw1")
    out = await read_until(client, b"got:raw1")
    assert out.startswith(b"HTTP/1.1 200 ") and b"plain None" in out
    assert b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\ngot:raw1" in out
    assert seen[1].upgrade == "websocket"
    assert ("sec-websocket-key", "k") in seen[1].headers
    assert all(k not in ("connection", "upgrade") for k, _ in seen[1].headers)
    # what follows is raw bytes, even when it looks like HTTP
    await client.write(b"GET / HTTP/1.1\r\n\r\n")
    assert await read_until(client, b"\r\n\r\n") == b"GET / HTTP/1.1\r\n\r\n"
    await client.write_eof()
    assert await read_all(client) == b""
    await asyncio.wait_for(task, 5)
    assert len(seen) == 2


@pytest.mark.parametrize("extra", [b"Content-Length: 3\r\n\r\nabc",
                                   b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"])
async def test_server_refuses_an_upgrade_with_a_body(extra: bytes) -> None:
    seen: list[Request] = []
    server_end, client = pair()
    task = asyncio.create_task(serve_http1(server_end, _upgrade_handler(seen), Limits(), b""))  # type: ignore[arg-type]
    await client.write(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n" + extra)
    out = await read_all(client)
    assert out.startswith(b"HTTP/1.1 400 ") and b"upgrade" in out
    assert seen == []
    await asyncio.wait_for(task, 5)


async def test_server_keeps_the_connection_after_a_refused_upgrade() -> None:
    seen: list[Request] = []
    server_end, client = pair()
    task = asyncio.create_task(serve_http1(server_end, _upgrade_handler(seen), Limits(), b""))  # type: ignore[arg-type]
    await client.write(UPGRADE_HEAD.replace(b"/ws", b"/no") + b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
    out = await read_until(client, b"plain None")
    assert out.count(b"HTTP/1.1 200 ") == 2 and b"plain websocket" in out
    await client.write_eof()
    await asyncio.wait_for(task, 5)


async def test_http10_upgrade_headers_are_stripped_as_before() -> None:
    seen: list[Request] = []
    server_end, client = pair()
    task = asyncio.create_task(serve_http1(server_end, _upgrade_handler(seen), Limits(), b""))  # type: ignore[arg-type]
    await client.write(UPGRADE_HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"))
    out = await read_all(client)
    assert out.startswith(b"HTTP/1.1 200 ") and b"plain None" in out
    await asyncio.wait_for(task, 5)


# ------------------------------------------------------------------------------------------ upstream


class Collect:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.started = self.ended = False

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status, self.headers, self.started = status, headers, True

    async def write(self, data: bytes) -> None:
        self.body += data

    async def end(self, trailers: list[tuple[str, str]] | None = None) -> None:
        self.ended = True


def _req() -> Request:
    return Request("GET", "/ws", "svc", [("sec-websocket-key", "k")], has_body=False, upgrade="websocket")


async def test_upstream_switch_returns_headers_and_buffered_bytes() -> None:
    ours, backend = pair()
    up = Http1Upstream(ours)
    writer = Collect()
    task = asyncio.create_task(up.exchange_upgrade(_req(), "svc", _req().headers, writer))
    head = await read_until(backend, b"\r\n\r\n")
    assert head.startswith(b"GET /ws HTTP/1.1\r\n")
    assert b"connection: upgrade\r\n" in head and b"upgrade: websocket\r\n" in head
    assert b"sec-websocket-key: k\r\n" in head
    await backend.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Accept: a\r\n\r\nframe")
    status, headers, buffered = await asyncio.wait_for(task, 5)
    assert status == 101 and buffered == b"frame"
    assert headers is not None and ("sec-websocket-accept", "a") in headers
    assert not writer.started and not up.reusable


async def test_upstream_non_101_is_streamed_and_never_reusable() -> None:
    ours, backend = pair()
    up = Http1Upstream(ours)
    writer = Collect()
    task = asyncio.create_task(up.exchange_upgrade(_req(), "svc", _req().headers, writer))
    await read_until(backend, b"\r\n\r\n")
    await backend.write(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope")
    status, headers, buffered = await asyncio.wait_for(task, 5)
    assert (status, headers, buffered) == (426, None, b"")
    assert writer.status == 426 and bytes(writer.body) == b"nope" and writer.ended
    assert not up.reusable
