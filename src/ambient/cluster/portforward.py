"""Port-forward: a loopback listener on the machine whose connections are carried into a pod's netns.

The listener lives in the CLI process' (root) netns and binds 127.0.0.1 only: the hermetic cluster gets no
route to the machine, yet a browser or curl on the machine reaches a pod or a Service. For every accepted
connection a socket is created on a short-lived thread that `setns`'d into the pod's netns (a socket stays
in the netns it was created in), then connected from the event loop, and bytes are copied both ways with
half-close.

Where it connects: `localhost:<port>` inside the pod's network namespace, IPv4 first, then IPv6, as the
container runtime does for a kubelet's port-forward (containerd `criService.portForward`: `net.Dial("tcp4",
"localhost:<port>")` inside the sandbox netns, `tcp6` as fallback; a host-network sandbox dials in the host's
netns). So a port bound to 127.0.0.1 only (the node proxy's admin 15000) is reachable, and one bound to the
pod IP only is not, as on Kubernetes. A mirror pod of a node component (`cluster.staticpods`) is a
host-network pod: its netns is its node's.

Invariants:
- The target is resolved per connection (`svc/` picks a Ready endpoint each time, so a restarted or replaced
  pod is followed); a target that cannot be resolved closes that connection with a message on stderr, the
  listener stays up.
- Never listens on anything but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ambient.cluster import layout as L
from ambient.cluster.errors import ClusterError


class PortForwardError(ClusterError):
    """The port-forward target cannot be resolved or reached."""


@dataclass(frozen=True)
class Target:
    netns: str  # pod netns name
    ip: str
    port: int
    pod: str


def parse_ports(spec: str) -> tuple[int, int]:
    """`LOCAL:REMOTE`, or `PORT` for both; LOCAL may be 0 (any free port)."""
    local_s, _, remote_s = spec.partition(":")
    if not remote_s:
        remote_s = local_s
    try:
        local, remote = int(local_s or 0), int(remote_s)
    except ValueError:
        raise PortForwardError(f"invalid port spec {spec!r}", hint="use LOCAL:REMOTE, e.g. 8080:80") from None
    if not (0 <= local <= 65535 and 1 <= remote <= 65535):
        raise PortForwardError(f"invalid port spec {spec!r}: ports must be 1-65535 (LOCAL may be 0)")
    return local, remote


LOOPBACK = ("127.0.0.1", "::1")  # tried in this order (containerd: tcp4 localhost, then tcp6)


def pod_netns(cluster: str | L.ClusterLayout, pod: dict[str, Any]) -> str:
    """The network namespace a pod's processes run in: its own, or its node's for the mirror pod of a node
    component (only known with the cluster's layout)."""
    if isinstance(cluster, L.ClusterLayout):
        from ambient.cluster.staticpods import static_component

        static = static_component(cluster, pod)
        if static is not None:
            return static[1].netns
        return L.pod_netns_name(cluster.name, pod["metadata"]["uid"])
    return L.pod_netns_name(cluster, pod["metadata"]["uid"])


def _pod_target(cluster: str | L.ClusterLayout, pod: dict[str, Any], port: int) -> Target:
    meta = pod["metadata"]
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if status.get("phase") != "Running" or not ip:
        raise PortForwardError(f"pod {meta.get('namespace')}/{meta['name']} is not running "
                               f"(phase {status.get('phase') or 'Pending'})",
                               hint="`ambient get pod` shows its status and reason")
    return Target(pod_netns(cluster, pod), ip, port, meta["name"])


def resolve_target(cluster: str | L.ClusterLayout, get: Callable[..., dict[str, Any]], kind: str, name: str,
                   namespace: str, port: int) -> Target:
    """Resolve a pod, or a Ready endpoint of a Service (service port -> targetPort), via the API `get`."""
    if kind == "Pod":
        return _pod_target(cluster, get("Pod", name, namespace), port)
    svc = get("Service", name, namespace)
    sports = (svc.get("spec") or {}).get("ports") or []
    sport = next((p for p in sports if int(p.get("port", 0)) == port), None)
    if sport is None:
        have = ", ".join(str(p.get("port")) for p in sports) or "none"
        raise PortForwardError(f"service {namespace}/{name} has no port {port} (ports: {have})")
    eps = get("Endpoints", name, namespace)
    choices: list[tuple[str, int, dict[str, Any]]] = []
    for subset in eps.get("subsets") or []:
        match = next((p for p in subset.get("ports") or [] if (p.get("name") or "") == (sport.get("name") or "")),
                     None)
        if match is None:
            continue
        for addr in subset.get("addresses") or []:
            choices.append((addr["ip"], int(match["port"]), addr.get("targetRef") or {}))
    if not choices:
        raise PortForwardError(f"service {namespace}/{name} has no ready endpoints",
                               hint="check that pods match its selector and are Ready")
    ip, target_port, ref = random.choice(choices)
    pod = get("Pod", ref.get("name"), ref.get("namespace") or namespace)
    target = _pod_target(cluster, pod, target_port)
    return Target(target.netns, ip, target_port, target.pod)


def _sockets_in_netns(netns: str) -> list[socket.socket]:
    """One IPv4 and one IPv6 TCP socket made inside `netns` (IPv6 left out where the kernel has none)."""
    try:
        from ambient.inpod.netns import run_in_netns
    except ImportError as exc:  # pragma: no cover - inpod ships with the project
        raise PortForwardError("netns helpers unavailable") from exc
    path = L.netns_path(netns)
    if not path.exists():
        raise PortForwardError(f"pod network namespace {netns} does not exist")

    def make() -> list[socket.socket]:
        out = [socket.socket(socket.AF_INET, socket.SOCK_STREAM)]
        with contextlib.suppress(OSError):
            out.append(socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
        return out

    return run_in_netns(path, make, name="portfwd")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def connect_target(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to localhost:`target.port` inside the target's netns (127.0.0.1, then ::1)."""
    socks = await asyncio.to_thread(_sockets_in_netns, target.netns)
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    try:
        while socks:
            sock = socks.pop(0)
            host = LOOPBACK[0] if sock.family == socket.AF_INET else LOOPBACK[1]
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (host, target.port)), timeout=10.0)
            except (OSError, TimeoutError) as exc:
                sock.close()
                errors.append(f"{host}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")
                continue
            return await asyncio.open_connection(sock=sock)
    finally:
        for sock in socks:
            sock.close()
    raise PortForwardError(f"failed to connect to localhost:{target.port} inside the network namespace of pod "
                           f"{target.pod} ({'; '.join(errors)})")


class PortForwarder:
    """Accept on 127.0.0.1:local and forward each connection to `resolve()`'s target."""

    def __init__(self, local_port: int, resolve: Callable[[], Awaitable[Target]],
                 log: Callable[[str], None] | None = None) -> None:
        self.local_port = local_port
        self.resolve = resolve
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, host="127.0.0.1", port=self.local_port)
        self.local_port = self._server.sockets[0].getsockname()[1]
        return self.local_port

    def close(self) -> None:
        """Stop listening (the port is free once this returns; connections being carried end on their own)."""
        if self._server is not None:
            self._server.close()

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            target = await self.resolve()
            up_reader, up_writer = await connect_target(target)
        except (ClusterError, OSError, TimeoutError) as exc:
            self.log(f"port-forward: connection failed: {exc}")
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        self.log(f"Handling connection for {self.local_port} -> {target.pod} {target.ip}:{target.port}")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pipe(reader, up_writer))
                tg.create_task(_pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()
