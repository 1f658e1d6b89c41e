"""Kubelet probes: what a container's probe fields mean (pure), how results become actions (pure), and one
probe run against loopback servers (HTTP status codes, refused ports, timeouts, exec) with kubelet wording."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ambient.cluster import probes
from ambient.cluster.podstatus import ContainerState
from ambient.cluster.probes import ProbeContext, ProbeSpec, ProbeTracker, probe_spec, run_probe

CONTAINER: dict[str, Any] = {"name": "app", "ports": [{"name": "http", "containerPort": 8080},
                                                      {"containerPort": 53, "protocol": "UDP"}]}


def with_probe(kind: str, probe: dict[str, Any]) -> dict[str, Any]:
    return {**CONTAINER, probes.FIELD[kind]: probe}


@pytest.mark.parametrize(("kind", "probe", "expect"), [
    ("liveness", {"httpGet": {"path": "/status/500", "port": "http"}},
     {"handler": "httpGet", "port": 8080, "path": "/status/500", "period": 10.0, "timeout": 1.0,
      "failure_threshold": 3, "success_threshold": 1, "initial_delay": 0.0}),
    ("liveness", {"tcpSocket": {"port": 9}, "periodSeconds": 2, "failureThreshold": 1, "timeoutSeconds": 3,
                  "initialDelaySeconds": 5, "successThreshold": 4, "terminationGracePeriodSeconds": 1},
     {"handler": "tcpSocket", "port": 9, "period": 2.0, "failure_threshold": 1, "timeout": 3.0,
      "initial_delay": 5.0, "success_threshold": 1, "grace": 1.0}),  # liveness: successThreshold is 1
    ("readiness", {"exec": {"command": ["test", "-f", "/x"]}, "successThreshold": 2},
     {"handler": "exec", "command": ("test", "-f", "/x"), "period": probes.LOCAL_READINESS_PERIOD,
      "success_threshold": 2}),
    ("startup", {"httpGet": {"port": 8080, "path": "healthz", "scheme": "https",
                             "httpHeaders": [{"name": "X-A", "value": "1"}]}},
     {"handler": "httpGet", "path": "/healthz", "scheme": "HTTPS", "headers": (("X-A", "1"),), "period": 10.0}),
    ("liveness", {"httpGet": {"port": "nope"}}, {"problem": "port 'nope' is not a number or a named containerPort"}),
    ("liveness", {"httpGet": {"port": 1}, "tcpSocket": {"port": 1}},
     {"handler": "unsupported", "problem": "livenessProbe needs exactly one of httpGet, tcpSocket, exec "
                                           "(found httpGet, tcpSocket)"}),
    ("startup", {"periodSeconds": 1}, {"handler": "unsupported"}),
    ("liveness", {"grpc": {"port": 9}}, {"handler": "unsupported"}),
    ("readiness", {"exec": {"command": []}}, {"problem": "exec probe without a command"}),
])
def test_probe_spec(kind: str, probe: dict[str, Any], expect: dict[str, Any]) -> None:
    spec = probe_spec(kind, with_probe(kind, probe))
    assert spec is not None and spec.kind == kind
    for key, value in expect.items():
        assert getattr(spec, key) == value, key


def test_no_probe_and_implicit_readiness() -> None:
    assert probe_spec("liveness", CONTAINER) is None and probe_spec("startup", CONTAINER) is None
    implicit = probe_spec("readiness", CONTAINER)
    assert implicit is not None
    assert (implicit.handler, implicit.ports, implicit.failure_threshold) == ("ports", (8080,), 1)


def run(spec: ProbeSpec, results: str) -> list[bool | None]:
    tracker = ProbeTracker(spec)
    return [tracker.observe(r == "+") for r in results]


@pytest.mark.parametrize(("kind", "success", "failure", "results", "expect"), [
    # liveness starts healthy; acts once after `failure` failures in a row, then holds until a restart
    ("liveness", 1, 3, "--+---+", [None, None, None, None, None, False, None]),
    ("liveness", 1, 1, "+-", [None, False]),
    # readiness starts unready; needs `success` successes in a row, `failure` failures to drop again
    ("readiness", 2, 2, "+-++--+", [None, None, None, True, None, False, None]),
    ("readiness", 1, 3, "+--+---", [True, None, None, None, None, None, False]),
    # startup starts failed: success is reported once; failureThreshold failures kill
    ("startup", 1, 3, "-+", [None, True]),
    ("startup", 1, 2, "--", [None, False]),
])
def test_tracker(kind: str, success: int, failure: int, results: str, expect: list[bool | None]) -> None:
    spec = ProbeSpec(kind, "tcpSocket", success_threshold=success, failure_threshold=failure, port=1)
    assert run(spec, results) == expect


def test_container_status_started_waits_for_startup_probe() -> None:
    c = ContainerState(name="app", spec=with_probe("startup", {"tcpSocket": {"port": 1}}))
    c._running("2026-01-01T00:00:01Z")
    assert c.to_status()["started"] is False and c.runs == 1
    c.startup_done = True
    assert c.to_status()["started"] is True
    c._running("2026-01-01T00:00:02Z")  # a restart: the startup probe must pass again
    assert c.to_status()["started"] is False and c.runs == 2


# ------------------------------------------------------------------ one probe run, on loopback


@pytest.fixture
async def server() -> AsyncIterator[int]:
    handlers: set[asyncio.Task[None]] = set()  # asyncio.start_server's own tasks: cancelled at the end

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        line = await reader.readline()
        path = line.split()[1].decode()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        if path == "/slow":
            await asyncio.sleep(5)
        code = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
        writer.write(f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with srv:
        yield srv.sockets[0].getsockname()[1]
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


CTX = ProbeContext("127.0.0.1", "unused", Path("/proc/self/ns/net"), in_node_netns=True)


def http(port: int, path: str, timeout: float = 1.0) -> ProbeSpec:
    return ProbeSpec("liveness", "httpGet", port=port, path=path, timeout=timeout)


async def test_http_probe_codes_and_wording(server: int) -> None:
    assert (await run_probe(http(server, "/status/204"), CTX)).ok
    assert (await run_probe(http(server, "/status/302"), CTX)).ok
    failed = await run_probe(http(server, "/status/500"), CTX)
    assert not failed.ok and failed.message == "HTTP probe failed with statuscode: 500"
    slow = await run_probe(http(server, "/slow", timeout=0.3), CTX)
    assert not slow.ok and "context deadline exceeded" in slow.message


async def test_refused_ports_and_bad_specs() -> None:
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    tcp = await run_probe(ProbeSpec("liveness", "tcpSocket", port=port), CTX)
    assert not tcp.ok and tcp.message == f"dial tcp 127.0.0.1:{port}: connect: connection refused"
    get = await run_probe(http(port, "/x"), CTX)
    assert not get.ok and get.message.startswith(f'Get "http://127.0.0.1:{port}/x": dial tcp')
    bad = await run_probe(ProbeSpec("liveness", "unsupported", problem="grpc probes are not supported"), CTX)
    assert bad == probes.ProbeResult(False, "grpc probes are not supported")


@pytest.fixture
def self_signed(tmp_path: Path) -> Path:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem"), "-days", "1",
                    "-subj", "/CN=self-signed"], check=True, capture_output=True)
    return tmp_path


async def test_https_probe_does_not_verify_the_certificate(self_signed: Path) -> None:
    import ssl

    tmp_path = self_signed
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    async with srv:
        port = srv.sockets[0].getsockname()[1]
        spec = ProbeSpec("liveness", "httpGet", port=port, path="/", scheme="HTTPS")
        assert await run_probe(spec, CTX) == probes.ProbeResult(False, "HTTP probe failed with statuscode: 503")
