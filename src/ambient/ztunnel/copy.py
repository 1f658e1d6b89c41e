"""The copy path: move bytes both ways between two connection ends, independently, with half-close.

Ends are a plain TCP socket (`SocketEnd`: the app's connection, a passthrough or inbound-delivery
socket) or an HBONE tunnel stream (`HboneEnd`). `copy_bidirectional(a, b, stats)` runs a->b and b->a as
two tasks of one TaskGroup:
- EOF on one side is propagated as a half-close on the other (TCP FIN <-> HTTP/2 END_STREAM); the other
  direction keeps flowing until its own EOF.
- An error in either direction (reset, tunnel failure) stops both; the caller resets what is left.

Performance (performance.md): cost is per call, not per byte, so a socket end reads with `recv_into`
into a reusable buffer. A socket relayed to a tunnel stream (`_SocketStreamRelay`, every proxied
connection) reads into ONE 1 MiB buffer shared by all relays of the thread (`shared_read_buffer`): a read
is handed on (copied into its DATA frame by `HboneConnection.send_data`, the unsent rest copied aside)
inside the same callback, so no relay holds on to it, an idle connection holds no read buffer at all
(16 KiB per socket end before: most of the node proxy's memory per idle connection), and bulk transfers
move 1 MiB chunks from the first read (1 MiB cost about 10% less CPU per byte than 256 KiB in the
node-pair bench). Other socket ends (`copy_bidirectional`'s two tasks) allocate their own buffer at their
first read, 16 KiB growing to 256 KiB then 1 MiB each time a read fills it.

Invariants: memory per connection is bounded by the socket ends' own read buffers (none for relayed
sockets) plus the HBONE stream window; the shared buffer is never referenced after the callback that
filled it returns; after a burst of at least TRIM_AFTER_RELAYS live relays fell to a quarter of its peak,
the freed heap is handed back once (`RelayCensus`: gc + malloc_trim, TRIM_DELAY after the burst's last
relay ended, so that the HBONE pool's spare connections, closed a second after their last stream, are
handed back with it);
`CopyStats` counters are updated as bytes move (live values for `zc connections`, final values for the
access log and metrics).

Who ended first (`CopyStats.closed_by`, the access line's `closed_by=`): the relay notes the first end event
of a connection, its side (`a` is the client side, `b` the server side) and its kind (EOF, reset, error:
`end_kind`); later events do not overwrite it. Noted at end events only: nothing is added per chunk.
`close_reason` turns it (and the connection's error) into the logged value.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from ambient.hbone.allocator import tune_allocator
from ambient.hbone.connection import HboneStream
from ambient.hbone.errors import HboneError, HboneStreamError

INITIAL_BUFFER = 16 * 1024
MAX_BUFFER = 1024 * 1024
__all__ = ["tune_allocator"]  # re-exported: the node proxy's data path is what it is tuned for
_LINGER_RESET = struct.pack("ii", 1, 0)
_shared = threading.local()  # one read buffer per thread (an event loop runs its callbacks on one thread)


TRIM_AFTER_RELAYS = 1000  # a peak of at least this many live relays ...
TRIM_DELAY = 3.0  # ... that fell to a quarter of it hands freed heap back this long after the last one ended


def _malloc_trim() -> None:
    """Hand freed heap back to the OS (glibc only; elsewhere a no-op; see hbone.allocator)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RelayCensus:
    """Live relays of one thread, and the heap handed back after a burst of connections ended: the
    memory of thousands of closed connections otherwise stays in the process (freed, but fragmented
    below the heap top, and partly cyclic garbage: h2 connections refer to themselves). Once per burst,
    so the full collection's cost does not matter."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.trims = 0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_leave = 0.0

    def enter(self) -> None:
        self.live += 1
        self.peak = max(self.peak, self.live)

    def leave(self, loop: asyncio.AbstractEventLoop) -> None:
        self.live -= 1
        if self.peak >= TRIM_AFTER_RELAYS and self.live <= self.peak // 4:
            # The timer is armed once; each end pushes the trim back (checked when it fires), so it runs
            # TRIM_DELAY after the burst's LAST relay ended: after what that relay's end releases later
            # (its HBONE connection's close: the pool's spare idle timeout) instead of before it.
            self._last_leave = time.monotonic()
            if self._handle is None:
                self._loop = loop
                self._handle = loop.call_later(TRIM_DELAY, self._trim)

    def _trim(self) -> None:
        self._handle = None
        quiet = time.monotonic() - self._last_leave
        if quiet < TRIM_DELAY and self._loop is not None and self.live <= self.peak // 4:
            self._handle = self._loop.call_later(TRIM_DELAY - quiet, self._trim)
            return
        if self.live <= self.peak // 4:
            gc.collect()
            _malloc_trim()
            self.trims += 1
            self.peak = self.live


def relay_census() -> RelayCensus:
    """The thread's census (created at first use)."""
    census: RelayCensus | None = getattr(_shared, "census", None)
    if census is None:
        census = _shared.census = RelayCensus()
    return census


def shared_read_buffer() -> memoryview:
    """The thread's relay read buffer (MAX_BUFFER bytes, allocated at first use)."""
    view: memoryview | None = getattr(_shared, "view", None)
    if view is None:
        view = _shared.view = memoryview(bytearray(MAX_BUFFER))
    return view


class End(Protocol):
    label: str

    async def read(self) -> bytes | memoryview: ...
    async def write(self, data: bytes | memoryview) -> None: ...
    async def write_eof(self) -> None: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


def reset_socket(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees an error at once, never a silent hang."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


REFUSE_GRACE = 0.05


async def refuse(sock: socket.socket, grace: float = REFUSE_GRACE) -> None:
    """Reset a client connection the mesh refuses (policy denial, upstream failure), but not before the
    client has sent something or `grace` has passed. The app's connect() completed when the proxy
    accepted; a client that is still checking that result when the RST lands reads it as "could not
    connect" (curl exit 7) instead of the refusal it is ("connection reset", exit 56). Client-first
    protocols send at once, so this costs nothing; server-first clients wait at most `grace`."""
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    heard: asyncio.Future[None] = loop.create_future()
    try:
        loop.add_reader(fd, _wake, heard)
        try:
            async with asyncio.timeout(grace):
                await heard
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(fd)
    finally:
        reset_socket(sock)


class SocketEnd:
    """A non-blocking TCP socket. Reads and writes try the syscall first and wait for readiness only when
    it would block: one syscall per chunk in the common case, on any event loop (uvloop's `sock_*`
    helpers register and unregister the fd on every call, which cost a third of the bulk throughput)."""

    def __init__(self, sock: socket.socket, label: str = "") -> None:
        self.sock = sock
        self.label = label
        self._loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self._buf = bytearray()  # own read buffer, allocated at the first `recv_nowait` (relays need none)
        self._view = memoryview(self._buf)

    async def _ready(self, write: bool) -> None:
        loop, fd = self._loop, self._fd
        fut: asyncio.Future[None] = loop.create_future()
        if write:
            loop.add_writer(fd, _wake, fut)
        else:
            loop.add_reader(fd, _wake, fut)
        try:
            await fut
        finally:
            with contextlib.suppress(ValueError, OSError):
                if write:
                    loop.remove_writer(fd)
                else:
                    loop.remove_reader(fd)

    async def read(self) -> memoryview:
        while True:
            try:
                return self.recv_nowait()
            except (BlockingIOError, InterruptedError):
                await self._ready(False)

    def recv_nowait(self) -> memoryview:
        """One `recv_into` the reusable buffer (raises BlockingIOError when nothing is waiting); the view is
        valid until the next call."""
        if not self._buf:
            self._buf = bytearray(INITIAL_BUFFER)
            self._view = memoryview(self._buf)
        n = self.sock.recv_into(self._view)
        if n == len(self._buf) and n < MAX_BUFFER:
            # A full read means more is waiting: grow (16 KiB -> 256 KiB -> 1 MiB) so bulk transfers move
            # big chunks (one HTTP/2 frame and one TLS write per MiB instead of four).
            data = bytes(self._view[:n])
            self._view.release()
            self._buf = bytearray(min(MAX_BUFFER, n * 16))
            self._view = memoryview(self._buf)
            return memoryview(data)
        return self._view[:n]

    def recv_shared(self) -> memoryview:
        """One `recv_into` the thread's shared buffer (raises BlockingIOError when nothing is waiting); the
        view must be consumed (sent or copied) before the caller returns to the event loop."""
        view = shared_read_buffer()
        return view[: self.sock.recv_into(view)]

    async def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while True:
            try:
                n = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                n = 0
            if n >= len(view):
                return
            view = view[n:]
            await self._ready(True)

    async def write_eof(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        reset_socket(self.sock)

    def close(self) -> None:
        self.sock.close()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class HboneEnd:
    """One HBONE CONNECT stream."""

    def __init__(self, stream: HboneStream, label: str = "") -> None:
        self.stream = stream
        self.label = label

    async def read(self) -> bytes:
        return await self.stream.read()

    async def write(self, data: bytes | memoryview) -> None:
        await self.stream.write(data)

    async def write_eof(self) -> None:
        await self.stream.write_eof()

    def reset(self) -> None:
        self.stream.abort()

    def close(self) -> None:
        self.stream.close()


DRAIN_CUT = "connection closed at the drain deadline"


class DrainCut(Exception):
    """The connection outlived the drain deadline and was cut."""

    def __str__(self) -> str:
        return DRAIN_CUT


@dataclass(slots=True)
class CopyStats:
    """Bytes moved so far: `sent` a->b (towards the destination), `received` b->a; `closed_by`: the first
    end event ("client" / "server" + `end_kind`; "policy" when a policy change cut it), "" while none."""

    sent: int = 0
    received: int = 0
    closed_by: str = ""


def end_kind(error: BaseException | None) -> str:
    """The kind of a side's end: "" (EOF: FIN or END_STREAM), "_reset" (the peer reset the TCP connection or
    the tunnel stream) or "_error" (any other failure: tunnel connection lost, a local error)."""
    if error is None:
        return ""
    if isinstance(error, (ConnectionResetError, BrokenPipeError)):
        return "_reset"
    if isinstance(error, HboneStreamError) and error.error_code is not None:
        return "_reset"
    return "_error"


def _ended(stats: CopyStats, client_side: bool, error: BaseException | None = None) -> None:
    """Note the connection's first end event (later ones keep it)."""
    if not stats.closed_by:
        stats.closed_by = ("client" if client_side else "server") + end_kind(error)


def close_reason(first_end: str, error: str) -> str:
    """The `closed_by=` value of a finished connection from its first end event and its logged error: the
    drain deadline wins (it cut the connection, whatever had half-closed before); else the first end event;
    else "error" when it failed before either side ended (e.g. the upstream could not be reached); "" for
    a connection that ended without either (nothing to say)."""
    if error == DRAIN_CUT:
        return "drain"
    if first_end:
        return first_end
    return "error" if error else ""


async def _pump(src: End, dst: End, stats: CopyStats, forward: bool) -> None:
    # `forward`: src is a, the client side. The try blocks cost nothing until something raises.
    while True:
        try:
            data = await src.read()
        except Exception as exc:
            _ended(stats, forward, exc)
            raise
        n = len(data)
        if not n:
            _ended(stats, forward)
            await dst.write_eof()
            return
        try:
            await dst.write(data)
        except Exception as exc:
            _ended(stats, not forward, exc)
            raise
        if forward:
            stats.sent += n
        else:
            stats.received += n


STOPPED_PEER_GRACE = 1.0  # seconds to drain the app after the peer stopped reading (Envoy's delayed close)


class _SocketStreamRelay:
    """Both directions between a TCP socket and a tunnel stream, driven by callbacks instead of two tasks:
    the socket's readiness (`add_reader` once, not per read) moves socket bytes into DATA frames, and the
    stream's listener callbacks move received frames into the socket, straight from the TLS read buffer.
    A 1 KB request then costs one event-loop callback per hop instead of a task wake-up, a future and two
    epoll_ctl calls.

    Backpressure, both ways bounded: socket -> stream keeps at most one read's bytes pending when the
    HTTP/2 windows or the transport are full and stops reading the socket until `on_writable`; stream ->
    socket keeps what the socket did not take (at most the stream's receive window, since bytes are
    acknowledged to the peer only once written) and waits for the socket to be writable."""

    def __init__(self, sock: SocketEnd, stream: HboneStream, stats: CopyStats, socket_is_a: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.end = sock
        self.sock = sock.sock
        self.fd = sock._fd
        self.stream = stream
        self.stats = stats
        self.up_is_sent = socket_is_a  # socket -> stream counts as "sent" (a -> b) when the socket is a
        self.done: asyncio.Future[BaseException | None] = self.loop.create_future()
        self.up_pending: memoryview | None = None
        self.up_done = False
        self.down_pending: deque[memoryview] = deque()
        self.down_eof = False
        self.down_done = False
        self.discard_up = False  # the peer stopped reading (RST_STREAM NO_ERROR after its END_STREAM)
        self.reading = False
        self.writing = False

    async def run(self) -> BaseException | None:
        census = relay_census()
        census.enter()
        self.stream.attach(self)
        if not self.done.done():
            self._read(True)
        try:
            return await self.done
        finally:
            self._stop_io()
            self.stream.detach()
            census.leave(self.loop)

    # -- socket -> stream -----------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            chunk = self.end.recv_shared()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._ended(True, exc)
            self._fail(exc)
            return
        if not chunk:
            self._ended(True)
            self._read(False)
            self.up_done = True
            if not self.discard_up:
                try:
                    self.stream.end()
                except HboneError as exc:
                    self._fail(exc)
                    return
            self._check_done()
            return
        if not self.discard_up:
            self._send_up(chunk)

    def _send_up(self, view: memoryview) -> None:
        try:
            n = self.stream.send_nowait(view)
        except HboneError as exc:
            self._ended(False, exc)
            self._fail(exc)
            return
        self._count(n, up=True)
        if n < len(view):
            self.up_pending = memoryview(bytes(view[n:]))  # the shared read buffer is reused by the next recv
            self._read(False)

    def on_writable(self) -> None:
        pending = self.up_pending
        if pending is not None and not self.done.done():
            self.up_pending = None
            self._send_up(pending)
            if self.up_pending is None:
                self._read(True)

    # -- stream -> socket -----------------------------------------------------------------------------------
    def on_data(self, data: bytes | memoryview) -> None:
        if self.done.done():
            return
        if self.down_pending:
            self.down_pending.append(memoryview(bytes(data)))
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._ended(True, exc)
            self._fail(exc)
            return
        if n:
            self._count(n, up=False)
            self.stream.consumed(n)
        if n < len(data):
            self.down_pending.append(memoryview(bytes(data[n:])))
            self._write(True)

    def _on_socket_writable(self) -> None:
        pending = self.down_pending
        while pending:
            chunk = pending[0]
            try:
                n = self.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._ended(True, exc)
                self._fail(exc)
                return
            self._count(n, up=False)
            self.stream.consumed(n)
            if n < len(chunk):
                pending[0] = chunk[n:]
                return
            pending.popleft()
        self._write(False)
        if self.down_eof:
            self._end_down()

    def on_eof(self) -> None:
        self._ended(False)
        self.down_eof = True
        if not self.down_pending:
            self._end_down()

    def _end_down(self) -> None:
        if self.down_done:
            return
        self.down_done = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self._check_done()

    def on_error(self, error: HboneError) -> None:
        if self.down_eof and getattr(error, "error_code", None) == 0 and not self.up_done:
            # RFC 9113 8.1: the peer sent its complete answer, then RST_STREAM(NO_ERROR) to stop our sending
            # (e.g. a 403 before the request body). Not a failure: deliver the answer, read and drop what the
            # app still sends until it closes (closing with unread input would reset the app's connection and
            # lose the answer), bounded by STOPPED_PEER_GRACE.
            self.discard_up = True
            self.up_pending = None
            self._read(True)
            self.loop.call_later(STOPPED_PEER_GRACE, self._stop_discarding)
            return
        self._ended(False, error)
        self._fail(error)

    def _stop_discarding(self) -> None:
        if not self.up_done:
            self.up_done = True
            self._read(False)
            self._check_done()

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def _ended(self, on_socket: bool, error: BaseException | None = None) -> None:
        # the socket is the client side exactly when it is `a` (then socket -> stream counts as "sent")
        _ended(self.stats, on_socket == self.up_is_sent, error)

    def _count(self, n: int, *, up: bool) -> None:
        if up == self.up_is_sent:
            self.stats.sent += n
        else:
            self.stats.received += n

    def _read(self, on: bool) -> None:
        if on and not self.reading and not self.up_done and not self.done.done():
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True
        elif not on and self.reading:
            self.reading = False
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self.fd)

    def _write(self, on: bool) -> None:
        if on and not self.writing and not self.done.done():
            self.loop.add_writer(self.fd, self._on_socket_writable)
            self.writing = True
        elif not on and self.writing:
            self.writing = False
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_writer(self.fd)

    def _stop_io(self) -> None:
        self._read(False)
        self._write(False)

    def _check_done(self) -> None:
        if self.up_done and self.down_done and not self.done.done():
            self.done.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self._stop_io()
        if not self.done.done():
            self.done.set_result(error)


async def copy_bidirectional(a: End, b: End, stats: CopyStats) -> BaseException | None:
    """Copy until both directions reached EOF. Returns the first error (None on a clean end); the
    caller owns both ends (closes them; resets them on error). A socket and a tunnel stream (every
    proxied connection) go through `_SocketStreamRelay`; other pairs through two tasks."""
    if isinstance(a, SocketEnd) and isinstance(b, HboneEnd):
        return await _SocketStreamRelay(a, b.stream, stats, socket_is_a=True).run()
    if isinstance(a, HboneEnd) and isinstance(b, SocketEnd):
        return await _SocketStreamRelay(b, a.stream, stats, socket_is_a=False).run()
    error: BaseException | None = None
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_pump(a, b, stats, True))
            tg.create_task(_pump(b, a, stats, False))
    except* Exception as group:
        error = group.exceptions[0]
    return error


def finish(a: End, b: End, error: BaseException | None) -> None:
    """Close both ends after a copy: RST on error (the app must see the failure), FIN otherwise."""
    for end in (a, b):
        if error is not None:
            end.reset()
        else:
            end.close()
