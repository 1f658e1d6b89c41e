"""The HTTP/1.1 fast path (`ambient.waypoint.h1fast` used by `http1`) against h11, over in-memory streams.

Plain messages must produce the bytes h11 would produce; anything else must be handed to h11 (same
answers as before the fast path existed); upstream connections stay reusable exactly when in sync."""

from __future__ import annotations

import asyncio

import h11
import pytest
from memstream import End, pair

from ambient.waypoint import h1fast
from ambient.waypoint.errors import UpstreamError
from ambient.waypoint.http1 import Http1Upstream, serve_http1
from ambient.waypoint.messages import Limits, Request, ResponseWriter, reason_phrase

pytestmark = pytest.mark.timeout(30)


async def read_all(end: End, limit: float = 5.0) -> bytes:
    out = bytearray()
    async with asyncio.timeout(limit):
        while data := await end.read():
            out += data
    return bytes(out)


Response = tuple[int, list[tuple[str, str]], list[bytes], list[tuple[str, str]] | None]


def h11_reference(raw_request: bytes, response: Response) -> bytes:
    """What an h11 server writes for `response` to the (first) request in `raw_request`."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw_request)
    assert isinstance(conn.next_event(), h11.Request)
    status, headers, chunks, trailers = response
    out = conn.send(h11.Response(status_code=status, headers=headers, reason=reason_phrase(status))) or b""
    for c in chunks:
        out += conn.send(h11.Data(data=c)) or b""
    return out + (conn.send(h11.EndOfMessage(headers=trailers or [])) or b"")


def responder(response: Response, seen: list[Request] | None = None):  # type: ignore[no-untyped-def]
    async def handler(req: Request, writer: ResponseWriter) -> None:
        body = bytearray()
        while chunk := await req.body.read():
            body += chunk
        if seen is not None:
            seen.append(req)
        status, headers, chunks, trailers = response
        await writer.start(status, headers)
        for c in chunks:
            await writer.write(c)
        await writer.end(trailers)
    return handler


async def serve(raw: bytes, handler, limits: Limits | None = None) -> bytes:  # type: ignore[no-untyped-def]
    server_end, client = pair()
    task = asyncio.create_task(serve_http1(server_end, handler, limits or Limits(), b""))
    await client.write(raw)
    await client.write_eof()
    out = await read_all(client)
    await asyncio.wait_for(task, 5)
    return out


# ------------------------------------------------------------------------------------------- downstream

RESPONSES: dict[str, Response] = {
    "length": (200, [("content-type", "text/plain"), ("content-length", "5")], [b"hel", b"lo"], None),
    "chunked-trailers": (200, [("content-type", "application/grpc")], [b"abc", b"de"], [("grpc-status", "0")]),
    "no-content": (204, [("x-a", "b")], [], None),
    "empty-chunked": (503, [], [], None),
}


@pytest.mark.parametrize("name", sorted(RESPONSES))
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_plain_request_gets_exactly_what_h11_writes(name: str, method: str) -> None:
    raw = f"{method} /p?q=1 HTTP/1.1\r\nHost: svc\r\nX-Trace:  a b \r\n\r\n".encode()
    response = RESPONSES[name]
    if method == "HEAD":
        response = (response[0], response[1], [], None)
    assert h1fast.parse_request_head(raw[:-4]) is not None  # the fast path's, not h11's
    seen: list[Request] = []
    out = await serve(raw, responder(response, seen))
    assert out == h11_reference(raw, response)
    assert (seen[0].method, seen[0].target, seen[0].authority) == (method, "/p?q=1", "svc")
    assert seen[0].headers == [("x-trace", "a b")]


async def test_keep_alive_pipelining_and_fallback_to_h11_in_the_middle() -> None:
    raw = (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
           b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
           b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"  # h11 from here
           b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n")
    seen: list[Request] = []
    out = await serve(raw, responder(RESPONSES["length"], seen))
    assert out.count(b"HTTP/1.1 200 ") == 4
    assert [(r.method, r.target) for r in seen] == [("GET", "/a"), ("POST", "/b"), ("PUT", "/c"), ("GET", "/d")]


async def test_head_ended_by_bare_lf_is_served_by_h11_without_waiting() -> None:
    out = await serve(b"GET / HTTP/1.1\nHost: x\n\n", responder(RESPONSES["length"]), Limits(header_timeout=30))
    assert out.startswith(b"HTTP/1.1 200 ")


async def test_request_body_in_pieces_and_too_long_unread_body_closes() -> None:
    seen: list[Request] = []
    server_end, client = pair()
    task = asyncio.create_task(serve_http1(server_end, responder(RESPONSES["length"], seen), Limits(), b""))
    await client.write(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nab")
    await asyncio.sleep(0.01)
    await client.write(b"cdef")
    await client.write_eof()
    assert (await read_all(client)).startswith(b"HTTP/1.1 200 ")
    await asyncio.wait_for(task, 5)
    assert seen[0].content_length == 6

    async def ignore_body(req: Request, writer: ResponseWriter) -> None:
        await writer.start(200, [("content-length", "0")])
        await writer.end()

    raw = (b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" + b"x" * 200000
           + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    out = await serve(raw, ignore_body)
    assert out.count(b"HTTP/1.1 200 ") == 1  # the unread body was too large to drain: closed, not reused


async def test_client_closing_mid_body_and_wrong_response_length_close_the_connection() -> None:
    out = await serve(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
                      responder(RESPONSES["length"]))
    assert out.startswith(b"HTTP/1.1 400 ") and b"connection: close" in out

    short: Response = (200, [("content-length", "10")], [b"abc"], None)
    out = await serve(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n", responder(short))
    assert out == b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"  # truncated, then closed


@pytest.mark.parametrize("head", [
    b"GET /x HTTP/1.0\r\nHost: x",
    b"GET http://x/ HTTP/1.1\r\nHost: x",
    b"OPTIONS * HTTP/1.1\r\nHost: x",
    b"GET /x HTTP/1.1\r\nHost: x\r\nHost: y",
    b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close",
    b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked",
    b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1",
    b"GET /x HTTP/1.1\r\nHost: x\r\nUpgrade: h2c",
    b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1",
    b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: +1",
    b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded",
    b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\x00b",
    b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\nX-B: b",
    b"GET /x HTTP/1.1\r\nX-A: b",
    b"CONNECT /x HTTP/1.1\r\nHost: x",
])
def test_unusual_request_heads_are_left_to_h11(head: bytes) -> None:
    assert h1fast.parse_request_head(head) is None


def test_plain_request_head_is_parsed_like_h11() -> None:
    head = b"GET /a%20b HTTP/1.1\r\nHost: svc:80\r\nX-Obs: caf\xe9\r\nConnection: Keep-Alive\r\nContent-Length: 0"
    parsed = h1fast.parse_request_head(head)
    assert parsed is not None
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head + b"\r\n\r\n")
    ref = conn.next_event()
    assert (parsed.method, parsed.target) == (ref.method.decode(), ref.target.decode())
    assert parsed.headers == [(k.decode(), v.decode("latin-1")) for k, v in ref.headers]
    assert (parsed.host, parsed.content_length) == ("svc:80", 0)


def test_headers_h11_would_refuse_to_send_are_refused() -> None:
    assert h1fast.response_head(200, [("x-a", "b\r\nInjected: 1")], False) is None
    assert h1fast.response_head(200, [("bad name", "v")], False) is None
    assert h1fast.response_head(200, [("content-length", "1"), ("content-length", "2")], False) is None
    assert h1fast.response_head(100, [], False) is None
    assert h1fast.request_head("GET", "/a b", [("host", "x")]) is None
    assert h1fast.request_head("G T", "/", [("host", "x")]) is None
    assert h1fast.request_head("GET", "/", [("host", "x"), ("x-a", " padded")]) is None


# --------------------------------------------------------------------------------------------- upstream


class Collect:
    """A `ResponseWriter` that keeps what it was given."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.trailers: list[tuple[str, str]] | None = None
        self.started = self.ended = False

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status, self.headers, self.started = status, headers, True

    async def write(self, data: bytes) -> None:
        self.body += data

    async def end(self, trailers: list[tuple[str, str]] | None = None) -> None:
        self.trailers, self.ended = trailers, True


async def backend_answers(backend: End, *answers: bytes) -> None:
    """For each request head that arrives, send the next answer."""
    buf = bytearray()
    for answer in answers:
        while b"\r\n\r\n" not in buf:
            buf += await backend.read()
        del buf[:buf.index(b"\r\n\r\n") + 4]
        await backend.write(answer)


def get(target: str = "/r", method: str = "GET") -> Request:
    return Request(method, target, "svc", [("x-a", "1")], has_body=False)


@pytest.mark.parametrize("answer,body,reusable", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", b"abc", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n", b"abc", True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz", b"z", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab", b"ab", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nab", b"ab", False),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
])
async def test_upstream_response_kinds(answer: bytes, body: bytes, reusable: bool) -> None:
    ours, backend = pair()
    task = asyncio.create_task(backend_answers(backend, answer))
    up = Http1Upstream(ours)
    w = Collect()
    assert await up.exchange(get(), "svc", [("x-a", "1")], w) in (200, 204)
    await task
    assert bytes(w.body) == body and w.ended
    assert up.reusable is reusable
    assert bytes(ours.sent) == b"GET /r HTTP/1.1\r\nhost: svc\r\nx-a: 1\r\n\r\n"  # what h11 would write


async def test_upstream_read_until_close_response_goes_to_h11() -> None:
    ours, backend = pair()
    task = asyncio.create_task(backend_answers(backend, b"HTTP/1.1 200 OK\r\n\r\nall of it"))
    up = Http1Upstream(ours)
    w = Collect()
    exchange = asyncio.create_task(up.exchange(get(), "svc", [], w))
    await task
    backend.close()
    assert await exchange == 200
    assert bytes(w.body) == b"all of it" and not up.reusable


async def test_upstream_connection_is_reused_in_sync_and_head_has_no_body() -> None:
    ours, backend = pair()
    task = asyncio.create_task(backend_answers(
        backend, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",  # HEAD: the length describes a GET
        b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx"))
    up = Http1Upstream(ours)
    for req, status, body in ((get("/1"), 200, b"abcd"), (get("/2", "HEAD"), 200, b""), (get("/3"), 201, b"x")):
        w = Collect()
        assert await up.exchange(req, "svc", [], w) == status
        assert bytes(w.body) == body and up.reusable
    await task


async def test_upstream_closed_before_answering_is_replayable_and_extra_bytes_are_not_reused() -> None:
    ours, backend = pair()
    backend.close()
    with pytest.raises(UpstreamError) as info:
        await Http1Upstream(ours).exchange(get(), "svc", [], Collect())
    assert info.value.before_response and info.value.flags == "UC"

    ours, backend = pair()
    task = asyncio.create_task(backend_answers(backend, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxJUNK"))
    up = Http1Upstream(ours)
    assert await up.exchange(get(), "svc", [], Collect()) == 200
    await task
    assert not up.reusable


async def test_upstream_truncated_body_is_an_error_after_the_response_started() -> None:
    ours, backend = pair()
    task = asyncio.create_task(backend_answers(backend, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
    up = Http1Upstream(ours)
    w = Collect()
    exchange = asyncio.create_task(up.exchange(get(), "svc", [], w))
    await task
    backend.close()
    with pytest.raises(UpstreamError) as info:
        await exchange
    assert w.started and not w.ended and not info.value.before_response and not up.reusable


def _h11_request(head: bytes) -> h11.Request | None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head + b"\r\n\r\n")
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Request) else None


def test_fast_parser_never_accepts_what_h11_rejects_or_reads_differently() -> None:
    import random

    rng = random.Random(8)
    base = b"POST /p?a=1 HTTP/1.1\r\nHost: svc\r\nX-A: v  w\r\nContent-Length: 12\r\nConnection: keep-alive"
    alphabet = b" \t\r\n:\x00\x7f\x80\xff,/aZ0-;\"\\"
    accepted = 0
    for _ in range(3000):
        head = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(head) + 1)
            if rng.random() < 0.3 and pos < len(head):
                del head[pos]
            else:
                head[pos:pos] = bytes([rng.choice(alphabet)])
        parsed = h1fast.parse_request_head(bytes(head))
        if parsed is None:
            continue
        accepted += 1
        ref = _h11_request(bytes(head))
        assert ref is not None, bytes(head)
        assert (parsed.method, parsed.target) == (ref.method.decode("latin-1"), ref.target.decode("latin-1"))
        assert parsed.headers == [(k.decode("latin-1"), v.decode("latin-1")) for k, v in ref.headers]
    assert accepted > 100  # the mutations also produce plain heads, not only rejected ones


def test_fast_response_parser_never_accepts_what_h11_rejects_or_reads_differently() -> None:
    import random

    rng = random.Random(9)
    base = b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nX-A: v  w\r\nContent-Length: 12"
    alphabet = b" \t\r\n:\x00\x7f\x80\xff,/aZ0-1;"
    accepted = 0
    for _ in range(3000):
        head = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(head) + 1)
            if rng.random() < 0.3 and pos < len(head):
                del head[pos]
            else:
                head[pos:pos] = bytes([rng.choice(alphabet)])
        parsed = h1fast.parse_response_head(bytes(head))
        if parsed is None:
            continue
        accepted += 1
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(bytes(head) + b"\r\n\r\n")
        ref = conn.next_event()  # raises if h11 rejects what the fast parser took
        assert isinstance(ref, h11.Response), bytes(head)
        assert parsed.status == ref.status_code
        assert parsed.headers == [(k.decode("latin-1"), v.decode("latin-1")) for k, v in ref.headers]
    assert accepted > 100


@pytest.mark.parametrize(("status", "line"), [
    # Envoy's HTTP/1.1 codec writes Http::CodeUtility::toString(code) as the reason phrase
    (200, b"HTTP/1.1 200 OK\r\n"), (204, b"HTTP/1.1 204 No Content\r\n"), (403, b"HTTP/1.1 403 Forbidden\r\n"),
    (413, b"HTTP/1.1 413 Payload Too Large\r\n"), (503, b"HTTP/1.1 503 Service Unavailable\r\n"),
    (418, b"HTTP/1.1 418 Unknown\r\n"), (599, b"HTTP/1.1 599 Unknown\r\n"),
])
async def test_status_line_has_envoys_reason_phrase_on_both_paths(status: int, line: bytes) -> None:
    response: Response = (status, [("content-length", "0")], [], None)
    fast = await serve(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", responder(response))
    # absolute-form is not plain: h11 parses it and `_Writer` answers
    slow = await serve(b"GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n", responder(response))
    assert fast.startswith(line) and slow.startswith(line)
    assert fast == slow


async def test_error_answers_carry_the_reason_phrase_on_both_paths() -> None:
    fast = await serve(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
                       responder(RESPONSES["length"]))
    slow = await serve(b"POST http://x/u HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
                       responder(RESPONSES["length"]))
    assert fast.startswith(b"HTTP/1.1 400 Bad Request\r\n") and slow.startswith(b"HTTP/1.1 400 Bad Request\r\n")
