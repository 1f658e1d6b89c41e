"""Outbound (15001): the app's redirected connection -> decide (route.py, pure) -> do (HBONE or TCP).

Phases:
1. context: the original destination (SO_ORIGINAL_DST), the client address, the source workload (fail
   closed after a short wait for config);
2. decide: `route.decide_outbound` -> Reject | ViaWaypoint | Hbone | Direct | Passthrough;
3. do: HBONE CONNECT with the SOURCE workload's certificate and the expected server identities, or a
   plain marked TCP connection; then copy both ways.

Invariant: on any failure the app's connection is RESET (SO_LINGER 0) and one access-log line says why;
the app never waits on a silent connection.

Per-connection cost: phase 2 and everything it implies (access-log fields, metric labels, baggage, the
HBONE target and expected identities) is a `_Plan` computed once per (source workload, original
destination) and state view (`PodContext.memo`, emptied by any state change). A decision that drew a
random endpoint (a Service with several usable endpoints) is never reused: each connection decides anew.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import ip_address

from ambient.hbone import protocol as hproto
from ambient.hbone.errors import HboneError
from ambient.runtime.accesslog import ConnectionRecord
from ambient.state import route
from ambient.state.model import IPAddress, Service, Workload, WorkloadType
from ambient.ztunnel import sockets as so
from ambient.ztunnel.copy import (
    CopyStats,
    DrainCut,
    End,
    HboneEnd,
    SocketEnd,
    copy_bidirectional,
    finish,
    refuse,
    reset_socket,
)
from ambient.ztunnel.dnsproxy import resolve_hostname
from ambient.ztunnel.errors import UpstreamError
from ambient.ztunnel.metrics import ConnectionLabels
from ambient.ztunnel.proxy import PodContext
from ambient.ztunnel.telemetry import labels_for

log = logging.getLogger("ambient.ztunnel.outbound")

_TYPE_KEY = {
    WorkloadType.DEPLOYMENT: "k8s.deployment.name",
    WorkloadType.POD: "k8s.pod.name",
    WorkloadType.JOB: "k8s.job.name",
    WorkloadType.CRONJOB: "k8s.cronjob.name",
}


def _addr(ip: object, port: int) -> str:
    text = str(ip)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def baggage_for(src: Workload, cluster: str) -> dict[str, str | None]:
    return {
        "k8s.cluster.name": src.cluster_id or cluster,
        "k8s.namespace.name": src.namespace,
        _TYPE_KEY.get(src.workload_type, "k8s.deployment.name"): src.workload_name or src.name,
        "service.name": src.canonical_name or src.workload_name or src.name,
        "service.version": src.canonical_revision,
    }


class _TrackingRandom(random.Random):
    """The routing decisions' randomness, noting whether a decision drew from it: one that did not (a
    workload address, a Service with a single usable endpoint) is a pure function of (source,
    destination, state) and is reused for the next connections of that pair under the same state."""

    used = False

    def random(self) -> float:
        self.used = True
        return super().random()

    def getrandbits(self, k: int, /) -> int:
        self.used = True
        return super().getrandbits(k)


_RNG = _TrackingRandom()


@lru_cache(maxsize=1024)
def _client_ip(text: str) -> tuple[IPAddress, str]:
    """A peer address string -> (the address, its canonical text): clients are a handful of pod IPs."""
    ip = ip_address(text)
    return ip, str(ip)


@dataclass(slots=True)
class _Plan:
    """What a routing decision implies for every connection of one (source, destination) under one state
    view: the access-log fields, the metric labels and the HBONE request parts."""

    decision: route.Route
    mtls: bool
    labels: ConnectionLabels
    workload: str  # "ns/name" of the source, for the connection table
    src_identity: str
    dst_addr: str
    dst_hbone_addr: str = ""
    dst_service: str = ""
    dst_workload: str = ""
    dst_namespace: str = ""
    dst_identity: str = ""
    baggage: str = ""
    hbone_dst: tuple[str, int] = ("", 0)
    expected: tuple[str, ...] = ()
    authority: str = ""
    route: str = ""  # the decision's kind, for the access line's `route=` (tracing): hbone, waypoint <id>, passthrough


def _route_text(decision: route.Route) -> str:
    if isinstance(decision, route.ViaWaypoint):
        return f"waypoint {decision.waypoint.identity}"
    if isinstance(decision, route.Hbone):
        return f"hbone; endpoint: {decision.pick}" if decision.pick else "hbone"
    if isinstance(decision, route.Direct) and decision.pick:
        return f"passthrough (plain TCP to a workload outside the mesh); endpoint: {decision.pick}"
    if isinstance(decision, (route.Direct, route.DirectHostname)):
        return "passthrough (plain TCP to a workload outside the mesh)"
    return "passthrough (destination unknown to the mesh)"


def _plan(source: Workload, decision: route.Route, cluster_id: str) -> _Plan:
    service: Service | None = None
    dst_wl: Workload | None = None
    dst_hbone_addr = dst_identity = ""
    if isinstance(decision, route.Hbone):
        service, dst_wl = decision.service, decision.workload
        dst_addr, dst_hbone_addr = str(decision.address), str(decision.authority)
        dst_identity = dst_wl.identity
    elif isinstance(decision, route.ViaWaypoint):
        service, dst_wl = decision.service, decision.destination
        dst_addr, dst_hbone_addr = str(decision.address), str(decision.authority)
        dst_identity = decision.waypoint.identity
    elif isinstance(decision, (route.Direct, route.DirectHostname)):
        service, dst_wl = decision.service, decision.workload
        dst_addr = str(decision.address) if isinstance(decision, route.Direct) else str(decision)
    else:
        assert isinstance(decision, route.Passthrough)
        dst_addr = str(decision.address)
    if dst_wl is not None and not dst_identity and dst_wl.in_mesh:
        dst_identity = dst_wl.identity
    src_identity = source.identity
    mtls = isinstance(decision, (route.Hbone, route.ViaWaypoint))
    plan = _Plan(
        decision=decision, mtls=mtls,
        labels=labels_for("source", source, src_identity, dst_wl, dst_identity, service, mtls),
        workload=f"{source.namespace}/{source.name}", src_identity=src_identity, dst_addr=dst_addr,
        dst_hbone_addr=dst_hbone_addr, dst_service=service.hostname if service is not None else "",
        dst_workload=dst_wl.name if dst_wl is not None else "",
        dst_namespace=dst_wl.namespace if dst_wl is not None else "", dst_identity=dst_identity,
        route=_route_text(decision),
    )
    if isinstance(decision, (route.Hbone, route.ViaWaypoint)):
        plan.baggage = hproto.make_baggage(baggage_for(source, cluster_id))
        plan.hbone_dst = (str(decision.address.ip), decision.address.port)
        plan.expected = decision.expected_identities
        plan.authority = dst_hbone_addr
    return plan


async def _dial_hostname(ctx: PodContext, decision: route.DirectHostname) -> socket.socket:
    """Resolve a hostname endpoint (ServiceEntry resolution DNS) and dial its first address."""
    addresses = await resolve_hostname(ctx, decision.hostname)
    if not addresses:
        raise UpstreamError(f"endpoint {decision.hostname} of service "
                            f"{decision.service.key if decision.service else '?'} does not resolve")
    return await ctx.dial(ip_address(addresses[0]), decision.port)


async def serve_outbound(ctx: PodContext, client: socket.socket) -> None:
    core, tel = ctx.core, ctx.core.telemetry
    peer = client.getpeername()
    src_addr = _addr(peer[0], peer[1])
    try:
        dst_ip_s, dst_port = so.original_dst(client)
    except so.SocketOptionError as exc:
        tel.access.failed(src_addr=src_addr, dst_addr="", direction="outbound", error=exc.message)
        reset_socket(client)
        return
    client_ip, client_ip_s = _client_ip(peer[0])
    local = client.getsockname()
    if (dst_ip_s, dst_port) == (local[0], local[1]):
        # Not redirected (someone dialled the proxy port itself): forwarding would loop back to us.
        tel.access.failed(src_addr=src_addr, dst_addr=_addr(dst_ip_s, dst_port), direction="outbound",
                          error=f"connection to the proxy's own port {dst_port} refused (not redirected / loop)")
        reset_socket(client)
        return

    # 1. context: fail closed on an unknown source, after a short wait for config.
    scope = ctx.scope
    source = scope.source_workload(core.view(), client_ip)
    if source is None:
        source = await core.wait_for_workload(lambda v: scope.source_workload(v, client_ip))
    view = core.view()
    # 2. decide (pure): once per (source, destination) and state version unless the decision drew a
    # random endpoint.
    plan: _Plan | route.Reject | None = None
    table = ctx.memo.table(view) if source is not None else None
    key = (id(source), dst_ip_s, dst_port)
    if table is not None and (hit := table.get(key)) is not None:
        plan = hit[1]
    if plan is None:
        _RNG.used = False
        decision = route.decide_outbound(source, ip_address(dst_ip_s), dst_port, view, _RNG)
        if isinstance(decision, route.Reject) or source is None:
            plan = decision if isinstance(decision, route.Reject) else route.Reject("unknown source")
        else:
            plan = _plan(source, decision, ctx.settings.cluster_id)
        if table is not None and not _RNG.used:
            table[key] = (source, plan)  # holding `source` keeps its id unique while cached
    if isinstance(plan, route.Reject):
        tel.access.failed(src_addr=src_addr, dst_addr=_addr(dst_ip_s, dst_port), direction="outbound",
                          error=plan.reason)
        reset_socket(client)
        return
    assert source is not None
    record = ConnectionRecord(
        direction="outbound",
        src_addr=src_addr,
        src_workload=source.name,
        src_namespace=source.namespace,
        src_identity=plan.src_identity,
        dst_addr=plan.dst_addr,
        dst_hbone_addr=plan.dst_hbone_addr,
        dst_service=plan.dst_service,
        dst_workload=plan.dst_workload,
        dst_namespace=plan.dst_namespace,
        dst_identity=plan.dst_identity,
    )
    traceparent = None
    if ctx.settings.trace_ids:  # the same random traceparent the CONNECT would carry, now also logged
        traceparent = hproto.make_traceparent()
        record.trace_id, record.route = traceparent[3:35], plan.route
        record.original = _addr(dst_ip_s, dst_port)
    labels = plan.labels
    mtls = plan.mtls
    tel.opened(labels)
    stats = CopyStats()
    entry = tel.connections.open(
        workload=plan.workload, pod_uid=scope.uid, direction="outbound",
        local=src_addr, remote=plan.dst_addr, remote_target=plan.dst_hbone_addr or plan.dst_addr,
        protocol="HBONE" if mtls else "TCP", stats=stats,
    )
    app = SocketEnd(client, src_addr)
    upstream: End | None = None
    error: BaseException | None = None
    try:
        # 3. do.
        try:
            if mtls:
                bundle = await core.certs.fetch(plan.src_identity)
                headers = {
                    "baggage": plan.baggage,
                    "forwarded": hproto.make_forwarded(client_ip_s, peer[1], plan.dst_service or None),
                }
                if traceparent is not None:
                    headers["traceparent"] = traceparent
                stream = await core.hbone.connect(
                    bundle,
                    plan.hbone_dst,
                    plan.expected,
                    plan.authority,
                    headers,
                    source_ip=client_ip_s if scope.bind_source else None,
                    dialer=ctx.hbone_dialer,
                )
                if record.trace_id:  # client streams are 1, 3, 5...: 1 is the CONNECT that opened the connection
                    record.hbone_conn = "new" if getattr(stream, "stream_id", 0) == 1 else "pooled"
                upstream = HboneEnd(stream, plan.dst_addr)
            elif isinstance(plan.decision, route.DirectHostname):
                upstream = SocketEnd(await _dial_hostname(ctx, plan.decision), plan.dst_addr)
            else:
                addr = plan.decision.address  # type: ignore[union-attr]
                upstream = SocketEnd(await ctx.dial(addr.ip, addr.port), plan.dst_addr)
        except (HboneError, UpstreamError) as exc:
            error = exc
            record.error = exc.message
            labels = labels.with_flags("CONNECT")
            await refuse(client)
            return
        try:
            error = await copy_bidirectional(app, upstream, stats)
        except asyncio.CancelledError:
            error = DrainCut()
            record.error = str(error)
            raise
        if error is not None:
            record.error = f"{type(error).__name__}: {error}"
    finally:
        if upstream is not None:
            finish(app, upstream, error)
        tel.connections.close(entry)
        tel.finish(record, labels, stats)
