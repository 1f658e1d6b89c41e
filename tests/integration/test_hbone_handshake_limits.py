"""HBONE listener hardening: pending-handshake caps and deadlines (in process), memory after handshake
floods and CONTINUATION floods against the node proxy's 15008 (a node proxy process under uvloop, shared
mode on loopback: `hbone_listener_proc.py`).

The memory tests measure the listener process's RSS: a baseline, then after the attack has been reaped.
Bounded: at most 3,000 connections per round, loopback only.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import ssl
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
from ambient.hbone.errors import HboneStatusError
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, HandshakeLimits, HboneServer
from ambient.identity.ca import LocalCA
from ambient.tls.contexts import client_context
from ambient.tls.verify import PeerIdentity
from ambient.ztunnel.certs import LocalCaSource
from helpers import eventually

pytestmark = pytest.mark.timeout(180)
SERVER_ID = "spiffe://cluster.local/ns/mem/sa/server"
PROC = Path(__file__).with_name("hbone_listener_proc.py")
WORKLOAD_IP = "127.0.0.5"  # the node proxy process's HBONE workload (hbone_listener_proc.py)
WORKLOAD_ID = "spiffe://cluster.local/ns/mem/sa/web"


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create()


async def echo(stream: HboneStream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.write_eof()


async def echo_handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
    return Accept(serve=echo)


# -- in-process: caps and deadlines -------------------------------------------------------------------------
async def test_source_cap_closes_extra_connection_at_once(ca: LocalCA) -> None:
    limits = HandshakeLimits(timeout=60, max_pending_per_source=2)
    async with HboneServer(socket.create_server(("127.0.0.1", 0)), ca.issue(SERVER_ID), echo_handler,
                           limits=limits) as server:
        held = [await asyncio.open_connection(*server.address[:2]) for _ in range(2)]
        await eventually(lambda: server.pending_handshakes == 2)
        reader, writer = await asyncio.open_connection(*server.address[:2])
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed long before the 60 s deadline
        assert server.stats.refused == {"too_many_handshakes_from_source": 1}
        assert server.pending_handshakes == 2
        for _, w in [*held, (reader, writer)]:
            w.close()
        # a real client is still served once the silent ones are gone
        await eventually(lambda: server.pending_handshakes == 0)
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
        await eventually(lambda: server.pending_handshakes == 1)
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
        await eventually(lambda: server.pending_handshakes == 2)
        reader, writer = await asyncio.open_connection(*server.address[:2])
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert server.stats.refused == {"too_many_handshakes": 1}
        for _, w in [*held, (reader, writer)]:
            w.close()


async def test_non_tls_first_bytes_refused_at_once(ca: LocalCA) -> None:
    limits = HandshakeLimits(timeout=60)
    async with HboneServer(socket.create_server(("127.0.0.1", 0)), ca.issue(SERVER_ID), echo_handler,
                           limits=limits) as server:
        reader, writer = await asyncio.open_connection(*server.address[:2])
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:  # closed long before the 60 s deadline (reset: the server leaves the bytes unread)
            assert await asyncio.wait_for(reader.read(), 10) == b""
        except ConnectionResetError:
            pass
        writer.close()
        assert server.stats.refused == {"handshake_failed": 1}
        assert "not a TLS ClientHello (first byte 0x47)" in server.stats.rejections[-1]


async def test_trickled_client_hello_is_served(ca: LocalCA) -> None:
    """The server waits for the whole ClientHello record: one that arrives in 20-byte pieces still works."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: int) -> None:
        sent = 0
        while data := await reader.read(65536):
            while sent < first and data:
                piece, data = data[:20], data[20:]
                writer.write(piece)
                await writer.drain()
                sent += len(piece)
                await asyncio.sleep(0.005)
            writer.write(data)
            await writer.drain()
        writer.close()

    async with HboneServer(socket.create_server(("127.0.0.1", 0)), ca.issue(SERVER_ID), echo_handler) as server:
        async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
            up_r, up_w = await asyncio.open_connection(*server.address[:2])
            async with asyncio.TaskGroup() as tg:
                tg.create_task(trickle(client_r, up_w, first=600))
                tg.create_task(trickle(up_r, client_w, first=0))

        relay_server = await asyncio.start_server(relay, "127.0.0.1", 0)
        try:
            port = relay_server.sockets[0].getsockname()[1]
            async with HboneClient() as client:
                s = await client.connect(ca.issue("spiffe://cluster.local/ns/x/sa/slow"), ("127.0.0.1", port),
                                         {SERVER_ID}, "127.0.0.1:80")
                await s.write(b"slow hello")
                assert await s.read() == b"slow hello"
                s.close()
        finally:
            relay_server.close()
        assert server.stats.tls_established == 1


# -- the node proxy in a process: memory ----------------------------------------------------------------------
class NodeProxy:
    def __init__(self, proc: subprocess.Popen[str], port: int, certs: LocalCaSource) -> None:
        self.proc, self.port, self.certs = proc, port, certs

    def query(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "node proxy process died"
        return dict(json.loads(line))

    def wait(self, cond: Any, within: float) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            state = self.query()
            if cond(state):
                return state
            assert time.monotonic() < deadline, f"not reached within {within}s: {state}"
            time.sleep(0.2)


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} file descriptors, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@pytest.fixture
def node_proxy(tmp_path: Path) -> Iterator[NodeProxy]:
    _raise_fd_limit(8192)  # (inherited by the proxy process)
    proc = subprocess.Popen([sys.executable, str(PROC), str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield NodeProxy(proc, port, LocalCaSource.from_dir(tmp_path / "ca"))
    finally:
        proc.kill()
        proc.wait(10)


def _open_connections(port: int, n: int, first_bytes: bytes) -> list[socket.socket]:
    """`n` connections to the proxy's HBONE port from 16 loopback source addresses (so the listener's
    cap, not only the per-source one, is reached)."""
    socks = []
    for i in range(n):
        s = socket.socket()
        s.settimeout(10)
        s.bind((f"127.0.1.{1 + i % 16}", 0))
        s.connect((WORKLOAD_IP, port))
        if first_bytes:
            s.sendall(first_bytes)
        socks.append(s)
    return socks


def _handshake_refusals(state: dict[str, Any]) -> int:
    return sum(n for reason, n in state["refused"].items()
               if reason in ("handshake_timeout", "too_many_handshakes", "too_many_handshakes_from_source"))


def _client_hello() -> bytes:
    """A real HBONE client's ClientHello (TLS 1.3, ALPN h2), as bytes on the wire."""
    ctx = client_context(LocalCA.create().issue("spiffe://cluster.local/ns/x/sa/hello"))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=False)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("first_bytes", ["silent", "partial-hello", "whole-hello"])
def test_handshake_flood_memory_returns(node_proxy: NodeProxy, first_bytes: str) -> None:
    """3,000 connections to the node proxy's 15008 that never finish a handshake (silent, half a
    ClientHello, or a whole ClientHello so that the TLS objects are built and the server waits for the
    client's Finished): all are refused or reaped, counted in the proxy's metrics, and its RSS comes back
    within 100 MB of the baseline."""
    hello = _client_hello()
    send = {"silent": b"", "partial-hello": hello[: len(hello) // 2], "whole-hello": hello}[first_bytes]
    base = node_proxy.query()["rss_mb"]
    socks = _open_connections(node_proxy.port, 3000, send)
    try:
        state = node_proxy.wait(lambda s: _handshake_refusals(s) >= 3000, 90)
    finally:
        for s in socks:
            s.close()
    assert any(line.startswith('ambient_hbone_refusals_total{reason="handshake_timeout"}')
               and not line.endswith(" 0.0") for line in state["metrics"]), state["metrics"]
    node_proxy.wait(lambda s: s["rss_mb"] - base < 100, 15)


def _frame(kind: int, flags: int, sid: int, payload_len: int) -> bytes:
    return struct.pack(">HBBBL", payload_len >> 8, payload_len & 0xFF, kind, flags, sid) + b"\x00" * payload_len


async def _continuation_flood(proxy: NodeProxy) -> tuple[float, str]:
    """An authenticated HBONE connection sends HEADERS without END_HEADERS, then 1 MiB CONTINUATION frames:
    seconds until the proxy closed the connection, and why."""
    bundle = await proxy.certs.fetch("spiffe://cluster.local/ns/x/sa/flood")
    async with HboneClient() as client:
        # (the CONNECT is answered 400, a loopback target; the connection stays)
        with pytest.raises(HboneStatusError):
            await client.connect(bundle, (WORKLOAD_IP, proxy.port), {WORKLOAD_ID}, f"{WORKLOAD_IP}:8080")
        conn = client.connections()[0]
        transport = conn._transport
        assert transport is not None
        # An attacker answers nothing from here on: no PING ACK (which would end the header block early
        # and hide the flood), so only the proxy's own limits can end the connection.
        conn._queue = lambda _data: None  # type: ignore[method-assign,assignment]
        start = time.monotonic()
        transport.write(_frame(1, 0, 101, 16 * 1024))  # HEADERS, no END_HEADERS
        for _ in range(63):  # h2's own CONTINUATION cap is 64 frames
            if conn.closed:
                break
            transport.write(_frame(9, 0, 101, 1024 * 1024))
            await asyncio.sleep(0.02)
        async with asyncio.timeout(45):
            await conn.lost
        return time.monotonic() - start, str(conn.error)


def test_continuation_flood_cut_at_header_cap(node_proxy: NodeProxy) -> None:
    """4 authenticated connections flooding CONTINUATION frames: each gets GOAWAY(COMPRESSION_ERROR)
    within 10 s, each is counted, and the proxy's RSS grows less than 50 MB."""
    base = node_proxy.query()["rss_mb"]
    for _ in range(4):
        elapsed, error = asyncio.run(_continuation_flood(node_proxy))
        assert "COMPRESSION_ERROR" in error, error
        assert elapsed < 10, elapsed
    state = node_proxy.wait(lambda s: s["refused"].get("header_block_too_large") == 4, 15)
    assert state["rss_mb"] - base < 50, (base, state)


async def test_node_proxy_listener_takes_its_limits_from_the_settings(tmp_path: Path) -> None:
    """The node proxy's 15008 is built with `Settings.hbone_handshake` (the `AMBIENT_HBONE_*` environment),
    not the library defaults."""
    from ambient.ztunnel.app import App, AppOptions
    from ambient.ztunnel.settings import Ports, Settings
    from ambient.ztunnel.static_config import StaticStateSource

    (tmp_path / "state.yaml").write_text(
        "workloads:\n- {uid: w1, name: web, namespace: mem, workloadIps: [127.0.0.5], protocol: HBONE,"
        " serviceAccount: web}\n")
    LocalCA.load_or_create(tmp_path / "ca")
    settings = Settings(
        mode="shared", serve_http=False, mark=None, transparent_inbound=False,
        ports=Ports(outbound=0, inbound_plaintext=0, inbound=0), shared_host="127.0.0.1", source_wait=0.1,
        drain_deadline=1.0, hbone_handshake=HandshakeLimits(timeout=60, max_pending_per_source=1),
    )
    app = App(settings, StaticStateSource(tmp_path / "state.yaml"), LocalCaSource.from_dir(tmp_path / "ca"),
              AppOptions())
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(app.run())
        await eventually(lambda: app.shared is not None)
        assert app.shared is not None
        await app.shared.listening.wait()
        port = next(p for c, _h, p in app.shared.addresses if c == "inbound")
        held = await asyncio.open_connection(WORKLOAD_IP, port)
        await asyncio.sleep(0.2)  # the first one is pending before the second arrives
        reader, writer = await asyncio.open_connection(WORKLOAD_IP, port)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # refused at once by the per-source cap of 1
        for _, w in (held, (reader, writer)):
            w.close()
        run.cancel()
