"""Where HBONE reaches into python-hyper `h2` internals to keep HTTP/2 off the per-byte path.

Everything here depends on h2 4.4.1 / hyperframe 6.1.0 / hpack 4.2.0 internals (pinned in pyproject.toml;
checked at first use, see Guard below; guarded by
tests/integration/test_hbone_fastpath.py, test_hbone_relay.py and test_hbone_h2fast_frames.py, which compare
against h2's own paths):
- `account_sent_data`: h2's bookkeeping for one outbound DATA frame, so `HboneConnection.send_data` can
  write header + payload in one copy instead of h2's five.
- `bytes_needed` / `claim_data_frame`: the receive fast path. Unpadded DATA frames without END_STREAM, for
  streams open on both sides (ours and h2's) and within both receive windows, never reach h2: their 9-byte
  header is read by the connection, h2's bookkeeping is done here (both inbound windows consumed, exactly
  as `H2Connection._receive_data_frame` does; the state machines would not change state), and the
  payload goes to the stream piece by piece as TLS records arrive, straight from the read buffer (a 1 MiB
  frame spans many reads). Everything else (other frames, END_STREAM, padding, an unknown or half-closed
  stream, a window or frame-size violation, a pending header block) goes on as whole frames (to
  `receive_whole_frame`, else to h2), so h2 raises the right protocol errors and frame order is kept.
- `receive_whole_frame`: the per-connection frames (a CONNECT request or its response HEADERS, a DATA
  frame with END_STREAM) handed over whole, skipping h2's frame buffer, hyperframe parse, dispatch and
  its generic header validation pipeline for header blocks proven plain (`_plain_headers`). h2 stays the
  authority: its own hpack decoder (dynamic table in sync), state machines, stream creation and window
  managers run in h2's order; anything the checks cannot prove ordinary goes to h2's full path.
- `send_headers` / `end_stream`: HBONE's own outbound HEADERS (CONNECT request, final response) and the
  tunnel's FIN without h2's normalisation generators and frame objects, when every header is plain ASCII
  (h2's normalisation would change nothing): the same state machine inputs in h2's order, h2's (Plain)
  HPACK encoder, the same bytes appended to h2's output buffer; anything else is h2's own call.
- `forget_closed_stream`: drop a finished tunnel's closed h2 stream at once (h2 keeps closed streams in its
  table until the next stream opens, then moves them to its closed-stream record): an idle pooled
  connection then holds no H2Stream objects of the tunnels it carried.
- `FastFrameBuffer`: h2's inbound frame buffer with one copy less per DATA byte (for frames h2 does see).
- `PlainEncoder`: HPACK without Huffman coding.
- hyperframe's payload repr, which h2 formats for its trace log on every frame, made cheap (`install()`, at
  first use, never at import).

Guard (`enabled()`, decided once per process by `core.fastpaths`): the fast paths run only when
AMBIENT_FAST_PATHS is not 0, h2 / hpack / hyperframe are the pinned versions (`PINS`) and every private
name they use (`PRIVATE_NAMES`, plus instance attributes of freshly built h2 objects) exists; otherwise
`HboneConnection` uses h2's public API only (one log line says why). The header-block cap of
`FastFrameBuffer` is a limit, not a fast path: it stays on with the fast paths off (`one_copy=False`)
whenever the frame buffer's private names exist (`capped_buffer_available()`).
"""

from __future__ import annotations

import binascii
import functools
import re
import struct
from collections.abc import Mapping
from typing import Any, TypeVar

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.stream
import h2.utilities
import hpack
import hyperframe.frame

from ambient.core import fastpaths

PINS = {"h2": "4.4.1", "hpack": "4.2.0", "hyperframe": "6.1.0"}
PRIVATE_NAMES = (
    "h2.connection:_decode_headers",
    "h2.connection:H2Connection._get_or_create_stream",
    "h2.connection:H2Connection._terminate_connection",
    "h2.connection:H2Connection._receive_data_frame",
    "h2.connection:H2Connection._receive_headers_frame",
    "h2.stream:H2Stream._process_received_headers",
    "h2.stream:H2Stream._initialize_content_length",
    "h2.stream:H2Stream._build_hdr_validation_flags",
    "h2.frame_buffer:FrameBuffer._validate_frame_length",
    "hyperframe.frame:_raw_data_repr",
)
_BUFFER_ATTRS = ("_data", "_headers_buffer", "_preamble_len")


def _instance_names() -> list[str]:
    """The private instance attributes used here, looked up on freshly built h2 objects."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    stream = h2.stream.H2Stream(1, conn.config, 65535, 65535)
    wanted = [(conn, "H2Connection", ("_data_to_send", "_inbound_flow_control_window_manager", "incoming_buffer",
                                      "_closed_streams")),
              (stream, "H2Stream", ("_inbound_window_manager", "_authority")),
              (h2.frame_buffer.FrameBuffer(server=True), "FrameBuffer", _BUFFER_ATTRS)]
    return [f"{cls}().{attr}" for obj, cls, attrs in wanted for attr in attrs if not hasattr(obj, attr)]


def enabled() -> bool:
    """Whether the fast paths run in this process (see the module docstring); installs the repr on first yes."""
    if fastpaths.enabled("HBONE HTTP/2", PINS, PRIVATE_NAMES, _instance_names):
        install()
        return True
    return False


def install() -> None:
    """Make hyperframe's payload repr cheap (idempotent). Called at first use, only when `enabled()`."""
    if getattr(hyperframe.frame, "_raw_data_repr", None) is not _cheap_raw_data_repr:
        hyperframe.frame._raw_data_repr = _cheap_raw_data_repr


@functools.cache
def capped_buffer_available() -> bool:
    """Whether `FastFrameBuffer` (and its header-block cap) can run on this h2 (fast paths on or off)."""
    buf = h2.frame_buffer.FrameBuffer(server=True)
    return (all(hasattr(buf, a) for a in _BUFFER_ATTRS)
            and not fastpaths.missing_names(["h2.frame_buffer:FrameBuffer._validate_frame_length"]))


def _cheap_raw_data_repr(data: bytes | None) -> str:
    if not data:
        return "None"
    head = binascii.hexlify(bytes(data[:10])).decode("ascii")
    return f"<hex:{head}...>" if len(data) > 10 else f"<hex:{head}>"

# (h2 formats repr(frame) for its trace logger on EVERY received frame, even with logging off, and
# hyperframe's repr hex-encodes the whole payload before truncating it to 20 characters: for 1 MiB DATA
# frames that was more than half of the CPU of a tunnel. Same output, computed from the first 10 bytes.)

# Frame header = 24-bit length, type 0 (DATA), flags, stream id.
DATA_FRAME_HEADER = struct.Struct(">HBBBL")
_DATA_PADDED = 0x08
_DATA_PADDED_OR_END = 0x09
_OPEN_CONN = (h2.connection.ConnectionState.CLIENT_OPEN, h2.connection.ConnectionState.SERVER_OPEN)
_RECV_OK = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL)  # the peer may still send
_SEND_OK = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE)  # we may still send

S = TypeVar("S")


def data_frame_header(stream_id: int, length: int) -> bytes:
    """The 9-byte header of a DATA frame without flags."""
    return DATA_FRAME_HEADER.pack(length >> 8, length & 0xFF, 0, 0, stream_id)


def account_sent_data(h2c: h2.connection.H2Connection, stream_id: int, n: int) -> None:
    """h2's bookkeeping for one DATA frame of `n` bytes (no END_STREAM, no padding) that the caller writes
    itself: both flow-control windows, and the state machines where they are not a no-op. Raises h2's
    errors for a closed stream, a window or frame-size violation."""
    stream = h2c.streams.get(stream_id)
    if stream is None:
        raise h2.exceptions.StreamClosedError(stream_id)
    if n > h2c.local_flow_control_window(stream_id) or n > h2c.max_outbound_frame_size:
        raise h2.exceptions.FlowControlError(f"cannot send {n} bytes on stream {stream_id}")
    # SEND_DATA changes no state and emits nothing in open states: only run the machines otherwise
    # (where they raise the right error).
    if h2c.state_machine.state not in _OPEN_CONN or stream.state_machine.state not in _SEND_OK:
        h2c.state_machine.process_input(h2.connection.ConnectionInputs.SEND_DATA)
        stream.state_machine.process_input(h2.stream.StreamInputs.SEND_DATA)
    stream.outbound_flow_control_window -= n
    h2c.outbound_flow_control_window -= n


def bytes_needed(h2c: h2.connection.H2Connection) -> int:
    """Bytes h2 needs to complete the frame it holds part of: 0 if it holds nothing, -1 for "all" (the
    client preface is still expected)."""
    buf = h2c.incoming_buffer
    if buf._preamble_len:
        return -1
    held = buf._data
    if not held:
        return 0
    if len(held) < 9:
        return 9 - len(held)
    return 9 + ((held[0] << 16) | (held[1] << 8) | held[2]) - len(held)


def claim_data_frame(
    h2c: h2.connection.H2Connection, header: memoryview, streams: Mapping[int, S]
) -> tuple[S, int] | None:
    """If the frame whose 9-byte `header` starts here can take the fast path, consume its length from both
    inbound windows and return (our stream, payload length); None sends it to h2."""
    if header[3] != 0 or header[4] & _DATA_PADDED_OR_END:
        return None
    length = (header[0] << 16) | (header[1] << 8) | header[2]
    if length > h2c.max_inbound_frame_size or h2c.incoming_buffer._headers_buffer:
        return None
    if h2c.state_machine.state not in _OPEN_CONN:
        return None
    sid = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
    ours = streams.get(sid)
    h2s = h2c.streams.get(sid)
    conn_window = h2c._inbound_flow_control_window_manager
    if (
        ours is None
        or h2s is None
        or h2s.state_machine.state not in _RECV_OK
        or not h2s.state_machine.headers_received
        or length > conn_window.current_window_size
        or length > h2s._inbound_window_manager.current_window_size
    ):
        return None
    conn_window.current_window_size -= length
    h2s._inbound_window_manager.current_window_size -= length
    return ours, length


def frame_length(header: memoryview) -> int:
    """Whole-frame length (header included) from a 9-byte frame header."""
    return 9 + ((header[0] << 16) | (header[1] << 8) | header[2])


# -- whole per-connection frames ----------------------------------------------------------------------------
_END_STREAM = 0x01
_END_HEADERS = 0x04
_HEADERS_FLAGS_OK = (_END_HEADERS, _END_HEADERS | _END_STREAM)  # no PADDED, PRIORITY; no CONTINUATION
_TYPE_DATA = 0
_TYPE_HEADERS = 1
_HEADERS_CONN = (h2.connection.ConnectionState.IDLE, *_OPEN_CONN)  # a connection's first HEADERS opens it

# A regular header name h2's validation accepts and no normalisation touches: a lowercase token (RFC 9110
# tchar without uppercase), none of the names h2 treats specially (connection-specific ones, te, host
# which is compared with :authority, cookie which is recombined, content-length which is checked).
_PLAIN_NAME = re.compile(rb"[a-z0-9!#$%&'*+.^_`|~-]+")
_SPECIAL_NAMES = h2.utilities.CONNECTION_HEADERS | {b"te", b"host", b"cookie", b"content-length"}
# A value h2 accepts and decodes as UTF-8 to the same string as ASCII: printable ASCII, no whitespace at
# either end (empty is allowed, as h2 allows it).
_PLAIN_VALUE = re.compile(rb"(?:[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?")
_STATUS = re.compile(rb"[2-9][0-9][0-9]")  # a final response (1xx is informational: h2's path)


def _plain_headers(headers: list[Any], flags: h2.utilities.HeaderValidationFlags) -> bool:
    """True if h2's inbound pipeline (cookie normalisation, `validate_headers`, UTF-8 decoding) would
    accept `headers` unchanged: a plain CONNECT request (:method CONNECT + :authority, no other
    pseudo-header) or a plain final response (:status only), then plain regular headers. False sends them
    through h2's pipeline, which accepts or raises."""
    if flags.is_trailer or flags.is_push_promise or not headers:
        return False
    if flags.is_response_header:
        name, value = headers[0]
        if name != b":status" or not _STATUS.fullmatch(value):
            return False
        regular = 1
    else:
        if len(headers) < 2:
            return False
        (n0, v0), (n1, v1) = headers[0], headers[1]
        if n0 == b":method" and n1 == b":authority":
            method, authority = v0, v1
        elif n0 == b":authority" and n1 == b":method":
            method, authority = v1, v0
        else:
            return False
        if method != b"CONNECT" or not _PLAIN_VALUE.fullmatch(authority):
            return False
        regular = 2
    for name, value in headers[regular:]:
        if not _PLAIN_NAME.fullmatch(name) or name in _SPECIAL_NAMES or not _PLAIN_VALUE.fullmatch(value):
            return False
    return True


def _process_headers(stream: h2.stream.H2Stream, headers: list[Any],
                     flags: h2.utilities.HeaderValidationFlags, encoding: Any) -> list[Any]:
    """`H2Stream._process_received_headers`, without its generator pipeline when the block is plain
    (same result: the same header tuple classes, decoded)."""
    config = stream.config
    if (encoding == "utf-8" and config.normalize_inbound_headers and config.validate_inbound_headers
            and _plain_headers(headers, flags)):
        return [h.__class__(h[0].decode("ascii"), h[1].decode("ascii")) for h in headers]
    return stream._process_received_headers(headers, flags, encoding)


def receive_whole_frame(h2c: h2.connection.H2Connection, frame: memoryview) -> list[h2.events.Event] | None:
    """Process one whole frame (`frame` = header + payload, at a frame boundary with nothing held by h2)
    as `H2Connection.receive_data` would, if it is one of the per-connection frames: a DATA frame with
    END_STREAM (unpadded) for a stream the peer may still send on, or an END_HEADERS HEADERS frame
    (no padding, priority or CONTINUATION) opening a new stream from the peer or carrying the first
    headers of a stream we opened. Returns h2's events; None (before changing any state) sends the frame
    to h2's full path. Protocol errors are h2's own, raised as `receive_data` raises them (after queueing
    GOAWAY)."""
    kind, flags = frame[3], frame[4]
    if kind == _TYPE_DATA:
        if flags != _END_STREAM:
            return None
    elif kind != _TYPE_HEADERS or flags not in _HEADERS_FLAGS_OK:
        return None
    length = (frame[0] << 16) | (frame[1] << 8) | frame[2]
    if length > h2c.max_inbound_frame_size or h2c.incoming_buffer._headers_buffer:
        return None
    if h2c.state_machine.state not in (_OPEN_CONN if kind == _TYPE_DATA else _HEADERS_CONN):
        return None
    sid = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
    if not sid:
        return None
    h2s = h2c.streams.get(sid)
    if kind == _TYPE_DATA:
        if (
            h2s is None
            or h2s.state_machine.state not in _RECV_OK
            or not h2s.state_machine.headers_received
            or length > h2c._inbound_flow_control_window_manager.current_window_size
            or length > h2s._inbound_window_manager.current_window_size
        ):
            return None
        try:
            # H2Connection._receive_data_frame, minus the frame object.
            events = h2c.state_machine.process_input(h2.connection.ConnectionInputs.RECV_DATA)
            h2c._inbound_flow_control_window_manager.window_consumed(length)
            _, stream_events = h2s.receive_data(bytes(frame[9:]), True, length)
        except h2.exceptions.ProtocolError as exc:
            h2c._terminate_connection(exc.error_code)
            raise
        return events + stream_events
    end_stream = flags == _END_HEADERS | _END_STREAM
    if h2s is None:
        # A new stream from the peer: only ids h2 would accept without a special case (the next id of
        # the peer's parity, within our concurrency limit); reuse, too low or wrong parity go to h2.
        inbound_parity = 0 if h2c.config.client_side else 1
        if sid % 2 != inbound_parity or sid <= h2c.highest_inbound_stream_id:
            return None
        # (open_inbound_streams also drops closed streams, as h2's own check does)
        if h2c.open_inbound_streams + 1 > h2c.local_settings.max_concurrent_streams:
            return None
    elif h2s.state_machine.state not in _RECV_OK or h2s.state_machine.headers_received:
        return None  # trailers, or a closed stream: h2's path
    try:
        # H2Connection._receive_headers_frame + H2Stream.receive_headers, in their order.
        headers = list(h2.connection._decode_headers(h2c.decoder, bytes(frame[9:])))
        events = h2c.state_machine.process_input(h2.connection.ConnectionInputs.RECV_HEADERS)
        if h2s is None:
            h2s = h2c._get_or_create_stream(sid, h2.connection.AllowedStreamIDs(not h2c.config.client_side))
        if h2.utilities.is_informational_response(headers):
            if end_stream:
                raise h2.exceptions.ProtocolError("Cannot set END_STREAM on informational responses")
            input_ = h2.stream.StreamInputs.RECV_INFORMATIONAL_HEADERS
        else:
            input_ = h2.stream.StreamInputs.RECV_HEADERS
        stream_events = h2s.state_machine.process_input(input_)
        if end_stream:
            es_events = h2s.state_machine.process_input(h2.stream.StreamInputs.RECV_END_STREAM)
            stream_events[0].stream_ended = es_events[0]  # type: ignore[attr-defined]
            stream_events += es_events
        h2s._initialize_content_length(headers)
        if isinstance(stream_events[0], h2.events.TrailersReceived) and not end_stream:
            raise h2.exceptions.ProtocolError("Trailers must have END_STREAM set")
        validation = h2s._build_hdr_validation_flags(stream_events)
        stream_events[0].headers = _process_headers(  # type: ignore[attr-defined]
            h2s, headers, validation, h2c.config.header_encoding)
    except h2.exceptions.ProtocolError as exc:
        h2c._terminate_connection(exc.error_code)
        raise
    return events + stream_events


# Names h2's outbound normalisation changes (never-indexed) or drops (connection-specific), besides the
# inbound special ones; and the pseudo-headers HBONE sends.
_OUT_SPECIAL_NAMES = _SPECIAL_NAMES | h2.utilities._SECURE_HEADERS
_OUT_PSEUDO = frozenset((":method", ":authority", ":status"))
_HEADERS_FRAME_HEADER = struct.Struct(">HBBBL")  # length (24 bits), type, flags, stream id


def send_headers(h2c: h2.connection.H2Connection, stream_id: int, headers: list[tuple[str, str]],
                 end_stream: bool) -> bool:
    """`H2Connection.send_headers` (no priority) for HBONE's own header blocks: a CONNECT request or a
    final response, every name and value plain ASCII (so h2's outbound normalisation would change nothing),
    on a new stream of ours or a peer's stream we have not answered, the block fitting one frame. Same
    state changes, same HPACK encoder (its dynamic table stays in sync with the peer's decoder), the same
    frame queued in h2's output buffer; False (nothing changed) means: call h2's `send_headers`."""
    config = h2c.config
    if not config.normalize_outbound_headers or config.validate_outbound_headers:
        return False
    if h2c.state_machine.state not in _HEADERS_CONN:
        return False
    size = 16
    encoded: list[Any] = []
    for h in headers:
        name, value = h
        if not isinstance(name, str) or not isinstance(value, str) or not (name.isascii() and value.isascii()):
            return False
        bname, bvalue = name.encode("ascii"), value.encode("ascii")
        if name in _OUT_PSEUDO:
            if name == ":status" and not _STATUS.fullmatch(bvalue):
                return False  # informational responses: h2's path
        elif not _PLAIN_NAME.fullmatch(bname) or bname in _OUT_SPECIAL_NAMES:
            return False
        if not _PLAIN_VALUE.fullmatch(bvalue):
            return False
        size += len(bname) + len(bvalue) + 12  # an HPACK literal's worst case: flags + two lengths
        encoded.append(h.__class__(bname, bvalue) if isinstance(h, hpack.HeaderTuple) else (bname, bvalue))
    if size > h2c.max_outbound_frame_size:
        return False
    stream = h2c.streams.get(stream_id)
    if stream is None:
        if stream_id % 2 != int(config.client_side) or stream_id <= h2c.highest_outbound_stream_id:
            return False
        # (open_outbound_streams also drops closed streams, as h2's own check does)
        if h2c.open_outbound_streams + 1 > h2c.remote_settings.max_concurrent_streams:
            return False
    elif (stream.state_machine.state not in _SEND_OK or stream.state_machine.headers_sent
          or size > (stream.max_outbound_frame_size or 0)):
        return False
    # H2Connection.send_headers + H2Stream.send_headers/_build_headers_frames, in their order.
    h2c.state_machine.process_input(h2.connection.ConnectionInputs.SEND_HEADERS)
    if stream is None:
        stream = h2c._get_or_create_stream(stream_id, h2.connection.AllowedStreamIDs(config.client_side))
    stream.state_machine.process_input(h2.stream.StreamInputs.SEND_HEADERS)
    block = h2c.encoder.encode(encoded)
    flags = _END_HEADERS
    if end_stream:
        stream.state_machine.process_input(h2.stream.StreamInputs.SEND_END_STREAM)
        flags |= _END_STREAM
    if stream.state_machine.client and stream._authority is None:
        stream._authority = h2.utilities.authority_from_headers(encoded)
    stream.request_method = h2.utilities.extract_method_header(encoded)
    n = len(block)
    h2c._data_to_send += _HEADERS_FRAME_HEADER.pack(n >> 8, n & 0xFF, _TYPE_HEADERS, flags, stream_id)
    h2c._data_to_send += block
    return True


_CLOSED_BY_RESET = (h2.stream.StreamClosedBy.RECV_RST_STREAM, h2.stream.StreamClosedBy.SEND_RST_STREAM)


def forget_closed_stream(h2c: h2.connection.H2Connection, stream_id: int) -> None:
    """What `H2Connection._open_streams` does for each closed stream, for this one stream and now: remove it
    from `h2c.streams` and, for a stream closed by RST_STREAM, note it in h2's closed-stream record. A
    stream h2 does not consider closed yet stays for h2's own cleanup.

    h2 does this lazily, at the next stream opened on the connection: until then every closed H2Stream (with
    its state machine and window manager, ~2 KiB) stays referenced, so a pooled connection that went idle
    after a burst of 100 tunnels held 100 dead streams, and a node proxy that had 10,000 tunnels open held
    10,000 of them after they all closed (docs/performance.md).

    The record (up to 65,536 entries per connection in h2) matters only for reset streams: a frame still in
    flight on a stream we reset is answered with RST_STREAM instead of failing the connection. For a stream
    closed by END_STREAM both ways (every tunnel that ends cleanly) a late frame is a connection error with
    or without it (STREAM_CLOSED with it, PROTOCOL_ERROR without), so it is not written: nothing is
    allocated per cleanly closed tunnel (those small records, made while a burst of tunnels closed, were
    what kept most of the interpreter's emptied memory arenas from being released)."""
    stream = h2c.streams.get(stream_id)
    if stream is not None and stream.closed:
        del h2c.streams[stream_id]
        closed_by = stream.closed_by
        if closed_by in _CLOSED_BY_RESET:
            h2c._closed_streams[stream_id] = closed_by


def end_stream(h2c: h2.connection.H2Connection, stream_id: int) -> bool:
    """`H2Connection.end_stream` (the tunnel's FIN: an empty DATA frame with END_STREAM) for a stream we
    may still send on, on an open connection: the same state machine inputs, the same 9 bytes queued in
    h2's output buffer, without building a frame object. False (nothing changed): call h2's."""
    stream = h2c.streams.get(stream_id)
    if stream is None or h2c.state_machine.state not in _OPEN_CONN or stream.state_machine.state not in _SEND_OK:
        return False
    h2c.state_machine.process_input(h2.connection.ConnectionInputs.SEND_DATA)
    stream.state_machine.process_input(h2.stream.StreamInputs.SEND_END_STREAM)
    h2c._data_to_send += _HEADERS_FRAME_HEADER.pack(0, 0, _TYPE_DATA, _END_STREAM, stream_id)
    return True


class PlainEncoder(hpack.Encoder):
    """HPACK without Huffman coding: CONNECT headers are ~100 bytes and mostly unique per connection,
    so Huffman saves a few dozen bytes while its pure-Python encode (and the peer's decode) was the
    largest single cost of opening a tunnel. Plain literals are valid HPACK for every decoder."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        return super().encode(headers, huffman=False)


_TYPE_PUSH_PROMISE = 5
_TYPE_CONTINUATION = 9
_HEADER_BLOCK_TYPES = (_TYPE_HEADERS, _TYPE_PUSH_PROMISE, _TYPE_CONTINUATION)


class HeaderBlockTooLarge(h2.exceptions.ProtocolError):
    """A header block (HEADERS/PUSH_PROMISE + CONTINUATION frames, as received: compressed, padding
    included) grew past the cap. COMPRESSION_ERROR, as the Rust h2 crate (upstream ztunnel's) answers a
    header block over its header list limit."""

    error_code = h2.errors.ErrorCodes.COMPRESSION_ERROR


class FastFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's inbound frame buffer with one copy less per DATA byte: an unpadded DATA frame's payload is
    copied once out of the buffer (h2 slices the buffer, then hyperframe copies the slice again).
    Everything else (and every check: frame size, CONTINUATION sequencing) is h2's own code, plus one:

    `max_header_block` caps a header block's bytes as its frames arrive. h2 only counts CONTINUATION
    frames (64), so with 1 MiB frames one block could hold 64 MiB before hpack's header-list check at
    END_HEADERS. The check reads each header-block frame's 9-byte header, so the frame that would cross
    the cap is refused before its payload is buffered. (An HPACK-encoded block is never larger than the
    header list it decodes to, give or take padding, so the header list limit is the right cap.) None: no
    cap (h2's behaviour)."""

    def __init__(self, server: bool = False, max_header_block: int | None = None, *, one_copy: bool = True) -> None:
        super().__init__(server)
        self.max_header_block = max_header_block
        self.one_copy = one_copy  # False (fast paths off): only the header-block cap, DATA frames as h2 parses them

    def __next__(self) -> hyperframe.frame.Frame:
        data = self._data
        if len(data) >= 9 and data[3] in _HEADER_BLOCK_TYPES and self.max_header_block is not None:
            self._check_header_block(data)
        if self.one_copy and len(data) >= 9 and data[3] == 0 and not data[4] & _DATA_PADDED:
            length = (data[0] << 16) | (data[1] << 8) | data[2]
            if len(data) >= length + 9 and not self._headers_buffer:
                self._validate_frame_length(length)
                stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
                if stream_id:  # DATA on stream 0 is a protocol error: let h2's path raise it
                    frame = hyperframe.frame.DataFrame(stream_id)
                    if data[4] & 0x01:
                        frame.flags.add("END_STREAM")
                    with memoryview(data) as view:
                        frame.data = bytes(view[9 : 9 + length])
                    frame.body_len = length
                    del data[: 9 + length]
                    return frame
        return super().__next__()

    def _check_header_block(self, data: bytearray) -> None:
        cap = self.max_header_block
        assert cap is not None
        held = sum(len(f.data) for f in self._headers_buffer) if self._headers_buffer else 0
        length = (data[0] << 16) | (data[1] << 8) | data[2]
        if held + length > cap:
            raise HeaderBlockTooLarge(
                f"header block of {held + length}+ bytes exceeds the {cap}-byte limit "
                f"({len(self._headers_buffer)} frames held)"
            )
