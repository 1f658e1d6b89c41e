"""HBONE listener hardening: pending-handshake caps and deadlines, memory after handshake floods and
CONTINUATION floods (against a real listener process under uvloop, as the node proxy runs it).

The memory tests measure the listener process's RSS: a baseline, then after the attack has been reaped.
Bounded: at most 3,000 connections per round, loopback only.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ambient.hbone.client import HboneClient
from ambient.hbone.connection import HboneStream
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, HandshakeLimits, HboneServer
from ambient.identity.ca import LocalCA
from ambient.tls.verify import PeerIdentity

pytestmark = pytest.mark.timeout(180)
SERVER_ID = "spiffe://cluster.local/ns/mem/sa/server"
PROC = Path(__file__).with_name("hbone_listener_proc.py")


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create()


async def echo(stream: HboneStream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.write_eof()


async def echo_handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
    return Accept(serve=echo)


async def wait_for(cond: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 - polls server state that has no event
            await asyncio.sleep(0.01)


# -- in-process: caps and deadlines -------------------------------------------------------------------------
async def test_source_cap_closes_extra_connection_at_once(ca: LocalCA) -> None:
    limits = HandshakeLimits(timeout=60, max_pending_per_source=2)
    async with HboneServer(socket.create_server(("127.0.0.1", 0)), ca.issue(SERVER_ID), echo_handler,
                           limits=limits) as server:
        held = [await asyncio.open_connection(*server.address[:2]) for _ in range(2)]
        await wait_for(lambda: server.pending_handshakes == 2)
        reader, writer = await asyncio.open_connection(*server.address[:2])
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed long before the 60 s deadline
        assert server.stats.refused == {"too_many_handshakes_from_source": 1}
        assert server.pending_handshakes == 2
        for _, w in [*held, (reader, writer)]:
            w.close()
        # a real client is still served once the silent ones are gone
        await wait_for(lambda: server.pending_handshakes == 0)
        async with HboneClient() as client:
            s = await client.connect(ca.issue("spiffe://cluster.local/ns/x/sa/c"), server.address[:2],
                                     {SERVER_ID}, "127.0.0.1:80")
            await s.write(b"hi")
            assert await s.read() == b"hi"
            s.close()


async def test_pressure_cuts_every_pending_deadline(ca: LocalCA) -> None:
    limits = HandshakeLimits(timeout=60, max_pending=4, pressure_timeout=0.3)
    async with HboneServer(socket.create_server(("127.0.0.1", 0)), ca.issue(SERVER_ID), echo_handler,
                           limits=limits) as server:
        first = await asyncio.open_connection(*server.address[:2])
        await wait_for(lambda: server.pending_handshakes == 1)
        second = await asyncio.open_connection(*server.address[:2])  # half the cap: pressure
        for reader, _ in (first, second):
            assert await asyncio.wait_for(reader.read(), 10) == b""  # the first one's 60 s cut too
        assert server.stats.refused == {"handshake_timeout": 2}
        for _, w in (first, second):
            w.close()


async def test_listener_cap_refuses_past_it(ca: LocalCA) -> None:
    limits = HandshakeLimits(timeout=60, max_pending=2, pressure_timeout=60)
    async with HboneServer(socket.create_server(("127.0.0.1", 0)), ca.issue(SERVER_ID), echo_handler,
                           limits=limits) as server:
        held = [await asyncio.open_connection(*server.address[:2]) for _ in range(2)]
        await wait_for(lambda: server.pending_handshakes == 2)
        reader, writer = await asyncio.open_connection(*server.address[:2])
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert server.stats.refused == {"too_many_handshakes": 1}
        for _, w in [*held, (reader, writer)]:
            w.close()


# -- a listener process: memory --------------------------------------------------------------------------
class Listener:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc, self.port = proc, port

    def query(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "listener process died"
        return dict(json.loads(line))

    def wait(self, cond: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.query()
            if cond(state):
                return state
            assert time.monotonic() < deadline, f"not reached within {timeout}s: {state}"
            time.sleep(0.2)


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} file descriptors, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@pytest.fixture
def listener_proc(ca: LocalCA, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Listener]:
    _raise_fd_limit(8192)  # (inherited by the listener process)
    (tmp_path / "ca.pem").write_bytes(ca.root_pem)
    (tmp_path / "ca.key").write_bytes(ca.key_pem)
    args = [f"{k}={v}" for k, v in getattr(request, "param", {}).items()]
    proc = subprocess.Popen([sys.executable, str(PROC), str(tmp_path / "ca.pem"), str(tmp_path / "ca.key"), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        yield Listener(proc, int(proc.stdout.readline()))
    finally:
        proc.kill()
        proc.wait(10)


def _open_connections(port: int, n: int, first_byte: bytes) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if first_byte:
            s.send(first_byte)
        socks.append(s)
    return socks


# Every connection is a pending handshake of the listener (up to its 1,024 cap: one source here).
@pytest.mark.parametrize("listener_proc", [{"max_pending_per_source": 5000, "timeout": 3.0}], indirect=True)
@pytest.mark.parametrize("first_byte", [b"", b"\x16"], ids=["silent", "one-byte"])
def test_handshake_flood_memory_returns(listener_proc: Listener, first_byte: bytes) -> None:
    """3,000 connections that never finish a handshake (silent, or one byte of a ClientHello so the TLS
    objects are built): once reaped, the listener's RSS is back within 100 MB of its baseline."""
    base = listener_proc.query()["rss_mb"]
    socks = _open_connections(listener_proc.port, 3000, first_byte)
    state = listener_proc.wait(lambda s: s["pending"] == 0 and sum(s["refused"].values()) >= 3000, 60)
    for s in socks:
        s.close()
    assert set(state["refused"]) <= {"handshake_timeout", "too_many_handshakes"}, state
    state = listener_proc.wait(lambda s: s["rss_mb"] - base < 100, 15)
    assert state["pending"] == 0 and state["connections"] == 0


def _frame(kind: int, flags: int, sid: int, payload_len: int) -> bytes:
    return struct.pack(">HBBBL", payload_len >> 8, payload_len & 0xFF, kind, flags, sid) + b"\x00" * payload_len


async def _continuation_flood(ca: LocalCA, port: int) -> tuple[float, str]:
    """HEADERS without END_HEADERS, then 1 MiB CONTINUATION frames: seconds until the listener closed
    the connection, and why."""
    async with HboneClient() as client:
        stream = await client.connect(ca.issue("spiffe://cluster.local/ns/x/sa/flood"), ("127.0.0.1", port),
                                      {SERVER_ID}, "127.0.0.1:80")
        conn = stream.connection
        transport = conn._transport
        assert transport is not None
        start = time.monotonic()
        transport.write(_frame(1, 0, 101, 16 * 1024))  # HEADERS, no END_HEADERS
        for _ in range(63):  # h2's own CONTINUATION cap is 64 frames
            if conn.closed:
                break
            transport.write(_frame(9, 0, 101, 1024 * 1024))
            await asyncio.sleep(0.02)
        async with asyncio.timeout(30):
            await conn.lost
        return time.monotonic() - start, str(conn.error)


def test_continuation_flood_cut_at_header_cap(ca: LocalCA, listener_proc: Listener) -> None:
    """4 authenticated connections flooding CONTINUATION frames: each gets GOAWAY(COMPRESSION_ERROR)
    within 10 s, and the listener's RSS grows less than 50 MB."""
    base = listener_proc.query()["rss_mb"]
    for _ in range(4):
        elapsed, error = asyncio.run(_continuation_flood(ca, listener_proc.port))
        assert "COMPRESSION_ERROR" in error, error
        assert elapsed < 10, elapsed
    state = listener_proc.wait(lambda s: s["connections"] == 0, 15)
    assert state["process_refused"] == {"header_block_too_large": 4}, state
    assert state["rss_mb"] - base < 50, (base, state)
