"""The HBONE server: accept TCP, handshake mTLS, run HTTP/2, and hand each CONNECT to a handler.

Role: the inbound side of port 15008. The node proxy gives it a listening socket (created inside a pod
netns, SO_REUSEPORT), a certificate provider for the local workload, and a handler:
`async handler(request: ConnectRequest, peer: PeerIdentity) -> Accept | Reject`.
`Reject(status)` answers 400/401/503; `Accept(upstream=...)` answers 200 and pipes bytes between the
tunnel and `upstream`; `Accept(serve=...)` answers 200 and gives the raw `HboneStream` to the caller.

Invariants:
- The TLS handshake runs under a timeout (slowloris / half-open TLS are reaped) and its failures are
  recorded with OpenSSL's reason (expired, unknown CA, ...).
- `peer` comes only from the verified client certificate; the client must be in the same trust
  domain as the local certificate. A rejected connection never reaches the handler.
- Every handshake and handler runs as a task of the server's TaskGroup (`async with HboneServer`).
- `close()` stops accepting at once, but first takes the connections the kernel already queued on the
  listener (with SO_REUSEPORT a closed listener's queue is reset: during a handoff to a second proxy those
  clients would fail); such late connections take streams for `HANDOFF_GRACE` seconds, then refuse new
  ones (the client pool retries REFUSED_STREAM elsewhere). `drain(deadline)` lets live streams finish,
  then cuts them.
- Accepting is a reader callback on the listening socket and TLS runs from the first byte
  (`connect_accepted_socket(ssl=...)`): no plaintext protocol ever sees the ClientHello, which is what
  makes the server correct under uvloop as well as the default loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from h2.errors import ErrorCodes

from ambient.hbone.connection import H2Settings, HboneConnection, HboneStream
from ambient.hbone.errors import HboneError
from ambient.hbone.pipe import ByteStream, CopyResult, copy_bidirectional, set_nodelay
from ambient.hbone.protocol import ConnectRequest
from ambient.identity.certs import CertBundle
from ambient.tls.contexts import ContextCache
from ambient.tls.verify import PeerIdentity, verify_client

log = logging.getLogger(__name__)

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
LISTEN_BACKLOG = 128
HANDOFF_GRACE = 1.0


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
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        settings: H2Settings | None = None,
    ) -> None:
        self._listen = listen
        if isinstance(cert_provider, CertBundle):
            bundle = cert_provider
            self._cert_provider: CertProvider = lambda: bundle
        else:
            self._cert_provider = cert_provider
        self._handler = handler
        self._trust_domain = trust_domain
        self.handshake_timeout = handshake_timeout
        self.settings = settings or H2Settings()
        self._contexts = ContextCache(max_entries=8)
        self._tg: asyncio.TaskGroup | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._late_conns: set[HboneConnection] = set()
        self._late_until = 0.0  # drain waits for late (handoff) connections' first streams until then
        self._conns: set[HboneConnection] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._stream_tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
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
            if self._handshakes and self._loop is not None:
                self._late_until = self._loop.time() + HANDOFF_GRACE
            sock.close()
        self.serving = False
        for conn in self._conns:
            conn.accepting = False

    async def drain(self, deadline: float) -> None:
        """Wait up to `deadline` seconds for live streams to finish, then cut everything."""
        self.close()
        if deadline > 0:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline):
                    # Live streams, handshakes of connections taken from the queue at close, and (for
                    # HANDOFF_GRACE) those connections' first CONNECT still on its way.
                    while self._stream_tasks or self._handshakes or loop.time() < self._late_until:
                        if self._stream_tasks and not self._handshakes and loop.time() >= self._late_until:
                            await self._idle.wait()
                        else:
                            await asyncio.sleep(0.02)
        for task in list(self._stream_tasks):
            task.cancel()
        for conn in list(self._conns):
            conn.close("shut down (drain)")
        for hs in list(self._handshakes):
            hs.cancel()

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
            raw.setblocking(False)
            set_nodelay(raw)
            task = self._tg.create_task(self._handshake(raw, late))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _pause_accepting(self) -> None:
        loop, lsock = self._loop, self._sock
        if lsock is None or loop is None:
            return
        loop.remove_reader(lsock.fileno())

        def resume() -> None:
            if self._sock is lsock and self.serving:
                loop.add_reader(lsock.fileno(), self._accept_ready)

        loop.call_later(0.1, resume)

    async def _handshake(self, raw: socket.socket, late: bool = False) -> None:
        loop = asyncio.get_running_loop()
        try:
            peername = raw.getpeername()
        except OSError:
            peername = None
        label = f"{peername[0]}:{peername[1]}" if peername else "?"
        try:
            bundle = self._cert_provider()
            ctx = self._contexts.get(bundle, server=True)
        except Exception as exc:  # no certificate for the local workload yet: refuse, do not crash
            self._record(f"no certificate for the local workload: {exc}", label)
            raw.close()
            return
        trust_domain = self._trust_domain or bundle.identity.trust_domain
        conn = HboneConnection(
            client_side=False,
            settings=self.settings,
            verify=lambda so: verify_client(so, trust_domain),
            on_request=self._on_request,
            on_lost=self._on_lost,
            on_rejected=lambda c, reason: self._record(reason, c.label, identity=True),
            label=label,
        )
        if late:
            self._late_conns.add(conn)
        try:
            # The loop owns the socket from here: on failure it closes it (after the TLS alert).
            await loop.connect_accepted_socket(
                lambda: conn, raw, ssl=ctx, ssl_handshake_timeout=self.handshake_timeout
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self._late_conns.discard(conn)
            self.stats.handshake_failures += 1
            self._record(_handshake_reason(exc), label)
            with contextlib.suppress(OSError):
                raw.close()
            return
        if conn.error is None and not conn.closed:
            self.stats.tls_established += 1
            self._conns.add(conn)
            if late:
                # Taken from the queue while closing: serve the client's first streams, then refuse
                # new ones so its pool moves to the proxy that took over.
                loop.call_later(HANDOFF_GRACE, setattr, conn, "accepting", False)
            elif not self.serving:
                conn.accepting = False

    def _record(self, reason: str, label: str, *, identity: bool = False) -> None:
        if identity:
            self.stats.identity_rejections += 1
        self.stats.record_rejection(reason)
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
        self._stream_tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._stream_tasks.discard(task)
        if not self._stream_tasks:
            self._idle.set()

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


def serve_hbone(
    listen: socket.socket | tuple[str, int],
    cert_provider: CertProvider | CertBundle,
    handler: Handler,
    **kwargs: Any,
) -> HboneServer:
    """`async with serve_hbone(sock, certs, handler) as server:` (see `HboneServer`)."""
    return HboneServer(listen, cert_provider, handler, **kwargs)
