"""One workload proxy: the listeners 15001 / 15006 / 15008 of one pod (in-pod mode) or of the proxy's own
netns (shared mode), their accept loops, and the context the connection handlers run with.

Pieces:
- `ProxyCore`: what every pod proxy of the process shares (settings, state store, certificate source,
  HBONE client pool, telemetry). Narrow: handlers read state through `core.view()`.
- `Scope`: who the local workload is. In-pod: the pod the node agent handed over (by uid, else by
  namespace/name). Shared: whichever configured local workload owns the client / dialled address.
- `SocketFactory`: where sockets are created. In-pod: a dedicated thread that entered the pod netns once
  (a socket stays in the netns it was created in), so listeners AND the proxy's outbound / delivery
  sockets live in the pod; shared: the current netns.
- `WorkloadProxy.run()`: creates the listeners (SO_REUSEPORT, SO_MARK), serves until its `Drain`
  starts, then drains (listeners closed at once, connections until the deadline).
- `ProxyCore.admission`: inbound admission limits (per source, per proxy, early resets), decided before
  a connection to an app is dialled.
- `ViewMemo` (`PodContext.memo`): the handlers' per-state-version caches of pure per-connection work.
- `connect_socket` (hbone.client): the proxy's own connects, without uvloop's thread-pool "resolution".

Invariants: every connection task belongs to the proxy's TaskGroup and is watched by its Drain; listener
closing first accepts what is already queued (so a handoff to a second proxy loses no connection), then
closes the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from contextvars import ContextVar
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any, Protocol, TypeVar

from ambient.hbone.client import HboneClient, connect_socket
from ambient.hbone.connection import HboneStream
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import HboneServer
from ambient.identity.certs import CertBundle
from ambient.inpod.netns import in_netns
from ambient.runtime.drain import Drain
from ambient.state.model import IPAddress, Workload, canonical_ip, spiffe_id
from ambient.state.store import StateStore, StateView
from ambient.tls.verify import PeerIdentity
from ambient.ztunnel import sockets as so
from ambient.ztunnel.admission import Admission
from ambient.ztunnel.certs import CertSource
from ambient.ztunnel.errors import ListenerError, UpstreamError
from ambient.ztunnel.settings import Settings
from ambient.ztunnel.telemetry import Telemetry

log = logging.getLogger("ambient.ztunnel.proxy")
T = TypeVar("T")


# ------------------------------------------------------------------------------------------- shared core


@dataclass
class ProxyCore:
    settings: Settings
    state: StateStore
    certs: CertSource
    hbone: HboneClient
    telemetry: Telemetry
    # inbound admission control, shared by every pod of the process (limits from `settings`)
    admission: Admission = field(init=False)

    def __post_init__(self) -> None:
        self.admission = Admission(self.settings.admission_limits)
        admission = self.admission
        self.telemetry.metrics.track_inbound_active(lambda: admission.total)

    def view(self) -> StateView:
        return self.state.current

    async def wait_for_workload(self, find: Callable[[StateView], Workload | None]) -> Workload | None:
        """Fail closed, but give config a moment: poll the state for up to `source_wait` seconds."""
        wl = find(self.view())
        if wl is not None or self.settings.source_wait <= 0:
            return wl
        loop = asyncio.get_running_loop()
        until = loop.time() + self.settings.source_wait
        while loop.time() < until:
            await asyncio.sleep(0.05)
            wl = find(self.view())
            if wl is not None:
                return wl
        return None


# ----------------------------------------------------------------------------------------------- scopes


class Scope(Protocol):
    @property
    def uid(self) -> str: ...  # the pod uid (in-pod) or "shared"

    @property
    def label(self) -> str: ...  # "ns/name" for logs

    @property
    def bind_source(self) -> bool: ...  # outbound HBONE: bind the client's IP (separates pods' pools)

    def source_workload(self, view: StateView, client_ip: IPAddress) -> Workload | None: ...

    def local_workload(self, view: StateView, dialled_ip: IPAddress) -> Workload | None: ...


@dataclass
class PodScope:
    """In-pod mode: one pod, as the node agent described it."""

    uid: str
    name: str
    namespace: str
    service_account: str
    trust_domain: str = "cluster.local"
    bind_source: bool = True

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"

    def workload(self, view: StateView) -> Workload | None:
        wl = view.workload(self.uid)
        if wl is not None:
            return wl
        for cand in view.workloads():  # the control plane may name workloads differently from pod uids
            if cand.name == self.name and cand.namespace == self.namespace:
                return cand
        return None

    def identity(self, view: StateView) -> str:
        wl = self.workload(view)
        if wl is not None:
            return wl.identity
        return spiffe_id(self.trust_domain, self.namespace, self.service_account or "default")

    def source_workload(self, view: StateView, client_ip: IPAddress) -> Workload | None:
        return self.workload(view)

    def local_workload(self, view: StateView, dialled_ip: IPAddress) -> Workload | None:
        return self.workload(view)


@dataclass
class SharedScope:
    """Shared mode: listeners in the proxy's own netns for a set of local workloads (by uid)."""

    uids: frozenset[str]
    uid: str = "shared"
    label: str = "shared"
    bind_source: bool = False

    def _pick(self, view: StateView, ip: IPAddress) -> Workload | None:
        wl = view.workload_by_ip(ip)
        return wl if wl is not None and wl.uid in self.uids else None

    def source_workload(self, view: StateView, client_ip: IPAddress) -> Workload | None:
        return self._pick(view, client_ip)

    def local_workload(self, view: StateView, dialled_ip: IPAddress) -> Workload | None:
        return self._pick(view, dialled_ip)


# ------------------------------------------------------------------------------------------ socket homes


class SocketFactory(Protocol):
    async def call(self, fn: Callable[[], T]) -> T: ...

    async def tcp_socket(self, family: int) -> socket.socket: ...

    def close(self) -> None: ...


class LocalSockets:
    """Sockets in the proxy's own netns: plain calls."""

    async def call(self, fn: Callable[[], T]) -> T:
        return fn()

    async def tcp_socket(self, family: int) -> socket.socket:
        return socket.socket(family, socket.SOCK_STREAM)

    def close(self) -> None:
        pass


class NetnsSockets:
    """A one-thread executor whose thread entered the pod netns once and stays there for its life.

    Per-connection sockets come from a small spare pool refilled in batches: a thread hop costs hundreds
    of microseconds under load, so it is paid once per batch, not once per connection. Only `socket()`
    needs the netns; options, bind and connect happen on the event loop thread.

    Bounded: one refill per family runs at a time, and callers arriving while it runs wait for it instead
    of making batches of their own (N concurrent dials used to create N batches and keep the unused
    sockets forever). A refill makes `BATCH` sockets, or one per waiting caller up to `MAX_BATCH`, so
    after a burst at most `MAX_BATCH` spares remain; spares not taken for `IDLE_TRIM` seconds are closed."""

    BATCH = 16
    MAX_BATCH = 64
    IDLE_TRIM = 10.0

    def __init__(self, netns_fd: int | None, label: str) -> None:
        """`netns_fd` None: the thread stays in the current netns (tests of the pool itself)."""
        self._spare: dict[int, list[socket.socket]] = {}
        self._refilling: dict[int, asyncio.Event] = {}
        self._waiting: dict[int, int] = {}
        self._last_take = 0.0
        self._trim: asyncio.TimerHandle | None = None
        self._closed = False
        self._stack = ExitStack()
        self._entered = threading.Event()

        def enter() -> None:
            if netns_fd is not None:
                self._stack.enter_context(in_netns(netns_fd))
            self._entered.set()

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netns-{label}", initializer=enter)

    async def call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    @property
    def spares(self) -> int:
        return sum(len(p) for p in self._spare.values())

    async def tcp_socket(self, family: int) -> socket.socket:
        loop = asyncio.get_running_loop()
        while True:
            pool = self._spare.get(family)
            if pool:
                self._last_take = loop.time()
                return pool.pop()
            busy = self._refilling.get(family)
            if busy is not None:  # someone is refilling: wait for that batch
                self._waiting[family] = self._waiting.get(family, 0) + 1
                try:
                    await busy.wait()
                finally:
                    self._waiting[family] -= 1
                continue
            await self._refill(family, loop)

    async def _refill(self, family: int, loop: asyncio.AbstractEventLoop) -> None:
        done = self._refilling[family] = asyncio.Event()
        count = min(max(self.BATCH, self._waiting.get(family, 0) + 1), self.MAX_BATCH)

        def make() -> list[socket.socket]:
            return [socket.socket(family, socket.SOCK_STREAM) for _ in range(count)]

        fut = loop.run_in_executor(self._pool, make)
        try:
            try:
                made = await asyncio.shield(fut)
            except asyncio.CancelledError:
                # The thread still makes the batch: keep it for the others instead of leaking it.
                fut.add_done_callback(lambda f: self._adopt(family, f))
                raise
            self._add(family, made, loop)
        finally:
            del self._refilling[family]
            done.set()

    def _adopt(self, family: int, fut: asyncio.Future[list[socket.socket]]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._add(family, fut.result(), asyncio.get_running_loop())

    def _add(self, family: int, made: list[socket.socket], loop: asyncio.AbstractEventLoop) -> None:
        if self._closed:
            for sock in made:
                sock.close()
            return
        pool = self._spare.setdefault(family, [])
        pool.extend(made)
        for sock in pool[self.MAX_BATCH:]:
            sock.close()
        del pool[self.MAX_BATCH:]
        self._last_take = loop.time()
        if self._trim is None:
            self._trim = loop.call_later(self.IDLE_TRIM, self._trim_idle, loop)

    def _trim_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the spares once none was taken for IDLE_TRIM seconds (one timer, re-armed lazily)."""
        self._trim = None
        idle = loop.time() - self._last_take
        if idle < self.IDLE_TRIM:
            self._trim = loop.call_later(self.IDLE_TRIM - idle, self._trim_idle, loop)
            return
        self._close_spares()

    def _close_spares(self) -> None:
        for spare in self._spare.values():
            for sock in spare:
                sock.close()
        self._spare.clear()

    def close(self) -> None:
        self._closed = True
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        self._close_spares()
        # The thread leaves the netns before it ends (its context exits on the thread itself).
        if self._entered.is_set():
            with contextlib.suppress(RuntimeError):
                self._pool.submit(self._stack.close)
        self._pool.shutdown(wait=False)


def _family(ip: IPAddress) -> int:
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


# -------------------------------------------------------------------------------------------- context


class ViewMemo:
    """Per-connection work that is a pure function of (state view, a small key) — the routing decision,
    the access-log fields and metric labels it implies, the inbound authority check and the authorization
    verdict — computed once per key and state version instead of once per connection.

    Invariant: a table only ever holds results computed from the view it belongs to. `table(view)` hands
    out a fresh, empty table as soon as the current view is another object (every state change publishes a
    new immutable `StateView`), so no decision survives a policy, workload or service change. Values keep
    the objects their key names by `id()` alive (an id is never reused while its entry exists). Bounded:
    a full table is emptied (keys are workload pairs, not connections, so this is rare)."""

    __slots__ = ("_table", "_view", "limit")

    def __init__(self, limit: int = 4096) -> None:
        self._view: object | None = None
        self._table: dict[Any, Any] = {}
        self.limit = limit

    def table(self, view: object) -> dict[Any, Any]:
        if view is not self._view:
            self._view = view
            self._table = {}
        elif len(self._table) >= self.limit:
            self._table.clear()
        return self._table


@dataclass
class PodContext:
    """What a connection handler gets: shared components + the local scope + the socket home."""

    core: ProxyCore
    scope: Scope
    sockets: SocketFactory
    # handlers' per-state-version caches (one per pod: results depend on the pod's scope)
    memo: ViewMemo = field(default_factory=ViewMemo)

    @property
    def settings(self) -> Settings:
        return self.core.settings

    async def dial(
        self, ip: IPAddress, port: int, *, bind: IPAddress | None = None, transparent: bool = False,
    ) -> socket.socket:
        """A connected, marked TCP socket created where the pod's traffic lives."""
        mark = self.settings.mark
        family = _family(ip)

        sock = await self.sockets.tcp_socket(family)
        try:
            if mark is not None:
                so.set_mark(sock, mark)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            if transparent:
                so.set_transparent(sock)
            if bind is not None:
                sock.bind((str(bind), 0))
        except BaseException:
            sock.close()
            raise
        try:
            async with asyncio.timeout(self.settings.upstream_connect_timeout):
                await connect_socket(sock, (str(ip), port))
        except TimeoutError:
            sock.close()
            raise UpstreamError(
                f"connect to {ip}:{port} timed out after {self.settings.upstream_connect_timeout:g}s"
            ) from None
        except OSError as exc:
            sock.close()
            raise UpstreamError(f"connect to {ip}:{port} failed: {exc.strerror or exc}") from None
        except BaseException:
            sock.close()
            raise
        return sock

    async def hbone_dialer(self, dst: tuple[str, int], source_ip: str | None) -> socket.socket:
        return await self.dial(ip_address(dst[0]), dst[1], bind=ip_address(source_ip) if source_ip else None)


# --------------------------------------------------------------------------------------- the listeners

# The HBONE stream whose CONNECT the current task is handling (set by `StreamAwareServer`): the inbound
# handler's signature carries the request only, but admission needs to know whether the client already
# reset the stream (rapid reset) before it dials the app.
CURRENT_STREAM: ContextVar[HboneStream | None] = ContextVar("ambient_hbone_stream", default=None)


def stream_gone(stream: HboneStream | None) -> bool:
    """True once the client reset (or otherwise ended) the stream: the connection no longer holds it."""
    return stream is not None and stream.connection.streams.get(stream.stream_id) is not stream


class StreamAwareServer(HboneServer):
    """The HBONE server, with each stream task's `CURRENT_STREAM` set (a task-local context variable)."""

    async def _run_stream(self, stream: HboneStream, request: ConnectRequest, peer: PeerIdentity) -> None:
        CURRENT_STREAM.set(stream)
        await super()._run_stream(stream, request, peer)



Handler = Callable[[PodContext, socket.socket], Awaitable[None]]
# serves one datagram socket until cancelled
UdpHandler = Callable[[PodContext, socket.socket], Coroutine[Any, Any, None]]


@dataclass
class ListenerSpec:
    component: str  # outbound | inbound_plaintext | inbound | dns
    host: str
    port: int
    transparent: bool
    udp: bool = False  # a datagram socket served by `udp_handlers[component]` (the DNS proxy)
    # bind even if the address is not there yet: pods reach us during CNI ADD, maybe before `lo` is up
    freebind: bool = False


@dataclass
class WorkloadProxy:
    """The listeners of one scope; `run()` until drained."""

    ctx: PodContext
    drain: Drain
    specs: list[ListenerSpec]
    handlers: dict[str, Handler]  # component -> handler for the plain accept loops
    hbone_handler: Any  # ambient.hbone.server.Handler
    server_certs: Callable[[str], Callable[[], CertBundle]]  # listener host -> cert provider
    udp_handlers: dict[str, UdpHandler] = field(default_factory=dict)  # component -> datagram server
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    # resolves once listening, or with the start-up error (on_add turns it into the agent's NACK)
    started: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    addresses: list[tuple[str, str, int]] = field(default_factory=list)  # (component, host, port)

    async def _listen(self) -> list[tuple[ListenerSpec, socket.socket]]:
        mark = self.ctx.settings.mark

        def make() -> list[tuple[ListenerSpec, socket.socket]]:
            made: list[tuple[ListenerSpec, socket.socket]] = []
            try:
                for spec in self.specs:
                    if spec.udp:
                        made.append((spec, so.udp_socket(spec.host, spec.port, mark=mark, freebind=spec.freebind)))
                    else:
                        made.append(
                            (spec, so.listener(spec.host, spec.port, mark=mark, transparent=spec.transparent,
                                               freebind=spec.freebind))
                        )
            except BaseException:
                for _, s in made:
                    s.close()
                raise
            return made

        try:
            return await self.ctx.sockets.call(make)
        except so.SocketOptionError as exc:
            raise ListenerError(f"proxy for {self.ctx.scope.label}: {exc.message}", hint=exc.hint) from exc

    async def run(self) -> None:
        try:
            made = await self._listen()
        except BaseException as exc:
            if not self.started.done():
                self.started.set_exception(exc)
                self.started.exception()  # retrieved: the caller may be gone
            raise
        scope = self.ctx.scope
        try:
            async with asyncio.TaskGroup() as tg, contextlib.AsyncExitStack() as stack:
                servers: list[HboneServer] = []
                for spec, sock in made:
                    self.addresses.append((spec.component, spec.host, sock.getsockname()[1]))
                    if spec.udp:
                        task = tg.create_task(self.udp_handlers[spec.component](self.ctx, sock))
                        self.drain.on_start(_canceller(task))
                    elif spec.component == "inbound":
                        server = StreamAwareServer(sock, self.server_certs(spec.host), self.hbone_handler,
                                                   limits=self.ctx.settings.hbone_handshake)
                        await stack.enter_async_context(server)
                        servers.append(server)
                        self.drain.on_start(server.close)
                    else:
                        self.drain.on_start(self._serve_listener(tg, sock, self.handlers[spec.component]))
                    log.info(
                        "listener established address=%s:%d component=%s%s transparent=%s pod=%s",
                        spec.host, sock.getsockname()[1], spec.component, "/udp" if spec.udp else "",
                        str(spec.transparent).lower(), scope.label,
                    )
                self.listening.set()
                if not self.started.done():
                    self.started.set_result(None)
                await self.drain.wait_started()
                await asyncio.gather(self.drain.run(), *(s.drain(self.drain.remaining()) for s in servers))
        finally:
            loop = asyncio.get_running_loop()
            for _, sock in made:
                if sock.fileno() != -1:
                    loop.remove_reader(sock.fileno())
                sock.close()

    def _serve_listener(self, tg: asyncio.TaskGroup, lsock: socket.socket, handler: Handler) -> Callable[[], None]:
        """Accept from a reader callback (no accept task): every accepted socket is handed to a connection
        task synchronously, so closing can never drop one that was already taken from the kernel.
        Returns the closer the drain runs."""
        loop = asyncio.get_running_loop()
        fd = lsock.fileno()

        def accept_ready() -> None:
            while True:
                try:
                    conn, _ = lsock.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # e.g. EMFILE: back off instead of spinning on a readable listener
                    log.warning("accept on %s failed: %s", lsock.getsockname(), exc)
                    loop.remove_reader(fd)
                    loop.call_later(0.1, resume)
                    return
                self.spawn(tg, handler, conn)

        def resume() -> None:
            if lsock.fileno() != -1:
                loop.add_reader(fd, accept_ready)

        def close() -> None:
            loop.remove_reader(fd)
            # Take what the kernel already queued for us before closing: with SO_REUSEPORT a closed
            # listener's queue is reset, and those clients would fail during an upgrade handoff.
            accept_ready()
            lsock.close()

        loop.add_reader(fd, accept_ready)
        return close

    def spawn(self, tg: asyncio.TaskGroup, handler: Handler, conn: socket.socket) -> None:
        conn.setblocking(False)
        task = tg.create_task(self._guard(handler, conn))
        self.drain.watch(task)

    async def _guard(self, handler: Handler, conn: socket.socket) -> None:
        try:
            await handler(self.ctx, conn)
        except asyncio.CancelledError:
            from ambient.ztunnel.copy import reset_socket

            reset_socket(conn)  # cut at the drain deadline: the app sees a reset, not a hang
            raise
        except Exception:
            log.exception("connection handler failed for %s", self.ctx.scope.label)
            from ambient.ztunnel.copy import reset_socket

            reset_socket(conn)


def _canceller(task: asyncio.Task[None]) -> Callable[[], None]:
    def cancel() -> None:
        task.cancel()

    return cancel


def local_addresses(ips: Iterable[IPAddress]) -> list[IPAddress]:
    """The subset of `ips` assigned in the current netns (a bind probe, no netlink needed)."""
    out = []
    for ip in ips:
        ip = canonical_ip(ip)
        with socket.socket(_family(ip), socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((str(ip), 0))
            except OSError:
                continue
        out.append(ip)
    return out
