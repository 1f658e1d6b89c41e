"""One HBONE connection: HTTP/2 (python-hyper `h2`, sans-IO) driven by an asyncio Protocol over TLS,
multiplexing tunnel streams (`HboneStream`, in `stream.py`). Shared by the client pool and the server.

Why a Protocol: every received TLS chunk is handled in the callback and every frame out is one
`transport.write`; no reader task per connection and no StreamReader copies on the hot path. DATA frames
of open streams are split off here and handed to their stream without h2's state machine; the frames
every tunnel has (its CONNECT request or response HEADERS, its END_STREAM DATA frame) take h2's
narrowest internals when whole and plain; h2 sees the other frames, whole (`h2fast.py` holds every use
of h2 internals).

Invariants:
- Bounded memory both ways. Inbound: a stream buffers at most its receive window (4 MiB); bytes are
  acknowledged to the peer (WINDOW_UPDATE) only when the application reads them, so a stalled reader
  stalls only its own stream. Outbound: `write` waits for the stream+connection window AND for the
  transport to drain (pause_writing/resume_writing), so nothing piles up in user space.
- A header block (HEADERS + CONTINUATION) is capped at the advertised header list size as its frames
  arrive (`h2fast.FastFrameBuffer`): past it the connection ends with GOAWAY(COMPRESSION_ERROR), so a
  CONTINUATION flood holds at most that much, not h2's 64 frames x the 1 MiB frame size.
- Bytes of a stream that is reset or dropped unread are still acknowledged on the connection window,
  so one bad stream cannot starve the connection.
- FIN <-> END_STREAM: `write_eof` sends END_STREAM; a received END_STREAM makes `read` return b"".
- A finished stream leaves both stream tables at once (ours and h2's): a connection holds per-stream state
  only for its live streams, so an idle connection after a burst holds none of the burst's streams.
- The peer identity is fixed at handshake time (`verify` callback in `connection_made`); a connection
  whose peer fails verification never sends or accepts a single HTTP/2 stream.
- h2 treats GOAWAY as terminal, so a connection that sends or receives GOAWAY ends all its streams.
- No tasks are created here: timers (keepalive) use `call_later`, stream work runs in callers' tasks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from ambient.hbone import h2fast, refusals
from ambient.hbone import protocol as proto
from ambient.hbone.errors import BadConnectRequest, HboneConnectError, HboneError, HboneStreamError
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.stream import HboneStream, wake
from ambient.tls.errors import TlsError
from ambient.tls.verify import PeerIdentity

log = logging.getLogger(__name__)


WRITE_HIGH_WATER = 2 * 1024 * 1024
BULK_FRAME = 64 * 1024  # DATA frames at least this big are written out at once, not corked
CLOSE_GRACE = 1.0
_SC = h2.settings.SettingCodes


@dataclass(frozen=True, slots=True)
class H2Settings:
    """HTTP/2 knobs; defaults are the reference's (protocols.md section 2)."""

    stream_window: int = proto.STREAM_WINDOW
    connection_window: int = proto.CONNECTION_WINDOW
    max_frame_size: int = proto.MAX_FRAME_SIZE
    max_concurrent_streams: int = proto.SERVER_MAX_CONCURRENT_STREAMS
    max_header_list_size: int = proto.SERVER_MAX_HEADER_LIST
    ping_interval: float = proto.PING_INTERVAL
    ping_timeout: float = proto.PING_TIMEOUT

    @classmethod
    def client(cls) -> H2Settings:
        return cls(max_header_list_size=proto.CLIENT_MAX_HEADER_LIST)


Verifier = Callable[[Any], PeerIdentity]
__all__ = ["H2Settings", "HboneConnection", "HboneStream"]

# Abuse guards (HTTP/2 rapid reset CVE-2023-44487, PING and SETTINGS floods): more than LIMIT events of
# one kind within WINDOW seconds ends the connection with GOAWAY(ENHANCE_YOUR_CALM). Legitimate peers
# stay far below: a reset before the response is rare, PINGs come every 10 s, SETTINGS once.
ABUSE_WINDOW = 10.0
ABUSE_LIMITS = {"early reset": 100, "PING": 100, "SETTINGS": 100}
_ABUSE_REASONS = {"early reset": "rapid_reset", "PING": "ping_flood", "SETTINGS": "settings_flood"}


class _RateWindow:
    """Counts events in fixed windows; `hit()` is True once the limit is exceeded."""

    __slots__ = ("count", "limit", "start")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.start = 0.0
        self.count = 0

    def hit(self, now: float) -> bool:
        if now - self.start > ABUSE_WINDOW:
            self.start, self.count = now, 0
        self.count += 1
        return self.count > self.limit


READ_BUFFER_MIN = 16 * 1024
READ_BUFFER_MAX = 256 * 1024


class HboneConnection(asyncio.BufferedProtocol):
    """HTTP/2 over one TLS transport. Create with `client_side` and hand to create_connection/start_tls.

    A BufferedProtocol: the TLS layer decrypts straight into one reusable buffer per connection (16 KiB,
    grown to 256 KiB once a read fills it), which h2 then copies into its frame buffer; as a plain
    Protocol every TLS record was a new bytes object joined into another one first."""

    def __init__(
        self,
        *,
        client_side: bool,
        settings: H2Settings | None = None,
        verify: Verifier | None = None,
        on_request: Callable[[HboneStream, ConnectRequest], None] | None = None,
        on_stream_finished: Callable[[HboneConnection, HboneStream], None] | None = None,
        on_lost: Callable[[HboneConnection], None] | None = None,
        on_rejected: Callable[[HboneConnection, str], None] | None = None,
        label: str = "",
    ) -> None:
        self.client_side = client_side
        self.settings = settings or (H2Settings.client() if client_side else H2Settings())
        self._verify = verify
        self._on_request = on_request
        self._on_stream_finished = on_stream_finished
        self._on_lost = on_lost
        self._on_rejected = on_rejected
        self.label = label
        self._loop = asyncio.get_running_loop()
        self._h2 = h2.connection.H2Connection(
            # Outbound headers are built here (CONNECT requests from build_connect_headers, whose
            # authority is parsed first; bare :status responses): h2 re-validating every one of them
            # was a tenth of a new connection's cost. Inbound headers from the peer stay validated.
            h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8",
                                      validate_outbound_headers=False)
        )
        # The fast paths (h2 internals, `h2fast`) only when their check passed; else h2's public API only.
        self._fast = h2fast.enabled()
        if h2fast.capped_buffer_available():  # the header-block cap is a limit: kept with the fast paths off
            self._h2.incoming_buffer = h2fast.FastFrameBuffer(
                server=not client_side, max_header_block=self.settings.max_header_list_size, one_copy=self._fast)
        if self._fast:
            self._h2.encoder = h2fast.PlainEncoder()
        self._transport: asyncio.Transport | None = None
        self.streams: dict[int, HboneStream] = {}
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.closed = False
        self.error: HboneError | None = None
        self.peer: PeerIdentity | None = None
        self.accepting = True  # server: takes new streams; client: pool may open new streams
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self._ping_handle: asyncio.TimerHandle | None = None
        self._ping_sent_at: float | None = None
        self.pings_answered = 0  # keepalive PINGs the peer acknowledged
        self.reserved = 0  # client pool: streams promised to callers but not yet opened
        self.pool_key: Any = None  # client pool: the key this connection serves
        self.local_addr: tuple[Any, ...] | None = None
        self.remote_addr: tuple[Any, ...] | None = None
        # start_tls (server side) attaches us before the caller can call connection_made: bytes
        # decrypted in that gap (the client preface) wait here.
        self._early: list[bytes] | None = []
        self._rbuf = bytearray(READ_BUFFER_MIN)
        self._rview = memoryview(self._rbuf)
        self._abuse = {kind: _RateWindow(limit) for kind, limit in ABUSE_LIMITS.items()}
        self._out: list[bytes | memoryview] = []  # corked output (see `_queue`)
        self._out_handle: asyncio.Handle | None = None
        self._fast_left = 0  # payload bytes still to come of the DATA frame the fast path is reading
        self._fast_stream: HboneStream | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass asyncio.Transport
        self._transport = transport
        self.local_addr = transport.get_extra_info("sockname")
        self.remote_addr = transport.get_extra_info("peername")
        if not self.label and self.remote_addr:
            self.label = f"{self.remote_addr[0]}:{self.remote_addr[1]}"
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        reject: str | None = None
        if self._verify is not None:
            try:
                self.peer = self._verify(transport.get_extra_info("ssl_object"))
            except TlsError as exc:
                reject = exc.message
        s = self.settings
        values = {
            _SC.INITIAL_WINDOW_SIZE: s.stream_window,
            _SC.MAX_FRAME_SIZE: s.max_frame_size,
            _SC.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
        }
        if self.client_side:
            values[_SC.ENABLE_PUSH] = 0
        else:
            values[_SC.MAX_CONCURRENT_STREAMS] = s.max_concurrent_streams
        # Initial values are "current" at once in h2 (no wait for the ACK). h2 would only raise its
        # inbound frame limit when the ACK is processed, and an ACK followed by a big frame in the same
        # read would then fail with FRAME_SIZE_ERROR: set the limits directly.
        self._h2.local_settings = h2.settings.Settings(client=self.client_side, initial_values=values)
        self._h2.max_inbound_frame_size = s.max_frame_size
        self._h2.decoder.max_header_list_size = s.max_header_list_size
        if reject is not None:
            self._reject(reject)
            return
        self._h2.initiate_connection()
        if s.connection_window > 65535:
            self._h2.increment_flow_control_window(s.connection_window - 65535)
        self._flush()
        if s.ping_interval > 0:
            self._ping_handle = self._loop.call_later(s.ping_interval, self._keepalive)
        early, self._early = self._early, None
        for chunk in early or ():
            self.data_received(chunk)

    def _reject(self, reason: str) -> None:
        """Identity/policy failure right after the handshake: no streams at all. The server tells the
        client why in the GOAWAY debug data (INADEQUATE_SECURITY), then closes."""
        err = HboneConnectError(f"HBONE peer {self.label} rejected: {reason}")
        self.error = err
        self.accepting = False
        if not self.client_side:
            self._h2.initiate_connection()
            self._h2.close_connection(ErrorCodes.INADEQUATE_SECURITY, additional_data=reason.encode()[:1024])
            self._flush()
        self._early = None
        if self._on_rejected is not None:
            self._on_rejected(self, reason)
        if not self.ready.done():
            self.ready.set_exception(err)
            self.ready.exception()
        assert self._transport is not None
        self._close_transport()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rview

    def buffer_updated(self, nbytes: int) -> None:
        view = self._rview
        if nbytes == len(view) and nbytes < READ_BUFFER_MAX:
            # A full buffer means bulk traffic: read bigger chunks from now on (after handing this one on).
            self._rbuf = bytearray(READ_BUFFER_MAX)
            self._rview = memoryview(self._rbuf)
        self.data_received(view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if self._early is not None:
            self._early.append(bytes(data))  # the read buffer is reused: keep a copy
            return
        if self.error is not None and self.peer is None:
            return  # rejected connection: never feed its bytes to HTTP/2
        view = data if isinstance(data, memoryview) else memoryview(data)
        h2c = self._h2
        try:
            if not self._fast:  # the plain library path: h2 parses every frame
                self._handle_events(h2c.receive_data(bytes(view)))
                return
            while view:
                if self._fast_left:
                    view = self._continue_data(view)
                    continue
                need = h2fast.bytes_needed(h2c)
                if need == 0 and len(view) >= 9:  # a frame boundary, h2 holding nothing: fast path?
                    claimed = h2fast.claim_data_frame(h2c, view[:9], self.streams)
                    if claimed is not None:
                        stream, length = claimed
                        if length:
                            self._fast_left, self._fast_stream = length, stream
                        view = view[9:]
                        continue
                    need = h2fast.frame_length(view[:9])
                    if need <= len(view):  # a whole frame: the per-connection ones skip h2's generic path
                        events = h2fast.receive_whole_frame(h2c, view[:need])
                        if events is not None:
                            view = view[need:]
                            if not self._handle_events(events):
                                return
                            continue
                # h2 gets whole frames (or the rest of one it holds part of), then its buffer is empty again
                take = len(view) if need <= 0 else min(need, len(view))
                events = h2c.receive_data(view[:take])
                view = view[take:]
                if not self._handle_events(events):
                    return
        except h2fast.HeaderBlockTooLarge as exc:
            # h2 queued GOAWAY(COMPRESSION_ERROR) already; the bytes still on their way are dropped.
            refusals.count("header_block_too_large")
            log.warning("hbone: closing connection from %s (%s): %s", self.label, self.peer, exc)
            self._fail(HboneError(f"HBONE peer {self.label} sent an oversized header block: {exc}"),
                       code=ErrorCodes.COMPRESSION_ERROR)
            return
        except h2.exceptions.ProtocolError as exc:
            self._fail(HboneError(f"HTTP/2 protocol error from {self.label}: {exc}"))
            return
        self._flush()

    def _continue_data(self, view: memoryview) -> memoryview:
        take = min(self._fast_left, len(view))
        self._fast_left -= take
        stream = self._fast_stream
        if not self._fast_left:
            self._fast_stream = None
        assert stream is not None
        stream._on_data(view[:take], take)
        return view[take:]

    def _handle_events(self, events: list[h2.events.Event]) -> bool:
        """React to h2's events in order; False once the connection failed (stop reading)."""
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                stream = self.streams.get(ev.stream_id)
                if stream is None:
                    self._ack(ev.stream_id, ev.flow_controlled_length)
                else:
                    stream._on_data(ev.data, ev.flow_controlled_length)
            elif isinstance(ev, h2.events.WindowUpdated):
                if ev.stream_id:
                    s = self.streams.get(ev.stream_id)
                    if s is not None:
                        s._writable()
                else:
                    self._wake_writers()
            elif isinstance(ev, h2.events.StreamEnded):
                s = self.streams.get(ev.stream_id)
                if s is not None:
                    s._on_eof()
            elif isinstance(ev, h2.events.RequestReceived):
                self._request_received(ev)
            elif isinstance(ev, h2.events.ResponseReceived):
                s = self.streams.get(ev.stream_id)
                if s is not None:
                    s._on_response(list(ev.headers or []))  # type: ignore[arg-type]
            elif isinstance(ev, h2.events.StreamReset):
                s = self.streams.get(ev.stream_id)
                if s is not None and not s._responded and ev.remote_reset and self._abused("early reset"):
                    return False
                if s is not None:
                    code = ev.error_code
                    s._on_error(
                        HboneStreamError(
                            f"stream {ev.stream_id} reset by {self.label} ({_code_name(code)})",
                            error_code=int(code) if code is not None else None,
                        )
                    )
            elif isinstance(ev, h2.events.PingReceived):
                if self._abused("PING"):
                    return False
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                if self._abused("SETTINGS"):
                    return False
                if _SC.INITIAL_WINDOW_SIZE in ev.changed_settings:
                    self._wake_writers()
                if not self.ready.done():
                    self.ready.set_result(None)
            elif isinstance(ev, h2.events.PingAckReceived):
                self._ping_sent_at = None
                self.pings_answered += 1
            elif isinstance(ev, h2.events.ConnectionTerminated):
                debug = (ev.additional_data or b"").decode("utf-8", "replace")
                msg = f"HBONE peer {self.label} closed the connection ({_code_name(ev.error_code)})"
                # RFC 9113 6.8: streams above the GOAWAY's last stream id were not processed by the peer;
                # fail them as refused so that the pool retries them on another connection.
                last = ev.last_stream_id if ev.last_stream_id is not None else 0
                for sid, stream in list(self.streams.items()):
                    if self.client_side and sid > last and not stream._responded:
                        stream._on_error(HboneStreamError(f"{msg}: stream {sid} not processed",
                                                          error_code=ErrorCodes.REFUSED_STREAM))
                self._fail(HboneConnectError(f"{msg}: {debug}" if debug else msg), send_goaway=False)
                return False
        return True

    def eof_received(self) -> bool | None:
        return False  # a TLS peer half-closing means it is gone: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._out.clear()
        self.accepting = False
        if self._ping_handle is not None:
            self._ping_handle.cancel()
        if self.error is None:
            self.error = HboneStreamError(
                f"HBONE connection to {self.label} lost" + (f": {exc}" if exc else ""),
                hint="the peer proxy restarted, or a network path dropped the connection",
            )
        for stream in list(self.streams.values()):
            stream._on_error(self.error)
        for fut in self._drain_waiters:
            wake(fut)
        self._drain_waiters.clear()
        if not self.ready.done():
            self.ready.set_exception(self.error)
            self.ready.exception()
        wake(self.lost)
        if self._on_lost is not None:
            self._on_lost(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            wake(fut)
        self._wake_writers()  # listeners (no drain future) resume sending too

    # -- stream management -----------------------------------------------------------------------------
    @property
    def active_streams(self) -> int:
        return len(self.streams)

    @property
    def peer_max_streams(self) -> int:
        return int(self._h2.remote_settings.max_concurrent_streams)

    async def open_stream(self, headers: list[tuple[str, str]]) -> HboneStream:
        """Client: send a CONNECT and wait for a 200; raise `HboneStatusError` otherwise."""
        if self.closed or self.error is not None:
            raise self.error or HboneStreamError(f"HBONE connection to {self.label} is closed")
        try:
            sid = self._h2.get_next_available_stream_id()
            stream = HboneStream(self, sid)
            stream._response = self._loop.create_future()
            self.streams[sid] = stream
            if not (self._fast and h2fast.send_headers(self._h2, sid, headers, end_stream=False)):
                self._h2.send_headers(sid, headers, end_stream=False)
        except h2.exceptions.H2Error as exc:
            raise HboneStreamError(f"cannot open a stream to {self.label}: {exc}") from None
        self._flush()
        try:
            resp = await stream._response
            authority = next((v for k, v in headers if k == ":authority"), "?")
            proto.check_response(resp, peer=self.label, authority=authority)
        except BaseException:
            stream.close()
            raise
        stream._responded = True
        return stream

    def _request_received(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        if self.client_side or self._on_request is None or not self.accepting:
            self._reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        stream = HboneStream(self, sid)
        self.streams[sid] = stream
        try:
            request = proto.parse_connect_request(ev.headers or [])  # type: ignore[arg-type]
        except BadConnectRequest as exc:
            log.info("hbone: rejecting stream %d from %s: %s", sid, self.peer, exc.message)
            stream.respond(exc.status)
            return
        stream.request = request
        self._on_request(stream, request)

    def _stream_finished(self, stream: HboneStream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
            # h2 keeps the closed stream until the next stream opens (`h2fast.forget_closed_stream`); without
            # the fast paths, h2's own cleanup (counting open streams drops every closed one) runs now.
            if self._fast:
                h2fast.forget_closed_stream(self._h2, stream.stream_id)
            elif not self.streams:
                _ = self._h2.open_outbound_streams
            if self._on_stream_finished is not None:
                self._on_stream_finished(self, stream)

    # -- I/O helpers ---------------------------------------------------------------------------------------
    def send_data(self, stream_id: int, data: bytes | memoryview) -> None:
        """One DATA frame (no END_STREAM, no padding) within the window the caller checked.

        h2's `send_data` copies the payload five times (memoryview -> bytes, body join, header join,
        send buffer, `data_to_send`): for bulk tunnels that was the largest user-space cost. This does h2's
        bookkeeping (`h2fast.account_sent_data`) exactly as `H2Connection.send_data` does, then queues
        header + payload in one copy (the caller may reuse its buffer at once; a bulk frame is copied into a
        reused scratch buffer, see `_send_copied`, or not at all if its bytes are immutable). Whatever h2
        already queued goes first, so frames stay in order. A bulk frame is written out at once (the
        transport's pause_writing then comes before the caller reads more)."""
        n = len(data)
        if not self._fast:  # the plain library path: h2 frames it
            self._h2.send_data(stream_id, bytes(data))
            self._flush()
            if n >= BULK_FRAME:
                self._write_out()
            return
        h2fast.account_sent_data(self._h2, stream_id, n)
        self._flush()
        header = h2fast.data_frame_header(stream_id, n)
        if n < BULK_FRAME:
            self._queue(b"".join((header, data)))  # corked: a copy, as the caller may reuse its buffer
        elif _immutable(data):
            # Nobody can change these bytes: the TLS layer encrypts straight from the caller's buffer
            # (header and payload go out in one `writelines`, two TLS records). Joining them first cost a
            # copy of every byte plus a fresh 1 MiB allocation per frame, which glibc gave back to the OS
            # (heap trim) and page-faulted in again, also under the TLS layer's own 1 MiB output buffer:
            # a quarter of a bulk tunnel's CPU (docs/performance.md).
            self._queue(header)
            self._queue(data)
            self._write_out()
        else:
            self._send_copied(header, data)

    def _send_copied(self, header: bytes, data: bytes | memoryview) -> None:
        """Write out a bulk frame whose payload the caller may change (a relay's reused read buffer): one
        copy into this thread's scratch buffer, written at once. The TLS layer encrypts it before
        `writelines` returns (asyncio's and uvloop's both do in the open state), so the scratch is reused for
        the next frame, warm in cache, instead of a fresh 1 MiB allocation per frame; should the transport
        keep a reference after all (its write backlog), the scratch is left to it and a new one made."""
        n = len(data)
        scratch = _take_scratch(n)
        with memoryview(scratch) as whole:
            part = whole[:n]
            part[:] = data
            self._queue(header)
            self._queue(part)
            del part
            self._write_out()
        # References now: `scratch` and getrefcount's argument, unless the transport kept a view of it.
        if sys.getrefcount(scratch) == 2:
            _give_back_scratch(scratch)

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data:
            self._queue(data)

    # Output is corked for one event-loop pass: every frame written while handling one round of events
    # (HEADERS, DATA, END_STREAM, WINDOW_UPDATE of the many streams a pooled connection carries) leaves in
    # one `writelines` (TLS records for all of them, one send() syscall) instead of one syscall each.
    def _queue(self, data: bytes | memoryview) -> None:
        if not self._writable_transport():
            return
        self._out.append(data)
        if self._out_handle is None:
            self._out_handle = self._loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        if self._out_handle is not None:
            self._out_handle.cancel()
            self._out_handle = None
        out, self._out = self._out, []
        if out and self._writable_transport():
            transport = cast(asyncio.Transport, self._transport)
            if len(out) == 1:
                transport.write(out[0])
            else:
                transport.writelines(out)

    def _writable_transport(self) -> bool:
        # `closed` is only set in connection_lost; a transport we already closed must not be written to
        # (Python 3.11's SSL transport drops its protocol on a second close and then fails on write).
        return self._transport is not None and not self.closed and not self._transport.is_closing()

    def _ack(self, stream_id: int, n: int) -> None:
        if n <= 0 or self.closed:
            return
        try:
            self._h2.acknowledge_received_data(n, stream_id)
        except h2.exceptions.H2Error:
            return  # connection already terminated: nothing to hand back
        self._flush()

    def _reset(self, stream_id: int, code: int) -> None:
        if self.closed:
            return
        try:
            self._h2.reset_stream(stream_id, code)
        except h2.exceptions.H2Error:
            return
        self._flush()

    async def _wait_writable(self) -> None:
        if self._paused and not self.closed:
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            await fut

    def _wake_writers(self) -> None:
        for s in list(self.streams.values()):
            s._writable()

    def _keepalive(self) -> None:
        """PING every interval; drop the connection when a PING stays unanswered for the timeout."""
        if self.closed:
            return
        now = self._loop.time()
        if self._ping_sent_at is not None and now - self._ping_sent_at >= self.settings.ping_timeout:
            self._fail(HboneStreamError(f"HBONE peer {self.label} did not answer PING for "
                                        f"{self.settings.ping_timeout:.0f}s"))
            return
        if self._ping_sent_at is None:
            try:
                self._h2.ping(os.urandom(8))
            except h2.exceptions.H2Error:
                return
            self._ping_sent_at = now
            self._flush()
        self._ping_handle = self._loop.call_later(self.settings.ping_interval, self._keepalive)

    def _abused(self, kind: str) -> bool:
        if not self._abuse[kind].hit(self._loop.time()):
            return False
        log.warning("hbone: closing connection from %s (%s): %s flood", self.label, self.peer, kind)
        refusals.count(_ABUSE_REASONS[kind])
        self._fail(
            HboneError(f"HBONE peer {self.label} sent too many {kind} frames"),
            code=ErrorCodes.ENHANCE_YOUR_CALM,
        )
        return True

    def _fail(self, error: HboneError, *, send_goaway: bool = True, code: int = ErrorCodes.PROTOCOL_ERROR) -> None:
        if self.error is None:
            self.error = error
        self.accepting = False
        if send_goaway and not self.closed:
            try:
                self._h2.close_connection(code)
            except h2.exceptions.H2Error:
                pass  # h2 already terminated the connection (its GOAWAY is queued)
            self._flush()
        self._close_transport()

    def _close_transport(self) -> None:
        """Close gracefully (flush, TLS close_notify) but abort if the peer does not let us finish
        within CLOSE_GRACE: a dead or stalled peer must not hold the connection for the SSL shutdown
        timeout (30 s)."""
        if self._transport is None or self.closed or self._transport.is_closing():
            return
        self._write_out()  # what is corked (a GOAWAY, a last frame) goes before close_notify
        self._transport.close()
        transport = self._transport
        self._loop.call_later(CLOSE_GRACE, lambda: None if self.closed else transport.abort())

    def close(self, reason: str = "closed locally") -> None:
        """Send GOAWAY(NO_ERROR) and close; live streams end with an error."""
        if self.closed:
            return
        if self.error is None:
            self.error = HboneStreamError(f"HBONE connection to {self.label} {reason}")
        self.accepting = False
        try:
            self._h2.close_connection(ErrorCodes.NO_ERROR)
            self._flush()
        except h2.exceptions.H2Error:
            pass
        self._close_transport()

    def abort(self) -> None:
        self._out.clear()
        if self._transport is not None:
            self._transport.abort()

    def __repr__(self) -> str:
        return (
            f"HboneConnection({'client' if self.client_side else 'server'} peer={self.label} "
            f"identity={self.peer} streams={len(self.streams)} closed={self.closed})"
        )


_scratch = threading.local()  # `_send_copied`'s buffer, one per thread (a node proxy's worker threads)


def _take_scratch(n: int) -> bytearray:
    """This thread's scratch buffer (at least `n` bytes), taken out of the slot while in use (a nested send
    on another connection gets a new one)."""
    buf: bytearray | None = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < n:
        return bytearray(n)
    _scratch.buf = None
    return buf


def _give_back_scratch(buf: bytearray) -> None:
    if len(buf) <= proto.MAX_FRAME_SIZE:  # a peer's bigger frame size does not pin more memory per thread
        current: bytearray | None = getattr(_scratch, "buf", None)
        if current is None or len(current) < len(buf):
            _scratch.buf = buf


def _immutable(data: bytes | memoryview) -> bool:
    """Whether `data` is bytes or a view of bytes: safe to hand to the transport without a copy."""
    return isinstance(data, bytes) or (data.readonly and isinstance(data.obj, bytes))


def _code_name(code: int | None) -> str:
    if code is None:
        return "no code"
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"code {code}"
