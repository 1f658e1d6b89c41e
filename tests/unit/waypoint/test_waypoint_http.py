"""The waypoint's HTTP/1.1 and HTTP/2 servers against malformed and abusive input, over in-memory streams
(no sockets): every bad connection is answered or closed, the server returns, good traffic works."""

from __future__ import annotations

import asyncio
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame
from memstream import End, pair

from ambient.waypoint.http1 import serve_http1
from ambient.waypoint.http2 import serve_http2
from ambient.waypoint.messages import H2_PREFACE, Limits, Request, ResponseWriter, respond_text

pytestmark = pytest.mark.timeout(30)


async def app(req: Request, writer: ResponseWriter) -> None:
    body = bytearray()
    while chunk := await req.body.read():
        body += chunk
    await respond_text(writer, 200, f"{req.method} {req.target} {len(body)}")


async def read_all(end: End, limit: float = 5.0) -> bytes:
    out = bytearray()
    async with asyncio.timeout(limit):
        while data := await end.read():
            out += data
    return bytes(out)


async def h1_exchange(raw: bytes, limits: Limits | None = None) -> bytes:
    server_end, client = pair()
    task = asyncio.create_task(serve_http1(server_end, app, limits or Limits(), b""))
    await client.write(raw)
    out = await read_all(client)  # returns when the server ended its side
    await client.write_eof()
    await asyncio.wait_for(task, 5)
    return out


# --------------------------------------------------------------------------------------------- HTTP/1.1


async def test_h1_keep_alive_and_pipelining() -> None:
    raw = (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
           b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
           b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out = await h1_exchange(raw)
    assert out.count(b"HTTP/1.1 200") == 3
    assert out.index(b"GET /a 0") < out.index(b"POST /b 3") < out.index(b"GET /c 0")


async def test_h1_chunked_request_body() -> None:
    raw = (b"PUT /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert b"PUT /u 5" in await h1_exchange(raw)


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET /x HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /x HTTP/1.1\r\n\r\n",  # no Host
    b"GET /x HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET x HTTP/1.1\r\nHost: x\r\n\r\n",  # not origin-form
    b"\x16\x03\x01\x00\xa5\x01\x00\x00",  # a TLS ClientHello inside the tunnel
], ids=["garbage", "version", "no-host", "bad-header", "double-length", "relative-target", "tls"])
async def test_h1_malformed_request_gets_400_and_close(raw: bytes) -> None:
    out = await h1_exchange(raw)
    assert out[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 505"), out[:80]


async def test_h1_bad_chunked_body_answers_400() -> None:
    raw = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"
    out = await h1_exchange(raw)
    assert out.startswith(b"HTTP/1.1 400 ")


async def test_h1_oversized_headers_get_431_and_close() -> None:
    raw = b"GET /x HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(80))
    out = await h1_exchange(raw + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431 ")


async def test_h1_slow_head_is_reaped() -> None:
    server_end, client = pair()
    task = asyncio.create_task(serve_http1(server_end, app, Limits(header_timeout=0.2), b""))
    await client.write(b"GET /x HTTP/1.1\r\nHo")  # and never finishes
    out = await read_all(client)
    assert out.startswith(b"HTTP/1.1 408 ")
    await asyncio.wait_for(task, 5)


async def test_h1_idle_keepalive_closes() -> None:
    server_end, client = pair()
    task = asyncio.create_task(serve_http1(server_end, app, Limits(idle_timeout=0.2), b""))
    assert await read_all(client) == b""
    await asyncio.wait_for(task, 5)


async def test_h1_handler_crash_is_500_not_a_dead_server() -> None:
    async def boom(req: Request, writer: ResponseWriter) -> None:
        raise RuntimeError("bug")

    server_end, client = pair()
    task = asyncio.create_task(serve_http1(server_end, boom, Limits(), b""))
    await client.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_all(client)).startswith(b"HTTP/1.1 500 ")
    await asyncio.wait_for(task, 5)


# ----------------------------------------------------------------------------------------------- HTTP/2


class H2Client:
    def __init__(self) -> None:
        self.server_end, self.end = pair()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()

    def start(self, limits: Limits | None = None) -> asyncio.Task[Any]:
        return asyncio.create_task(serve_http2(self.server_end, app, limits or Limits(), b""))

    async def flush(self) -> None:
        await self.end.write(self.conn.data_to_send())

    def get(self, path: str, end: bool = True, extra: list[tuple[str, str]] | None = None) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                     (":authority", "x"), *(extra or [])], end_stream=end)
        return sid

    async def events(self, until: Any, limit: float = 5.0) -> list[Any]:
        """Collect events until `until(events)` holds or the server closes."""
        got: list[Any] = []
        async with asyncio.timeout(limit):
            while not until(got):
                data = await self.end.read()
                if not data:
                    got.append("EOF")
                    break
                try:
                    got += self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    got.append("PROTOCOL_ERROR")
                    break
                out = self.conn.data_to_send()
                if out and not self.end.tx.closed:
                    await self.end.write(out)
        return got


def frame_types(raw: bytes) -> list[int]:
    """Frame types in a server byte stream (the server sends no preface, only frames)."""
    types, i = [], 0
    while i + 9 <= len(raw):
        length = int.from_bytes(raw[i : i + 3], "big")
        types.append(raw[i + 3])
        i += 9 + length
    return types


def goaway(events: list[Any]) -> h2.events.ConnectionTerminated | None:
    return next((e for e in events if isinstance(e, h2.events.ConnectionTerminated)), None)


async def test_h2_requests_and_responses() -> None:
    c = H2Client()
    task = c.start()
    sids = [c.get(f"/p{i}") for i in range(5)]
    await c.flush()
    evs = await c.events(lambda e: sum(isinstance(x, h2.events.StreamEnded) for x in e) == 5)
    bodies: dict[int, bytes] = {}
    for e in evs:
        if isinstance(e, h2.events.DataReceived):
            bodies[e.stream_id] = bodies.get(e.stream_id, b"") + e.data
    assert {bodies[s] for s in sids} == {f"GET /p{i} 0".encode() for i in range(5)}
    await c.end.write_eof()
    await asyncio.wait_for(task, 5)


async def test_h2_invalid_frames_get_goaway() -> None:
    c = H2Client()
    task = c.start()
    await c.flush()
    # a DATA frame on stream 0 is a connection error
    await c.end.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
    evs = await c.events(lambda e: goaway(e) is not None or "EOF" in e)
    term = goaway(evs)
    assert term is not None and term.error_code == ErrorCodes.PROTOCOL_ERROR
    await asyncio.wait_for(task, 5)


async def test_h2_bad_preface_closes() -> None:
    server_end, client = pair()
    task = asyncio.create_task(serve_http2(server_end, app, Limits(), b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"))
    out = await read_all(client)
    assert GoAwayFrame.type in frame_types(out)  # answered with GOAWAY, then closed
    await asyncio.wait_for(task, 5)


async def test_h2_rapid_reset_gets_goaway_enhance_your_calm() -> None:
    c = H2Client()
    task = c.start(Limits(max_resets=50, reset_window=10.0))
    for _ in range(80):
        sid = c.get("/", end=False)
        c.conn.reset_stream(sid, ErrorCodes.CANCEL)
    await c.flush()
    evs = await c.events(lambda e: goaway(e) is not None or "EOF" in e)
    term = goaway(evs)
    assert term is not None and term.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    await asyncio.wait_for(task, 5)


async def test_h2_oversized_header_list_is_refused() -> None:
    c = H2Client()
    task = c.start(Limits(max_header_bytes=16 * 1024))
    await c.flush()
    await c.events(lambda e: any(isinstance(x, h2.events.RemoteSettingsChanged) for x in e))
    c.get("/", extra=[(f"x-{i}", "a" * 1000) for i in range(40)])
    await c.flush()
    evs = await c.events(lambda e: goaway(e) is not None or "EOF" in e
                         or any(isinstance(x, h2.events.StreamReset) for x in e))
    term = goaway(evs)
    assert term is not None or any(isinstance(x, h2.events.StreamReset) for x in evs)
    if term is not None:
        assert term.error_code in (ErrorCodes.PROTOCOL_ERROR, ErrorCodes.ENHANCE_YOUR_CALM,
                                   ErrorCodes.COMPRESSION_ERROR)
    await c.end.write_eof()
    await asyncio.wait_for(task, 5)


async def test_h2_continuation_flood_is_cut_off() -> None:
    server_end, client = pair()
    task = asyncio.create_task(serve_http2(server_end, app, Limits(), b""))
    await client.write(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # preface + empty SETTINGS
    head = HeadersFrame(1)
    head.data = b"\x82"  # :method GET (indexed), the rest never comes
    await client.write(head.serialize())
    frames = bytearray()
    for _ in range(500):
        cont = ContinuationFrame(1)
        cont.data = b"\x40\x01x\x01y" * 2000  # literal headers x: y, ~10 KB per frame
        frames += cont.serialize()
    await client.write(bytes(frames))
    out = await read_all(client)
    assert GoAwayFrame.type in frame_types(out)  # SETTINGS then GOAWAY, and the server is done
    await asyncio.wait_for(task, 5)


async def test_h2_stream_reset_cancels_only_that_request() -> None:
    c = H2Client()
    task = c.start()
    slow = c.get("/slow", end=False)  # body never ends: the handler waits
    await c.flush()
    await asyncio.sleep(0.05)
    c.conn.reset_stream(slow, ErrorCodes.CANCEL)
    ok = c.get("/ok")
    await c.flush()
    evs = await c.events(lambda e: any(isinstance(x, h2.events.StreamEnded) and x.stream_id == ok for x in e))
    assert any(isinstance(x, h2.events.DataReceived) and x.data == b"GET /ok 0" for x in evs)
    await c.end.write_eof()
    await asyncio.wait_for(task, 5)


async def test_h2_idle_connection_is_closed() -> None:
    c = H2Client()
    task = c.start(Limits(idle_timeout=0.2))
    await c.flush()
    evs = await c.events(lambda e: goaway(e) is not None or "EOF" in e)
    assert goaway(evs) is not None or "EOF" in evs
    await asyncio.wait_for(task, 5)
