"""Where HBONE reaches into python-hyper `h2` internals to keep HTTP/2 off the per-byte path.

Everything here depends on h2 4.4.1 / hyperframe / hpack internals (pinned in pyproject.toml; guarded by
tests/integration/test_hbone_fastpath.py and test_hbone_relay.py, which compare against h2's own paths):
- `account_sent_data`: h2's bookkeeping for one outbound DATA frame, so `HboneConnection.send_data` can
  write header + payload in one copy instead of h2's five.
- `bytes_needed` / `claim_data_frame`: the receive fast path. Unpadded DATA frames without END_STREAM, for
  streams open on both sides (ours and h2's) and within both receive windows, never reach h2: their 9-byte
  header is read by the connection, h2's bookkeeping is done here (both inbound windows consumed, exactly
  as `H2Connection._receive_data_frame` does; the state machines would not change state), and the
  payload goes to the stream piece by piece as TLS records arrive, straight from the read buffer (a 1 MiB
  frame spans many reads). Everything else (other frames, END_STREAM, padding, an unknown or half-closed
  stream, a window or frame-size violation, a pending header block) goes to h2 as whole frames, so h2
  raises the right protocol errors and frame order is kept.
- `FastFrameBuffer`: h2's inbound frame buffer with one copy less per DATA byte (for frames h2 does see).
- `PlainEncoder`: HPACK without Huffman coding.
- hyperframe's payload repr, which h2 formats for its trace log on every frame, made cheap.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Mapping
from typing import Any, TypeVar

import h2.connection
import h2.exceptions
import h2.frame_buffer
import h2.stream
import hpack
import hyperframe.frame


def _cheap_raw_data_repr(data: bytes | None) -> str:
    if not data:
        return "None"
    head = binascii.hexlify(bytes(data[:10])).decode("ascii")
    return f"<hex:{head}...>" if len(data) > 10 else f"<hex:{head}>"


# h2 formats repr(frame) for its trace logger on EVERY received frame, even with logging off, and
# hyperframe's repr hex-encodes the whole payload before truncating it to 20 characters: for 1 MiB DATA
# frames that was more than half of the CPU of a tunnel. Same output, computed from the first 10 bytes.
if hasattr(hyperframe.frame, "_raw_data_repr"):
    hyperframe.frame._raw_data_repr = _cheap_raw_data_repr

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


class PlainEncoder(hpack.Encoder):
    """HPACK without Huffman coding: CONNECT headers are ~100 bytes and mostly unique per connection,
    so Huffman saves a few dozen bytes while its pure-Python encode (and the peer's decode) was the
    largest single cost of opening a tunnel. Plain literals are valid HPACK for every decoder."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        return super().encode(headers, huffman=False)


class FastFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's inbound frame buffer with one copy less per DATA byte: an unpadded DATA frame's payload is
    copied once out of the buffer (h2 slices the buffer, then hyperframe copies the slice again).
    Everything else (and every check: frame size, CONTINUATION sequencing) is h2's own code."""

    def __next__(self) -> hyperframe.frame.Frame:
        data = self._data
        if len(data) >= 9 and data[3] == 0 and not data[4] & _DATA_PADDED:
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
