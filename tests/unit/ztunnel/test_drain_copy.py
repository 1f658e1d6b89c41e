"""Drain primitive and copy path, in-process (socketpairs, no network)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from ambient.runtime.drain import Drain
from ambient.ztunnel.copy import INITIAL_BUFFER, MAX_BUFFER, CopyStats, SocketEnd, copy_bidirectional, finish, refuse
from helpers import tcp_pair


async def test_drain_closes_listeners_at_once_and_waits_for_connections() -> None:
    drain = Drain("t", deadline=2.0)
    closed: list[str] = []
    drain.on_start(lambda: closed.append("listener"))
    done = asyncio.Event()

    async def conn() -> None:
        await done.wait()

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(conn())
        drain.watch(task)
        drain.start()
        assert closed == ["listener"] and drain.draining
        tg.create_task(asyncio.sleep(0.05))
        asyncio.get_running_loop().call_later(0.1, done.set)
        cut = await drain.run()
    assert cut == 0 and task.done() and not task.cancelled()


async def test_drain_cuts_survivors_at_the_deadline() -> None:
    drain = Drain("t", deadline=0.2)
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(asyncio.sleep(30))
        drain.watch(task)
        started = loop.time()
        cut = await drain.run()
        elapsed = loop.time() - started
    assert cut == 1 and task.cancelled()
    assert 0.15 < elapsed < 2.0
    late: list[str] = []
    drain.on_start(lambda: late.append("x"))  # registering after the start closes at once
    assert late == ["x"]


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def test_copy_both_directions_with_half_close_and_counters() -> None:
    loop = asyncio.get_running_loop()
    app_peer, app = _pair()  # the "client" talks through app_peer
    up, up_peer = _pair()  # the "server" is behind up_peer
    stats = CopyStats()
    request = bytes(range(256)) * 4096  # 1 MiB: forces the buffer to grow
    response = b"r" * 70_000

    async def client() -> bytes:
        await loop.sock_sendall(app_peer, request)
        app_peer.shutdown(socket.SHUT_WR)  # half-close: the server must see EOF, then still answer
        out = bytearray()
        while chunk := await loop.sock_recv(app_peer, 65536):
            out += chunk
        return bytes(out)

    async def server() -> bytes:
        got = bytearray()
        while chunk := await loop.sock_recv(up_peer, 65536):
            got += chunk
        await loop.sock_sendall(up_peer, response)
        up_peer.shutdown(socket.SHUT_WR)
        return bytes(got)

    a_end, b_end = SocketEnd(app, "app"), SocketEnd(up, "up")
    async with asyncio.TaskGroup() as tg:
        c = tg.create_task(client())
        s = tg.create_task(server())
        error = await copy_bidirectional(a_end, b_end, stats)
    finish(a_end, b_end, error)
    assert error is None
    assert s.result() == request and c.result() == response
    assert (stats.sent, stats.received) == (len(request), len(response))
    assert MAX_BUFFER >= len(a_end._buf) > INITIAL_BUFFER  # grew with traffic (by steps, bounded)
    for sock in (app_peer, up_peer):
        sock.close()


async def test_copy_reports_a_reset_and_resets_the_other_side() -> None:
    loop = asyncio.get_running_loop()
    app_peer, app = tcp_pair()
    up, up_peer = tcp_pair()
    stats = CopyStats()

    async def breaker() -> None:
        await loop.sock_sendall(up_peer, b"partial")
        await asyncio.sleep(0.05)
        up_peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        up_peer.close()  # RST

    a_end, b_end = SocketEnd(app, "app"), SocketEnd(up, "up")
    async with asyncio.TaskGroup() as tg:
        tg.create_task(breaker())
        error = await asyncio.wait_for(copy_bidirectional(a_end, b_end, stats), 5)
    assert isinstance(error, ConnectionResetError)
    finish(a_end, b_end, error)  # the app side is reset too: it sees an error, never a hang
    assert stats.received == len(b"partial")
    app_peer.setblocking(True)
    app_peer.settimeout(2)
    with pytest.raises(ConnectionResetError):
        while app_peer.recv(100):
            pass
    app_peer.close()


async def test_refuse_resets_once_the_client_spoke_or_after_the_grace() -> None:
    loop = asyncio.get_running_loop()
    # A client that sends at once (curl): reset as soon as its bytes arrive, not after the grace.
    app_peer, app = tcp_pair()
    started = loop.time()
    refusing = asyncio.create_task(refuse(app, grace=5.0))
    await asyncio.sleep(0.1)
    assert not refusing.done()  # nothing heard yet: the client may still be checking its connect()
    await loop.sock_sendall(app_peer, b"GET / HTTP/1.1\r\n\r\n")
    await asyncio.wait_for(refusing, 2)
    assert loop.time() - started < 2
    with pytest.raises(ConnectionResetError):
        while await loop.sock_recv(app_peer, 100):
            pass
    app_peer.close()
    # A silent client (server-first protocol): reset after the grace.
    app_peer, app = tcp_pair()
    started = loop.time()
    await asyncio.wait_for(refuse(app, grace=0.2), 2)
    assert 0.15 <= loop.time() - started < 1.5
    with pytest.raises(ConnectionResetError):
        while await loop.sock_recv(app_peer, 100):
            pass
    app_peer.close()
