"""The waypoint's upstream HTTP/1.1 exchange without sockets (`waypoint.h1exchange`): request bytes, response
events and connection reuse, on the fast path and through h11, tabled."""

from __future__ import annotations

from typing import Any

import h11
import pytest

from ambient.waypoint.errors import UpstreamError
from ambient.waypoint.h1exchange import (
    NEED_DATA,
    BodyChunk,
    ResponseEnd,
    ResponseHead,
    UpstreamExchange,
    request_headers,
)

HOST = "reviews.shop.svc.cluster.local"


def exchange(method: str = "GET", *, headers: list[tuple[str, str]] | None = None, content_length: int | None = None,
             has_body: bool = False, conn: h11.Connection | None = None) -> UpstreamExchange:
    return UpstreamExchange(conn or h11.Connection(h11.CLIENT), method, "/r?x=1", HOST, headers or [],
                            content_length=content_length, has_body=has_body, max_head=8192)


def run(ex: UpstreamExchange, pieces: list[bytes]) -> list[Any]:
    """Feed `pieces` (b"" = the upstream closed) whenever the exchange needs data; the events it gave."""
    events: list[Any] = []
    feed = list(pieces)
    while True:
        ev = ex.next_event()
        if ev is NEED_DATA:
            assert feed, f"needs more data after {events}"
            ex.receive(feed.pop(0))
            continue
        events.append(ev)
        if isinstance(ev, ResponseEnd):
            return events


def test_request_headers_put_host_first_drop_te_and_frame_the_body() -> None:
    given = [("te", "trailers"), ("x-a", "1")]
    assert request_headers(HOST, given, 5, True) == [("host", HOST), ("x-a", "1"), ("content-length", "5")]
    assert request_headers(HOST, given, None, True) == [("host", HOST), ("x-a", "1"),
                                                        ("transfer-encoding", "chunked")]
    assert request_headers(HOST, given, None, False) == [("host", HOST), ("x-a", "1")]


def test_bodiless_request_is_written_by_the_fast_path() -> None:
    ex = exchange(headers=[("x-a", "1")])
    assert ex.fast
    head = ex.start()
    assert head.startswith(b"GET /r?x=1 HTTP/1.1\r\n") and head.endswith(b"\r\n\r\n")
    assert head.lower().index(b"host: " + HOST.encode()) < head.lower().index(b"x-a: 1")


@pytest.mark.parametrize(("method", "pieces", "events", "reusable"), [
    # plain answers: parsed without h11, in any split
    ("GET", [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"],
     [ResponseHead(200, [("content-length", "5")]), BodyChunk(b"hello"), ResponseEnd(None)], True),
    ("GET", [b"HTTP/1.1 200 OK\r\nContent-", b"Length: 5\r\n\r\nhe", b"llo"],
     [ResponseHead(200, [("content-length", "5")]), BodyChunk(b"he"), BodyChunk(b"llo"), ResponseEnd(None)], True),
    ("HEAD", [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"],
     [ResponseHead(200, [("content-length", "5")]), ResponseEnd(None)], True),
    ("GET", [b"HTTP/1.1 204 No Content\r\n\r\n"], [ResponseHead(204, []), ResponseEnd(None)], True),
    # bytes nobody asked for: out of sync, not reused
    ("GET", [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"],
     [ResponseHead(200, [("content-length", "2")]), BodyChunk(b"ok"), ResponseEnd(None)], False),
    # not plain: h11 takes the response over from its first byte
    ("GET", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n"],
     [ResponseHead(200, [("transfer-encoding", "chunked")]), BodyChunk(b"abc"), ResponseEnd([("x-t", "1")])], True),
    ("GET", [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close", b""],
     [ResponseHead(200, [("connection", "close")]), BodyChunk(b"until close"), ResponseEnd(None)], False),
])
def test_response_events_and_reuse(method: str, pieces: list[bytes], events: list[Any], reusable: bool) -> None:
    ex = exchange(method)
    ex.start()
    got = run(ex, pieces)
    # h11 may deliver a body in other chunks than the fast path: compare the bytes, then the framing
    assert [e for e in got if not isinstance(e, BodyChunk)] == [e for e in events if not isinstance(e, BodyChunk)]
    assert b"".join(e.data for e in got if isinstance(e, BodyChunk)) == b"".join(
        e.data for e in events if isinstance(e, BodyChunk))
    assert ex.got_response and ex.status == events[0].status
    assert ex.reusable() is reusable


def test_a_reused_connection_serves_the_next_exchange_after_h11_took_over() -> None:
    conn = h11.Connection(h11.CLIENT)
    first = exchange(conn=conn)
    first.start()
    run(first, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"])
    assert first.reusable() and conn.our_state is h11.IDLE
    second = exchange(conn=conn)
    assert second.fast  # h11 has nothing pending: the fast path again
    second.start()
    assert run(second, [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"])[0] == ResponseHead(
        404, [("content-length", "0")])


@pytest.mark.parametrize(("pieces", "status", "flags", "message"), [
    ([b""], 502, "UC", "closed the connection before the response was complete"),
    ([b"HTTP/1.1 200 OK\r\nCont", b""], 502, "UPE", "malformed HTTP/1.1"),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", b""], 502, "UPE", "without sending complete message"),
    ([b"garbage\r\n\r\n"], 502, "UPE", "malformed HTTP/1.1"),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", b""], 502, "UPE", "malformed HTTP/1.1"),
])
def test_broken_responses_are_upstream_errors(pieces: list[bytes], status: int, flags: str, message: str) -> None:
    ex = exchange()
    ex.start()
    with pytest.raises(UpstreamError) as err:
        run(ex, pieces)
    assert (err.value.status, err.value.flags) == (status, flags)
    assert message in err.value.message
    assert not ex.reusable()


@pytest.mark.parametrize(("content_length", "framing", "body_bytes", "end_bytes"), [
    (3, b"content-length: 3", b"abc", b""),
    (None, b"transfer-encoding: chunked", b"3\r\nabc\r\n", b"0\r\n\r\n"),
])
def test_a_request_body_goes_through_h11_with_its_framing(content_length: int | None, framing: bytes,
                                                           body_bytes: bytes, end_bytes: bytes) -> None:
    ex = exchange("POST", content_length=content_length, has_body=True)
    assert not ex.fast
    head = ex.start()
    assert head.startswith(b"POST /r?x=1 HTTP/1.1\r\n") and framing in head.lower()
    assert ex.body(b"abc") == body_bytes
    assert ex.end_of_body() == end_bytes
    events = run(ex, [b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"])
    assert events == [ResponseHead(201, [("content-length", "0")]), ResponseEnd(None)]
    assert ex.reusable()


def test_a_head_h11_refuses_to_write_is_a_400() -> None:
    with pytest.raises(UpstreamError) as err:
        exchange("POST", headers=[("x-bad", "a\r\nb")], has_body=True)
    assert (err.value.status, err.value.flags) == (400, "DPE")
