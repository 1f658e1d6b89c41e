"""ZDS transport: asyncio over a real unix SOCK_SEQPACKET socket, for both ends.

- `ZdsServer` (node agent side): listens on the socket (default `/var/run/ztunnel/ztunnel.sock`), sends a
  snapshot from `snapshot_provider()` on every (re)connection, then `add_pod` / `del_pod` on demand to ONE
  proxy: the newest connection whose snapshot completed (the "active" one). A NACK raises `ZdsNackError`.
  Older connections (an old proxy draining during an upgrade) stay open but get no updates; closing them
  would make two live proxies kick each other out forever. When the active connection closes, the older
  ones are closed too, so whichever proxy is still alive reconnects and gets a fresh snapshot.
- `ZdsClient` (node proxy side): connects with backoff 10 ms -> 1 s (a local socket: retrying is cheap,
  and a node agent back from a restart must get its proxy back at once), says Hello, drives `ProxyZds` and calls
  the injected async callbacks `on_add(uid, info, netns_fd)`, `on_del(uid)`, `on_snapshot_done(keep_uids)`.

Invariants:
- All protocol decisions live in `zds_codec` / `zds_state` (sans-IO); this module only moves packets and fds.
- A bad packet or protocol violation from the peer drops that connection (logged with the typed error),
  never the server: the accept loop keeps listening and the client reconnects with backoff. The peer
  resynchronises by the snapshot that every new connection starts with.
- Fd ownership: every fd received is closed by this module on every path. `on_add`'s `netns_fd` is valid
  only during the callback (dup it to keep it). `add_pod`'s `netns_fd` stays owned by the caller. Fds in a
  `SnapshotPod` are owned by the server once returned by the provider and closed after sending.
- Every task is owned by a TaskGroup (the server's, entered with `async with`; the client's `run()` is a
  plain coroutine the caller puts in its own TaskGroup).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ambient.core.backoff import Backoff  # re-exported: ZdsClient(backoff=Backoff(...)) callers import it here
from ambient.inpod.errors import (
    ZdsConnectionError,
    ZdsError,
    ZdsNackError,
    ZdsNotConnectedError,
    ZdsProtocolError,
)
from ambient.inpod.zds_codec import (
    MAX_FDS,
    MAX_PACKET,
    Ack,
    AddPod,
    DelPod,
    KeepPod,
    Request,
    SnapshotSent,
    WorkloadInfo,
    decode_hello,
    decode_request,
    decode_response,
    encode_ack,
    encode_hello,
    encode_request,
)
from ambient.inpod.zds_state import (
    AckResult,
    AgentZds,
    AlreadyServing,
    KeepServing,
    ProxyDecision,
    ProxyZds,
    SnapshotDone,
    StartPod,
    StopPod,
)

log = logging.getLogger("ambient.inpod.zds")

DEFAULT_SOCKET_PATH = "/var/run/ztunnel/ztunnel.sock"
RECONNECT_BACKOFF_MAX = 1.0  # seconds; the node agent's socket is local, so retrying is cheap

# --- packet I/O (the only place that touches the socket) -----------------------------------------------


async def _wait_fd(sock: socket.socket, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def recv_packet(sock: socket.socket) -> tuple[bytes, list[int], int]:
    """Receive one packet: (data, fds, msg_flags). Raises `ZdsConnectionError` when the peer closed."""
    while True:
        try:
            data, fds, flags, _ = socket.recv_fds(sock, MAX_PACKET, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            await _wait_fd(sock, write=False)
            continue
        except OSError as e:
            raise ZdsConnectionError(f"ZDS receive failed: {e}") from e
        if not data and not fds:
            raise ZdsConnectionError("ZDS peer closed the connection")
        return data, fds, flags


async def send_packet(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """Send one packet (with `fds` in SCM_RIGHTS). SEQPACKET sends are atomic: all or nothing."""
    while True:
        try:
            if fds:
                socket.send_fds(sock, [data], list(fds))
            else:
                sock.send(data)
            return
        except (BlockingIOError, InterruptedError):
            await _wait_fd(sock, write=True)
        except OSError as e:
            raise ZdsConnectionError(f"ZDS send failed: {e}") from e


def _close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# --- agent side ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotPod:
    """One enrolled pod in a snapshot: with a netns fd -> Add, without (None) -> Keep."""

    uid: str
    info: WorkloadInfo
    netns_fd: int | None = None


SnapshotProvider = Callable[[], Awaitable[Sequence[SnapshotPod]]]


class _AgentConnection:
    """One connected proxy: a reader task resolves the single outstanding request's future."""

    _ids = 0

    def __init__(self, sock: socket.socket, ack_timeout: float) -> None:
        _AgentConnection._ids += 1
        self.id = _AgentConnection._ids
        self.sock = sock
        self.state = AgentZds()
        self.ack_timeout = ack_timeout
        self.lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        self.hello: asyncio.Future[None] = loop.create_future()
        self.pending: asyncio.Future[AckResult] | None = None
        self.closed = asyncio.Event()
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<zds-conn {self.id} {self.state.phase.value}>"

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        for fut in (self.hello, self.pending):
            if fut is not None and not fut.done():
                fut.set_exception(error)
                fut.exception()  # mark retrieved: nobody may be waiting on it
        self.closed.set()

    async def read_loop(self) -> None:
        """Never raises (except cancellation): a failure is recorded and wakes every waiter."""
        try:
            while True:
                data, fds, flags = await recv_packet(self.sock)
                try:
                    if not self.hello.done():
                        self.state.receive_hello(decode_hello(data, fds, flags))
                        self.hello.set_result(None)
                        continue
                    ack: Ack = decode_response(data, fds, flags)
                    result = self.state.receive_ack(ack)
                finally:
                    _close_fds(fds)  # a proxy never legitimately sends fds; decode already rejected them
                if self.pending is not None and not self.pending.done():
                    self.pending.set_result(result)
        except (ZdsError, OSError) as e:
            self.fail(e)
        except Exception as e:  # a bug must not take the server down; log it with the traceback
            log.exception("ZDS connection %s: unexpected error", self.id)
            self.fail(e)

    async def request(self, request: Request) -> AckResult:
        async with self.lock:
            if self.error is not None:
                raise ZdsConnectionError(f"ZDS connection to the proxy is closed: {self.error}")
            try:
                if self.pending is not None:
                    # A previous caller was cancelled after its request left: its Ack is still due, and
                    # ZDS allows one request in flight. Absorb that Ack before sending ours.
                    await self._await_ack(self.pending, "a cancelled earlier request")
                self.state.send(request)
                data, fds = encode_request(request)
                pending = self.pending = asyncio.get_running_loop().create_future()
                sent = False
                try:
                    await send_packet(self.sock, data, fds)
                    sent = True
                    return await self._await_ack(pending, type(request).__name__)
                except asyncio.CancelledError:
                    if not sent:  # never left: nothing is in flight
                        self.state.outstanding = None
                        self.pending = None
                    raise  # else keep `pending`: the reader resolves it, the next request absorbs it
            except ZdsConnectionError as e:
                self.fail(e)
                raise
            except ZdsError as e:  # failure recorded by the reader (decode or protocol error)
                raise ZdsConnectionError(f"ZDS connection to the proxy failed: {e}") from e

    async def _await_ack(self, pending: asyncio.Future[AckResult], what: str) -> AckResult:
        try:
            result = await asyncio.wait_for(asyncio.shield(pending), self.ack_timeout)
        except TimeoutError:
            raise ZdsConnectionError(
                f"node proxy did not Ack {what} within {self.ack_timeout:g}s",
                hint="the proxy is stuck or overloaded; the connection is dropped and resynced",
            ) from None
        if self.pending is pending:
            self.pending = None
        return result


class ZdsServer:
    """The node agent's ZDS endpoint. Use as `async with ZdsServer(path, provider) as server:`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        snapshot_provider: SnapshotProvider,
        *,
        hello_timeout: float = 10.0,
        ack_timeout: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self._provider = snapshot_provider
        self._hello_timeout = hello_timeout
        self._ack_timeout = ack_timeout
        self._sock: socket.socket | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._conn_tasks: dict[int, asyncio.Task[None]] = {}  # connection id -> its handler task
        self._active: _AgentConnection | None = None
        self._ready = asyncio.Event()
        self.snapshots_sent = 0  # completed snapshots (one per successful proxy connection)
        self.connections_dropped = 0  # connections closed because of an error
        self.last_error: BaseException | None = None  # why the last one was dropped (diagnostics, tests)

    def __repr__(self) -> str:
        return f"<ZdsServer {self.path} active={self._active!r}>"

    @property
    def ready(self) -> bool:
        """A proxy is connected and its snapshot is complete."""
        return self._ready.is_set()

    async def __aenter__(self) -> ZdsServer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()  # stale socket of a previous agent: rebinding needs the name free
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)  # only root (the proxy) may hand us pods' fates
            sock.listen(16)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._accept_task = self._tg.create_task(self._accept_loop(), name="zds-accept")
        log.info("ZDS server listening on %s", self.path)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
        for task in list(self._handlers):
            task.cancel()
        try:
            if self._tg is not None:
                # Our tasks are cancelled above; pass no exception so the caller's own exception (if any)
                # propagates unchanged instead of being wrapped into an ExceptionGroup by the TaskGroup.
                await self._tg.__aexit__(None, None, None)
        finally:
            if self._sock is not None:
                self._sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def wait_ready(self, ready_timeout: float | None = None) -> None:
        """Wait until a proxy is connected and has received its snapshot."""
        try:
            await asyncio.wait_for(self._ready.wait(), ready_timeout)
        except TimeoutError:
            raise ZdsNotConnectedError(
                f"no node proxy connected to {self.path} within {ready_timeout:g}s",
                hint="is the node proxy running on this node and pointed at this socket?",
            ) from None

    async def add_pod(
        self, uid: str, workload_info: WorkloadInfo, netns_fd: int, *, ready_timeout: float | None = 5.0
    ) -> None:
        """Hand a pod to the proxy; returns once it ACKed. Raises `ZdsNackError`, `ZdsNotConnectedError`,
        `ZdsConnectionError`. `netns_fd` stays owned by the caller. `ready_timeout`: how long to wait for a
        connected proxy whose snapshot is complete (the Ack itself is bounded by the server's ack_timeout)."""
        result = await self._request(AddPod(uid=uid, info=workload_info, netns_fd=netns_fd), ready_timeout)
        if not result.ok:
            raise ZdsNackError(uid, result.error, request="add")
        log.info("ZDS: proxy accepted pod %s (%s/%s)", uid, workload_info.namespace, workload_info.name)

    async def del_pod(self, uid: str, *, ready_timeout: float | None = 5.0) -> None:
        """Tell the proxy to stop serving a pod; returns once it ACKed."""
        result = await self._request(DelPod(uid=uid), ready_timeout)
        if not result.ok:
            raise ZdsNackError(uid, result.error, request="del")
        log.info("ZDS: proxy removed pod %s", uid)

    async def _request(self, request: Request, ready_timeout: float | None) -> AckResult:
        await self.wait_ready(ready_timeout)
        conn = self._active
        if conn is None:  # lost between the event and here
            raise ZdsNotConnectedError(f"node proxy disconnected from {self.path}")
        return await conn.request(request)

    async def _accept_loop(self) -> None:
        assert self._sock is not None and self._tg is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn_sock, _ = await loop.sock_accept(self._sock)
            except OSError as e:  # e.g. EMFILE: do not spin, do not die
                log.warning("ZDS accept failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            conn_sock.setblocking(False)
            task = self._tg.create_task(self._serve(conn_sock), name="zds-conn")
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _serve(self, sock: socket.socket) -> None:
        assert self._tg is not None
        conn = _AgentConnection(sock, self._ack_timeout)
        current = asyncio.current_task()
        assert current is not None
        self._conn_tasks[conn.id] = current
        reader = self._tg.create_task(conn.read_loop(), name=f"zds-read-{conn.id}")
        try:
            await asyncio.wait_for(asyncio.shield(conn.hello), self._hello_timeout)
            log.info("ZDS: proxy connected (conn %s), sending snapshot", conn.id)
            await self._send_snapshot(conn)
            self.snapshots_sent += 1
            if self._active is None or self._active.id < conn.id:
                if self._active is not None:
                    log.info("ZDS: conn %s replaces conn %s as the active proxy", conn.id, self._active.id)
                self._active = conn
                self._ready.set()
            await conn.closed.wait()
            if conn.error is not None and not isinstance(conn.error, ZdsConnectionError):
                raise conn.error
            log.info("ZDS: proxy disconnected (conn %s)", conn.id)
        except TimeoutError as e:
            self.connections_dropped += 1
            self.last_error = e
            log.warning("ZDS: proxy sent no Hello within %gs; dropping conn %s", self._hello_timeout, conn.id)
        except ZdsError as e:
            self.connections_dropped += 1
            self.last_error = e
            log.warning("ZDS: dropping proxy connection %s: %s", conn.id, e)
        except OSError as e:
            self.connections_dropped += 1
            self.last_error = e
            log.warning("ZDS: proxy connection %s failed: %s", conn.id, e)
        except Exception as e:  # never let one connection crash the agent
            self.connections_dropped += 1
            self.last_error = e
            log.exception("ZDS: unexpected error on proxy connection %s", conn.id)
        finally:
            if self._active is conn:
                self._active = None
                self._ready.clear()
                # Older connections missed every update since this one took over: make them resync.
                # (Newer ones are still in their snapshot and become active when it completes.)
                for other_id, task in list(self._conn_tasks.items()):
                    if other_id < conn.id:
                        task.cancel()
            self._conn_tasks.pop(conn.id, None)
            conn.fail(ZdsConnectionError("ZDS connection to the proxy closed"))
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            sock.close()

    async def _send_snapshot(self, conn: _AgentConnection) -> None:
        pods = list(await self._provider())
        try:
            for i, pod in enumerate(pods):
                request: Request
                if pod.netns_fd is not None:
                    request = AddPod(uid=pod.uid, info=pod.info, netns_fd=pod.netns_fd)
                else:
                    request = KeepPod(uid=pod.uid)
                result = await conn.request(request)
                if pod.netns_fd is not None:
                    os.close(pod.netns_fd)
                    pods[i] = SnapshotPod(pod.uid, pod.info, None)  # closed: not again in `finally`
                if not result.ok:
                    # The pod stays enrolled on our side; the next snapshot or add retries it.
                    log.warning("ZDS snapshot: proxy refused pod %s: %s", pod.uid, result.error)
            result = await conn.request(SnapshotSent())
            if not result.ok:
                raise ZdsProtocolError(f"node proxy refused the end of the snapshot: {result.error}")
        finally:
            _close_fds([p.netns_fd for p in pods if p.netns_fd is not None])
        log.info("ZDS: snapshot of %d pod(s) delivered (conn %s)", len(pods), conn.id)


# --- proxy side ----------------------------------------------------------------------------------------

OnAdd = Callable[[str, WorkloadInfo, int], Awaitable[None]]
OnDel = Callable[[str], Awaitable[None]]
OnSnapshotDone = Callable[[frozenset[str]], Awaitable[None]]


class ZdsClient:
    """The node proxy's ZDS endpoint. `await client.run()` (inside the caller's TaskGroup) until cancelled."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        on_add: OnAdd,
        on_del: OnDel,
        on_snapshot_done: OnSnapshotDone,
        backoff: Backoff | None = None,
    ) -> None:
        self.path = Path(path)
        self._on_add = on_add
        self._on_del = on_del
        self._on_snapshot_done = on_snapshot_done
        self._backoff = backoff or Backoff(0.01, RECONNECT_BACKOFF_MAX, jitter=0.2)
        self.state = ProxyZds()
        self.connections = 0  # successful connects
        self.snapshots = 0  # completed snapshots
        self.snapshot_done = asyncio.Event()  # set after every snapshot; tests and readiness clear/await it
        self.last_error: ZdsError | None = None

    def __repr__(self) -> str:
        return f"<ZdsClient {self.path} {self.state.phase.value} served={len(self.state.served)}>"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, str(self.path))
                self.connections += 1
                self._backoff.reset()
                await self._serve(sock)
            except (FileNotFoundError, ConnectionRefusedError) as e:
                log.debug("ZDS: node agent not reachable at %s: %s", self.path, e)
            except ZdsConnectionError as e:  # the agent restarted or went away: routine, reconnect
                self.last_error = e
                log.info("ZDS: connection to the node agent ended: %s", e)
            except ZdsError as e:
                self.last_error = e
                log.warning("ZDS: dropped the connection to the node agent: %s", e)
            except OSError as e:
                log.warning("ZDS: connection to the node agent failed: %s", e)
            finally:
                self.state.connection_lost()
                sock.close()
            await asyncio.sleep(self._backoff.next())

    async def _serve(self, sock: socket.socket) -> None:
        hello = self.state.connection_started()
        await send_packet(sock, encode_hello(hello.version))
        while True:
            data, fds, flags = await recv_packet(sock)
            try:
                try:
                    request = decode_request(data, fds, flags)
                    inode = os.fstat(request.netns_fd).st_ino if isinstance(request, AddPod) else None
                    decision = self.state.receive(request, netns_inode=inode)
                except ZdsError as e:
                    # Tell the agent why (best effort), then drop the connection: a fresh snapshot resyncs.
                    with contextlib.suppress(ZdsError):
                        await send_packet(sock, encode_ack(f"protocol error: {e.message}"))
                    raise
                error = await self._apply(decision)
            finally:
                _close_fds(fds)
            await send_packet(sock, encode_ack(error))

    async def _apply(self, decision: ProxyDecision) -> str:
        """Run the callback for one decision; returns the Ack error ('' = ACK)."""
        try:
            match decision:
                case StartPod(uid=uid, info=info, netns_fd=fd, replace=replace):
                    log.info(
                        "ZDS: %s pod %s (%s/%s)", "replacing" if replace else "adding", uid, info.namespace, info.name
                    )
                    try:
                        await self._on_add(uid, info, fd)
                    except BaseException:
                        self.state.forget(uid)
                        raise
                case AlreadyServing(uid=uid):
                    log.debug("ZDS: pod %s re-added with the same netns: nothing to do", uid)
                case KeepServing(uid=uid, known=known):
                    if not known:
                        log.warning("ZDS: Keep for pod %s that this proxy does not serve", uid)
                case StopPod(uid=uid):
                    log.info("ZDS: removing pod %s", uid)
                    await self._on_del(uid)
                case SnapshotDone(keep_uids=keep, stale_uids=stale):
                    log.info("ZDS: snapshot complete: %d pod(s) kept, %d stale", len(keep), len(stale))
                    await self._on_snapshot_done(keep)
                    self.snapshots += 1
                    self.snapshot_done.set()
        except ZdsError as e:
            return e.message
        except Exception as e:  # the callback's failure is the agent's NACK, never our crash
            log.warning("ZDS: handling %s failed: %s", type(decision).__name__, e)
            return f"{type(e).__name__}: {e}"
        return ""


__all__ = [
    "DEFAULT_SOCKET_PATH",
    "Backoff",
    "SnapshotPod",
    "SnapshotProvider",
    "WorkloadInfo",
    "ZdsClient",
    "ZdsServer",
    "recv_packet",
    "send_packet",
]
