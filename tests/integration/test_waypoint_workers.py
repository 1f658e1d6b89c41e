"""`python -m ambient.waypoint` with AMBIENT_WAYPOINT_WORKERS=2, a real primary and worker on loopback: both
processes accept on the one HBONE address (SO_REUSEPORT) and serve; 15020 adds their metrics up to exactly
the requests sent; a SIGKILLed worker is restarted and serves again, and 15020 keeps counting what it had
served (no counter reset for a scraper); SIGTERM drains both (in-flight requests answered, nothing on stderr
but log lines), the primary waits for its worker, exits 0 and removes its private socket directory. The stop is
sent to the process group, as the kubelet does: a worker must still get one SIGTERM (a second one would cut
its drain short).

Each request is on a new HBONE connection (a fresh client), so the kernel spreads them over both listeners
(40 on one alone: 2**-39). Every address is on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ambient.bench.nsenv import process_environ, process_gone
from ambient.bench.waypoint import standalone_state
from ambient.hbone.client import HboneClient
from ambient.hbone.pipe import TcpByteStream
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, HboneServer
from ambient.identity.ca import LocalCA
from ambient.identity.certs import CertBundle
from ambient.runtime.workers import get_unix
from ambient.tls.verify import PeerIdentity
from helpers import eventually

pytestmark = pytest.mark.timeout(120)
WAYPOINT_ID = "spiffe://cluster.local/ns/shop/sa/waypoint"
REQUESTS = 40


SLOW_SECONDS = 2.5  # how long the app holds a /slow request: well inside the waypoint's 5 s drain
_slow_seen: list[bytes] = []  # the /slow requests the app has received (the test's own event loop)


async def _http_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    path = head.split(b" ")[1]
    if path == b"/slow":
        _slow_seen.append(path)
        await asyncio.sleep(SLOW_SECONDS)
    body = b"app saw " + path
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _requests(text: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "istio_requests_total" and s.labels.get("response_code") == "200")


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    port: int
    metrics_port: int
    certs: CertBundle
    log: Path  # the waypoint's stderr (a file: a full pipe would stall it)

    def worker(self) -> tuple[int, str] | None:
        """(pid, admin socket) of the live worker, once it is running."""
        for pid in _children(self.proc.pid):
            admin = process_environ(pid).get("AMBIENT_WAYPOINT_WORKER_ADMIN")
            if admin:
                return pid, admin
        return None

    async def request(self, path: str = "/hello") -> bytes:
        async with HboneClient() as client:  # a new HBONE connection per request
            s = await client.connect(self.certs, ("127.0.0.1", self.port), {WAYPOINT_ID}, "10.96.0.50:80")
            await s.write(f"GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
            out = bytearray()
            while data := await s.read():
                out += data
            s.close()
            return bytes(out)

    async def merged_metrics(self) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.metrics_port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await reader.read()
        writer.close()
        return raw.split(b"\r\n\r\n", 1)[1].decode()


async def _own_requests(admin: str) -> float:
    return _requests((await get_unix(admin, "/metrics")).decode())


@pytest.fixture
async def waypoint(tmp_path: Path) -> AsyncIterator[Running]:
    ca_dir = tmp_path / "ca"
    ca = LocalCA.load_or_create(ca_dir)
    app = await asyncio.start_server(_http_app, "127.0.0.1", 0)
    app_port = app.sockets[0].getsockname()[1]
    async def backend_handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
        return Accept(upstream=await TcpByteStream.connect("127.0.0.1", app_port))

    backend_certs = ca.issue("spiffe://cluster.local/ns/shop/sa/web")
    async with app, HboneServer(socket.create_server(("127.0.0.1", 0)), backend_certs, backend_handler) as backend:
        static = tmp_path / "waypoint.yaml"
        static.write_text(standalone_state(app_port))
        metrics_port = _free_port()
        log = tmp_path / "waypoint.log"
        err = log.open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ambient.waypoint", "--static", str(static), "--ca-dir", str(ca_dir),
            "--listen", "127.0.0.1:0", "--namespace", "shop", "--hbone-port", str(backend.address[1]),
            "--metrics", f"127.0.0.1:{metrics_port}", "--drain", "5",
            stdout=asyncio.subprocess.PIPE, stderr=err, start_new_session=True,  # its own group, as in a pod
            env={**os.environ, "PYTHONUNBUFFERED": "1", "AMBIENT_WAYPOINT_WORKERS": "2"},
        )
        err.close()
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()  # type: ignore[union-attr]
            assert line.startswith("waypoint listening on 127.0.0.1:"), line
            port = int(line.split()[3].rsplit(":", 1)[1])
            yield Running(proc, port, metrics_port, ca.issue("spiffe://cluster.local/ns/shop/sa/curl"), log)
        finally:
            if proc.returncode is None:  # gracefully: the primary stops its worker and removes its directory
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()


async def _worker_serving(wp: Running) -> tuple[int, str]:
    """Wait until the worker listens (its admin socket says so)."""
    async def serving() -> tuple[int, str] | None:
        found = wp.worker()
        if found is None:
            return None
        try:
            dump = json.loads(await get_unix(found[1], "/config_dump"))
        except Exception:
            return None
        return found if dump["process"]["listen"] else None

    result: tuple[int, str] | None = None
    for _ in range(300):
        result = await serving()
        if result is not None:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError("the waypoint worker never listened")


async def test_both_processes_serve_and_15020_adds_them_up(waypoint: Running) -> None:
    _wpid, worker_admin = await _worker_serving(waypoint)
    primary_admin = str(Path(worker_admin).parent / "0.sock")
    answers = [await waypoint.request(f"/r{i}") for i in range(REQUESTS)]
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), [a[:40] for a in answers if b" 200 " not in a]

    async def counted() -> tuple[float, float] | None:  # each exchange is counted as it ends
        both = await _own_requests(primary_admin), await _own_requests(worker_admin)
        return both if sum(both) >= REQUESTS else None

    for _ in range(100):
        if (counts := await counted()) is not None:
            break
        await asyncio.sleep(0.05)
    primary, worker = counts or (0.0, 0.0)
    assert primary > 0 and worker > 0, (primary, worker)
    assert primary + worker == REQUESTS
    assert _requests(await waypoint.merged_metrics()) == REQUESTS  # what a scraper sees: one waypoint
    dump = json.loads(await get_unix(primary_admin, "/config_dump"))
    assert dump["workers"]["count"] == 2 and set(dump["workers"]["processes"]) == {"0", "1"}


async def test_a_killed_worker_is_restarted_and_serves_again(waypoint: Running) -> None:
    old, old_admin = await _worker_serving(waypoint)
    sent = 0
    while not await _own_requests(old_admin):  # the worker has counted some (2**-39 it has none after 40)
        assert (await waypoint.request()).startswith(b"HTTP/1.1 200 ")
        sent += 1
        assert sent <= REQUESTS
    for _ in range(100):
        if _requests(await waypoint.merged_metrics()) == sent:
            break
        await asyncio.sleep(0.05)
    assert _requests(await waypoint.merged_metrics()) == sent
    os.kill(old, signal.SIGKILL)
    await eventually(lambda: (w := waypoint.worker()) is not None and w[0] != old, 30, "the worker restarted")
    # while it is gone, its last counts stay in the sum: a scraper never sees the counter go down
    assert _requests(await waypoint.merged_metrics()) == sent
    _new, admin = await _worker_serving(waypoint)
    assert _requests(await waypoint.merged_metrics()) == sent  # the fresh worker starts from zero
    served = 0.0
    for _ in range(REQUESTS):  # new connections until the kernel gave the new worker some (2**-39 it never does)
        assert (await waypoint.request()).startswith(b"HTTP/1.1 200 ")
        sent += 1
        served = await _own_requests(admin)
        if served:
            break
    assert served > 0
    for _ in range(100):
        if _requests(await waypoint.merged_metrics()) == sent:
            break
        await asyncio.sleep(0.05)
    assert _requests(await waypoint.merged_metrics()) == sent  # the departed worker's counts and the new ones


async def test_sigterm_drains_both_processes(waypoint: Running) -> None:
    wpid, admin = await _worker_serving(waypoint)
    folder = Path(admin).parent
    _slow_seen.clear()
    async with asyncio.TaskGroup() as tg:
        slow = [tg.create_task(waypoint.request("/slow")) for _ in range(12)]
        # every request through the waypoint before the stop (a connection dialled after it is refused, as it
        # should be: the listener closes first), and the worker holding at least one of them
        await eventually(lambda: len(_slow_seen) == len(slow), 20, "the app holding every /slow request")

        async def worker_has_one() -> bool:
            return bool(json.loads(await get_unix(admin, "/config_dump"))["process"]["hbone_connections"])

        for _ in range(100):  # the worker holds an in-flight request (2**-11 it holds none of the 12)
            if await worker_has_one():
                break
            await asyncio.sleep(0.02)
        assert await worker_has_one(), "no in-flight request reached the worker"
        os.killpg(waypoint.proc.pid, signal.SIGTERM)  # as the kubelet stops a container: the whole group
    assert all(t.result().endswith(b"app saw /slow") for t in slow)  # answered while draining
    assert await asyncio.wait_for(waypoint.proc.wait(), 20) == 0
    err = waypoint.log.read_text()
    assert err.count("waypoint: draining") == 2, err[-3000:]
    assert "did not stop within" not in err
    # a clean stop: nothing the event loop had to report (a stray callback on a cancelled future), no traceback
    assert "Exception in callback" not in err and "Traceback" not in err, err[-3000:]
    assert process_gone(wpid)
    assert not folder.exists()
