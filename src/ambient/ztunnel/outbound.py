"""Outbound (15001): the app's redirected connection -> decide (route.py, pure) -> do (HBONE or TCP).

Phases:
1. context: the original destination (SO_ORIGINAL_DST), the client address, the source workload (fail
   closed after a short wait for config);
2. decide: `route.decide_outbound` -> Reject | ViaWaypoint | Hbone | Direct | Passthrough;
3. do: HBONE CONNECT with the SOURCE workload's certificate and the expected server identities, or a
   plain marked TCP connection; then copy both ways.

Invariant: on any failure the app's connection is RESET (SO_LINGER 0) and one access-log line says why;
the app never waits on a silent connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from ipaddress import ip_address

from ambient.hbone import protocol as hproto
from ambient.hbone.errors import HboneError
from ambient.state.model import Service, Workload, WorkloadType
from ambient.ztunnel import route
from ambient.ztunnel import sockets as so
from ambient.ztunnel.accesslog import ConnectionRecord
from ambient.ztunnel.copy import (
    CopyStats,
    DrainCut,
    End,
    HboneEnd,
    SocketEnd,
    copy_bidirectional,
    finish,
    reset_socket,
)
from ambient.ztunnel.errors import UpstreamError
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
    dst_ip = ip_address(dst_ip_s)
    client_ip = ip_address(peer[0])
    dst_addr = _addr(dst_ip, dst_port)
    local = client.getsockname()
    if (dst_ip_s, dst_port) == (local[0], local[1]):
        # Not redirected (someone dialled the proxy port itself): forwarding would loop back to us.
        tel.access.failed(src_addr=src_addr, dst_addr=dst_addr, direction="outbound",
                          error=f"connection to the proxy's own port {dst_port} refused (not redirected / loop)")
        reset_socket(client)
        return

    # 1. context: fail closed on an unknown source, after a short wait for config.
    source = await core.wait_for_workload(lambda v: ctx.scope.source_workload(v, client_ip))
    view = core.view()
    # 2. decide (pure).
    decision = route.decide_outbound(source, dst_ip, dst_port, view)
    if isinstance(decision, route.Reject):
        tel.access.failed(src_addr=src_addr, dst_addr=dst_addr, direction="outbound", error=decision.reason)
        reset_socket(client)
        return
    assert source is not None
    record = ConnectionRecord(
        direction="outbound",
        src_addr=src_addr,
        src_workload=source.name,
        src_namespace=source.namespace,
        src_identity=source.identity,
    )
    service: Service | None = None
    dst_wl: Workload | None = None
    mtls = isinstance(decision, (route.Hbone, route.ViaWaypoint))
    if isinstance(decision, route.Hbone):
        service, dst_wl = decision.service, decision.workload
        record.dst_addr, record.dst_hbone_addr = str(decision.address), str(decision.authority)
        record.dst_identity = dst_wl.identity
    elif isinstance(decision, route.ViaWaypoint):
        service, dst_wl = decision.service, decision.destination
        record.dst_addr, record.dst_hbone_addr = str(decision.address), str(decision.authority)
        record.dst_identity = decision.waypoint.identity
    elif isinstance(decision, route.Direct):
        service, dst_wl = decision.service, decision.workload
        record.dst_addr = str(decision.address)
    else:
        record.dst_addr = str(decision.address)
    if service is not None:
        record.dst_service = service.hostname
    if dst_wl is not None:
        record.dst_workload, record.dst_namespace = dst_wl.name, dst_wl.namespace
        if not record.dst_identity and dst_wl.in_mesh:
            record.dst_identity = dst_wl.identity
    labels = labels_for("source", source, source.identity, dst_wl, record.dst_identity, service, mtls)
    tel.opened(labels)
    stats = CopyStats()
    entry = tel.connections.open(
        workload=f"{source.namespace}/{source.name}", pod_uid=ctx.scope.uid, direction="outbound",
        local=src_addr, remote=record.dst_addr, remote_target=record.dst_hbone_addr or record.dst_addr,
        protocol="HBONE" if mtls else "TCP", stats=stats,
    )
    app = SocketEnd(client, src_addr)
    upstream: End | None = None
    error: BaseException | None = None
    try:
        # 3. do.
        try:
            if isinstance(decision, (route.Hbone, route.ViaWaypoint)):
                bundle = await core.certs.fetch(source.identity)
                headers = {
                    "baggage": hproto.make_baggage(baggage_for(source, ctx.settings.cluster_id)),
                    "forwarded": hproto.make_forwarded(str(client_ip), peer[1], record.dst_service or None),
                }
                stream = await core.hbone.connect(
                    bundle,
                    (str(decision.address.ip), decision.address.port),
                    decision.expected_identities,
                    str(decision.authority),
                    headers,
                    source_ip=str(client_ip) if ctx.scope.bind_source else None,
                    dialer=ctx.hbone_dialer,
                )
                upstream = HboneEnd(stream, record.dst_addr)
            else:
                addr = decision.address
                upstream = SocketEnd(await ctx.dial(addr.ip, addr.port), record.dst_addr)
        except (HboneError, UpstreamError) as exc:
            error = exc
            record.error = exc.message
            labels = labels.with_flags("CONNECT")
            reset_socket(client)
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
