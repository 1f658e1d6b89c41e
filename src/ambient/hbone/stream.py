"""A tunnel stream: one HBONE CONNECT on an `HboneConnection`, used like a TCP socket.

Invariants (see connection.py for the connection-wide ones):
- Received bytes are acknowledged to the peer (WINDOW_UPDATE) only when `read` hands them to the
  application, so a stream buffers at most its receive window and a stalled reader stalls only itself.
- `write` returns only when every byte was handed to HTTP/2 within the peer's flow-control window and
  the transport is not over its high-water mark: no unbounded buffering on the way out.
- `write_eof` sends END_STREAM (the tunnel's FIN); `read` returns b"" after the peer's END_STREAM.
- `close` releases the stream exactly once; if either direction is still open it resets the stream.
- A stream is read either by `read` or by ONE attached `StreamListener` (the node proxy's relay), never
  both: once attached, received bytes go to the listener's `on_data` as they arrive (it must hand them on
  or copy them before returning) and are acknowledged when the listener reports them `consumed`, so the
  receive-window bound holds for listeners too.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Protocol

import h2.exceptions
from h2.errors import ErrorCodes

from ambient.hbone import h2fast
from ambient.hbone import protocol as proto
from ambient.hbone.errors import HboneError, HboneStreamError
from ambient.hbone.protocol import ConnectRequest
from ambient.tls.verify import PeerIdentity

ACK_BATCH = 16 * 1024

if TYPE_CHECKING:
    from ambient.hbone.connection import HboneConnection


def wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class StreamListener(Protocol):
    """Callbacks of a stream read without a task (see `HboneStream.attach`). Called from the connection's
    protocol callbacks: they must not block, and `on_data` must not keep `data` (a view of a reused
    buffer) beyond its return without copying it."""

    def on_data(self, data: bytes | memoryview) -> None: ...
    def on_eof(self) -> None: ...
    def on_error(self, error: HboneError) -> None: ...
    def on_writable(self) -> None: ...


class HboneStream:
    """A tunnelled byte stream (one CONNECT). read/write/write_eof/close, like a TCP socket."""

    def __init__(self, conn: HboneConnection, stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.request: ConnectRequest | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._unacked = 0  # read by the application, not yet handed to h2's flow control (ACK_BATCH)
        self._eof = False
        self._local_closed = False
        self._finished = False
        self._closed_here = False
        self._responded = False
        self._error: HboneError | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._response: asyncio.Future[list[tuple[str, str]]] | None = None
        self._listener: StreamListener | None = None
        self._held = 0  # delivered to the listener, not yet `consumed`
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- identity / addresses -------------------------------------------------------------------------
    @property
    def peer(self) -> PeerIdentity | None:
        return self._conn.peer

    @property
    def connection(self) -> HboneConnection:
        return self._conn

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    def __repr__(self) -> str:
        return (
            f"HboneStream(id={self.stream_id}, peer={self._conn.label}, sent={self.bytes_sent}, "
            f"recv={self.bytes_received}, eof={self._eof}, local_closed={self._local_closed})"
        )

    # -- application API ------------------------------------------------------------------------------
    async def read(self, max_bytes: int = -1) -> bytes:
        """Return up to `max_bytes` (all of the next chunk when -1); b"" once the peer ended the stream."""
        # Once the peer's END_STREAM arrived its direction is complete: what is buffered is delivered
        # even if the stream or connection fails afterwards (a late reset loses nothing it had sent).
        while not self._chunks:
            if self._error is not None and (not self._eof or self._closed_here):
                raise self._error
            if self._eof:
                return b""
            self._read_waiter = self._conn._loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        chunk = self._chunks[0]
        if 0 <= max_bytes < len(chunk):
            self._chunks[0] = chunk[max_bytes:]
            chunk = chunk[:max_bytes]
        else:
            self._chunks.popleft()
        n = len(chunk)
        self._buffered -= n
        self._unacked += n
        if self._unacked >= ACK_BATCH:
            # Small reads are reported to h2 together: its window manager emits WINDOW_UPDATE only once
            # half a window was consumed anyway. No stall: a peer blocked on a window means more than
            # half of it was consumed and not yet reported, far more than ACK_BATCH per stream (and
            # 100 streams x ACK_BATCH is far below half the connection window).
            self._flush_acks()
        return chunk

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of `data`, waiting for HTTP/2 flow-control window and transport drain."""
        view = memoryview(data).cast("B")
        while view:
            n = self.send_nowait(view)
            view = view[n:]
            if not view:
                return
            if self._conn._paused:
                await self._conn._wait_writable()
                continue
            self._write_waiter = self._conn._loop.create_future()
            try:
                await self._write_waiter
            finally:
                self._write_waiter = None

    def send_nowait(self, view: memoryview) -> int:
        """Send what the flow-control windows and the transport take right now, in DATA frames of at most
        the peer's frame size; return how many bytes of `view` were sent (they are copied: the caller may
        reuse its buffer at once). 0 means: wait for `on_writable` / `write`'s waiters."""
        self._check_writable()
        conn = self._conn
        h2c = conn._h2
        total = len(view)
        sent = 0
        while sent < total and not conn._paused:
            try:
                window = h2c.local_flow_control_window(self.stream_id)
            except h2.exceptions.StreamClosedError:
                raise self._error or HboneStreamError(f"stream {self.stream_id} to {conn.label} is closed") from None
            if window <= 0:
                break
            n = min(window, total - sent, h2c.max_outbound_frame_size)
            try:
                conn.send_data(self.stream_id, view[sent : sent + n])
            except h2.exceptions.H2Error as exc:
                raise HboneStreamError(f"cannot send on stream {self.stream_id} to {conn.label}: {exc}") from None
            sent += n
        self.bytes_sent += sent
        return sent

    async def write_eof(self) -> None:
        """Half-close: send END_STREAM (the TCP FIN of the tunnel). Reading continues."""
        self.end()

    def end(self) -> None:
        """`write_eof` without a task: send END_STREAM now."""
        if self._local_closed or self._error is not None:
            return
        self._local_closed = True
        try:
            if not (self._conn._fast and h2fast.end_stream(self._conn._h2, self.stream_id)):
                self._conn._h2.end_stream(self.stream_id)
        except h2.exceptions.H2Error as exc:
            raise HboneStreamError(f"cannot end stream {self.stream_id} to {self._conn.label}: {exc}") from None
        self._conn._flush()
        self._maybe_finished()

    def close(self, error_code: int | None = None) -> None:
        """Release the stream; resets it (RST_STREAM) unless both directions already ended. Without an
        explicit code: CANCEL, or NO_ERROR once this side has ended its half (RFC 9113 8.1: after a complete
        answer, NO_ERROR asks the peer to stop sending without failing what it received)."""
        if self._finished:
            return
        if self._error is None and not (self._local_closed and self._eof):
            if error_code is None:
                error_code = ErrorCodes.NO_ERROR if self._local_closed else ErrorCodes.CANCEL
            self._conn._reset(self.stream_id, error_code)
        self._error = self._error or HboneStreamError(f"stream {self.stream_id} was closed locally")
        self._closed_here = True
        self._drop_buffer()
        # A task blocked in read()/write() on this stream must not hang: it sees the error now.
        wake(self._read_waiter)
        wake(self._write_waiter)
        self._finish()

    def abort(self) -> None:
        self.close(ErrorCodes.CANCEL)

    # -- listener mode (no reader task) --------------------------------------------------------------------
    def attach(self, listener: StreamListener) -> None:
        """Deliver everything received from now on to `listener` (what arrived before is replayed at once,
        then the EOF or error if those came too). Acknowledge delivered bytes with `consumed`."""
        self._listener = listener
        chunks = list(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        for chunk in chunks:
            listener.on_data(chunk)
        if self._error is not None and (not self._eof or self._closed_here):
            listener.on_error(self._error)
        elif self._eof:
            listener.on_eof()

    def detach(self) -> None:
        self._listener = None

    def consumed(self, n: int) -> None:
        """The listener handed `n` delivered bytes on: give them back to the peer's window (batched)."""
        if self._finished:
            return  # `_finish` already gave back everything the listener held
        self._held -= n
        self._unacked += n
        if self._unacked >= ACK_BATCH:
            self._flush_acks()

    def _writable(self) -> None:
        wake(self._write_waiter)
        if self._listener is not None:
            self._listener.on_writable()

    # -- server side ------------------------------------------------------------------------------------
    def respond(self, status: int) -> None:
        """Server: answer the CONNECT. 200 opens the tunnel; any other status ends the stream."""
        if self._responded:
            return
        self._responded = True
        ok = status == 200
        try:
            headers = proto.response_headers(status)
            if not (self._conn._fast and h2fast.send_headers(self._conn._h2, self.stream_id, headers,
                                                             end_stream=not ok)):
                self._conn._h2.send_headers(self.stream_id, headers, end_stream=not ok)
        except h2.exceptions.H2Error as exc:
            raise HboneStreamError(f"cannot answer stream {self.stream_id}: {exc}") from None
        self._conn._flush()
        if not ok:
            self._local_closed = True
            self.close(ErrorCodes.NO_ERROR)

    # -- internals --------------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._local_closed:
            raise HboneStreamError(f"stream {self.stream_id} to {self._conn.label}: write after write_eof")

    def _flush_acks(self) -> None:
        if self._unacked:
            n, self._unacked = self._unacked, 0
            self._conn._ack(self.stream_id, n)

    def _drop_buffer(self) -> None:
        if self._buffered:
            # Unread bytes still count against the connection window: give them back.
            self._conn._ack(self.stream_id, self._buffered)
        self._chunks.clear()
        self._buffered = 0

    def _finish(self) -> None:
        # Bytes a listener still holds (e.g. for a stalled app) count against the connection window.
        self._unacked += self._held
        self._held = 0
        self._flush_acks()
        if not self._finished:
            self._finished = True
            self._conn._stream_finished(self)

    def _maybe_finished(self) -> None:
        if self._local_closed and self._eof:
            self._finish()

    def _on_data(self, data: bytes | memoryview, flow_len: int) -> None:
        if self._finished:
            self._conn._ack(self.stream_id, flow_len)
            return
        if flow_len > len(data):  # padding is never delivered: acknowledge it at once
            self._conn._ack(self.stream_id, flow_len - len(data))
        if data:
            self.bytes_received += len(data)
            if self._listener is not None:
                self._held += len(data)
                self._listener.on_data(data)
                return
            self._chunks.append(bytes(data) if isinstance(data, memoryview) else data)
            self._buffered += len(data)
            wake(self._read_waiter)

    def _on_eof(self) -> None:
        self._eof = True
        wake(self._read_waiter)
        if self._listener is not None:
            self._listener.on_eof()
        self._maybe_finished()

    def _on_response(self, headers: list[tuple[str, str]]) -> None:
        if self._response is not None and not self._response.done():
            self._response.set_result(headers)

    def _on_error(self, error: HboneError) -> None:
        if self._error is None:
            self._error = error
        if self._response is not None and not self._response.done():
            self._response.set_exception(error)
            self._response.exception()  # mark retrieved: the opener may have been cancelled
        wake(self._read_waiter)
        wake(self._write_waiter)
        if self._listener is not None:
            self._listener.on_error(self._error)
        if not self._eof:  # incomplete inbound data is useless: give its window back
            self._drop_buffer()
        self._finish()
