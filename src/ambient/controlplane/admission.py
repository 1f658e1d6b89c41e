"""Connection admission for the control plane's gRPC port (15012): caps in total and per source address.

Role: gRPC C-core bounds a connection's handshake (`grpc.server_handshake_timeout_ms`: TLS plus the
HTTP/2 preface and SETTINGS), idle time, keepalive and streams per connection - `ServingLimits.grpc_options`
sets those - but it has no limit per source address: one pod could hold every connection (and file
descriptor) the process has, and the CA would then fail for everyone. So the public port is served by
`AdmissionFront`, a small asyncio TCP front: it accepts, decides with `admit` (pure) from the connections
open in total and from the client's IP, and splices an admitted connection byte for byte to the gRPC
server, which listens on a Unix socket in a private directory. TLS stays end to end between the client
and gRPC: the front never sees plaintext. A refused connection is closed at once, counted by reason in
`refused` (the admin /proxy-status shows it) and summarised in one log line per `LOG_INTERVAL` at most.

Why a front rather than gRPC's own cap (`grpc.max_allowed_incoming_connections`): a global cap alone
lets one source take the whole budget, which is the failure to prevent; a front that only counts and
forwards is the smallest addition that gives per-source limits, and it also owns the global cap.

Invariants:
- A connection counts from accept until both its sockets are closed; per-source entries are removed at
  zero (no growth with churn); the counts never go negative.
- A silent connection lives at most `handshake_timeout` (+ the loop's latency): gRPC closes the backend
  side, the front then closes the client side. `idle_timeout` does the same (GOAWAY) for connections
  without RPCs after the handshake; keepalive pings detect peers that vanished during a stream.
- Only the front reaches gRPC: its Unix socket is in a fresh mode-0700 directory of the control plane's
  user. (The abstract peer names are only labels: a squatted name leaves the peer unnamed, nothing else.)
- The backend socket is bound to the abstract address `ambient-cp/<pid>.<n>/<client ip>:<port>`, so
  gRPC's `context.peer()` still names the real client (`client_address` extracts it).
- Each admitted connection costs `FDS_PER_CONNECTION` descriptors; `effective_max_connections` lowers
  the cap to what RLIMIT_NOFILE allows (after raising the soft limit towards the hard one), with a
  warning, rather than let accept() fail with EMFILE.
- Every task (backend connects, the log loop) is owned by the TaskGroup of `run()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import resource
import socket
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ambient.controlplane.errors import ControlPlaneError

log = logging.getLogger(__name__)

# Refusal reasons (keys of `AdmissionFront.refused`).
REFUSED_TOTAL = "max_connections"
REFUSED_PER_SOURCE = "max_connections_per_source"
REFUSED_BACKEND = "backend_unavailable"
FDS_PER_CONNECTION = 3  # client socket + the front's backend socket + gRPC's accepted backend socket
FD_RESERVE = 512  # for everything else: API watches, admin socket, files, gRPC internals
ACCEPT_BACKLOG = 1024
LOG_INTERVAL = 10.0
PEER_PREFIX = "ambient-cp/"

ENV_PREFIX = "AMBIENT_CP_"


@dataclass(frozen=True)
class ServingLimits:
    """Limits of the control plane's gRPC port; each can be set with env `AMBIENT_CP_<FIELD NAME>`."""

    handshake_timeout: float = 10.0  # s: TCP accept -> TLS + HTTP/2 SETTINGS done, else closed
    max_connections: int = 4096  # open at once, all sources together
    max_connections_per_source: int = 64  # open at once from one IP address
    max_streams_per_connection: int = 128  # concurrent RPCs on one HTTP/2 connection (xDS + CA)
    idle_timeout: float = 300.0  # s: a connection without any RPC for this long is closed (GOAWAY)
    keepalive_time: float = 30.0  # s: ping the client after this long without activity (istiod's value)
    keepalive_timeout: float = 10.0  # s: ... and close the connection if the ping is not answered

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:
                raise ControlPlaneError(
                    f"control plane limit {name} must be positive, got {value!r}",
                    hint=f"unset {ENV_PREFIX}{name.upper()} to use the default {getattr(ServingLimits, name)}",
                )
        if self.max_connections_per_source > self.max_connections:
            raise ControlPlaneError(
                f"max_connections_per_source ({self.max_connections_per_source}) exceeds max_connections "
                f"({self.max_connections})",
                hint=f"lower {ENV_PREFIX}MAX_CONNECTIONS_PER_SOURCE or raise {ENV_PREFIX}MAX_CONNECTIONS",
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingLimits:
        """Defaults, overridden by `AMBIENT_CP_HANDSHAKE_TIMEOUT`, `AMBIENT_CP_MAX_CONNECTIONS`, ..."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, default in asdict(cls()).items():
            key = f"{ENV_PREFIX}{name.upper()}"
            raw = env.get(key)
            if raw is None or not raw.strip():
                continue
            try:
                values[name] = type(default)(raw.strip())
            except ValueError:
                kind = "an integer" if isinstance(default, int) else "a number of seconds"
                raise ControlPlaneError(f"{key}={raw!r} is not {kind}", hint=f"the default is {default}") from None
        return cls(**values)

    def grpc_options(self) -> list[tuple[str, int]]:
        """The gRPC C-core channel args that enforce the handshake, idle, keepalive and stream limits."""
        ms = lambda s: max(1, int(s * 1000))  # noqa: E731
        return [
            ("grpc.server_handshake_timeout_ms", ms(self.handshake_timeout)),
            ("grpc.max_connection_idle_ms", ms(self.idle_timeout)),
            ("grpc.keepalive_time_ms", ms(self.keepalive_time)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout)),
            ("grpc.http2.max_pings_without_data", 0),  # keep pinging long-quiet xDS streams
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
        ]


def admit(open_total: int, open_from_source: int, limits: ServingLimits, max_connections: int) -> str | None:
    """Why a new connection must be refused (a refusal reason), or None to admit it. `max_connections` is
    the effective total cap (see `effective_max_connections`)."""
    if open_total >= max_connections:
        return REFUSED_TOTAL
    if open_from_source >= limits.max_connections_per_source:
        return REFUSED_PER_SOURCE
    return None


def effective_max_connections(configured: int, nofile: int) -> int:
    """The total cap that `nofile` descriptors can carry (never more than `configured`, at least 1)."""
    return max(1, min(configured, (nofile - FD_RESERVE) // FDS_PER_CONNECTION))


def raise_nofile(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `needed` (up to the hard limit); the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return needed if soft == resource.RLIM_INFINITY else soft


def source_key(address: str) -> str:
    """The per-source accounting key of a client IP: IPv4-mapped IPv6 counts as the IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def client_address(peer: str) -> str:
    """The client `ip:port` inside a gRPC peer string of a connection that came through the front
    (`unix-abstract:ambient-cp/<pid>.<n>/<ip>:<port>`); any other peer string is returned unchanged."""
    _, sep, rest = peer.partition(PEER_PREFIX)
    if not sep:
        return peer
    _, slash, address = rest.partition("/")
    return address if slash and address else peer


def _any_address_socket(port: int) -> socket.socket:
    """A listening-ready TCP socket on every address: IPv6 dual-stack, or IPv4 only where IPv6 is off."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        return sock
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
    except OSError:
        sock.close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
    return sock


class _Side(asyncio.Protocol):
    """One socket of a spliced pair; forwards what it reads to the other side, with flow control."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is not None and other.transport is not None and not other.lost:
            other.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        other = self.other
        if other is None or other.transport is None or other.lost or other.eof or not other.transport.can_write_eof():
            self.conn.close()  # both directions are finished (or cannot be half-closed)
            return False
        other.transport.write_eof()  # half-close: the other direction may still carry data
        return True

    def pause_writing(self) -> None:  # our peer reads slowly: stop reading from the other side
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None and not self.other.lost:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.close()  # take the other side down too (gracefully: buffered bytes still go out)
        self.conn.maybe_release()


class _ClientSide(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.conn.front._admit_new(self.conn)


class _Conn:
    """A client connection and (once connected) its backend connection. Released (uncounted) once the
    client socket is closed, no backend connect is in progress and the backend socket is closed."""

    def __init__(self, front: AdmissionFront) -> None:
        self.front = front
        self.source = ""
        self.peer = ""
        self.client = _ClientSide(self)
        self.backend: _Side | None = None
        self.connecting = False
        self.released = False

    def close(self) -> None:
        for side in (self.client, self.backend):
            if side is not None and side.transport is not None and not side.lost:
                side.transport.close()

    def maybe_release(self) -> None:
        if self.released or self.connecting or not self.client.lost:
            return
        if self.backend is not None and not self.backend.lost:
            return
        self.released = True
        self.front._release(self)


class AdmissionFront:
    """Accepts on the public address, admits per `admit`, splices to the gRPC server's Unix socket."""

    def __init__(self, host: str | None, port: int, backend_path: str, limits: ServingLimits) -> None:
        self.host = host
        self.port = port
        self.backend_path = backend_path
        self.limits = limits
        self.max_connections = limits.max_connections
        self.open = 0
        self.by_source: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._refused_since_log: Counter[tuple[str, str]] = Counter()
        self._conns: set[_Conn] = set()
        self._seq = itertools.count(1)
        self._tg: asyncio.TaskGroup | None = None
        self._server: asyncio.Server | None = None
        self.started = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Bind the public address (errors such as EADDRINUSE are raised here, before anything runs) and
        size the total cap to the file descriptors available. Connections are accepted once `run()` runs."""
        soft = raise_nofile(self.limits.max_connections * FDS_PER_CONNECTION + FD_RESERVE)
        self.max_connections = effective_max_connections(self.limits.max_connections, soft)
        if self.max_connections < self.limits.max_connections:
            log.warning(
                "%sMAX_CONNECTIONS=%d needs %d file descriptors but RLIMIT_NOFILE allows %d: serving at most "
                "%d connections (raise the limit: ulimit -n, systemd LimitNOFILE, or the container's nofile)",
                ENV_PREFIX, self.limits.max_connections,
                self.limits.max_connections * FDS_PER_CONNECTION + FD_RESERVE, soft, self.max_connections,
            )
        loop = asyncio.get_running_loop()
        if self.host is None:  # every address: one dual-stack socket (IPv4 clients appear as ::ffff:a.b.c.d)
            self._server = await loop.create_server(
                lambda: _Conn(self).client, sock=_any_address_socket(self.port), backlog=ACCEPT_BACKLOG,
                start_serving=False,
            )
        else:
            self._server = await loop.create_server(
                lambda: _Conn(self).client, self.host, self.port, backlog=ACCEPT_BACKLOG, reuse_address=True,
                start_serving=False,
            )
        self.port = self._server.sockets[0].getsockname()[1]

    async def run(self) -> None:
        """Accept until cancelled (after `start()`); then close the listener and every spliced connection."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._log_refusals(), name="admission-log")
                await self._server.start_serving()
                self.started.set()
                await asyncio.Event().wait()
        finally:
            self._tg = None
            self.close()

    def close(self) -> None:
        """Stop listening and abort every spliced connection. Idempotent."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            for side in (conn.client, conn.backend):
                if side is not None and side.transport is not None:
                    side.transport.abort()

    def stats(self) -> dict[str, Any]:
        """Open connections, the limits in force and refusals by reason (for the admin /proxy-status)."""
        return {
            "open": self.open,
            "sources": len(self.by_source),
            "max_connections": self.max_connections,
            "limits": asdict(self.limits),
            "refused": dict(self.refused),
        }

    # ------------------------------------------------------------------ per connection
    def _admit_new(self, conn: _Conn) -> None:
        transport = conn.client.transport
        assert transport is not None
        peername = transport.get_extra_info("peername") or ("?", 0)
        conn.source = source_key(str(peername[0]))
        conn.peer = f"{conn.source}:{peername[1]}"
        reason = admit(self.open, self.by_source[conn.source], self.limits, self.max_connections)
        if reason is None and self._tg is None:
            reason = REFUSED_BACKEND  # shutting down
        if reason is not None:
            self._refuse(conn, reason)
            conn.released = True  # never counted
            transport.abort()
            return
        self.open += 1
        self.by_source[conn.source] += 1
        self._conns.add(conn)
        transport.pause_reading()  # until the backend is connected
        conn.connecting = True
        assert self._tg is not None
        connect = self._connect_backend(conn)
        try:
            self._tg.create_task(connect)
        except RuntimeError:  # the front's TaskGroup is shutting down: refuse instead of leaking the coroutine
            connect.close()
            self._refuse(conn, REFUSED_BACKEND)
            conn.connecting = False
            transport.abort()
            conn.maybe_release()

    async def _connect_backend(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        backend = _Side(conn)
        backend.other = conn.client  # gRPC's bytes may arrive before create_unix_connection returns
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):  # a name taken by another process: gRPC sees an unnamed peer
                sock.bind(f"\0{PEER_PREFIX}{os.getpid()}.{next(self._seq)}/{conn.peer}")
            async with asyncio.timeout(self.limits.handshake_timeout):
                await loop.sock_connect(sock, self.backend_path)
                await loop.create_unix_connection(lambda: backend, sock=sock)
        except (OSError, TimeoutError) as exc:
            sock.close()
            self._refuse(conn, REFUSED_BACKEND)
            log.debug("cannot reach the gRPC server for %s: %s", conn.peer, exc)
            self._abandon(conn)
            return
        except BaseException:
            sock.close()
            self._abandon(conn)
            raise
        conn.backend = backend
        conn.client.other = backend
        conn.connecting = False
        if conn.client.lost:  # the client left while we connected
            conn.close()
            return
        assert conn.client.transport is not None
        conn.client.transport.resume_reading()

    @staticmethod
    def _abandon(conn: _Conn) -> None:
        conn.connecting = False
        if conn.client.transport is not None:
            conn.client.transport.abort()
        conn.maybe_release()

    def _release(self, conn: _Conn) -> None:
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        self.open -= 1
        self.by_source[conn.source] -= 1
        if self.by_source[conn.source] <= 0:
            del self.by_source[conn.source]

    def _refuse(self, conn: _Conn, reason: str) -> None:
        self.refused[reason] += 1
        self._refused_since_log[(reason, conn.source)] += 1

    async def _log_refusals(self) -> None:
        while True:
            await asyncio.sleep(LOG_INTERVAL)
            if not self._refused_since_log:
                continue
            batch, self._refused_since_log = self._refused_since_log, Counter()
            by_reason: Counter[str] = Counter()
            for (reason, _), n in batch.items():
                by_reason[reason] += n
            top = ", ".join(f"{src} ({n}, {reason})" for (reason, src), n in batch.most_common(3))
            log.warning(
                "refused %d connections to the gRPC port in the last %.0fs: %s; top sources: %s "
                "(limits: %d per source, %d in total; %d open)",
                sum(batch.values()), LOG_INTERVAL, ", ".join(f"{r}={n}" for r, n in by_reason.items()), top,
                self.limits.max_connections_per_source, self.max_connections, self.open,
            )

