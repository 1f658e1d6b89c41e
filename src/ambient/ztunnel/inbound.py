"""Inbound: HBONE CONNECT on 15008 and plaintext on 15006, delivered to the local app.

HBONE runs in explicit phases, each failure mapped to an HTTP status (protocols.md s.2):
1. context: the dialled address, the client address and identity (from the peer certificate ONLY), the
   local workload;
2. authority check (route.check_inbound_authority): 400 for a bad authority, a loopback target, or an
   authority IP that differs from the dialled IP (an IPv4-mapped authority included, as ztunnel compares
   it unmapped); 503 for an unknown local workload, and for a target on one of the proxy's own ports
   (self-call / loop: 15001/15006/15008 and the admin ports; ztunnel answers 503 for these). A Service
   hostname authority (`web.shop.svc.cluster.local:80`) is resolved as ztunnel does (`_resolve_hostname`):
   the dialled address, on the port that Service maps its port to (503 when unknown). (The HBONE layer,
   `hbone.protocol.parse_connect_request`, still answers 400 to such an authority before this runs.)
3. authorization (authz.evaluate): 401, access log `error="connection closed due to policy rejection:
   <reason>"`, metrics response_flags DENY;
3b. admission (ProxyCore.admission): per-source and per-proxy concurrency limits and the per-source
   early-reset limit, decided before any socket to the app exists: 503 (plaintext: reset), counted in
   ambient_ztunnel_inbound_refused_total{reason}; a stream the client resets before its 200 counts as an
   early reset of its source (one already reset when its turn comes is never dialled); refusals are
   access-logged at most once per source and reason per second (the metric counts each). Plaintext
   decides admission first of all (a flood costs a dict lookup per connection);
4. upstream connect to the app, binding the client's IP (IP_TRANSPARENT) so the app sees the real source,
   10 s timeout: 503 (response_flags CONNECT);
5. 200, then copy both ways.
Plaintext (15006) runs the same phases without identity: failures reset the connection.

Per-connection cost: phases 1-3 of HBONE are pure functions of (dialled address, client IP, authority,
peer identity) and the state view, so their result (`_InboundPlan`, including the authorization verdict)
is computed once per such key and view (`PodContext.memo`); a state change (policies, workloads,
services) starts from an empty table, so a verdict is never reused across policy versions. Live
connections are still re-checked on policy changes (`Connections.revoke`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from ambient.authz.evaluate import ConnectionInfo, evaluate
from ambient.authz.evaluate import Decision as AuthzDecision
from ambient.hbone import protocol as hproto
from ambient.hbone.connection import HboneStream
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, Reject
from ambient.runtime.accesslog import ConnectionRecord
from ambient.state import route
from ambient.state.model import IPAddress, ServiceVisibility, Workload, canonical_ip
from ambient.state.store import StateView
from ambient.tls.verify import PeerIdentity
from ambient.ztunnel import sockets as so
from ambient.ztunnel.admission import EARLY_RESETS, PROXY_LIMIT, SOURCE_LIMIT, Admission
from ambient.ztunnel.copy import CopyStats, DrainCut, End, HboneEnd, SocketEnd, copy_bidirectional, finish, reset_socket
from ambient.ztunnel.errors import UpstreamError
from ambient.ztunnel.metrics import ConnectionLabels
from ambient.ztunnel.proxy import CURRENT_STREAM, PodContext, stream_gone
from ambient.ztunnel.telemetry import Telemetry, labels_for

log = logging.getLogger("ambient.ztunnel.inbound")


def _addr(ip: object, port: int) -> str:
    text = str(ip)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def _service_for(view: StateView, wl: Workload, port: int) -> str:
    """The hostname of a Service this workload backs on `port` (for the access log), or ''."""
    for key, ports in wl.services.items():
        svc = view.service(key)
        if svc is None:
            continue
        for p in svc.ports:
            target = next((wp.target_port for wp in ports if wp.service_port == p.service_port and wp.target_port),
                          p.target_port)
            if target == port:
                return svc.hostname
    return ""


async def _deliver(
    ctx: PodContext,
    end: End,
    src_ip: IPAddress,
    target: route.SocketAddr,
    record: ConnectionRecord,
    labels: ConnectionLabels,
    entry_args: dict[str, str],
    upstream: socket.socket,
    authz: ConnectionInfo,
    dst_uid: str,
) -> None:
    """Phase 5: copy between the client side (`end`) and the app, then log and count. A policy change
    that denies this connection later cuts it (`Connections.revoke`)."""
    tel = ctx.core.telemetry
    stats = CopyStats()
    app = SocketEnd(upstream, entry_args["local"])  # the app address, str(target)
    revoked: list[str] = []
    me = asyncio.current_task()

    def cut(reason: str) -> None:
        # Cancel the copy (not close the ends under it): HBONE reads only wake on stream errors.
        revoked.append(reason)
        if me is not None:
            me.cancel()

    entry = tel.connections.open(stats=stats, authz=authz, dst_uid=dst_uid, cut=cut,  # type: ignore[arg-type]
                                 **entry_args)
    error: BaseException | None = None
    try:
        try:
            error = await copy_bidirectional(end, app, stats)
        except asyncio.CancelledError:
            if revoked and me is not None and me.uncancel() == 0:
                error = ConnectionResetError("revoked")  # our own cut: finish below resets both sides
            else:
                error = DrainCut()
                raise
        finally:
            if revoked:
                record.error = revoked[0]
            elif error is not None:
                record.error = str(error) if isinstance(error, DrainCut) else f"{type(error).__name__}: {error}"
    finally:
        finish(end, app, error)
        tel.connections.close(entry)
        tel.finish(record, labels, stats)


async def _connect_app(ctx: PodContext, src_ip: IPAddress, target: route.SocketAddr) -> socket.socket:
    transparent = ctx.settings.transparent_inbound
    return await ctx.dial(
        target.ip, target.port, bind=src_ip if transparent else None, transparent=transparent,
    )


HboneHandler = Callable[[ConnectRequest, PeerIdentity], Awaitable[Decision]]


class _UpstreamGuard:
    """Handed to the HBONE server as `Accept.upstream` only for its `close()`, which the server calls on
    every path (after `serve` returned, or instead of it): the admission slot is released there, and if
    the stream died before `serve` ran (no 200 sent: the client reset it early) the app socket is reset
    and the connection is still logged and counted (opened/closed stay paired)."""

    def __init__(self, sock: socket.socket, orphaned: Callable[[], None], release: Callable[[], None]) -> None:
        self.sock = sock
        self.orphaned = orphaned
        self.release = release
        self.started = False
        self._closed = False

    async def read(self, max_bytes: int = -1) -> bytes:  # pragma: no cover - never used for copying
        raise NotImplementedError

    async def write(self, data: bytes | bytearray | memoryview) -> None:  # pragma: no cover
        raise NotImplementedError

    async def write_eof(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.release()
        if self.started:
            return
        reset_socket(self.sock)
        self.orphaned()


@dataclass(slots=True)
class _InboundPlan:
    """Phases 1-3 of an HBONE CONNECT for one (dialled address, client IP, authority, peer identity) under
    one state view: all pure, so computed once and reused by the next tunnels of that pair until the state
    changes (see `ViewMemo`). `reject` is set when the authority check failed."""

    dst_addr: str
    src_ip: IPAddress
    src_ip_text: str
    reject: Reject | None = None
    target: route.SocketAddr | None = None
    target_text: str = ""
    local: Workload | None = None
    src_workload: str = ""
    src_namespace: str = ""
    dst_service: str = ""
    labels: ConnectionLabels | None = None
    authz: ConnectionInfo | None = None
    verdict: AuthzDecision | None = None
    workload: str = ""  # "ns/name" of the local workload, for the connection table


def _authority_reject(authority: str) -> Reject | None:
    """400 for an IPv4-mapped IPv6 authority (`[::ffff:10.0.0.1]:80`): ztunnel compares it, unmapped, with
    the (canonical, IPv4) dialled address and refuses the mismatch; it is never a pod's own address."""
    addr = route.SocketAddr.parse(authority)
    if addr is not None and addr.ip.version == 6 and addr.ip.ipv4_mapped is not None:
        return Reject(400, f"CONNECT authority {authority} does not match the dialled address "
                           f"(IPv4-mapped addresses are not workload addresses)")
    return None


_HOSTNAME = re.compile(r"(?=.{1,253}:)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
                       r":([0-9]{1,5})", re.IGNORECASE)


def _hostname_authority(authority: str) -> tuple[str, int] | None:
    """(hostname, port) for a `<dns name>:<port>` authority (`web.shop.svc.cluster.local:80`), else None."""
    m = _HOSTNAME.fullmatch(authority)
    if m is None or not 0 < int(m.group(1)) < 65536:
        return None
    return authority[: m.start(1) - 1].lower(), int(m.group(1))


def _resolve_hostname(
    view: StateView, dialled_ip: IPAddress, local: Workload | None, hostname: str, service_port: int,
) -> route.SocketAddr | Reject:
    """ztunnel's inbound handling of a Service hostname authority: the Service with that hostname visible
    from the local workload's namespace (its own namespace preferred) gives the port, the local workload's
    endpoint port for that Service port first, else the Service's target port; the connection goes to the
    dialled address. 503 when the workload, the Service or the port is unknown."""
    dialled = canonical_ip(dialled_ip)
    if local is None or not any(canonical_ip(a) == dialled for a in local.addresses):
        return Reject(503, f"no workload known for dialled address {dialled_ip}")
    candidates = [s for s in view.services_by_hostname(hostname)
                  if s.namespace == local.namespace or s.visibility != ServiceVisibility.NAMESPACE]
    if not candidates:
        return Reject(503, f"no service known for hostname {hostname}")
    svc = min(candidates, key=lambda s: (s.namespace != local.namespace, s.namespace))
    port = next((p.target_port for p in local.services.get(svc.key, ())
                 if p.service_port == service_port and p.target_port), 0)
    if not port:
        port = next((p.target_port for p in svc.ports if p.service_port == service_port), 0)
    if not port:
        return Reject(503, f"service {hostname} has no (numeric target) port {service_port}")
    return route.SocketAddr(dialled, port)


def _inbound_plan(
    ctx: PodContext, view: StateView, local_addr: tuple[Any, ...], remote_ip: str, authority: str, peer_uri: str,
) -> _InboundPlan:
    # 1. context
    dialled_ip = ip_address(local_addr[0])
    src_ip = ip_address(remote_ip)
    plan = _InboundPlan(dst_addr=_addr(dialled_ip, local_addr[1]), src_ip=src_ip, src_ip_text=str(src_ip))
    local = ctx.scope.local_workload(view, dialled_ip)
    # 2. authority
    reject = _authority_reject(authority)
    if reject is not None:
        plan.reject = reject
        return plan
    named = _hostname_authority(authority)
    if named is not None:  # a Service hostname: the target is the dialled address, the port resolved
        resolved = _resolve_hostname(view, dialled_ip, local, *named)
        if isinstance(resolved, Reject):
            plan.reject = resolved
            return plan
        target = resolved
    else:
        check = route.check_inbound_authority(dialled_ip, authority, local, view, proxy_ports=frozenset())
        if not check.ok or check.target is None:
            plan.reject = Reject(check.status, check.reason)
            return plan
        target = check.target
    if local is None:  # (the checks above answered 503 already)
        plan.reject = Reject(503, f"no workload known for dialled address {dialled_ip}")
        return plan
    # the proxy's own ports, on the resolved target (as ztunnel checks them: a self-call is 503)
    if target.port in ctx.settings.ports.proxy_ports:
        plan.reject = Reject(503, f"CONNECT to proxy port {target.port} refused (self-call/loop)")
        return plan
    src_wl = view.workload_by_ip(src_ip)
    plan.target, plan.target_text, plan.local = target, str(target), local
    plan.src_workload = src_wl.name if src_wl else ""
    plan.src_namespace = src_wl.namespace if src_wl else ""
    plan.dst_service = _service_for(view, local, target.port)
    svc = view.service_by_hostname(local.namespace, plan.dst_service) if plan.dst_service else None
    plan.labels = labels_for("destination", src_wl, peer_uri, local, local.identity, svc, True)
    # 3. authorization: identity from the certificate only
    plan.authz = ConnectionInfo(src_ip, target.ip, target.port, peer_uri)
    plan.verdict = evaluate(plan.authz, local, view)
    plan.workload = f"{local.namespace}/{local.name}"
    return plan


def _refusal_text(reason: str, src: str) -> str:
    lim = {EARLY_RESETS: "too many streams reset before their tunnel opened",
           SOURCE_LIMIT: "too many concurrent inbound connections from this source",
           PROXY_LIMIT: "too many concurrent inbound connections on this node proxy"}.get(reason, reason)
    return f"connection refused by admission control ({reason}): {lim} ({src})"


def _log_refusal(
    tel: Telemetry, admission: Admission, reason: str, src: str, src_addr: str, dst_addr: str, now: float,
) -> None:
    """An access line for a refusal, at most one per source and reason per second (a flood must not buy
    CPU from its victims with log lines); the metric counts every refusal."""
    skipped = admission.log_gate.allow((src, reason), now)
    if skipped is None:
        return
    error = _refusal_text(reason, src) + (f" (and {skipped} more since the last line)" if skipped else "")
    tel.access.failed(src_addr=src_addr, dst_addr=dst_addr, direction="inbound", error=error)


def hbone_handler(ctx: PodContext) -> HboneHandler:
    core, tel = ctx.core, ctx.core.telemetry
    admission = core.admission
    loop = asyncio.get_running_loop()
    tracing = ctx.settings.trace_ids

    async def handle(request: ConnectRequest, peer: PeerIdentity) -> Decision:
        # 1.-3. context, authority, authorization: pure, once per pair and state version
        local_addr = request.local_addr or ("0.0.0.0", 0)
        remote_addr = request.remote_addr or ("0.0.0.0", 0)
        view = core.view()
        table = ctx.memo.table(view)
        key = ("hbone", local_addr[0], local_addr[1], remote_addr[0], request.authority, peer.uri)
        plan: _InboundPlan | None = table.get(key)
        if plan is None:
            plan = table[key] = _inbound_plan(ctx, view, local_addr, remote_addr[0], request.authority, peer.uri)
        src_addr = _addr(plan.src_ip_text, remote_addr[1])
        trace_id = hproto.trace_id_of(request.headers.get("traceparent")) if tracing else ""
        if plan.reject is not None:
            if trace_id:
                tel.access.failed(src_addr=src_addr, dst_addr=plan.dst_addr, direction="inbound",
                                  error=plan.reject.reason, trace_id=trace_id)
            else:
                tel.access.failed(src_addr=src_addr, dst_addr=plan.dst_addr, direction="inbound",
                                  error=plan.reject.reason)
            return plan.reject
        target, local, labels, authz, verdict = plan.target, plan.local, plan.labels, plan.authz, plan.verdict
        assert target is not None and local is not None and labels is not None
        assert authz is not None and verdict is not None
        src_ip = plan.src_ip
        record = ConnectionRecord(
            direction="inbound", src_addr=src_addr, src_identity=peer.uri,
            src_workload=plan.src_workload, src_namespace=plan.src_namespace,
            dst_addr=plan.dst_addr, dst_hbone_addr=plan.target_text, dst_service=plan.dst_service,
            dst_workload=local.name, dst_namespace=local.namespace, dst_identity=local.identity,
        )
        if trace_id:
            record.trace_id, record.authz = trace_id, verdict.reason
        if verdict.denied:
            labels = labels.with_flags("DENY")
            tel.opened(labels)
            record.error = verdict.error
            tel.finish(record, labels, CopyStats())
            return Reject(401, verdict.error)
        # admission: limits are decided before the app is dialled
        src_key = plan.src_ip_text
        refused = admission.admit(src_key, loop.time())
        if refused is not None:
            tel.metrics.inbound_refused("hbone", refused)
            _log_refusal(tel, admission, refused, src_key, src_addr, plan.dst_addr, loop.time())
            return Reject(503, _refusal_text(refused, src_key))
        if stream_gone(CURRENT_STREAM.get()):  # reset before we got here: never dial for it
            admission.release(src_key)
            admission.early_reset(src_key, loop.time())
            return Reject(503, "the HBONE stream was reset before it was admitted")
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                admission.release(src_key)

        # 4. upstream
        tel.opened(labels)
        try:
            upstream = await _connect_app(ctx, src_ip, target)
        except UpstreamError as exc:
            release()
            labels = labels.with_flags("CONNECT")
            record.error = exc.message
            tel.finish(record, labels, CopyStats())
            return Reject(503, exc.message)
        except asyncio.CancelledError:  # drained while connecting: still log and count it
            release()
            record.error = str(DrainCut())
            tel.finish(record, labels, CopyStats())
            raise
        except BaseException:  # (the server answers 503 for a handler error): the slot is not kept
            release()
            raise
        entry_args = {
            "workload": plan.workload, "pod_uid": ctx.scope.uid, "direction": "inbound",
            "local": record.dst_hbone_addr, "remote": src_addr, "remote_target": record.dst_hbone_addr,
            "protocol": "HBONE",
        }

        def orphaned() -> None:
            admission.early_reset(src_key, loop.time())  # per source, across its connections
            record.error = "the HBONE stream ended before the tunnel opened"
            tel.finish(record, labels, CopyStats())

        guard = _UpstreamGuard(upstream, orphaned, release)

        async def serve(stream: HboneStream) -> None:
            guard.started = True
            await _deliver(ctx, HboneEnd(stream, src_addr), src_ip, target, record, labels, entry_args, upstream,
                           authz, local.uid)

        # 5. the server answers 200 and calls `serve` (and closes `guard` in every case)
        return Accept(upstream=guard, serve=serve)

    return handle


async def serve_plaintext(ctx: PodContext, client: socket.socket) -> None:
    """15006: a non-mesh client reached an enrolled pod; authorize without identity and deliver."""
    core, tel = ctx.core, ctx.core.telemetry
    peer = client.getpeername()
    src_ip = ip_address(peer[0])
    src_addr = _addr(src_ip, peer[1])
    try:
        ip_s, port = so.original_dst(client)
    except so.SocketOptionError as exc:
        tel.access.failed(src_addr=src_addr, dst_addr="", direction="inbound", error=exc.message)
        reset_socket(client)
        return
    target = route.SocketAddr(ip_address(ip_s), port)
    view = core.view()
    local = ctx.scope.local_workload(view, target.ip)
    reason = ""
    local_addr = client.getsockname()
    if port in ctx.settings.ports.proxy_ports or (ip_s, port) == (local_addr[0], local_addr[1]):
        reason = f"connection to proxy port {port} refused (self-call/loop)"
    elif local is None:
        reason = f"no workload known for address {target.ip}"
    if reason or local is None:
        tel.access.failed(src_addr=src_addr, dst_addr=str(target), direction="inbound", error=reason)
        reset_socket(client)
        return
    admission, src_key = core.admission, str(src_ip)
    now = asyncio.get_running_loop().time()
    refused = admission.admit(src_key, now)
    if refused is not None:  # decided first: a flood costs one dict lookup per connection, never a dial
        tel.metrics.inbound_refused("tcp", refused)
        _log_refusal(tel, admission, refused, src_key, src_addr, str(target), now)
        reset_socket(client)
        return
    try:
        await _plaintext_admitted(ctx, client, view, local, src_ip, src_addr, target)
    finally:
        admission.release(src_key)


async def _plaintext_admitted(
    ctx: PodContext, client: socket.socket, view: StateView, local: Workload, src_ip: IPAddress, src_addr: str,
    target: route.SocketAddr,
) -> None:
    tel, port = ctx.core.telemetry, target.port
    src_wl = view.workload_by_ip(src_ip)
    record = ConnectionRecord(
        direction="inbound", src_addr=src_addr,
        src_workload=src_wl.name if src_wl else "", src_namespace=src_wl.namespace if src_wl else "",
        dst_addr=str(target), dst_service=_service_for(view, local, port),
        dst_workload=local.name, dst_namespace=local.namespace, dst_identity=local.identity,
    )
    svc = view.service_by_hostname(local.namespace, record.dst_service) if record.dst_service else None
    labels = labels_for("destination", src_wl, "", local, local.identity, svc, False)
    tel.opened(labels)
    authz = ConnectionInfo(src_ip, target.ip, port, None)
    verdict = evaluate(authz, local, view)
    if verdict.denied:
        labels = labels.with_flags("DENY")
        record.error = verdict.error
        tel.finish(record, labels, CopyStats())
        reset_socket(client)
        return
    try:
        upstream = await _connect_app(ctx, src_ip, target)
    except UpstreamError as exc:
        record.error = exc.message
        tel.finish(record, labels.with_flags("CONNECT"), CopyStats())
        reset_socket(client)
        return
    entry_args = {
        "workload": f"{local.namespace}/{local.name}", "pod_uid": ctx.scope.uid, "direction": "inbound",
        "local": str(target), "remote": src_addr, "remote_target": str(target), "protocol": "TCP",
    }
    await _deliver(ctx, SocketEnd(client, src_addr), src_ip, target, record, labels, entry_args, upstream,
                   authz, local.uid)
