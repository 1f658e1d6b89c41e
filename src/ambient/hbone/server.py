"""The HBONE server: accept TCP, handshake mTLS, run HTTP/2, and hand each CONNECT to a handler.

Role: the inbound side of port 15008. The node proxy gives it a listening socket (created inside a pod
netns, SO_REUSEPORT), a certificate provider for the local workload, and a handler:
`async handler(request: ConnectRequest, peer: PeerIdentity) -> Accept | Reject`.
`Reject(status)` answers 400/401/503; `Accept(upstream=...)` answers 200 and pipes bytes between the
tunnel and `upstream`; `Accept(serve=...)` answers 200 and gives the raw `HboneStream` to the caller.

Invariants:
- Handshakes are bounded (`HandshakeLimits`): no TLS or HTTP/2 state is built for a connection until
  its whole ClientHello record is in the socket buffer (a silent or trickling client costs a socket and
  a task, not the ~256 KiB of TLS buffers the event loops attach); the whole handshake runs under a
  deadline (slowloris / half-open TLS are reaped), shortened for every pending handshake once half the
  listener's cap is pending; past the cap per listener or per source address a new connection is closed
  at once. After a burst of pending handshakes the freed heap is handed back to the OS (glibc keeps
  freed TLS buffers otherwise). Failures are recorded with OpenSSL's reason (expired, unknown CA, ...)
  and counted by reason (`ambient.hbone.refusals`); log lines about them are rate-limited (an attack
  must not become a log flood).
- A client offering ALPN without `h2` gets the no_application_protocol alert (`tls.contexts`); the
  alert is written here because the event loops' TLS layers close without flushing it.
- `peer` comes only from the verified client certificate; the client must be in the same trust
  domain as the local certificate. A rejected connection never reaches the handler.
- Every handshake and handler runs as a task of the server's TaskGroup (`async with HboneServer`).
- `close()` stops accepting at once, but first takes the connections the kernel already queued on the
  listener (with SO_REUSEPORT a closed listener's queue is reset: during a handoff to a second proxy those
  clients would fail); such late connections take streams for `HANDOFF_GRACE` seconds, then refuse new
  ones (the client pool retries REFUSED_STREAM elsewhere). `drain(deadline)` lets live streams finish,
  then cuts them: the project's one drain primitive (`runtime.drain.Drain`) watches every stream and
  handshake task and holds for the handoff grace.
- Accepting is a reader callback on the listening socket and TLS runs from the first byte
  (`connect_accepted_socket(ssl=...)`): no plaintext protocol ever sees the ClientHello, which is what
  makes the server correct under uvloop as well as the default loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from h2.errors import ErrorCodes

from ambient.hbone import refusals
from ambient.hbone.connection import H2Settings, HboneConnection, HboneStream
from ambient.hbone.errors import HboneError
from ambient.hbone.pipe import ByteStream, CopyResult, copy_bidirectional, set_nodelay
from ambient.hbone.protocol import ConnectRequest
from ambient.identity.certs import CertBundle
from ambient.runtime.drain import Drain
from ambient.tls.contexts import ContextCache
from ambient.tls.verify import PeerIdentity, verify_client

log = logging.getLogger(__name__)

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
LISTEN_BACKLOG = 128
HANDOFF_GRACE = 1.0
# After a burst of at least TRIM_AFTER_PENDING pending handshakes has ended (TRIM_LOW_WATER or fewer
# left), return freed heap to the OS.
TRIM_AFTER_PENDING = 256
TRIM_LOW_WATER = 16
TRIM_DELAY = 1.0
LOG_WINDOW = 10.0  # rejection log lines: at most LOG_BURST per window, the rest summarised
LOG_BURST = 20
# The TLS alert record a server sends when it rejects the ClientHello's ALPN list (plaintext: it comes
# before ServerHello): alert, TLS 1.2 legacy version, length 2, fatal, no_application_protocol (120).
NO_APPLICATION_PROTOCOL_ALERT = bytes([21, 3, 3, 0, 2, 2, 120])


@dataclass(frozen=True, slots=True)
class HandshakeLimits:
    """Bounds on connections whose TLS handshake has not finished (per listener, i.e. per HboneServer).

    - `timeout`: seconds from accept until the handshake must be complete (first byte included).
    - `max_pending`: pending handshakes per listener; past it a new connection is closed at once.
    - `max_pending_per_source`: the same per client IP address (one source cannot take the whole cap).
    - `pressure_timeout`: once `max_pending // 2` handshakes are pending, every pending and new handshake
      gets at most this many seconds (legitimate handshakes take milliseconds)."""

    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    max_pending: int = 1024
    max_pending_per_source: int = 256
    pressure_timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.pressure_timeout <= 0:
            raise ValueError("handshake timeouts must be positive")
        if self.max_pending < 1 or self.max_pending_per_source < 1:
            raise ValueError("handshake caps must be at least 1")

    @property
    def pressure_at(self) -> int:
        return max(1, self.max_pending // 2)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HandshakeLimits:
        """The defaults overridden by `LIMIT_ENV` variables (for the node proxy's settings); raises
        ValueError naming the variable for a value that is not a number or breaks a bound."""
        values: dict[str, float | int] = {}
        for name, attr in LIMIT_ENV.items():
            raw = env.get(name)
            if raw is None or not raw.strip():
                continue
            try:
                values[attr] = float(raw.strip().removesuffix("s")) if "timeout" in attr else int(raw)
            except ValueError:
                raise ValueError(f"{name}: expected a number, got {raw!r}") from None
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"HBONE handshake limits from the environment: {exc}") from None


LIMIT_ENV = {
    "AMBIENT_HBONE_HANDSHAKE_TIMEOUT": "timeout",
    "AMBIENT_HBONE_MAX_PENDING_HANDSHAKES": "max_pending",
    "AMBIENT_HBONE_MAX_PENDING_HANDSHAKES_PER_SOURCE": "max_pending_per_source",
    "AMBIENT_HBONE_PRESSURE_HANDSHAKE_TIMEOUT": "pressure_timeout",
}


def admit(limits: HandshakeLimits, pending: int, from_source: int) -> str | None:
    """Whether one more connection may start its handshake: None, or the refusal reason (a
    `refusals.REASONS` entry). `pending` / `from_source`: handshakes pending now (listener / this IP)."""
    if pending >= limits.max_pending:
        return "too_many_handshakes"
    if from_source >= limits.max_pending_per_source:
        return "too_many_handshakes_from_source"
    return None


def handshake_budget(limits: HandshakeLimits, pending: int) -> float:
    """Seconds a handshake may take when `pending` handshakes (itself included) are pending."""
    if pending >= limits.pressure_at:
        return min(limits.timeout, limits.pressure_timeout)
    return limits.timeout


def _malloc_trim() -> None:
    """Hand freed heap back to the OS (glibc only; elsewhere a no-op). Freed TLS buffers of thousands of
    failed handshakes otherwise stay in the process (fragmented, below the heap top) for good."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer the CONNECT with `status` (400 bad request, 401 denied, 503 unavailable)."""

    status: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Accept:
    """Answer 200, then either pipe to `upstream` (closed afterwards) or run `serve(stream)`."""

    upstream: ByteStream | None = None
    serve: Callable[[HboneStream], Awaitable[None]] | None = None
    on_done: Callable[[CopyResult | None, BaseException | None], None] | None = None


Decision = Accept | Reject
Handler = Callable[[ConnectRequest, PeerIdentity], Awaitable[Decision]]
CertProvider = Callable[[], CertBundle]


@dataclass
class ServerStats:
    tcp_accepted: int = 0
    tls_established: int = 0
    handshake_failures: int = 0
    identity_rejections: int = 0
    streams: int = 0
    rejections: deque[str] = field(default_factory=lambda: deque(maxlen=64))
    refused: dict[str, int] = field(default_factory=dict)  # this listener's refusals by reason
    pending_peak: int = 0  # most handshakes pending at once

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        refusals.count(reason)

    def record_rejection(self, reason: str) -> None:
        self.rejections.append(reason)


def _handshake_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError) or "taking longer than" in str(exc):
        return "TLS handshake timed out"
    return f"TLS handshake failed: {exc!r}"


class HboneServer:
    """Use as `async with HboneServer(listen, cert_provider, handler) as server: ...`."""

    def __init__(
        self,
        listen: socket.socket | tuple[str, int],
        cert_provider: CertProvider | CertBundle,
        handler: Handler,
        *,
        trust_domain: str | None = None,
        handshake_timeout: float | None = None,
        settings: H2Settings | None = None,
        limits: HandshakeLimits | None = None,
    ) -> None:
        self._listen = listen
        if isinstance(cert_provider, CertBundle):
            bundle = cert_provider
            self._cert_provider: CertProvider = lambda: bundle
        else:
            self._cert_provider = cert_provider
        self._handler = handler
        self._trust_domain = trust_domain
        limits = limits or HandshakeLimits()
        if handshake_timeout is not None:
            limits = replace(limits, timeout=handshake_timeout,
                             pressure_timeout=min(limits.pressure_timeout, handshake_timeout))
        self.limits = limits
        self.settings = settings or H2Settings()
        self._contexts = ContextCache(max_entries=8)
        self._tg: asyncio.TaskGroup | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._late_conns: set[HboneConnection] = set()
        self._conns: set[HboneConnection] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._deadlines: dict[asyncio.Task[None], asyncio.Timeout] = {}
        self._per_source: dict[str, int] = {}
        self._burst_peak = 0  # most pending handshakes since the last trim
        self._trim_handle: asyncio.TimerHandle | None = None
        self._log_window = 0.0
        self._pressure_logged_at = float("-inf")
        self._logged = 0
        self._unlogged = 0
        # watches stream and handshake tasks; its deadline is the one `drain()` is given
        self._drain = Drain("hbone", 0.0)
        self._drain.on_start(self.close)
        self._drain.on_cut(self._close_connections)
        self.stats = ServerStats()
        self.serving = False
        self._address: tuple[Any, ...] = ()

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def __aenter__(self) -> HboneServer:
        loop = asyncio.get_running_loop()
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        try:
            if isinstance(self._listen, socket.socket):
                sock = self._listen
            else:
                sock = socket.create_server(self._listen, backlog=LISTEN_BACKLOG, reuse_port=True)
            sock.setblocking(False)
            sock.listen(LISTEN_BACKLOG)
            loop.add_reader(sock.fileno(), self._accept_ready)
            self._sock, self._loop = sock, loop
        except BaseException as exc:
            await self._tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self.serving = True
        self._address = tuple(sock.getsockname())
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()
        await self.drain(0)
        assert self._tg is not None
        await self._tg.__aexit__(*exc_info)

    @property
    def handshake_timeout(self) -> float:
        return self.limits.timeout

    @property
    def pending_handshakes(self) -> int:
        return len(self._handshakes)

    @property
    def open_connections(self) -> int:
        """Established connections not yet closed (a connection that ends leaves this count)."""
        return len(self._conns)

    @property
    def address(self) -> tuple[Any, ...]:
        """The listening address (kept after `close()` for logs and tests)."""
        return self._address

    def close(self) -> None:
        """Stop accepting connections and new streams; live streams continue until `drain`."""
        if self.serving and self._sock is not None:
            sock, self._sock = self._sock, None
            if self._loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(sock.fileno())
            self._accept_ready(sock, late=True)  # what the kernel already queued for us (handoff)
            if self._handshakes:  # late connections' first CONNECT may still be on its way
                self._drain.hold(HANDOFF_GRACE)
            sock.close()
        self.serving = False
        for conn in self._conns:
            conn.accepting = False

    async def drain(self, deadline: float) -> None:
        """Wait up to `deadline` seconds for live streams to finish, then cut everything."""
        self.close()
        self._drain.deadline = max(deadline, 0.0)
        # Live streams, handshakes of connections taken from the queue at close, and (for HANDOFF_GRACE)
        # those connections' first CONNECT still on its way; then the rest is cut.
        await self._drain.run()
        if self._trim_handle is not None:
            self._trim_handle.cancel()
            self._trim_handle = None

    def _close_connections(self) -> None:
        for conn in list(self._conns):
            conn.close("shut down (drain)")

    # -- connections --------------------------------------------------------------------------------------
    def _accept_ready(self, sock: socket.socket | None = None, *, late: bool = False) -> None:
        """Reader callback: accept everything queued; each connection gets its handshake task at once."""
        lsock = sock or self._sock
        if lsock is None:
            return
        while True:
            try:
                raw, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: back off instead of spinning on a readable listener
                log.warning("hbone: accept failed: %s", exc)
                if not late:
                    self._pause_accepting()
                return
            self.stats.tcp_accepted += 1
            if self._tg is None:
                raw.close()
                continue
            self._start_handshake(raw, late)

    def _start_handshake(self, raw: socket.socket, late: bool) -> None:
        try:
            source = str(raw.getpeername()[0])
        except (OSError, IndexError):
            source = "?"
        refusal = admit(self.limits, len(self._handshakes), self._per_source.get(source, 0))
        if refusal is not None:
            raw.close()
            self.stats.refuse(refusal)
            self._log_rejection(source, f"{refusal.replace('_', ' ')} pending (limits: "
                                f"{self.limits.max_pending} per listener, "
                                f"{self.limits.max_pending_per_source} per source)")
            return
        raw.setblocking(False)
        set_nodelay(raw)
        assert self._tg is not None
        self._per_source[source] = self._per_source.get(source, 0) + 1
        task = self._tg.create_task(self._handshake(raw, source, late))
        self._handshakes.add(task)
        task.add_done_callback(self._handshake_done)
        self._drain.watch(task)
        pending = len(self._handshakes)
        if pending > self.stats.pending_peak:
            self.stats.pending_peak = pending
        if pending > self._burst_peak:
            self._burst_peak = pending
        if pending == self.limits.pressure_at:
            self._apply_pressure()

    def _apply_pressure(self) -> None:
        """Half the cap is pending: every pending handshake gets at most `pressure_timeout` from now."""
        assert self._loop is not None
        limit = self._loop.time() + min(self.limits.timeout, self.limits.pressure_timeout)
        for cm in self._deadlines.values():
            when = cm.when()
            if when is None or when > limit:
                cm.reschedule(limit)
        if self._loop.time() - self._pressure_logged_at > LOG_WINDOW:
            self._pressure_logged_at = self._loop.time()
            log.warning("hbone: %d TLS handshakes pending on %s: handshake timeout cut to %.1fs",
                        len(self._handshakes), self._address, self.limits.pressure_timeout)

    def _handshake_done(self, task: asyncio.Task[None]) -> None:
        self._handshakes.discard(task)
        self._deadlines.pop(task, None)
        if (len(self._handshakes) <= TRIM_LOW_WATER and self._burst_peak >= TRIM_AFTER_PENDING
                and self._loop is not None):
            self._burst_peak = 0
            if self._trim_handle is None:
                self._trim_handle = self._loop.call_later(TRIM_DELAY, self._trim)

    def _trim(self) -> None:
        self._trim_handle = None
        if len(self._handshakes) <= TRIM_LOW_WATER:
            # A failed handshake leaves cyclic garbage (h2's H2Connection refers to itself through its
            # frame dispatch table; the default loop's transports too): free it first, or its memory is
            # not free to hand back yet. Once per burst, so the full collection's cost does not matter.
            gc.collect()
            _malloc_trim()
        else:  # a new burst began: trim after it
            self._burst_peak = max(self._burst_peak, TRIM_AFTER_PENDING)

    def _pause_accepting(self) -> None:
        loop, lsock = self._loop, self._sock
        if lsock is None or loop is None:
            return
        loop.remove_reader(lsock.fileno())

        def resume() -> None:
            if self._sock is lsock and self.serving:
                loop.add_reader(lsock.fileno(), self._accept_ready)

        loop.call_later(0.1, resume)

    async def _handshake(self, raw: socket.socket, source: str, late: bool = False) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        try:
            peername = raw.getpeername()
        except OSError:
            peername = None
        label = f"{peername[0]}:{peername[1]}" if peername else "?"
        budget = handshake_budget(self.limits, len(self._handshakes))
        owned = True  # until the loop owns the socket
        alert_fd = -1
        try:
            async with asyncio.timeout(budget) as deadline:
                self._deadlines[task] = deadline
                # Nothing is built for a connection until its whole ClientHello record is there.
                await _client_hello(loop, raw)
                try:
                    bundle = self._cert_provider()
                    ctx = self._contexts.get(bundle, server=True)
                except Exception as exc:  # no certificate for the local workload yet: refuse, do not crash
                    self.stats.refuse("no_certificate")
                    self._record(f"no certificate for the local workload: {exc}", label)
                    return
                trust_domain = self._trust_domain or bundle.identity.trust_domain
                conn = HboneConnection(
                    client_side=False,
                    settings=self.settings,
                    verify=lambda so: verify_client(so, trust_domain),
                    on_request=self._on_request,
                    on_lost=self._on_lost,
                    on_rejected=self._on_rejected,
                    label=label,
                )
                if late:
                    self._late_conns.add(conn)
                # Only to write the ALPN alert the loop's TLS layer drops (it closes the socket first).
                alert_fd = os.dup(raw.fileno())
                owned = False  # the loop owns the socket from here: on failure it closes it
                try:
                    await loop.connect_accepted_socket(
                        lambda: conn, raw, ssl=ctx, ssl_handshake_timeout=self.limits.timeout
                    )
                except BaseException:
                    self._late_conns.discard(conn)
                    raise
        except TimeoutError:
            self._handshake_failed("TLS handshake timed out", "handshake_timeout", label)
            return
        except ssl.SSLError as exc:
            if exc.reason == "NO_APPLICATION_PROTOCOL" and alert_fd >= 0:
                with contextlib.suppress(OSError):
                    os.write(alert_fd, NO_APPLICATION_PROTOCOL_ALERT)
            self._handshake_failed(_handshake_reason(exc), "handshake_failed", label)
            return
        except NotClientHello as exc:
            self._handshake_failed(str(exc), "handshake_failed", label)
            return
        except (OSError, ConnectionError) as exc:
            reason = _handshake_reason(exc)  # the loop's own handshake timeout is a ConnectionAbortedError
            self._handshake_failed(reason, "handshake_timeout" if "timed out" in reason else "handshake_failed",
                                   label)
            return
        finally:
            if alert_fd >= 0:
                os.close(alert_fd)
            if owned:
                raw.close()
            left = self._per_source.get(source, 1) - 1
            if left:
                self._per_source[source] = left
            else:
                self._per_source.pop(source, None)
        if conn.error is None and not conn.closed:
            self.stats.tls_established += 1
            self._conns.add(conn)
            if late:
                # Taken from the queue while closing: serve the client's first streams, then refuse
                # new ones so its pool moves to the proxy that took over.
                loop.call_later(HANDOFF_GRACE, setattr, conn, "accepting", False)
            elif not self.serving:
                conn.accepting = False

    def _handshake_failed(self, reason: str, kind: str, label: str) -> None:
        self.stats.handshake_failures += 1
        self.stats.refuse(kind)
        self._record(reason, label)

    def _on_rejected(self, conn: HboneConnection, reason: str) -> None:
        self.stats.refuse("identity_rejected")
        self._record(reason, conn.label, identity=True)

    def _record(self, reason: str, label: str, *, identity: bool = False) -> None:
        if identity:
            self.stats.identity_rejections += 1
        self.stats.record_rejection(reason)
        self._log_rejection(label, reason)

    def _log_rejection(self, label: str, reason: str) -> None:
        """At most LOG_BURST lines per LOG_WINDOW seconds; the rest are summarised (and counted in the
        metrics either way)."""
        now = self._loop.time() if self._loop is not None else 0.0
        if now - self._log_window > LOG_WINDOW:
            if self._unlogged:
                log.warning("hbone: %d more connections rejected in the last %.0fs (see the "
                            "ambient_hbone_refusals_total metric)", self._unlogged, now - self._log_window)
            self._log_window, self._logged, self._unlogged = now, 0, 0
        if self._logged >= LOG_BURST:
            self._unlogged += 1
            return
        self._logged += 1
        log.warning("hbone: connection from %s rejected: %s", label, reason)

    def _on_lost(self, conn: HboneConnection) -> None:
        self._conns.discard(conn)
        self._late_conns.discard(conn)

    # -- streams -------------------------------------------------------------------------------------------
    def _on_request(self, stream: HboneStream, request: ConnectRequest) -> None:
        conn = stream.connection
        # Once closed, only connections taken from the queue at close (handoff) still take streams;
        # this also covers a stream that arrives before a handshake task saw `serving` turn False.
        closed = not self.serving and conn not in self._late_conns
        if self._tg is None or closed or not conn.accepting or conn.peer is None:
            stream.close(ErrorCodes.REFUSED_STREAM)
            return
        self.stats.streams += 1
        # (the constructor, not dataclasses.replace: this runs once per tunnel and replace() is ~10x slower)
        request = ConnectRequest(request.authority, request.target_ip, request.target_port, request.headers,
                                 conn.local_addr, conn.remote_addr)
        stream.request = request
        task = self._tg.create_task(self._run_stream(stream, request, conn.peer))
        self._drain.watch(task)

    async def _run_stream(self, stream: HboneStream, request: ConnectRequest, peer: PeerIdentity) -> None:
        decision: Decision | None = None
        try:
            try:
                decision = await self._handler(request, peer)
            except Exception as exc:
                log.exception("hbone: handler failed for %s from %s", request.authority, peer)
                decision = Reject(503, f"handler error: {exc}")
            if isinstance(decision, Reject):
                stream.respond(decision.status)
                return
            stream.respond(200)
            await self._serve_accepted(stream, decision)
        except HboneError as exc:
            log.info("hbone: stream %s from %s ended: %s", request.authority, peer, exc.message)
        finally:
            stream.close()
            if isinstance(decision, Accept) and decision.upstream is not None:
                decision.upstream.close()

    async def _serve_accepted(self, stream: HboneStream, decision: Accept) -> None:
        if decision.serve is not None:
            await decision.serve(stream)
            return
        if decision.upstream is None:
            return
        result: CopyResult | None = None
        error: BaseException | None = None
        try:
            result = await copy_bidirectional(stream, decision.upstream)
        except (HboneError, OSError) as exc:
            error = exc
        if decision.on_done is not None:
            decision.on_done(result, error)


class NotClientHello(ConnectionError):
    """The connection closed, or sent something other than a TLS handshake record, before its whole
    first record (the ClientHello) arrived."""


_TLS_HANDSHAKE_RECORD = 0x16
_TLS_MAX_PLAINTEXT = 1 << 14  # a plaintext record's longest body (RFC 8446 5.1)


async def _client_hello(loop: asyncio.AbstractEventLoop, raw: socket.socket) -> None:
    """Wait until the first TLS record is wholly in `raw`'s receive buffer; reads (consumes) nothing.

    The TLS layers of the event loops allocate ~256 KiB of buffers per connection as soon as they are
    attached; a client trickling a ClientHello (or sending nothing) costs only its socket this way.
    SO_RCVLOWAT makes the socket readable only once the bytes still missing are there (no wake-up per
    segment, and no busy loop on a partial record); it is reset before TLS takes over."""
    need = 5  # the record header
    try:
        while True:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, need)
            await _readable(loop, raw)
            head = raw.recv(need, socket.MSG_PEEK)
            if head and head[0] != _TLS_HANDSHAKE_RECORD:
                raise NotClientHello(f"not a TLS ClientHello (first byte 0x{head[0]:02x})")
            if len(head) < need:  # readable with fewer bytes than the low-water mark: closed
                raise NotClientHello("connection closed before a complete ClientHello")
            length = int.from_bytes(head[3:5], "big")
            if length > _TLS_MAX_PLAINTEXT:
                raise NotClientHello(f"not a TLS ClientHello (record of {length} bytes)")
            if need == 5 + length:
                return
            need = 5 + length
    finally:
        with contextlib.suppress(OSError):
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


async def _readable(loop: asyncio.AbstractEventLoop, raw: socket.socket) -> None:
    """Wait until `raw` has bytes (or EOF) to read; reads nothing."""
    fut: asyncio.Future[None] = loop.create_future()
    fd = raw.fileno()
    loop.add_reader(fd, _resolve, fut)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
