"""ZDS over a real unix SOCK_SEQPACKET socket: fd passing, snapshots, reconnects, NACKs, and misbehaving peers.

No root needed: the "netns" fds are `/proc/self/ns/net` (and `/proc/self/ns/uts` as a second, different
inode); the proxy side only fstat()s them, exactly as it would a pod's netns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ambient.inpod.errors import (
    ZdsConnectionError,
    ZdsError,
    ZdsFdCountError,
    ZdsMalformedError,
    ZdsNackError,
    ZdsNotConnectedError,
    ZdsProtocolError,
    ZdsTruncatedError,
)
from ambient.inpod.zds import Backoff, SnapshotPod, ZdsClient, ZdsServer, recv_packet, send_packet
from ambient.inpod.zds_codec import (
    AddPod,
    KeepPod,
    SnapshotSent,
    WorkloadInfo,
    decode_hello,
    decode_response,
    encode_ack,
    encode_hello,
    encode_request,
)
from helpers import eventually

INFO = WorkloadInfo("web-1", "shop", "web")
NETNS = "/proc/self/ns/net"
OTHER_NS = "/proc/self/ns/uts"
T = 10.0  # generous: the machine is shared and noisy


def ino(path: str) -> int:
    return os.stat(path).st_ino


def open_fd(path: str = NETNS) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def sock_path() -> Iterator[Path]:
    d = tempfile.mkdtemp(prefix="zds-")  # short: unix socket paths are limited to 108 bytes
    yield Path(d) / "ztunnel.sock"
    shutil.rmtree(d, ignore_errors=True)


class FakeProxy:
    """The node proxy's side of the callbacks: records what it was told."""

    def __init__(self) -> None:
        self.added: dict[str, tuple[WorkloadInfo, int]] = {}
        self.add_calls = 0
        self.deleted: list[str] = []
        self.snapshots: list[frozenset[str]] = []
        self.refuse: set[str] = set()
        self.slow: set[str] = set()

    async def on_add(self, uid: str, info: WorkloadInfo, netns_fd: int) -> None:
        if uid in self.refuse:
            raise RuntimeError("cannot enter netns")
        if uid in self.slow:
            await asyncio.sleep(0.3)
        self.add_calls += 1
        self.added[uid] = (info, os.fstat(netns_fd).st_ino)

    async def on_del(self, uid: str) -> None:
        self.deleted.append(uid)
        self.added.pop(uid, None)

    async def on_snapshot_done(self, keep: frozenset[str]) -> None:
        self.snapshots.append(keep)

    def client(self, path: Path) -> ZdsClient:
        return ZdsClient(
            path,
            on_add=self.on_add,
            on_del=self.on_del,
            on_snapshot_done=self.on_snapshot_done,
            backoff=Backoff(0.01, 0.05),
        )


async def empty_snapshot() -> list[SnapshotPod]:
    return []


@contextlib.asynccontextmanager
async def running(client: ZdsClient) -> AsyncIterator[asyncio.Task[None]]:
    """Run a client for the duration of the block (owned by a TaskGroup), then stop it."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(client.run())
        try:
            yield task
        finally:
            task.cancel()


async def test_add_pod_passes_the_netns_fd(sock_path: Path, no_leaked_tasks: None) -> None:
    proxy = FakeProxy()
    fds_before = open_fds()
    async with ZdsServer(sock_path, empty_snapshot) as server, running(proxy.client(sock_path)):
        await server.wait_ready(T)
        assert proxy.snapshots == [frozenset()]
        fd = open_fd()
        try:
            await server.add_pod("uid-1", INFO, fd)
        finally:
            os.close(fd)
        # The proxy received a fd to the very same namespace (same inode), with the pod's identity.
        assert proxy.added == {"uid-1": (INFO, ino(NETNS))}

        # Same netns again: idempotent (ACKed, callback not called again). New netns: replaced.
        fd = open_fd()
        try:
            await server.add_pod("uid-1", INFO, fd)
        finally:
            os.close(fd)
        assert proxy.add_calls == 1
        fd = open_fd(OTHER_NS)
        try:
            await server.add_pod("uid-1", INFO, fd)
        finally:
            os.close(fd)
        assert proxy.add_calls == 2 and proxy.added["uid-1"][1] == ino(OTHER_NS)

        await server.del_pod("uid-1")
        assert proxy.deleted == ["uid-1"]
    assert not os.path.exists(sock_path)  # noqa: ASYNC240 - the server removed its socket
    assert open_fds() == fds_before  # every received/sent fd closed


async def test_nack_is_raised_and_connection_survives(sock_path: Path, no_leaked_tasks: None) -> None:
    proxy = FakeProxy()
    proxy.refuse.add("bad")
    async with ZdsServer(sock_path, empty_snapshot) as server, running(proxy.client(sock_path)):
        await server.wait_ready(T)
        fd = open_fd()
        try:
            with pytest.raises(ZdsNackError, match="cannot enter netns") as err:
                await server.add_pod("bad", INFO, fd)
            assert err.value.uid == "bad"
            await server.add_pod("good", INFO, fd)  # same connection, still usable
        finally:
            os.close(fd)
        assert set(proxy.added) == {"good"}
        assert server.snapshots_sent == 1 and server.connections_dropped == 0


async def test_no_proxy_means_not_connected(sock_path: Path, no_leaked_tasks: None) -> None:
    async with ZdsServer(sock_path, empty_snapshot) as server:
        with pytest.raises(ZdsNotConnectedError, match="no node proxy connected"):
            await server.add_pod("uid-1", INFO, 0, ready_timeout=0.05)
        with pytest.raises(ZdsNotConnectedError):
            await server.del_pod("uid-1", ready_timeout=0.05)


async def test_snapshot_on_every_reconnect(sock_path: Path, no_leaked_tasks: None) -> None:
    provided = 0

    async def snapshot() -> list[SnapshotPod]:
        nonlocal provided
        provided += 1
        # The server owns (and closes) these fds.
        return [SnapshotPod("a", INFO, open_fd()), SnapshotPod("b", INFO, None)]

    proxy = FakeProxy()
    client = proxy.client(sock_path)
    async with ZdsServer(sock_path, snapshot) as server:
        async with running(client):
            await server.wait_ready(T)
            # "a" was added with its netns; "b" (Keep) is unknown to a fresh proxy, so not kept.
            assert proxy.added == {"a": (INFO, ino(NETNS))}
            assert proxy.snapshots == [frozenset({"a"})]
        # The proxy went away: the agent notices and is no longer ready.
        await eventually(lambda: not server.ready)

        # The same proxy process reconnects: the snapshot is replayed; "a" is the same netns -> no re-add.
        async with running(client):
            await eventually(lambda: len(proxy.snapshots) >= 2)
            assert proxy.snapshots[1] == frozenset({"a"})
            assert proxy.add_calls == 1

        # A restarted proxy (fresh state) gets everything again.
        fresh = FakeProxy()
        async with running(fresh.client(sock_path)):
            await eventually(lambda: bool(fresh.snapshots))
            assert fresh.added == {"a": (INFO, ino(NETNS))}
        assert provided == 3 and server.snapshots_sent == 3


async def test_snapshot_tears_down_pods_no_longer_enrolled(sock_path: Path, no_leaked_tasks: None) -> None:
    enrolled = {"a", "b"}

    async def snapshot() -> list[SnapshotPod]:
        return [SnapshotPod(uid, INFO, open_fd()) for uid in sorted(enrolled)]

    proxy = FakeProxy()
    client = proxy.client(sock_path)
    async with ZdsServer(sock_path, snapshot) as server:
        async with running(client):
            await server.wait_ready(T)
        enrolled.discard("b")  # removed while the proxy was disconnected
        async with running(client):
            await eventually(lambda: len(proxy.snapshots) >= 2)
    assert proxy.snapshots == [frozenset({"a", "b"}), frozenset({"a"})]
    assert set(client.state.served) == {"a"}


async def _raw_connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, str(path))
    return sock


async def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        async with asyncio.timeout(T):
            while True:
                await recv_packet(sock)
    except ZdsConnectionError:
        return True


@pytest.mark.parametrize(
    ("misbehave", "error"),
    [
        ("hello-v2", ZdsProtocolError),
        ("garbage", ZdsMalformedError),
        ("hello-with-fd", ZdsFdCountError),
        ("unsolicited-ack", ZdsProtocolError),
        ("nack-snapshot-sent", ZdsProtocolError),
        ("oversized", ZdsTruncatedError),
    ],
)
async def test_server_drops_a_misbehaving_proxy_and_keeps_listening(
    sock_path: Path, misbehave: str, error: type[ZdsError], no_leaked_tasks: None
) -> None:
    async with ZdsServer(sock_path, empty_snapshot) as server:
        bad = await _raw_connect(sock_path)
        try:
            if misbehave == "hello-v2":
                await send_packet(bad, encode_hello(2))
            elif misbehave == "garbage":
                await send_packet(bad, b"\x0f\x01\xff")
            elif misbehave == "hello-with-fd":
                fd = open_fd()
                try:
                    await send_packet(bad, encode_hello(), [fd])
                finally:
                    os.close(fd)
            elif misbehave == "oversized":
                await send_packet(bad, b"\x00" * 2000)
            else:
                await send_packet(bad, encode_hello())
                data, _, _ = await recv_packet(bad)
                assert data == encode_request(SnapshotSent())[0]
                if misbehave == "unsolicited-ack":
                    await send_packet(bad, encode_ack())
                    await send_packet(bad, encode_ack())  # nothing outstanding now
                else:
                    await send_packet(bad, encode_ack("no"))
            assert await _closed_by_peer(bad)
        finally:
            bad.close()
        assert server.connections_dropped == 1 and not server.ready
        assert isinstance(server.last_error, error), server.last_error

        # Still listening: a well-behaved proxy gets its snapshot.
        proxy = FakeProxy()
        async with running(proxy.client(sock_path)):
            await server.wait_ready(T)
            assert proxy.snapshots == [frozenset()]


async def test_newest_proxy_becomes_active_and_old_one_is_left_alone(sock_path: Path, no_leaked_tasks: None) -> None:
    old, new = FakeProxy(), FakeProxy()
    async with ZdsServer(sock_path, empty_snapshot) as server, running(old.client(sock_path)):
        await server.wait_ready(T)
        async with running(new.client(sock_path)):
            await eventually(lambda: bool(new.snapshots))
            fd = open_fd()
            try:
                await server.add_pod("uid-1", INFO, fd)
            finally:
                os.close(fd)
            assert "uid-1" in new.added and not old.added
            assert len(old.snapshots) == 1  # not kicked out, no reconnect churn
        # The active (new) proxy left: the old one is told to resync and becomes active with a fresh snapshot.
        await eventually(lambda: len(old.snapshots) >= 2)
        await server.wait_ready(T)


# --- the proxy side against a misbehaving agent --------------------------------------------------------


@contextlib.asynccontextmanager
async def fake_agent(path: Path) -> AsyncIterator[socket.socket]:
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lsock.bind(str(path))
    lsock.listen(4)
    lsock.setblocking(False)
    try:
        yield lsock
    finally:
        lsock.close()


async def _accept_hello(lsock: socket.socket) -> socket.socket:
    async with asyncio.timeout(T):
        conn, _ = await asyncio.get_running_loop().sock_accept(lsock)
        conn.setblocking(False)
        data, fds, flags = await recv_packet(conn)
    assert decode_hello(data, fds, flags).version == 1
    return conn


async def _request(conn: socket.socket, data: bytes, fds: list[int] | None = None) -> str:
    await send_packet(conn, data, fds or [])
    async with asyncio.timeout(T):
        reply, rfds, flags = await recv_packet(conn)
    return decode_response(reply, rfds, flags).error


@pytest.mark.parametrize(
    ("misbehave", "reason"),
    [
        ("keep-after-snapshot", "Keep for pod k after the snapshot"),
        ("double-snapshot-sent", "second ZDS SnapshotSent"),
        ("add-without-fd", "exactly one"),
        ("fd-on-keep", "Keep carried 1 fd"),
        ("garbage", "cannot decode"),
        ("oversized", "MSG_TRUNC"),
    ],
)
async def test_proxy_nacks_and_reconnects_on_agent_protocol_errors(
    sock_path: Path, misbehave: str, reason: str, no_leaked_tasks: None
) -> None:
    proxy = FakeProxy()
    client = proxy.client(sock_path)
    fds_before = open_fds()
    async with fake_agent(sock_path) as lsock, running(client) as task:
        conn = await _accept_hello(lsock)
        try:
            snapshot_sent = encode_request(SnapshotSent())[0]
            if misbehave == "keep-after-snapshot":
                assert await _request(conn, snapshot_sent) == ""
                error = await _request(conn, encode_request(KeepPod("k"))[0])
            elif misbehave == "double-snapshot-sent":
                assert await _request(conn, snapshot_sent) == ""
                error = await _request(conn, snapshot_sent)
            elif misbehave == "add-without-fd":
                fd = open_fd()
                data, _ = encode_request(AddPod("a", INFO, fd))
                os.close(fd)
                error = await _request(conn, data)
            elif misbehave == "fd-on-keep":
                fd = open_fd()
                try:
                    error = await _request(conn, encode_request(KeepPod("k"))[0], [fd])
                finally:
                    os.close(fd)
            elif misbehave == "garbage":
                error = await _request(conn, b"\x0f\x01")
            else:
                error = await _request(conn, b"\x0a" * 1500)
            assert error.startswith("protocol error:") and reason in error
            assert await _closed_by_peer(conn)  # the proxy dropped the connection...
        finally:
            conn.close()
        conn = await _accept_hello(lsock)  # ...and reconnected with a fresh Hello
        conn.close()
        assert not task.done()  # never crashed
        assert client.last_error is not None and reason in str(client.last_error)
    assert proxy.added == {}
    assert open_fds() == fds_before


async def test_silent_proxy_is_dropped_after_timeouts(sock_path: Path, no_leaked_tasks: None) -> None:
    async with ZdsServer(sock_path, empty_snapshot, hello_timeout=0.2, ack_timeout=0.2) as server:
        mute = await _raw_connect(sock_path)  # never says Hello
        try:
            assert await _closed_by_peer(mute)
        finally:
            mute.close()
        assert isinstance(server.last_error, TimeoutError)

        stuck = await _raw_connect(sock_path)  # says Hello, never Acks the snapshot
        try:
            await send_packet(stuck, encode_hello())
            assert await _closed_by_peer(stuck)
        finally:
            stuck.close()
        assert isinstance(server.last_error, ZdsConnectionError)
        assert "did not Ack SnapshotSent" in str(server.last_error)
        assert server.connections_dropped == 2


async def test_cancelled_add_pod_does_not_desync_the_connection(sock_path: Path, no_leaked_tasks: None) -> None:
    proxy = FakeProxy()
    proxy.slow.add("slow")
    async with ZdsServer(sock_path, empty_snapshot) as server, running(proxy.client(sock_path)):
        await server.wait_ready(T)
        fd = open_fd()
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):  # the caller gives up while the proxy is still working
                    await server.add_pod("slow", INFO, fd)
            await server.add_pod("next", INFO, fd)  # waits out the late Ack, then goes through
        finally:
            os.close(fd)
        assert set(proxy.added) == {"slow", "next"}
        assert server.connections_dropped == 0 and server.ready


async def test_default_backoff_reconnects_within_a_second_after_a_long_agent_outage(
        sock_path: Path, no_leaked_tasks: None) -> None:
    # The node agent's socket is local: the proxy keeps retrying at least every second, so a node agent that
    # comes back after a long outage (e.g. out of a restart back-off) gets its proxy at once.
    proxy = FakeProxy()
    client = ZdsClient(sock_path, on_add=proxy.on_add, on_del=proxy.on_del,
                       on_snapshot_done=proxy.on_snapshot_done)  # the default back-off
    async with running(client):
        await asyncio.sleep(4.0)  # ~9 failed connects: an uncapped 10 ms doubling would now wait ~5 s
        async with ZdsServer(sock_path, empty_snapshot):
            started = asyncio.get_running_loop().time()
            await eventually(lambda: client.snapshots >= 1)
            assert asyncio.get_running_loop().time() - started < 2.5
