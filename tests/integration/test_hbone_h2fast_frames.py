"""Differential tests of `h2fast.receive_whole_frame`, the fast path for the frames every tunnel has
(CONNECT request HEADERS on the server, response HEADERS on the client, DATA with END_STREAM on both).

The same frames go to a plain h2 connection (`receive_data`) and to an identically configured one fed
through the fast path (h2's `receive_data` only where the fast path declines). After every frame both
must have produced the same events (types, fields, header tuple classes), the same state (connection and
stream state machines, stream table incl. closed streams, highest stream ids, HPACK dynamic table,
flow-control windows, content-length tracking) and the same bytes to send; a frame h2 rejects must raise
the same exception (type and message) on both, after queueing the same GOAWAY. Plain frames must take the
fast path (asserted), so a fast path that silently declines everything fails too.

The outbound side (`h2fast.send_headers`, `h2fast.end_stream`) is compared the same way against h2's
`send_headers` / `end_stream`: same bytes queued (HPACK encoder table included), same state, same errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hbone_fakes import FakeTransport
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, RstStreamFrame, SettingsFrame

from ambient.hbone import h2fast
from ambient.hbone.connection import HboneConnection
from ambient.hbone.protocol import build_connect_headers

pytestmark = pytest.mark.timeout(60)
_SC = h2.settings.SettingCodes
AUTH = "10.0.0.1:80"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _h2(client_side: bool, max_streams: int = 200) -> h2.connection.H2Connection:
    """Configured like HboneConnection configures h2 (settings current at once, big frames)."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=client_side, header_encoding="utf-8", validate_outbound_headers=False))
    values = {_SC.INITIAL_WINDOW_SIZE: 1 << 22, _SC.MAX_FRAME_SIZE: 1 << 20, _SC.MAX_HEADER_LIST_SIZE: 4096}
    if not client_side:
        values[_SC.MAX_CONCURRENT_STREAMS] = max_streams
    c.local_settings = h2.settings.Settings(client=client_side, initial_values=values)
    c.max_inbound_frame_size = 1 << 20
    c.decoder.max_header_list_size = 4096
    c.initiate_connection()
    c.data_to_send()
    return c


def _value(v: Any) -> Any:
    if isinstance(v, h2.events.Event):
        return _event(v)
    if isinstance(v, list) and v and isinstance(v[0], tuple):
        return [(type(h).__name__, tuple(h)) for h in v]
    return v


def _event(e: h2.events.Event) -> tuple[str, dict[str, Any]]:
    fields = {k: getattr(e, k) for k in dir(e) if not k.startswith("_") and not callable(getattr(e, k))}
    return type(e).__name__, {k: _value(v) for k, v in sorted(fields.items())}


def _state(c: h2.connection.H2Connection) -> dict[str, Any]:
    return {
        "conn": c.state_machine.state,
        "streams": {
            sid: (s.state_machine.state, s.state_machine.headers_received, s.state_machine.trailers_received,
                  s._inbound_window_manager.current_window_size, s.outbound_flow_control_window,
                  s._expected_content_length, s._actual_content_length, s.request_method, s.closed_by)
            for sid, s in c.streams.items()
        },
        "closed": dict(c._closed_streams),
        "ids": (c.highest_inbound_stream_id, c.highest_outbound_stream_id),
        "hpack": (list(c.decoder.header_table.dynamic_entries), c.decoder.header_table._current_size),
        "window": c._inbound_flow_control_window_manager.current_window_size,
        "out": c.data_to_send(),
    }


def _feed(c: h2.connection.H2Connection, wire: bytes, fast: bool) -> tuple[Any, bool]:
    """(events or the exception, whether the fast path took the frame)."""
    # Any exception must match h2's (type and message): catching everything is the point.
    if fast:
        try:
            events = h2fast.receive_whole_frame(c, memoryview(wire))
        except Exception as exc:
            return (type(exc).__name__, str(exc)), True
        if events is not None:
            return [_event(e) for e in events], True
    try:
        return [_event(e) for e in c.receive_data(wire)], False
    except Exception as exc:
        return (type(exc).__name__, str(exc)), False


def _run(client_side: bool, frames: list[bytes], *, expect_fast: list[bool], max_streams: int = 200,
         setup: Callable[[h2.connection.H2Connection], None] | None = None) -> Any:
    ref, ours = _h2(client_side, max_streams), _h2(client_side, max_streams)
    for c in (ref, ours):
        c.receive_data((b"" if client_side else PREFACE) + bytes(SettingsFrame(0).serialize()))
        if setup is not None:
            setup(c)
        c.data_to_send()
    assert _state(ref) == _state(ours)
    took = []
    result: Any = None
    for wire in frames:
        want, _ = _feed(ref, wire, fast=False)
        got, fast = _feed(ours, wire, fast=True)
        assert got == want
        assert _state(ours) == _state(ref)
        took.append(fast)
        result = got
        if isinstance(got, tuple):  # an error: the connection is over
            break
    assert took == expect_fast[: len(took)] and len(took) == len(expect_fast)
    return result


def _headers(sid: int, headers: list[tuple[Any, Any]], *flags: str, encoder: hpack.Encoder | None = None,
             huffman: bool = False) -> bytes:
    f = HeadersFrame(sid, data=(encoder or hpack.Encoder()).encode(headers, huffman=huffman))
    f.flags.add("END_HEADERS")
    for flag in flags:
        f.flags.add(flag)
    return bytes(f.serialize())


def _data(sid: int, payload: bytes, *flags: str, pad: int = 0) -> bytes:
    f = DataFrame(sid, data=payload, pad_length=pad)
    for flag in flags:
        f.flags.add(flag)
    return bytes(f.serialize())


CONNECT = [(":method", "CONNECT"), (":authority", AUTH)]
CONNECT_FULL = build_connect_headers(AUTH, baggage={"k8s.cluster.name": "c1"}, forwarded='for="10.0.0.2:4000"')


# -- server: CONNECT requests ------------------------------------------------------------------------------
def test_server_connect_requests_sharing_one_hpack_table() -> None:
    enc = hpack.Encoder()  # one encoder for all: later blocks index entries the earlier ones added
    frames = [_headers(sid, CONNECT_FULL, encoder=enc) for sid in (1, 3, 5)]
    frames.append(_headers(7, CONNECT_FULL, encoder=enc, huffman=True))
    frames += [_data(1, b"", "END_STREAM"), _data(3, b"last bytes", "END_STREAM")]
    events = _run(False, frames, expect_fast=[True] * 6)
    assert events[0][0] == "DataReceived" and events[1][0] == "StreamEnded"


# (headers, whether the fast path validates them itself) -- h2's own pipeline decides the rest, accepting
# or raising; both must match plain h2 exactly.
REQUESTS: list[tuple[list[tuple[Any, Any]], bool]] = [
    (CONNECT, True),
    ([(":authority", AUTH), (":method", "CONNECT"), ("x-empty", "")], True),
    ([*CONNECT, ("X-Upper", "1")], False),  # uppercase name: h2 raises
    ([*CONNECT, ("x-bad", "a\x00b")], False),  # NUL: h2 raises
    ([*CONNECT, ("x-ctl", "a\x01b")], False),  # a control character h2 accepts
    ([*CONNECT, ("x-tab", "a\tb")], False),  # inner tab: accepted
    ([*CONNECT, ("x-sp", " lead")], False),  # surrounding whitespace: h2 raises
    ([*CONNECT, ("x-utf8", "café")], False),  # non-ASCII: decoded by h2
    ([*CONNECT, ("x:colon", "1")], False),
    ([*CONNECT, ("", "empty name")], False),
    ([*CONNECT, ("te", "gzip")], False),
    ([*CONNECT, ("te", "trailers")], False),
    ([*CONNECT, ("connection", "close")], False),
    ([*CONNECT, ("upgrade", "h2c")], False),
    ([*CONNECT, ("host", AUTH)], False),
    ([*CONNECT, ("host", "10.9.9.9:80")], False),  # host != :authority: h2 raises
    ([*CONNECT, ("cookie", "a=1"), ("x-y", "z"), ("cookie", "b=2")], False),  # recombined by h2
    ([*CONNECT, ("content-length", "abc")], False),
    ([*CONNECT, ("content-length", "0")], False),
    ([*CONNECT, (":path", "/")], False),  # ordinary CONNECT with :path: h2 raises
    ([*CONNECT, (":protocol", "websocket"), (":scheme", "https"), (":path", "/")], False),
    ([(":method", "CONNECT"), ("x-a", "1"), (":authority", AUTH)], False),  # pseudo after regular
    ([(":method", "CONNECT"), (":method", "CONNECT"), (":authority", AUTH)], False),
    ([(":method", "CONNECT"), ("host", AUTH)], False),  # no :authority
    ([(":method", "CONNECT")], False),  # no :authority nor host: h2 raises
    ([(":authority", AUTH)], False),  # no :method
    ([(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", AUTH)], False),
    ([(":method", "GET"), (":authority", AUTH)], False),  # GET without :path: h2 raises
    ([(":method", "CONNECT"), (":authority", AUTH), (":status", "200")], False),
    ([(":method", "CONNECT"), (":authority", AUTH), (":custom", "1")], False),
    ([(":method", "CONNECT"), (":authority", " " + AUTH)], False),
    ([(":status", "200")], False),  # a response sent as a request
    ([(":method", "connect"), (":authority", AUTH)], False),
]


@pytest.mark.parametrize("case", range(len(REQUESTS)))
def test_server_request_header_validation_matches_h2(case: int) -> None:
    headers, plain = REQUESTS[case]
    result = _run(False, [_headers(1, headers)], expect_fast=[True])
    if plain:
        assert result[0][0] == "RequestReceived"
    # _plain_headers may only claim blocks h2 itself accepts unchanged
    if plain:
        h2_flags = h2.utilities.HeaderValidationFlags(False, False, False, False)
        raw = [hpack.HeaderTuple(n.encode(), v.encode()) for n, v in headers]
        assert h2fast._plain_headers(raw, h2_flags)
        assert list(h2.utilities.validate_headers(raw, h2_flags)) == raw


def _rst(sid: int) -> bytes:
    return bytes(RstStreamFrame(sid, error_code=8).serialize())


@pytest.mark.parametrize(
    ("frames", "expect_fast"),
    [
        pytest.param([_headers(1, CONNECT), _headers(1, CONNECT)], [True, False], id="id-reuse-open"),
        pytest.param([_headers(1, CONNECT), _headers(1, CONNECT, "END_STREAM")], [True, False], id="trailers"),
        pytest.param([_headers(3, CONNECT), _headers(1, CONNECT)], [True, False], id="id-too-low"),
        pytest.param([_headers(2, CONNECT)], [False], id="even-id"),
        pytest.param([_headers(1, CONNECT), _rst(1), _headers(1, CONNECT)], [True, False, False],
                     id="id-reuse-after-reset"),
        pytest.param([_headers(1, CONNECT, "END_STREAM")], [True], id="request-with-end-stream"),
        pytest.param([_headers(1, CONNECT, "PRIORITY")], [False], id="priority-flag"),
        pytest.param([_headers(1, CONNECT, "PADDED")], [False], id="padded-flag"),
        pytest.param([bytes(HeadersFrame(1, data=hpack.Encoder().encode(CONNECT)).serialize()),
                      bytes(ContinuationFrame(1, data=b"", flags=["END_HEADERS"]).serialize())],
                     [False, False], id="continuation"),
        pytest.param([_headers(1, [(":method", "CONNECT"), (":authority", "x" * 5000)])], [True],
                     id="oversized-header-list"),
        pytest.param([bytes(HeadersFrame(1, data=b"\xff\xff\xff\x0f", flags=["END_HEADERS"]).serialize())],
                     [True], id="bad-hpack-index"),
        pytest.param([_headers(1, CONNECT), _data(1, b"x", "END_STREAM"), _data(1, b"", "END_STREAM")],
                     [True, True, False], id="data-after-end-stream"),
        pytest.param([_data(1, b"", "END_STREAM")], [False], id="data-on-idle-stream"),
        pytest.param([_headers(1, CONNECT), _data(1, b"ab", "END_STREAM", "PADDED", pad=3)], [True, False],
                     id="padded-data-end-stream"),
        pytest.param([_headers(1, CONNECT), _rst(1), _data(1, b"", "END_STREAM")], [True, False, False],
                     id="data-after-reset"),
        pytest.param([_headers(1, CONNECT), _data(1, b"x" * ((1 << 22) + 1), "END_STREAM")], [True, False],
                     id="data-beyond-stream-window"),
        pytest.param([_headers(1, CONNECT), _data(1, b"x" * ((1 << 20) + 1), "END_STREAM")], [True, False],
                     id="data-beyond-frame-size"),
        pytest.param([_headers(1, [*CONNECT, ("content-length", "3")]), _data(1, b"ab", "END_STREAM")],
                     [True, True], id="content-length-mismatch"),
    ],
)
def test_server_stream_edge_cases_match_h2(frames: list[bytes], expect_fast: list[bool]) -> None:
    _run(False, frames, expect_fast=expect_fast)


def test_server_max_concurrent_streams_matches_h2() -> None:
    frames = [_headers(1, CONNECT), _headers(3, CONNECT), _headers(5, CONNECT)]
    result = _run(False, frames, expect_fast=[True, True, False], max_streams=2)
    assert result[0] == "TooManyStreamsError"
    # A half-closed stream still counts; a closed one no longer does (h2 drops it while counting).
    frames = [_headers(1, CONNECT), _data(1, b"", "END_STREAM"), _headers(3, CONNECT)]
    assert _run(False, frames, expect_fast=[True, True, False], max_streams=1)[0] == "TooManyStreamsError"
    frames = [_headers(1, CONNECT), _rst(1), _headers(3, CONNECT)]
    assert _run(False, frames, expect_fast=[True, False, True], max_streams=1)[0][0] == "RequestReceived"


def test_goaway_sent_closes_the_fast_path() -> None:
    def goaway(c: h2.connection.H2Connection) -> None:
        c.close_connection()

    _run(False, [_headers(1, CONNECT)], expect_fast=[False], setup=goaway)


# -- client: responses -------------------------------------------------------------------------------------
def _opened(c: h2.connection.H2Connection) -> None:
    for sid in (1, 3):
        c.send_headers(sid, CONNECT)


RESPONSES: list[tuple[list[bytes], list[bool]]] = [
    ([_headers(1, [(":status", "200")])], [True]),
    ([_headers(1, [(":status", "200"), ("server", "ambient"), ("x-e", "")])], [True]),
    ([_headers(1, [(":status", "503")], "END_STREAM")], [True]),
    ([_headers(1, [(":status", "200")]), _data(1, b"", "END_STREAM")], [True, True]),
    ([_headers(1, [(":status", "200")]), _data(1, b"bye", "END_STREAM"), _data(1, b"", "END_STREAM")],
     [True, True, False]),
    ([_headers(1, [(":status", "100")]), _headers(1, [(":status", "200")])], [True, True]),
    ([_headers(1, [(":status", "100")], "END_STREAM")], [True]),
    ([_headers(1, [(":status", "200")]), _headers(1, [("x-t", "1")], "END_STREAM")], [True, False]),
    ([_headers(1, [(":status", "200")]), _headers(1, [("x-t", "1")])], [True, False]),
    ([_headers(1, [("x-no-status", "1")])], [True]),
    ([_headers(1, [(":status", "200"), (":authority", AUTH)])], [True]),
    ([_headers(1, [(":status", "2000")])], [True]),
    ([_headers(1, [(":status", "200"), ("Server", "x")])], [True]),
    ([_headers(1, [(":status", "200"), ("content-length", "0")]), _data(1, b"x", "END_STREAM")], [True, True]),
    ([_headers(5, [(":status", "200")])], [False]),  # a stream we never opened (odd: ours)
    ([_headers(2, [(":method", "CONNECT"), (":authority", AUTH)])], [True]),  # server-initiated
    ([_rst(1), _headers(1, [(":status", "200")])], [False, False]),
]


@pytest.mark.parametrize("case", range(len(RESPONSES)))
def test_client_response_headers_match_h2(case: int) -> None:
    frames, expect_fast = RESPONSES[case]
    _run(True, frames, expect_fast=expect_fast, setup=_opened)


# -- through HboneConnection ---------------------------------------------------------------------------------
async def test_connection_serves_requests_and_fins_via_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole CONNECT + END_STREAM in one read: request delivered with its headers, FIN delivered, the
    stream released once both sides ended; and none of it went through h2's `receive_data`."""
    requests = []

    def on_request(stream: Any, req: Any) -> None:
        requests.append((stream, req))
        stream.respond(200)

    conn = HboneConnection(client_side=False, on_request=on_request)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(PREFACE + bytes(SettingsFrame(0).serialize()))
    calls = []
    real = conn._h2.receive_data
    monkeypatch.setattr(conn._h2, "receive_data", lambda data: calls.append(bytes(data)) or real(data))
    enc = h2fast.PlainEncoder()
    conn.data_received(_headers(1, CONNECT_FULL, encoder=enc) + _data(1, b"hi", "END_STREAM")
                       + _headers(3, CONNECT_FULL, encoder=enc))
    assert calls == [] and conn.error is None
    (s1, r1), (_s3, _) = requests
    assert (r1.target_ip, r1.target_port, r1.headers["baggage"]) == ("10.0.0.1", 80, "k8s.cluster.name=c1")
    assert r1.forwarded == 'for="10.0.0.2:4000"'
    assert await s1.read() == b"hi" and await s1.read() == b""
    s1.end()
    assert 1 not in conn.streams and 3 in conn.streams
    # A violation on the fast path fails the connection like h2's path does (GOAWAY, transport closed).
    conn.data_received(_headers(5, [*CONNECT, ("X-Upper", "1")], encoder=enc))
    assert conn.error is not None and "protocol error" in conn.error.message and transport.closed



# -- outbound HEADERS ------------------------------------------------------------------------------------------
def _sender(client_side: bool) -> h2.connection.H2Connection:
    c = _h2(client_side)
    c.encoder = h2fast.PlainEncoder()
    c.receive_data((b"" if client_side else PREFACE) + bytes(SettingsFrame(0).serialize()))
    c.data_to_send()
    return c


def _out_state(c: h2.connection.H2Connection) -> dict[str, Any]:
    state = _state(c)
    state["encoder"] = (list(c.encoder.header_table.dynamic_entries), c.encoder.header_table._current_size,
                        c.encoder.header_table.resized)
    state["sent"] = {sid: (s.state_machine.headers_sent, s.state_machine.trailers_sent, s._authority)
                     for sid, s in c.streams.items()}
    return state


def _send(c: h2.connection.H2Connection, sid: int, headers: Any, end_stream: bool, fast: bool) -> tuple[Any, bool]:
    try:
        if fast and h2fast.send_headers(c, sid, headers, end_stream):
            return None, True
        c.send_headers(sid, headers, end_stream=end_stream)
        return None, False
    except Exception as exc:  # must match h2's exception exactly
        return (type(exc).__name__, str(exc)), False


def _run_send(client_side: bool, sends: list[tuple[int, Any, bool]], expect_fast: list[bool],
              setup: Callable[[h2.connection.H2Connection], None] | None = None) -> None:
    ref, ours = _sender(client_side), _sender(client_side)
    for c in (ref, ours):
        if setup is not None:
            setup(c)
    took = []
    for sid, headers, end_stream in sends:
        want, _ = _send(ref, sid, headers, end_stream, fast=False)
        got, fast = _send(ours, sid, headers, end_stream, fast=True)
        assert got == want
        assert _out_state(ours) == _out_state(ref)  # incl. the bytes queued (data_to_send)
        took.append(fast)
    assert took == expect_fast


def test_client_connect_requests_encoded_like_h2() -> None:
    def shrink_table(c: h2.connection.H2Connection) -> None:
        c.encoder.header_table_size = 256  # a pending table size update goes first in the next block

    sends = [(sid, build_connect_headers(AUTH, baggage={"k8s.cluster.name": "c1"}), False) for sid in (1, 3, 5)]
    sends.append((7, CONNECT, True))
    _run_send(True, sends, [True] * 4)
    _run_send(True, sends, [True] * 4, setup=shrink_table)


@pytest.mark.parametrize(
    ("headers", "fast"),
    [
        ([*CONNECT, ("X-Upper", "1")], False),  # h2 lowercases
        ([*CONNECT, ("connection", "close")], False),  # h2 strips it
        ([*CONNECT, ("authorization", "secret")], False),  # h2 makes it never-indexed
        ([*CONNECT, ("cookie", "a=1")], False),
        ([*CONNECT, ("x-sp", "v ")], False),  # h2 strips whitespace
        ([*CONNECT, ("x-utf8", "café")], False),
        ([*CONNECT, ("x-big", "v" * 20000)], False),  # more than one frame: CONTINUATION
        ([*CONNECT, (b"x-bytes", b"1")], False),
        ([*CONNECT, ("x-empty", "")], True),
        ([(":path", "/")], False),
    ],
)
def test_client_unusual_requests_go_to_h2(headers: Any, fast: bool) -> None:
    _run_send(True, [(1, headers, False)], [fast])


def test_client_stream_limits_and_ids_match_h2() -> None:
    def limit(c: h2.connection.H2Connection) -> None:
        c.remote_settings = h2.settings.Settings(client=False, initial_values={_SC.MAX_CONCURRENT_STREAMS: 1})

    _run_send(True, [(1, CONNECT, False), (3, CONNECT, False)], [True, False], setup=limit)  # TooManyStreams
    _run_send(True, [(3, CONNECT, False), (1, CONNECT, False)], [True, False])  # id too low
    _run_send(True, [(2, CONNECT, False)], [False])  # wrong parity
    _run_send(True, [(1, CONNECT, False), (1, CONNECT, True)], [True, False])  # trailers: h2's path

    def goaway(c: h2.connection.H2Connection) -> None:
        c.receive_data(bytes(h2.connection.GoAwayFrame(0).serialize()))

    _run_send(True, [(1, CONNECT, False)], [False], setup=goaway)


def _requested(c: h2.connection.H2Connection) -> None:
    c.receive_data(_headers(1, CONNECT) + _headers(3, CONNECT) + _rst(3))


@pytest.mark.parametrize(
    ("sends", "expect_fast"),
    [
        ([(1, [(":status", "200")], False)], [True]),
        ([(1, [(":status", "503")], True)], [True]),
        ([(1, [(":status", "200")], False), (1, [(":status", "200")], False)], [True, False]),  # trailers
        ([(1, [(":status", "100")], False), (1, [(":status", "200")], False)], [False, True]),  # 1xx: h2
        ([(3, [(":status", "200")], False)], [False]),  # reset by the peer: h2 raises
        ([(5, [(":status", "200")], False)], [False]),  # no such stream
    ],
)
def test_server_responses_encoded_like_h2(sends: list[tuple[int, Any, bool]], expect_fast: list[bool]) -> None:
    _run_send(False, sends, expect_fast, setup=_requested)


def _end(c: h2.connection.H2Connection, sid: int, fast: bool) -> tuple[Any, bool]:
    try:
        if fast and h2fast.end_stream(c, sid):
            return None, True
        c.end_stream(sid)
        return None, False
    except Exception as exc:  # must match h2's exception exactly
        return (type(exc).__name__, str(exc)), False


@pytest.mark.parametrize(
    ("client_side", "setup", "ends", "expect_fast"),
    [
        (True, _opened, [1, 3], [True, True]),
        (True, _opened, [1, 1], [True, False]),  # twice: h2 raises
        (True, _opened, [5], [False]),  # no such stream
        (False, _requested, [1], [True]),  # after the peer's request (the response not sent: h2 allows it)
        (False, _requested, [3], [False]),  # reset by the peer
        (True, lambda c: (_opened(c), c.close_connection()), [1], [False]),  # after GOAWAY
    ],
)
def test_end_stream_matches_h2(client_side: bool, setup: Callable[[h2.connection.H2Connection], Any],
                               ends: list[int], expect_fast: list[bool]) -> None:
    ref, ours = _sender(client_side), _sender(client_side)
    setup(ref)
    setup(ours)
    took = []
    for sid in ends:
        want, _ = _end(ref, sid, fast=False)
        got, fast = _end(ours, sid, fast=True)
        assert got == want
        assert _out_state(ours) == _out_state(ref)
        took.append(fast)
    assert took == expect_fast
