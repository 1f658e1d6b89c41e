"""An in-process waypoint topology on 127.0.0.1, for integration tests and `ambient.bench.waypoint`.

client --HBONE--> waypoint (HboneServer + Waypoint) --HBONE--> backend HboneServer --TCP--> HTTP apps

Only loopback sockets are opened. Workload and service addresses (10.96.x VIPs, 127.0.0.1x pod IPs) are
names in the state: the waypoint's HBONE client dials every `<pod ip>:15008` through a dialer that maps it
to the one backend HBONE server, whose handler picks the app by the CONNECT authority (pod ip:8080).

Topology (namespace `shop`): Service `reviews` (VIP 10.96.0.10:80 -> 8080) with endpoints v1 (127.0.0.11)
and v2 (127.0.0.12); Services `reviews-v1` (10.96.0.11) and `reviews-v2` (10.96.0.12) with one endpoint
each; Service `echo` (10.96.0.20:9000, appProtocol TCP) with endpoint 127.0.0.13:9000, a TCP echo; Service
`grpc` (10.96.0.30:50051, appProtocol GRPC) with endpoint 127.0.0.14, an h2c app answering like gRPC.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

import h11

from ambient.hbone.client import HboneClient
from ambient.hbone.pipe import TcpByteStream
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, HboneServer, Reject
from ambient.identity.ca import LocalCA
from ambient.identity.certs import CertBundle
from ambient.state.model import (
    AppProtocol,
    GatewayAddress,
    NamespacedHostname,
    NetworkAddress,
    Port,
    Service,
    TunnelProtocol,
    Workload,
)
from ambient.state.store import StateView, view_of
from ambient.tls.verify import PeerIdentity
from ambient.waypoint.config import L7Config, StaticL7Source
from ambient.waypoint.http2 import serve_http2
from ambient.waypoint.messages import Limits, Request, ResponseWriter
from ambient.waypoint.server import Waypoint, WaypointSettings
from ambient.waypoint.telemetry import WaypointMetrics

NS = "shop"
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/curl"
WAYPOINT_ID = "spiffe://cluster.local/ns/shop/sa/waypoint"
BACKEND_ID = "spiffe://cluster.local/ns/shop/sa/reviews"
REVIEWS_VIP = "10.96.0.10"
ECHO_VIP = "10.96.0.20"
PODS = {"127.0.0.11": "v1", "127.0.0.12": "v2"}
ECHO_POD = "127.0.0.13"
GRPC_VIP = "10.96.0.30"
GRPC_POD = "127.0.0.14"


WAYPOINT = GatewayAddress(NamespacedHostname(NS, f"waypoint.{NS}.svc.cluster.local"))


def _svc(name: str, vip: str, port: int = 80, target: int = 8080, proto: AppProtocol = AppProtocol.UNKNOWN) -> Service:
    # every service of the topology is bound to the waypoint except `unbound` (10.96.0.40)
    return Service(name, NS, f"{name}.{NS}.svc.cluster.local", (NetworkAddress(ip_address(vip)),),
                   (Port(port, target, proto),), waypoint=None if name == "unbound" else WAYPOINT)


def build_state() -> StateView:
    services = [_svc("reviews", REVIEWS_VIP), _svc("reviews-v1", "10.96.0.11"), _svc("reviews-v2", "10.96.0.12"),
                _svc("echo", ECHO_VIP, 9000, 9000, AppProtocol.TCP),
                _svc("grpc", GRPC_VIP, 50051, 50051, AppProtocol.GRPC), _svc("unbound", "10.96.0.40")]
    # pods carry their owners' names as the control plane sends them (`workload_name`: the Deployment)
    workloads = [Workload("client-uid", "curl-1", NS, (ip_address("127.0.0.5"),), tunnel_protocol=TunnelProtocol.HBONE,
                          service_account="curl", workload_name="curl")]
    for ip, version in PODS.items():
        workloads.append(Workload(
            f"reviews-{version}", f"reviews-{version}-pod", NS, (ip_address(ip),),
            tunnel_protocol=TunnelProtocol.HBONE, service_account="reviews", canonical_name="reviews",
            canonical_revision=version, workload_name=f"reviews-{version}",
            waypoint=WAYPOINT if version == "v2" else None,  # v2: workload waypoint
            services={f"{NS}/reviews.{NS}.svc.cluster.local": (Port(80, 8080),),
                      f"{NS}/reviews-{version}.{NS}.svc.cluster.local": (Port(80, 8080),)},
        ))
    workloads.append(Workload("echo-uid", "echo-pod", NS, (ip_address(ECHO_POD),), tunnel_protocol=TunnelProtocol.HBONE,
                              service_account="reviews",
                              services={f"{NS}/echo.{NS}.svc.cluster.local": (Port(9000, 9000, AppProtocol.TCP),)}))
    workloads.append(Workload("grpc-uid", "grpc-pod", NS, (ip_address(GRPC_POD),), tunnel_protocol=TunnelProtocol.HBONE,
                              service_account="reviews",
                              services={f"{NS}/grpc.{NS}.svc.cluster.local": (Port(50051, 50051, AppProtocol.GRPC),)}))
    return view_of(workloads, services)


async def _grpc_like(req: Request, writer: ResponseWriter) -> None:
    """An h2c app answering like gRPC: echoes the body, `grpc-status` in trailers, reports `te`."""
    body = bytearray()
    while chunk := await req.body.read():
        body += chunk
    await writer.start(200, [("content-type", "application/grpc"), ("x-te", req.header("te") or "")])
    await writer.write(bytes(body))
    await writer.end([("grpc-status", "0"), ("grpc-message", "ok")])


async def _h2_app_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    stream = TcpByteStream(reader, writer)
    try:
        await serve_http2(stream, _grpc_like, Limits())
    finally:
        stream.close()


async def _app_conn(version: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A tiny keep-alive HTTP/1.1 app: answers JSON {version, method, path, headers, body};
    `/status/<code>` answers that status, `/delay/<ms>` answers late."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                if event is h11.PAUSED and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                body = bytearray()
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                    else:
                        break
                target = event.target.decode()
                status = int(target.rsplit("/", 1)[-1]) if target.startswith("/status/") else 200
                if target.startswith("/delay/"):  # /delay/<ms>: a slow backend
                    await asyncio.sleep(int(target.rsplit("/", 1)[-1]) / 1000)
                payload = json.dumps({
                    "version": version, "method": event.method.decode(), "path": target,
                    "headers": {k.decode(): v.decode() for k, v in event.headers}, "body": len(body),
                }).encode()
                writer.write(conn.send(h11.Response(status_code=status, headers=[
                    ("content-type", "application/json"), ("content-length", str(len(payload))),
                    ("x-version", version)])) or b"")
                writer.write(conn.send(h11.Data(data=payload)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
    except (ConnectionError, h11.ProtocolError):
        return
    finally:
        writer.close()


async def _echo_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()


@dataclass
class Loopback:
    ca: LocalCA
    client_certs: CertBundle
    waypoint_certs: CertBundle
    backend_certs: CertBundle
    waypoint: Waypoint
    waypoint_server: HboneServer
    backend_server: HboneServer
    client: HboneClient
    l7: StaticL7Source
    metrics: WaypointMetrics
    backend_seen: list[tuple[str, str]] = field(default_factory=list)  # (authority, peer identity)
    apps: dict[str, int] = field(default_factory=dict)  # pod ip -> app port

    async def open(self, authority: str = f"{REVIEWS_VIP}:80", via_waypoint: bool = True) -> Any:
        """A client tunnel to `authority` (through the waypoint, or straight to the backend server)."""
        if via_waypoint:
            return await self.client.connect(self.client_certs, self.waypoint_server.address[:2], {WAYPOINT_ID},
                                             authority, {"forwarded": 'for="127.0.0.5:40000"'})
        return await self.client.connect(self.client_certs, self.backend_server.address[:2], {BACKEND_ID}, authority)

    def set_objects(self, objects: Iterable[Mapping[str, Any]]) -> None:
        self.l7.set(L7Config.from_objects(objects))


class _ConnHandlers:
    """The tasks asyncio.start_server runs per connection, owned here: cancelled when the loopback closes (a
    handler may be in the middle of a slow answer)."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def own(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
            ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            try:
                await handler(reader, writer)
            finally:
                self.tasks.discard(task)

        return run

    async def aclose(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@asynccontextmanager
async def loopback(objects: Iterable[Mapping[str, Any]] = (), *, seed: int = 7) -> AsyncIterator[Loopback]:
    ca = LocalCA.create()
    client_certs, waypoint_certs, backend_certs = ca.issue(CLIENT_ID), ca.issue(WAYPOINT_ID), ca.issue(BACKEND_ID)
    async with AsyncExitStack() as stack:
        handlers = _ConnHandlers()
        stack.push_async_callback(handlers.aclose)  # last: after the servers stopped accepting
        apps: dict[str, int] = {}
        for ip, version in PODS.items():
            server = await asyncio.start_server(handlers.own(functools.partial(_app_conn, version)), "127.0.0.1", 0)
            await stack.enter_async_context(server)
            apps[ip] = server.sockets[0].getsockname()[1]
        echo = await asyncio.start_server(handlers.own(_echo_conn), "127.0.0.1", 0)
        await stack.enter_async_context(echo)
        apps[ECHO_POD] = echo.sockets[0].getsockname()[1]
        grpc = await asyncio.start_server(handlers.own(_h2_app_conn), "127.0.0.1", 0)
        await stack.enter_async_context(grpc)
        apps[GRPC_POD] = grpc.sockets[0].getsockname()[1]
        seen: list[tuple[str, str]] = []

        async def backend_handler(req: ConnectRequest, peer: PeerIdentity) -> Decision:
            seen.append((req.authority, peer.uri))
            port = apps.get(req.target_ip)
            if port is None:
                return Reject(503, "unknown pod")
            return Accept(upstream=await TcpByteStream.connect("127.0.0.1", port))

        backend = await stack.enter_async_context(
            HboneServer(socket.create_server(("127.0.0.1", 0)), backend_certs, backend_handler))

        async def dial(dst: tuple[str, int], _source_ip: str | None) -> socket.socket:
            # every pod's :15008 is the one backend server on loopback
            from ambient.hbone.client import tcp_dial

            return await tcp_dial(("127.0.0.1", backend.address[1]) if dst[1] == 15008 else dst, None)

        out_client = await stack.enter_async_context(HboneClient(dialer=dial))
        l7 = StaticL7Source(L7Config.from_objects(objects))
        metrics = WaypointMetrics()
        state = build_state()
        waypoint = Waypoint(certs=waypoint_certs, state=lambda: state, l7=l7, client=out_client,
                            settings=WaypointSettings(gateway_name="waypoint", gateway_namespace=NS),
                            rng=random.Random(seed), metrics=metrics)
        stack.push_async_callback(waypoint.aclose)
        wp_server = await stack.enter_async_context(
            HboneServer(socket.create_server(("127.0.0.1", 0)), waypoint_certs, waypoint.handle_connect))
        client = await stack.enter_async_context(HboneClient())
        yield Loopback(ca, client_certs, waypoint_certs, backend_certs, waypoint, wp_server, backend, client, l7,
                       metrics, seen, apps)
