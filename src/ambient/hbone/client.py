"""The HBONE client: a pool of mTLS HTTP/2 connections and `connect()` that opens one CONNECT tunnel.

Role: the outbound side of the node proxy. `HboneClient.connect(src, dst_addr, expected_identities,
authority, headers)` returns an `HboneStream` once the peer answered 200.

Pool invariants (protocols.md section 2):
- Key = (source identity, frozenset of expected destination identities, source IP, destination
  address). Connections are never shared across keys, so different source identities never share.
- A connection carries at most min(max_streams_per_connection (100), peer's MAX_CONCURRENT_STREAMS)
  streams, counting streams being opened (`reserved`); beyond that a new connection is dialled.
- At most one dial per key at a time: concurrent callers wait for it instead of racing; if the dial
  fails they all get its error; if the dialling caller is cancelled, a waiter takes over.
- A connection with no streams is closed after `idle_timeout` (5 min) when it is its key's last
  connection, after `spare_idle_timeout` (1 s) while the key has others: a burst that needed N
  connections leaves one, not N (each idle connection holds ~330 KiB of C heap: TLS state, the loop's
  256 KiB TLS read buffer, HTTP/2 state; 100 of them were most of the C heap a node proxy kept after
  10,000 tunnels closed). Dead or draining connections leave the pool at once.
- Nothing runs in the background: dials run in the caller's task, timers use `call_later`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field

from h2.errors import ErrorCodes

from ambient.hbone import protocol as proto
from ambient.hbone.connection import H2Settings, HboneConnection, HboneStream
from ambient.hbone.errors import HboneConnectError, HboneError, HboneStreamError
from ambient.hbone.pipe import set_nodelay
from ambient.identity.certs import CertBundle
from ambient.tls.contexts import ContextCache
from ambient.tls.verify import verify_server

log = logging.getLogger(__name__)

Address = tuple[str, int]
Dialer = Callable[[Address, "str | None"], Awaitable[socket.socket]]
PoolKey = tuple[str, frozenset[str], "str | None", Address]
DEFAULT_CONNECT_TIMEOUT = 10.0


async def connect_socket(sock: socket.socket, address: tuple[str, int]) -> None:
    """Connect a non-blocking socket to a numeric address: the syscall, then (EINPROGRESS) wait until
    writable and read SO_ERROR; raises OSError like `loop.sock_connect`.

    Not `loop.sock_connect`: uvloop resolves the address first with a type-less getaddrinfo, which misses
    its numeric fast path and runs in libuv's thread pool, so every proxied connection paid a thread
    round trip (and the GIL hand-offs) just to "resolve" an IP literal."""
    err = sock.connect_ex(address)
    if err == 0:
        return
    if err not in (errno.EINPROGRESS, errno.EINTR, errno.EAGAIN):
        raise OSError(err, os.strerror(err))
    # A connection to an address of this host (inbound delivery to the app in the pod) is usually
    # established before connect() returns (the handshake runs in the softirq of the syscall itself):
    # then there is nothing to wait for. getpeername fails (ENOTCONN) while SYN_SENT or after a refusal.
    try:
        sock.getpeername()
        return
    except OSError:
        pass
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, _wake_connected, fut)
    try:
        await fut
    finally:
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


def _wake_connected(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def tcp_dial(dst: Address, source_ip: str | None) -> socket.socket:
    """Default dialler: a plain non-blocking TCP socket (optionally bound to `source_ip`)."""
    family = socket.AF_INET6 if ":" in dst[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source_ip:
            sock.bind((source_ip, 0))
        if _is_ip(dst[0]):
            await connect_socket(sock, dst)
        else:  # a name: let the loop resolve it (connect_ex would block on DNS)
            await asyncio.get_running_loop().sock_connect(sock, dst)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class _Pool:
    conns: list[HboneConnection] = field(default_factory=list)
    dialing: asyncio.Future[None] | None = None


@dataclass
class ClientStats:
    dials: int = 0
    dial_failures: int = 0
    streams: int = 0


class HboneClient:
    """Pooled HBONE client. Call `close()` (or use `async with`) to close all connections."""

    def __init__(
        self,
        *,
        dialer: Dialer | None = None,
        max_streams_per_connection: int = proto.CLIENT_STREAMS_PER_CONNECTION,
        idle_timeout: float = proto.POOL_IDLE_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        settings: H2Settings | None = None,
        spare_idle_timeout: float = proto.POOL_SPARE_IDLE_TIMEOUT,
    ) -> None:
        self._dialer = dialer or tcp_dial
        self.max_streams = max_streams_per_connection
        self.idle_timeout = idle_timeout
        self.spare_idle_timeout = min(spare_idle_timeout, idle_timeout)
        self.connect_timeout = connect_timeout
        self.settings = settings or H2Settings.client()
        self._contexts = ContextCache()
        self._pools: dict[PoolKey, _Pool] = {}
        self._idle_timers: dict[HboneConnection, asyncio.TimerHandle] = {}
        self.stats = ClientStats()
        self._closed = False

    async def __aenter__(self) -> HboneClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- public API ------------------------------------------------------------------------------------
    async def connect(
        self,
        src: CertBundle,
        dst_addr: Address,
        expected_identities: Collection[str],
        authority: str,
        headers: Mapping[str, str] | None = None,
        *,
        source_ip: str | None = None,
        dialer: Dialer | None = None,
    ) -> HboneStream:
        """Open a tunnel to `authority` through the HBONE server at `dst_addr`, presenting `src`'s
        certificate and requiring the server to be one of `expected_identities`. `headers` may hold
        `baggage`, `forwarded`, `traceparent` and extra headers. Raises `HboneConnectError` (dial, TLS,
        identity), `HboneStatusError` (non-200) or `HboneStreamError`."""
        if self._closed:
            raise HboneConnectError("HBONE client is closed")
        if not expected_identities:
            raise HboneConnectError(
                f"no expected identity for {dst_addr[0]}:{dst_addr[1]}",
                hint="the destination workload has no known identity; refusing to tunnel unauthenticated",
            )
        hdrs = dict(headers or {})
        request = proto.build_connect_headers(
            authority,
            baggage=hdrs.pop("baggage", None),
            forwarded=hdrs.pop("forwarded", None),
            traceparent=hdrs.pop("traceparent", None),
            extra=hdrs,
        )
        key: PoolKey = (src.identity.uri, frozenset(expected_identities), source_ip, tuple(dst_addr))  # type: ignore[assignment]
        for attempt in range(3):
            conn = await self._acquire(key, src, dialer or self._dialer)
            # open_stream registers the stream before its first await, so the reservation turns into
            # an active stream with no gap in which the slot is counted twice or not at all.
            conn.reserved -= 1
            try:
                stream = await conn.open_stream(request)
            except HboneStreamError as exc:
                # REFUSED_STREAM: the server is draining or at its stream limit; retry elsewhere.
                if exc.error_code == ErrorCodes.REFUSED_STREAM and attempt < 2:
                    conn.accepting = False
                    continue
                raise
            finally:
                self._maybe_idle(conn)
            self.stats.streams += 1
            return stream
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        self._closed = True
        for timer in self._idle_timers.values():
            timer.cancel()
        self._idle_timers.clear()
        conns = [c for pool in self._pools.values() for c in pool.conns]
        self._pools.clear()
        for conn in conns:
            conn.close("closed by the client pool")
        for conn in conns:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await conn.lost

    def connections(self, key: PoolKey | None = None) -> list[HboneConnection]:
        """Live pooled connections (all, or of one key): for tests and `zc connections`."""
        pools = [self._pools[key]] if key is not None and key in self._pools else (
            [] if key is not None else list(self._pools.values())
        )
        return [c for p in pools for c in p.conns]

    # -- pool ------------------------------------------------------------------------------------------
    def _capacity(self, conn: HboneConnection) -> int:
        return min(self.max_streams, conn.peer_max_streams)

    async def _acquire(self, key: PoolKey, src: CertBundle, dialer: Dialer) -> HboneConnection:
        loop = asyncio.get_running_loop()
        while True:
            pool = self._pools.setdefault(key, _Pool())
            pool.conns = [c for c in pool.conns if c.accepting and not c.closed]
            for conn in pool.conns:
                if conn.active_streams + conn.reserved < self._capacity(conn):
                    conn.reserved += 1
                    self._cancel_idle(conn)
                    return conn
            if pool.dialing is not None:
                waiting = pool.dialing
                await asyncio.wait([waiting])
                if not waiting.cancelled() and waiting.exception() is not None:
                    raise waiting.exception()  # type: ignore[misc]
                continue
            fut: asyncio.Future[None] = loop.create_future()
            pool.dialing = fut
            try:
                conn = await self._dial(key, src, dialer)
            except BaseException as exc:
                if isinstance(exc, Exception):
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: waiters may be none
                else:
                    fut.cancel()
                raise
            finally:
                pool.dialing = None
            conn.reserved += 1
            pool.conns.append(conn)
            fut.set_result(None)
            return conn

    async def _dial(self, key: PoolKey, src: CertBundle, dialer: Dialer) -> HboneConnection:
        _, expected, source_ip, dst = key
        label = f"{dst[0]}:{dst[1]}"
        self.stats.dials += 1
        loop = asyncio.get_running_loop()
        ctx = self._contexts.get(src, server=False)
        conn: HboneConnection | None = None

        def factory() -> HboneConnection:
            nonlocal conn
            conn = HboneConnection(
                client_side=True,
                settings=self.settings,
                verify=lambda so: verify_server(so, expected),
                on_stream_finished=lambda c, _s: self._maybe_idle(c),
                on_lost=lambda c: self._forget(key, c),
                label=label,
            )
            conn.pool_key = key
            return conn

        try:
            async with asyncio.timeout(self.connect_timeout):
                sock = await dialer(dst, source_ip)
                set_nodelay(sock)
                try:
                    await loop.create_connection(
                        factory, sock=sock, ssl=ctx, server_hostname="",
                        ssl_handshake_timeout=self.connect_timeout,
                    )
                except BaseException:
                    sock.close()
                    raise
                assert conn is not None
                await conn.ready  # the server's SETTINGS: stream limit known, identity accepted
        except ssl.SSLCertVerificationError as exc:
            self.stats.dial_failures += 1
            raise HboneConnectError(
                f"TLS handshake with HBONE peer {label} failed: server certificate rejected: "
                f"{exc.verify_message}",
                hint="the peer's certificate is expired, not yet valid, or from another mesh root",
            ) from None
        except ssl.SSLError as exc:
            self.stats.dial_failures += 1
            raise HboneConnectError(f"TLS handshake with HBONE peer {label} failed: {exc.reason or exc}") from None
        except TimeoutError:
            self.stats.dial_failures += 1
            if conn is not None:
                conn.abort()
            raise HboneConnectError(
                f"connecting to HBONE peer {label} timed out after {self.connect_timeout:.0f}s",
                hint="maybe a NetworkPolicy or firewall is blocking HBONE port 15008",
            ) from None
        except HboneConnectError as exc:  # rejected by our checks, or GOAWAY naming the reason
            self.stats.dial_failures += 1
            if conn is not None:
                conn.abort()
            raise HboneConnectError(f"HBONE connect to {label} failed: {exc.message}", hint=exc.hint) from None
        except HboneError as exc:
            self.stats.dial_failures += 1
            if conn is not None:
                conn.abort()
            # asyncio's server-side TLS drops the alert when it rejects a client certificate, so a close
            # right after our side of the handshake is almost always that: say so.
            raise HboneConnectError(
                f"HBONE connect to {label} failed: the server closed the connection right after the TLS "
                f"handshake; it most likely rejected our certificate {src.identity} ({exc.message})",
                hint="our certificate may be expired, not yet valid, from another root or trust domain; "
                "the server's log names the reason",
            ) from None
        except OSError as exc:
            self.stats.dial_failures += 1
            raise HboneConnectError(
                f"cannot connect to HBONE peer {label}: {exc.strerror or exc!r}",
                hint="is the destination node proxy running and listening on 15008?",
            ) from None
        except BaseException:
            if conn is not None:
                conn.abort()
            raise
        return conn

    def _forget(self, key: PoolKey, conn: HboneConnection) -> None:
        self._cancel_idle(conn)
        pool = self._pools.get(key)
        if pool is not None and conn in pool.conns:
            pool.conns.remove(conn)
            if not pool.conns and pool.dialing is None:
                del self._pools[key]

    def _maybe_idle(self, conn: HboneConnection) -> None:
        if conn.closed or conn.active_streams or conn.reserved or conn in self._idle_timers:
            return
        loop = asyncio.get_running_loop()
        delay = self.spare_idle_timeout if self._has_others(conn) else self.idle_timeout
        self._idle_timers[conn] = loop.call_later(delay, self._idle_expired, conn)

    def _has_others(self, conn: HboneConnection) -> bool:
        """Whether the connection's key has another usable connection (this one is a spare)."""
        pool = self._pools.get(conn.pool_key) if conn.pool_key is not None else None
        return pool is not None and any(c is not conn and c.accepting and not c.closed for c in pool.conns)

    def _cancel_idle(self, conn: HboneConnection) -> None:
        timer = self._idle_timers.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def _idle_expired(self, conn: HboneConnection) -> None:
        self._idle_timers.pop(conn, None)
        if not conn.active_streams and not conn.reserved:
            if self.spare_idle_timeout < self.idle_timeout and not self._has_others(conn):
                # The spares went first: the key's last connection stays for the full idle timeout.
                self._idle_timers[conn] = asyncio.get_running_loop().call_later(
                    self.idle_timeout - self.spare_idle_timeout, self._idle_expired, conn)
                return
            log.debug("hbone: closing idle connection to %s", conn.label)
            conn.close("idle")
