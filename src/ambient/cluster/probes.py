"""Container readiness checks of the kubelet: readinessProbe (tcpSocket, httpGet, exec) or declared ports.

A container is Ready when it has been running for at least max(0.5 s, initialDelaySeconds) and:
- with a `readinessProbe`: the probe succeeds (tcpSocket connects; httpGet answers 200-399; exec exits 0
  inside the pod netns), each within timeoutSeconds (default 1);
- without one: every declared TCP containerPort accepts a connection (no ports: running is enough).

Invariants: probes connect from the NODE netns to the pod IP (as a kubelet does), never from elsewhere;
a socket for that is created on a thread switched into the node netns when this process lives in another
one (tests run the kubelet in the root netns); every failure is just "not ready", never an exception.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambient.cluster.podstatus import ContainerState


@dataclass(frozen=True)
class ProbeContext:
    pod_ip: str
    pod_netns: str
    node_netns_path: Path
    in_node_netns: bool


def _port(value: Any, container: dict[str, Any]) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        for p in container.get("ports") or []:
            if p.get("name") == value:
                return int(p["containerPort"])
    return None


async def _connect(ctx: ProbeContext, port: int, limit: float) -> socket.socket | None:
    loop = asyncio.get_running_loop()
    try:
        if ctx.in_node_netns:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        else:
            from ambient.inpod.netns import run_in_netns

            sock = await asyncio.to_thread(run_in_netns, ctx.node_netns_path,
                                           lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    except OSError:
        return None
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (ctx.pod_ip, port)), timeout=limit)
    except (OSError, TimeoutError):
        sock.close()
        return None
    return sock


async def tcp_ok(ctx: ProbeContext, port: int, limit: float = 1.0) -> bool:
    sock = await _connect(ctx, port, limit)
    if sock is None:
        return False
    sock.close()
    return True


async def http_ok(ctx: ProbeContext, port: int, path: str, limit: float = 1.0) -> bool:
    sock = await _connect(ctx, port, limit)
    if sock is None:
        return False
    loop = asyncio.get_running_loop()
    try:
        request = f"GET {path or '/'} HTTP/1.0\r\nHost: {ctx.pod_ip}:{port}\r\nUser-Agent: ambient-kubelet\r\n\r\n"
        await asyncio.wait_for(loop.sock_sendall(sock, request.encode()), timeout=limit)
        head = await asyncio.wait_for(loop.sock_recv(sock, 1024), timeout=limit)
        parts = head.split(b" ", 2)
        return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
    except (OSError, TimeoutError):
        return False
    finally:
        sock.close()


async def exec_ok(ctx: ProbeContext, command: list[str], limit: float = 1.0) -> bool:
    def run() -> bool:
        try:
            return subprocess.run(["ip", "netns", "exec", ctx.pod_netns, *command], capture_output=True,
                                  timeout=limit, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    return await asyncio.to_thread(run)


async def is_ready(c: ContainerState, ctx: ProbeContext) -> bool:
    probe = c.spec.get("readinessProbe") or {}
    if not c.running_for(max(0.5, float(probe.get("initialDelaySeconds") or 0))):
        return False
    limit = float(probe.get("timeoutSeconds") or 1)
    if "tcpSocket" in probe:
        port = _port((probe["tcpSocket"] or {}).get("port"), c.spec)
        return port is not None and await tcp_ok(ctx, port, limit)
    if "httpGet" in probe:
        get = probe["httpGet"] or {}
        port = _port(get.get("port"), c.spec)
        return port is not None and await http_ok(ctx, port, str(get.get("path") or "/"), limit)
    if "exec" in probe:
        command = [str(a) for a in (probe["exec"] or {}).get("command") or []]
        return bool(command) and await exec_ok(ctx, command, limit)
    for p in c.spec.get("ports") or []:
        if (p.get("protocol") or "TCP") == "TCP" and not await tcp_ok(ctx, int(p["containerPort"]), limit):
            return False
    return True
