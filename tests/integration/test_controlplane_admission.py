"""The control plane process's gRPC port under a connection flood: silent connections are closed by the
handshake timeout, per-source and total caps refuse the excess (counted by reason in /proxy-status and
logged), and a legitimate CA request still succeeds meanwhile.

Everything is on loopback: the flood comes from 127.0.0.2.. (Linux routes all of 127/8 to lo), the
legitimate client from 127.0.0.1, so per-source accounting can tell them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ambient.api.client import ApiClient
from ambient.api.server import serve_in_thread
from ambient.controlplane import proxy_status
from ambient.controlplane.ca_server import node_token_path
from ambient.identity.ca_client import CaClient
from helpers import eventually, stop_process

pytestmark = pytest.mark.timeout(150)

PROXY_ID = "spiffe://cluster.local/ns/istio-system/sa/ztunnel"


class ControlPlaneProcess:
    """`python -m ambient.controlplane` on a state dir whose API server runs in this process's thread."""

    def __init__(self, state_dir: Path, env: dict[str, str]) -> None:
        self.state_dir = state_dir
        self.log_path = state_dir / "controlplane.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ambient.controlplane", "--state-dir", str(state_dir),
                 "--listen", "127.0.0.1:0"],
                stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, **env},
            )
        self.port = 0

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(r"control plane serving xDS\+CA on \S+ \(port (\d+)", self.log())
            if m:
                self.port = int(m.group(1))
                return
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, "control plane did not start:\n" + self.log()
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connections(self) -> dict[str, Any]:
        return proxy_status.fetch(self.state_dir)["connections"]  # type: ignore[no-any-return]

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Path]:
    with serve_in_thread(tmp_path):
        with ApiClient(tmp_path / "apiserver.sock") as api:
            api.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
        yield tmp_path


@contextlib.contextmanager
def control_plane(state_dir: Path, **env: str) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(state_dir, {f"AMBIENT_CP_{k.upper()}": v for k, v in env.items()})
    try:
        cp.wait_serving()
        yield cp
    finally:
        cp.stop()


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class Silent:
    """A TCP connection that never sends a byte; `closed_at` is when the server closed (or reset) it."""

    def __init__(self, sock: socket.socket, opened_at: float) -> None:
        self.sock = sock
        self.opened_at = opened_at
        self.closed_at: float | None = None

    async def wait_closed(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            data = await loop.sock_recv(self.sock, 1)
            assert data == b"", f"the server sent {data!r} to a silent connection"
        except ConnectionResetError:
            pass
        self.closed_at = time.monotonic()
        self.sock.close()


async def open_silent(source: str, port: int) -> Silent:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    await loop.sock_connect(sock, ("127.0.0.1", port))
    return Silent(sock, time.monotonic())


async def flood(port: int, per_source: dict[str, int], tg: asyncio.TaskGroup) -> list[Silent]:
    """Open the connections (bounded concurrency) and start watching each for its close."""
    sem = asyncio.Semaphore(200)
    conns: list[Silent] = []

    async def one(source: str) -> None:
        async with sem:
            conn = await open_silent(source, port)
        conns.append(conn)
        tg.create_task(conn.wait_closed())

    async with asyncio.TaskGroup() as opening:
        for source, n in per_source.items():
            for _ in range(n):
                opening.create_task(one(source))
    return conns


async def fetch_own_cert(cp: ControlPlaneProcess) -> float:
    """A CA request from 127.0.0.1 with the node's token; returns when it completed."""
    root = (cp.state_dir / "ca" / "root-cert.pem").read_bytes()
    token = node_token_path(cp.state_dir, "node-1").read_text()
    async with CaClient(f"127.0.0.1:{cp.port}", token=token, root_cert=root, timeout=20) as client:
        bundle = await client.fetch(PROXY_ID, impersonate=False)
    assert bundle.identity.uri == PROXY_ID
    return time.monotonic()


async def test_silent_flood_is_closed_by_the_handshake_timeout_and_the_ca_keeps_working(cluster: Path) -> None:
    raise_nofile(2_000 + 1_000)
    with control_plane(cluster) as cp:  # default limits: handshake 10 s, 64 per source, 4096 in total
        rss_before = cp.rss_mb()
        sources = {f"127.0.0.{i}": 50 for i in range(2, 42)}  # 40 sources x 50 = 2,000, each under 64
        async with asyncio.TaskGroup() as tg:
            conns = await flood(cp.port, sources, tg)
            opened = time.monotonic()
            stats = await asyncio.to_thread(cp.connections)
            assert stats["open"] >= 2_000 and stats["refused"] == {}, stats
            assert all(c.closed_at is None for c in conns)
            ca_done = await fetch_own_cert(cp)  # while the 2,000 are held open
            rss_flood = cp.rss_mb()
        first_close = min(c.closed_at for c in conns if c.closed_at is not None)
        assert ca_done < first_close, "the CA request should have completed during the flood"
        lifetimes = sorted(c.closed_at - c.opened_at for c in conns if c.closed_at is not None)
        assert len(lifetimes) == 2_000
        assert lifetimes[-1] <= 20.0, f"slowest close after {lifetimes[-1]:.1f}s"
        assert lifetimes[0] >= 5.0, f"closed after {lifetimes[0]:.1f}s: refused, not timed out?"
        await eventually(lambda: cp.connections()["open"] == 0, timeout=20)
        print(f"\nflood of 2000 opened in {opened - min(c.opened_at for c in conns):.1f}s; closed after "
              f"{lifetimes[0]:.1f}..{lifetimes[-1]:.1f}s; CA during flood ok; "
              f"RSS {rss_before:.0f} -> {rss_flood:.0f} -> {cp.rss_mb():.0f} MB")


async def test_per_source_cap_refuses_the_excess_and_others_still_get_certificates(cluster: Path) -> None:
    with control_plane(cluster, max_connections_per_source="16", handshake_timeout="4") as cp:
        async with asyncio.TaskGroup() as tg:
            conns = await flood(cp.port, {"127.0.0.2": 100}, tg)
            # The 84 beyond the cap are closed at once, long before the 4 s handshake timeout.
            await eventually(lambda: sum(c.closed_at is not None for c in conns) >= 84, timeout=3)
            stats = await asyncio.to_thread(cp.connections)
            assert stats["refused"] == {"max_connections_per_source": 84}, stats
            assert stats["open"] == 16
            await fetch_own_cert(cp)  # another source is not affected
        closed_fast = sorted(c.closed_at - c.opened_at for c in conns if c.closed_at is not None)
        assert len(closed_fast) == 100 and closed_fast[83] < 3.0 and closed_fast[84] >= 2.0
        # Summarised in one log line (at most one per 10 s), naming the reason and the source.
        await eventually(lambda: "refused 84 connections" in cp.log(), timeout=15)
        line = next(ln for ln in cp.log().splitlines() if "refused 84 connections" in ln)
        assert "max_connections_per_source=84" in line and "127.0.0.2" in line
        # Heals: once the held connections timed out, the source may connect again.
        await eventually(lambda: cp.connections()["open"] == 0, timeout=10)
        again = await open_silent("127.0.0.2", cp.port)
        await eventually(lambda: cp.connections()["open"] == 1, timeout=5)
        again.sock.close()


async def test_total_cap_refuses_new_connections_from_any_source(cluster: Path) -> None:
    with control_plane(cluster, max_connections="40", max_connections_per_source="30",
                       handshake_timeout="4") as cp:
        async with asyncio.TaskGroup() as tg:
            held = await flood(cp.port, {"127.0.0.2": 30, "127.0.0.3": 10}, tg)
            await eventually(lambda: cp.connections()["open"] == 40, timeout=5)
            extra = await flood(cp.port, {"127.0.0.4": 5}, tg)
            await eventually(lambda: all(c.closed_at is not None for c in extra), timeout=3)
            assert all(c.closed_at is None for c in held)
            stats = await asyncio.to_thread(cp.connections)
            assert stats["refused"] == {"max_connections": 5} and stats["max_connections"] == 40, stats
        await eventually(lambda: cp.connections()["open"] == 0, timeout=10)
        await fetch_own_cert(cp)  # capacity is back once the silent ones were closed


async def test_idle_connection_after_the_handshake_gets_goaway(cluster: Path) -> None:
    import ssl

    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    with control_plane(cluster, idle_timeout="2", handshake_timeout="10") as cp:
        ctx = ssl.create_default_context(cadata=(cp.state_dir / "ca" / "root-cert.pem").read_text())
        ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("127.0.0.1", cp.port, ssl=ctx,
                                                       server_hostname="istiod.istio-system.svc")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        started = time.monotonic()
        events: list[Any] = []
        while not any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
            data = await asyncio.wait_for(reader.read(65536), 15)
            assert data, f"closed without GOAWAY after {time.monotonic() - started:.1f}s; events {events}"
            events += conn.receive_data(data)
            writer.write(conn.data_to_send())
        elapsed = time.monotonic() - started
        settings = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged))
        assert settings.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 128
        assert 1.5 <= elapsed <= 8.0, f"GOAWAY after {elapsed:.1f}s for an idle timeout of 2 s"
        writer.close()
