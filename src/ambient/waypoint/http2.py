"""HTTP/2 (prior knowledge) server of the waypoint, on top of the sans-IO `h2`, over one inner HBONE stream.

`serve_http2(stream, handler, limits, initial)`: one reader loop feeds `h2`; each request runs the handler
in its own task of the connection's TaskGroup; responses are written with HTTP/2 flow control.

Invariants:
- Bounded memory: at most `limits.max_concurrent_streams` requests in flight (SETTINGS, enforced by h2);
  request bodies are acknowledged (WINDOW_UPDATE) only when the handler reads them, so buffered request
  bytes never exceed the connection window (`limits.stream_window` x 4); header lists are capped at
  `limits.max_header_bytes` and CONTINUATION runs by h2's backlog; responses wait for the peer's window.
- Abuse ends the connection with GOAWAY: a protocol error (invalid frames, bad preface, oversized
  headers: h2's error code), more than `limits.max_resets` RST_STREAM in `limits.reset_window` seconds
  (rapid reset, CVE-2023-44487: ENHANCE_YOUR_CALM); a stream reset by the peer cancels its handler.
- Every write goes through one lock that drains `h2.data_to_send()` inside it, so frames (and the HPACK
  encoder state they depend on) reach the wire in the order h2 produced them.
- A handler failure resets only its own stream (500 when nothing was sent yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from ambient.hbone.errors import HboneError
from ambient.hbone.pipe import ByteStream
from ambient.waypoint.errors import HttpProtocolError
from ambient.waypoint.messages import Handler, Limits, Request, strip_hop_by_hop

log = logging.getLogger(__name__)
READ_CHUNK = 64 * 1024
_SC = h2.settings.SettingCodes


class _Stream:
    """Per-request state: the request body queue and the waiters of the handler."""

    def __init__(self, server: Http2Server, sid: int) -> None:
        self.server = server
        self.sid = sid
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.eof = False
        self.error: str | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


class _Body:
    def __init__(self, st: _Stream) -> None:
        self._st = st

    async def read(self) -> bytes:
        st = self._st
        while not st.chunks:
            if st.error is not None:
                raise HttpProtocolError(f"request stream {st.sid}: {st.error}")
            if st.eof:
                return b""
            await st.wait()
        data, flow = st.chunks.popleft()
        await st.server.ack(st.sid, flow)
        return data


class _Writer:
    def __init__(self, st: _Stream, head: bool) -> None:
        self._st = st
        self._head = head
        self._started = False
        self._ended = False

    @property
    def started(self) -> bool:
        return self._started

    @property
    def ended(self) -> bool:
        return self._ended

    def _check(self) -> None:
        if self._st.error is not None:
            raise HttpProtocolError(f"stream {self._st.sid}: {self._st.error}")

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self._check()
        clean = [(k, v) for k, v in strip_hop_by_hop(headers) if not k.startswith(":")]
        self._started = True
        # flushed with the first DATA frame (or the end): one write instead of two
        await self._st.server.send(lambda c: c.send_headers(self._st.sid, [(":status", str(status)), *clean]),
                                   flush=False)

    async def write(self, data: bytes) -> None:
        if self._head:
            return
        view = memoryview(data)
        server = self._st.server
        while view:
            self._check()
            try:
                window = min(server.conn.local_flow_control_window(self._st.sid), server.conn.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                raise HttpProtocolError(f"stream {self._st.sid} closed by the client") from None
            if window <= 0:
                await self._st.wait()
                continue
            chunk, view = view[:window], view[window:]
            await server.send(lambda c, b=bytes(chunk): c.send_data(self._st.sid, b))

    async def end(self, trailers: list[tuple[str, str]] | None = None) -> None:
        if self._ended:
            return
        self._check()
        self._ended = True
        if trailers and not self._head:
            clean = [(k, v) for k, v in trailers if not k.startswith(":")]
            await self._st.server.send(lambda c: c.send_headers(self._st.sid, clean, end_stream=True))
        else:
            await self._st.server.send(lambda c: c.end_stream(self._st.sid))


class Http2Server:
    def __init__(self, stream: ByteStream, handler: Handler, limits: Limits) -> None:
        self.stream = stream
        self.handler = handler
        self.limits = limits
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            _SC.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            _SC.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            _SC.INITIAL_WINDOW_SIZE: limits.stream_window,
        })
        self.conn.decoder.max_header_list_size = limits.max_header_bytes
        self.streams: dict[int, _Stream] = {}
        self.resets: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._tg: asyncio.TaskGroup | None = None
        self.goaway_reason: str | None = None

    # -- output
    async def flush(self) -> None:
        async with self._lock:
            data = self.conn.data_to_send()
            if data:
                try:
                    # a client that stops reading (slow read) is cut off instead of holding us forever
                    async with asyncio.timeout(self.limits.idle_timeout):
                        await self.stream.write(data)
                except TimeoutError:
                    self.stream.close()
                    raise HttpProtocolError("client stopped reading", status=408) from None

    async def send(self, action: Any, *, flush: bool = True) -> None:
        try:
            action(self.conn)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            raise HttpProtocolError(f"cannot send on HTTP/2 connection: {exc!r}") from None
        if flush:
            await self.flush()

    async def ack(self, sid: int, flow: int) -> None:
        if flow:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.conn.acknowledge_received_data(flow, sid)
            with contextlib.suppress(HboneError, OSError, HttpProtocolError):
                await self.flush()

    async def _goaway(self, code: ErrorCodes, reason: str) -> None:
        self.goaway_reason = reason
        log.warning("waypoint: HTTP/2 connection closed with GOAWAY %s: %s", code.name, reason)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection(error_code=code)
        with contextlib.suppress(HboneError, OSError, HttpProtocolError):
            await self.flush()

    # -- input
    async def run(self, initial: bytes = b"") -> None:
        self.conn.initiate_connection()
        # the connection window bounds all buffered request bytes of this connection
        self.conn.increment_flow_control_window(4 * self.limits.stream_window - 65535)
        try:
            await self.flush()
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                try:
                    await self._read_loop(initial)
                except (HboneError, OSError, HttpProtocolError) as exc:
                    self.goaway_reason = self.goaway_reason or f"downstream lost: {exc}"
                for st in list(self.streams.values()):
                    if self.goaway_reason is not None and st.task is not None:
                        st.task.cancel()  # abuse or a dead tunnel: nobody will read the answers
                    elif not st.eof and st.error is None:
                        st.error = "connection closed"  # the client is gone: unblock body readers
                        st.wake()
        except* (HboneError, OSError, HttpProtocolError) as group:
            log.info("waypoint: HTTP/2 downstream lost: %s", group.exceptions[0])

    async def _read_loop(self, data: bytes) -> None:
        while True:
            if data:
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    code = getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR)
                    await self._goaway(ErrorCodes(code) if code is not None else ErrorCodes.PROTOCOL_ERROR,
                                       f"protocol error: {exc}")
                    return
                if not await self._handle(events):
                    return
                await self.flush()
            idle = not self.streams
            try:
                async with asyncio.timeout(self.limits.idle_timeout if idle else None):
                    data = await self.stream.read(READ_CHUNK)
            except TimeoutError:
                await self._goaway(ErrorCodes.NO_ERROR, "idle")
                return
            if not data:
                return

    async def _handle(self, events: list[Any]) -> bool:
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                await self._on_request(ev)
            elif isinstance(ev, h2.events.DataReceived):
                st = self.streams.get(ev.stream_id)
                if st is None:  # a stream we already gave up on: keep the connection window flowing
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    continue
                st.chunks.append((bytes(ev.data), ev.flow_controlled_length))
                st.wake()
            elif isinstance(ev, h2.events.StreamEnded):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.eof = True
                    st.wake()
            elif isinstance(ev, h2.events.StreamReset):
                if ev.remote_reset and not self._count_reset():
                    await self._goaway(ErrorCodes.ENHANCE_YOUR_CALM,
                                       f"more than {self.limits.max_resets} stream resets in "
                                       f"{self.limits.reset_window:.0f}s (rapid reset)")
                    return False
                st = self.streams.pop(ev.stream_id, None)
                if st is not None:
                    st.error = "reset by the client"
                    st.wake()
                    if st.task is not None:
                        st.task.cancel()
            elif isinstance(ev, h2.events.WindowUpdated):
                targets = self.streams.values() if ev.stream_id == 0 else [self.streams.get(ev.stream_id)]
                for st in targets:
                    if st is not None:
                        st.wake()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                return False
        return True

    def _count_reset(self) -> bool:
        now = asyncio.get_running_loop().time()
        self.resets.append(now)
        while self.resets and self.resets[0] < now - self.limits.reset_window:
            self.resets.popleft()
        return len(self.resets) <= self.limits.max_resets

    async def _on_request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        pseudo: dict[str, str] = {}
        headers: list[tuple[str, str]] = []
        for k, v in ev.headers:
            name = bytes(k).decode("latin-1").lower()
            value = bytes(v).decode("latin-1")
            if name.startswith(":"):
                pseudo[name] = value
            else:
                headers.append((name, value))
        method = pseudo.get(":method", "")
        path = pseudo.get(":path", "")
        st = _Stream(self, sid)
        st.eof = ev.stream_ended is not None
        self.streams[sid] = st
        if method == "CONNECT" or not (path.startswith("/") or (method == "OPTIONS" and path == "*")):
            await self._local_error(st, 405 if method == "CONNECT" else 400, "unsupported request\n")
            return
        authority = pseudo.get(":authority") or next((v for k, v in headers if k == "host"), "")
        length_s = next((v for k, v in headers if k == "content-length"), None)
        clean = [(k, v) for k, v in strip_hop_by_hop(headers) if k != "host"]
        if any(k == "te" and v.strip().lower() == "trailers" for k, v in headers):
            clean.append(("te", "trailers"))  # the one end-to-end TE value (gRPC needs it)
        request = Request(
            method, path, authority, clean, _Body(st), "HTTP/2", pseudo.get(":scheme", "http"),
            content_length=int(length_s) if length_s is not None and length_s.isdigit() else None,
            has_body=not st.eof,
        )
        assert self._tg is not None
        st.task = self._tg.create_task(self._run(st, request))

    async def _local_error(self, st: _Stream, status: int, text: str) -> None:
        body = text.encode()
        self.conn.send_headers(st.sid, [(":status", str(status)), ("content-type", "text/plain"),
                                        ("content-length", str(len(body)))])
        self.conn.send_data(st.sid, body, end_stream=True)
        self.streams.pop(st.sid, None)
        if not st.eof:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.reset_stream(st.sid, ErrorCodes.NO_ERROR)

    async def _run(self, st: _Stream, request: Request) -> None:
        writer = _Writer(st, request.method == "HEAD")
        try:
            await self.handler(request, writer)
            if not writer.started:
                await writer.start(500, [("content-length", "0")])
            if not writer.ended:
                raise HttpProtocolError("handler returned before the response was complete")
        except (HttpProtocolError, HboneError, OSError) as exc:
            log.info("waypoint: HTTP/2 stream %d failed: %s", st.sid, exc)
            await self._abort(st, writer)
        except Exception:
            log.exception("waypoint: HTTP/2 request handler failed")
            await self._abort(st, writer)
        finally:
            if self.streams.get(st.sid) is st:
                del self.streams[st.sid]
            for _, flow in st.chunks:  # unread body bytes still count against the connection window
                await self.ack(st.sid, flow)
            st.chunks.clear()

    async def _abort(self, st: _Stream, writer: _Writer) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError, HboneError, OSError, HttpProtocolError):
            if not writer.started and st.error is None:
                await writer.start(500, [("content-length", "0")])
                await writer.end()
            else:
                await self.send(lambda c: c.reset_stream(st.sid, ErrorCodes.INTERNAL_ERROR))
        if not st.eof:  # stop the client sending a body nobody reads
            with contextlib.suppress(h2.exceptions.ProtocolError, HboneError, OSError, HttpProtocolError):
                await self.send(lambda c: c.reset_stream(st.sid, ErrorCodes.NO_ERROR))


async def serve_http2(stream: ByteStream, handler: Handler, limits: Limits, initial: bytes = b"") -> Http2Server:
    """Serve HTTP/2 (prior knowledge) on `stream` until the client goes away or misbehaves."""
    server = Http2Server(stream, handler, limits)
    await server.run(initial)
    with contextlib.suppress(HboneError, OSError):
        await stream.write_eof()
    return server
