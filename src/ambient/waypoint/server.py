"""The waypoint proxy: HBONE in, L7 policy and routing, HBONE out (protocols.md section 8).

`Waypoint.handle_connect` is the CONNECT handler given to `ambient.hbone.server.HboneServer` (15008). For
each tunnel it takes the authority (service VIP:port, or pod ip:port for a workload waypoint) as the
destination and:
- HTTP ports (appProtocol unset/HTTP/HTTP2/gRPC): answers 200 and serves HTTP on the inner stream
  (HTTP/2 when the client's first bytes are the HTTP/2 preface, HTTP/1.1 otherwise). Per request:
  normalise the path, RequestAuthentication (an invalid JWT -> 401 with Envoy's reason; none -> no
  request principal), L7 AuthorizationPolicy (deny -> 403 `RBAC: access denied`), routing by HTTPRoute /
  GRPCRoute / VirtualService (`ambient.l7`: a redirect is answered here; header modifiers and rewrites shape
  the forwarded request and the response; mirrors get a copy; a VirtualService fault delays (DI) or aborts
  (FI); a rule with an unsupported feature answers 500; a cross-namespace backend needs a ReferenceGrant),
  the DestinationRule of the backend (subset labels, connection-pool circuit breaker -> 503 UO, outlier
  ejection, load balancer), pick an
  endpoint of the chosen backend Service, take an idle keep-alive connection to that endpoint from the
  `UpstreamPool` or open an HBONE tunnel to `endpoint:15008` with authority `endpoint:targetPort`
  presenting the waypoint's own certificate (plain TCP for a non-mesh endpoint), forward the request and
  stream the response back; retries and timeouts per the route. An HTTP/1.1 upgrade (WebSocket) goes the
  same way up to the endpoint pick, then on a new upstream connection of its own; a 101 answer splices the
  two connections until both sides ended (`upgrade`), with no retry and the route's timeouts bounding only
  the wait for the answer.
- TCP ports (appProtocol tcp/tls): L4 only. Policies are evaluated without HTTP attributes (HTTP-only
  rules never allow and always deny, see l7authz); denied -> CONNECT answered 401; else bytes are piped
  to an endpoint tunnel.
- Unknown destination or port -> 503 (fail closed, nothing is forwarded blind). A destination whose
  Service (or, for pod-addressed traffic, Workload) does not name this waypoint -> 400: the waypoint is not
  an open relay that lends its identity to anyone.

Invariants: the caller's identity comes only from the HBONE peer certificate; the source workload
named in logs is the one at the Forwarded address only when its identity equals the certificate's. An
upstream connection is pooled per (endpoint workload, ip, port, protocol), tagged with how it was opened
(DestinationRule TLS origination and its credential: reused only by requests that would open it the same
way), only after an exchange that completed cleanly (never with an unfinished response, after
`Connection: close`, an error, a timeout, a cancellation or an upgrade request), so a reused connection
always carries the waypoint's own identity (or the current TLS origination credential) to the same endpoint
that the per-request routing and endpoint pick chose. Config and state are read once per
request from the injected sources (no locks: they publish immutable snapshots). Randomness only from the
injected RNG.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import re
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from ambient.hbone.client import HboneClient
from ambient.hbone.errors import HboneError, HboneStatusError
from ambient.hbone.pipe import ByteStream, CopyResult, TcpByteStream
from ambient.hbone.protocol import ConnectRequest, child_traceparent, format_authority, trace_id_of
from ambient.hbone.server import Accept, CertProvider, Decision, Reject
from ambient.hbone.stream import HboneStream
from ambient.identity.certs import CertBundle
from ambient.l7.filters import MirrorFilter
from ambient.l7.gateway_routes import pick_tcp_backend, reference_permitted
from ambient.l7.request_auth import AuthResult, RequestAuthentication, TokenCache, authenticate
from ambient.l7.request_auth import applicable as applicable_auth
from ambient.l7.routing import (
    BackendRef,
    Fault,
    NoRoute,
    Redirect,
    RequestInfo,
    RetryPolicy,
    RouteDecision,
    normalize_path,
    route_request,
    routes_for,
)
from ambient.l7.traffic_policy import DEFAULT as DEFAULT_POLICY
from ambient.l7.traffic_policy import OriginationTls, TrafficPolicy
from ambient.l7.virtual_service import destination_rule_for
from ambient.state.model import (
    AppProtocol,
    GatewayAddress,
    LoadBalancing,
    NamespacedHostname,
    Port,
    Service,
    Workload,
)
from ambient.state.route import pick_endpoint, resolve_target_port
from ambient.state.store import StateView
from ambient.tls.credentials import ClientCredential
from ambient.tls.verify import PeerIdentity
from ambient.waypoint import retry as retry_plan
from ambient.waypoint import upgrade
from ambient.waypoint.apply_filters import apply_filters
from ambient.waypoint.breakers import Balancer, Breakers, OutlierDetector
from ambient.waypoint.config import L7Config, L7Source
from ambient.waypoint.errors import HttpProtocolError, UpstreamError
from ambient.waypoint.h2client import Http2Upstream
from ambient.waypoint.http1 import Http1Upstream, serve_http1
from ambient.waypoint.http2 import serve_http2
from ambient.waypoint.jwks import JwksCache, JwksSettings
from ambient.waypoint.l7authz import L7Policy, RequestAttrs, Target, applicable, evaluate
from ambient.waypoint.messages import H2_PREFACE, BytesBody, Limits, Request, ResponseWriter, respond_text
from ambient.waypoint.origination import Credentials, open_tls
from ambient.waypoint.pool import UpstreamPool
from ambient.waypoint.resolve import is_hostname_only, pick_hostname_endpoint, resolve_host
from ambient.waypoint.telemetry import RequestRecord, WaypointMetrics, emit

log = logging.getLogger(__name__)
_VIEW_CACHE_LIMIT = 4096
RBAC_DENIED = "RBAC: access denied"
_FORWARDED_FOR = re.compile(r'for="?\[?([0-9a-fA-F.:]+?)\]?:(\d+)"?')


@dataclass(frozen=True)
class WaypointSettings:
    gateway_name: str = "waypoint"
    gateway_namespace: str = "default"
    cluster_domain: str = "cluster.local"
    hbone_port: int = 15008  # where endpoints' node proxies listen for HBONE
    limits: Limits = field(default_factory=Limits)
    max_retry_body: int = 64 * 1024  # request bodies up to this size are buffered so retries can replay them
    # Serve only destinations whose Service/Workload names this waypoint: otherwise any client could use
    # the waypoint's identity to reach workloads it is not meant to front (a confused deputy).
    require_binding: bool = True
    jwks: JwksSettings = field(default_factory=JwksSettings)  # RequestAuthentication jwksUri fetching
    mirror_timeout: float = 10.0  # seconds a mirrored request may take (its answer is ignored)
    resolve_timeout: float = 5.0  # seconds to resolve a hostname endpoint (ServiceEntry resolution DNS)


@dataclass
class _Conn:
    """One downstream tunnel: where it goes and who sent it."""

    peer: PeerIdentity
    request: ConnectRequest
    port: int
    service: Service | None
    workload: Workload | None  # the destination pod (workload-addressed traffic)
    source: Workload | None
    source_addr: str
    tasks: asyncio.TaskGroup | None = None  # owns the connection's mirrored requests (while it is served)
    # what the connection's requests share for one L7 config (see `Waypoint._plan`): the config it was made
    # for (compared by identity: a published config is never mutated) and the plan
    plan_of: L7Config | None = None
    plan: _Plan | None = None

    @functools.cached_property
    def trace_id(self) -> str:  # the CONNECT's headers never change: read once
        return trace_id_of(self.request.headers.get("traceparent"))

    @functools.cached_property
    def record_fields(self) -> dict[str, Any]:
        """The RequestRecord fields every request of this connection starts with (see `Waypoint._record`)."""
        src, svc = self.source, self.service
        return {
            "src_addr": self.source_addr,
            "src_workload": src.name if src else "",
            "src_workload_name": (src.workload_name or src.name) if src else "",
            "src_namespace": src.namespace if src else "",
            "src_identity": self.peer.uri,
            "src_canonical": src.canonical_name if src else "",
            "dst_service": svc.hostname if svc else "",
            "dst_service_name": svc.name if svc else "",
            "dst_service_namespace": svc.namespace if svc else "",
            "trace_id": self.trace_id,
        }


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every request of one connection shares under one L7 config (pure functions of the config and the
    connection's destination): the AuthorizationPolicies that apply, and the routing decision when no route
    attaches to the destination (then it is the same default decision for every request)."""

    policies: tuple[L7Policy, ...]
    default_route: RouteDecision | None


# where a request goes: the backend Service, its port, the labels of a DestinationRule subset (or None), and
# the DestinationRule traffic policy for them
_Backend = tuple[Service, int, Mapping[str, str] | None, TrafficPolicy]
# how an upstream connection outside the mesh is opened: the DestinationRule's TLS origination and the
# credential its credentialName read (also the tag of pooled connections, see waypoint.pool)
_Origination = tuple[OriginationTls, ClientCredential | None]


@dataclass
class _Endpoint:
    workload: Workload
    ip: str  # the address dialled, or the hostname of a hostname endpoint (resolved when dialled)
    port: int
    by_name: bool = False  # a ServiceEntry resolution-DNS endpoint: `ip` is a hostname (see waypoint.resolve)


class Waypoint:
    def __init__(
        self,
        *,
        certs: CertProvider | CertBundle,
        state: Callable[[], StateView],
        l7: L7Source,
        client: HboneClient,
        settings: WaypointSettings | None = None,
        rng: random.Random | None = None,
        metrics: WaypointMetrics | None = None,
    ) -> None:
        if isinstance(certs, CertBundle):
            bundle = certs
            self._certs: CertProvider = lambda: bundle
        else:
            self._certs = certs
        self._state = state
        self._l7 = l7
        self._client = client
        self.settings = settings or WaypointSettings()
        self._rng = rng or random.Random()
        self.metrics = metrics
        self._pool = UpstreamPool()
        self._credentials = Credentials(self.settings.gateway_namespace)  # DestinationRule tls.credentialName
        self._jwks = JwksCache(self.settings.jwks)
        self._verified: TokenCache = {}  # verified JWTs (see request_auth.verify)
        self._breakers = Breakers()
        self._balancer = Balancer()
        # requests served per pooled upstream connection (DestinationRule maxRequestsPerConnection)
        self._uses: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._cached_view: StateView | None = None  # the snapshot `_view_cache` answers for (see `_by_view`)
        self._view_cache: dict[Any, Any] = {}

    # -- CONNECT ------------------------------------------------------------------------------------------
    async def handle_connect(self, request: ConnectRequest, peer: PeerIdentity) -> Decision:
        view = self._state()
        if not request.target_ip:  # `<hostname>:<port>`: clients address a waypoint by VIP or workload IP
            return Reject(400, f"CONNECT authority {request.authority} is not an address: a waypoint is "
                          "addressed by service VIP or workload IP")
        ip = ipaddress.ip_address(request.target_ip)
        service = view.service_by_vip(ip)
        workload = None if service is not None else view.workload_by_ip(ip)
        if service is None and workload is None:
            log.warning("waypoint: CONNECT %s from %s: unknown destination", request.authority, peer)
            return Reject(503, f"unknown destination {request.authority}")
        bound_to = service.waypoint if service is not None else workload.waypoint if workload is not None else None
        if self.settings.require_binding and not self._is_me(bound_to, view):
            what = f"service {service.hostname}" if service is not None else f"workload {request.target_ip}"
            log.warning("waypoint: CONNECT %s from %s refused: %s does not use this waypoint", request.authority,
                        peer, what)
            return Reject(400, f"{what} is not bound to waypoint {self.settings.gateway_namespace}/"
                          f"{self.settings.gateway_name}")
        port = service.port(request.target_port) if service is not None else None
        if service is not None and port is None:
            return Reject(503, f"service {service.hostname} has no port {request.target_port}")
        source_addr, source = self._source(request, peer, view)
        conn = _Conn(peer, request, request.target_port, service, workload, source, source_addr)
        if port is not None and port.app_protocol in (AppProtocol.TCP, AppProtocol.TLS):
            return await self._l4(conn, view)
        return Accept(serve=lambda stream: self._serve(stream, conn))

    def _is_me(self, gw: GatewayAddress | None, view: StateView) -> bool:
        """Is `gw` (a Service's or Workload's waypoint) this waypoint? By its Service hostname, or by an
        address that is its Service's VIP."""
        if gw is None:
            return False
        s = self.settings
        dest = gw.destination
        if isinstance(dest, NamespacedHostname):
            return dest.namespace == s.gateway_namespace and dest.hostname.split(".")[0] == s.gateway_name
        svc = view.service_by_vip(dest.address, dest.network)
        return svc is not None and (svc.name, svc.namespace) == (s.gateway_name, s.gateway_namespace)

    @staticmethod
    def _source(request: ConnectRequest, peer: PeerIdentity, view: StateView) -> tuple[str, Workload | None]:
        m = _FORWARDED_FOR.search(request.forwarded or "")
        if not m:
            return "", None
        try:
            ip = ipaddress.ip_address(m.group(1))
        except ValueError:
            return "", None
        wl = view.workload_by_ip(ip)
        # the Forwarded header only names the source; it is believed only when the certificate agrees
        if wl is not None and wl.identity != peer.uri:
            wl = None
        return format_authority(str(ip), int(m.group(2))), wl

    # -- L4 passthrough ------------------------------------------------------------------------------------
    async def _l4(self, conn: _Conn, view: StateView) -> Decision:
        record = self._record(conn)
        record.protocol = "tcp"
        attrs = RequestAttrs(principal=conn.peer.uri, port=conn.port, source_ip=conn.source_addr.rpartition(":")[0],
                             http=False)
        decision = evaluate(applicable(self._l7.current.policies, self._target(conn)), attrs)
        if decision.audit:
            record.audit = ",".join(decision.audit)
        if decision.denied:
            record.flags, record.details, record.error = "RBAC", decision.details, decision.reason
            emit(record, self.metrics)
            return Reject(401, decision.reason)
        try:
            assert conn.service is not None
            svc, port = conn.service, conn.port
            tcp_routes = self._l7.current.tcp_routes
            picked = pick_tcp_backend(tcp_routes, svc.name, svc.namespace, port) if tcp_routes else None
            if picked is not None:  # a TCPRoute attached to the Service: its weighted backend
                tcp_route, chosen = picked
                record.route = tcp_route.key
                if not reference_permitted(self._l7.current.reference_grants, "TCPRoute", tcp_route.namespace,
                                           chosen.kind,
                                           chosen.name, chosen.namespace):
                    raise UpstreamError(f"TCPRoute backend {chosen.namespace}/{chosen.name}: no ReferenceGrant "
                                        f"in namespace {chosen.namespace} allows it", status=503, flags="NR")
                target = self._backend_service(view, chosen.name, chosen.namespace)
                if target is None:
                    raise UpstreamError(f"TCPRoute backend {chosen.namespace}/{chosen.name or '(none)'} not found",
                                        status=503, flags="NR")
                assert chosen.port is not None
                svc, port = target, chosen.port
            _, upstream = await self._open_service(conn, svc, port, view, record)
        except UpstreamError as exc:
            record.flags, record.error = exc.flags, exc.message
            emit(record, self.metrics)
            return Reject(503, exc.message)

        def done(result: CopyResult | None, error: BaseException | None) -> None:
            record.error = str(error) if error else ""
            emit(record, self.metrics)

        return Accept(upstream=upstream, on_done=done)

    # -- HTTP ------------------------------------------------------------------------------------------------
    async def _serve(self, stream: HboneStream, conn: _Conn) -> None:
        limits = self.settings.limits
        try:
            # bounded wait for the first bytes (HTTP/1.1 then times its own heads with header_timeout)
            async with asyncio.timeout(limits.idle_timeout):
                first = await stream.read(len(H2_PREFACE))
                while first and len(first) < len(H2_PREFACE) and H2_PREFACE.startswith(first):
                    more = await stream.read(len(H2_PREFACE) - len(first))
                    if not more:
                        break
                    first += more
        except TimeoutError:
            return
        if not first:
            return

        handler = functools.partial(self.handle_request, conn)  # (not a wrapper: one coroutine less per request)

        error: Exception | None = None
        # mirrored requests are the connection's tasks: it ends once they did (each bounded by mirror_timeout)
        async with asyncio.TaskGroup() as tasks:
            conn.tasks = tasks
            try:
                if first.startswith(H2_PREFACE):
                    await serve_http2(stream, handler, limits, first)
                else:
                    await serve_http1(stream, handler, limits, first)
            except Exception as exc:  # raised as itself below, not wrapped in the group's ExceptionGroup
                error = exc
            finally:
                conn.tasks = None
        if error is not None:
            raise error

    def _target(self, conn: _Conn) -> Target:
        s = self.settings
        svc = conn.service
        return Target(svc.name if svc else "", svc.namespace if svc else "", s.gateway_name, s.gateway_namespace)

    def _record(self, conn: _Conn) -> RequestRecord:
        # the source, and the Service the client addressed, known before policy: a denied request still names
        # it (a route to another backend Service replaces it, see `_pick`)
        return RequestRecord(**conn.record_fields)

    def _plan(self, l7: L7Config, conn: _Conn) -> _Plan:
        """The connection's `_Plan` for config `l7`, computed once per connection and config: a new config is a
        new object (never mutated), so a change is seen by the next request."""
        if conn.plan_of is l7 and conn.plan is not None:
            return conn.plan
        policies = tuple(applicable(l7.policies, self._target(conn)))
        default_route = None
        svc = conn.service
        if svc is not None and not routes_for(l7.routes, svc.name, svc.namespace, conn.port):
            # route_request's answer when no route attaches: the same immutable decision for every request
            default_route = RouteDecision(BackendRef(svc.name, svc.namespace, conn.port))
        plan = conn.plan = _Plan(policies, default_route)
        conn.plan_of = l7
        return plan

    async def handle_request(self, conn: _Conn, req: Request, writer: ResponseWriter) -> None:
        """One HTTP request on a downstream tunnel (exposed for tests that drive it without sockets)."""
        record = self._record(conn)
        record.method, record.protocol, record.grpc = req.method, req.protocol, req.is_grpc
        raw_path, _, query = req.target.partition("?")
        record.path = raw_path[:256]
        try:
            await self._handle(conn, req, writer, record, raw_path, query)
        except HttpProtocolError as exc:
            record.error, record.flags = record.error or exc.message, record.flags or "DC"
            raise
        except asyncio.CancelledError:
            record.flags, record.error = "DC", "downstream reset"
            raise
        finally:
            emit(record, self.metrics)

    async def _local(self, writer: ResponseWriter, record: RequestRecord, status: int, text: str, flags: str) -> None:
        record.status, record.flags = status, flags
        if status >= 500:
            record.error = text
        await respond_text(writer, status, text + "\n" if not text.endswith("\n") else text)

    async def _handle(
        self, conn: _Conn, req: Request, writer: ResponseWriter, record: RequestRecord, raw_path: str, query: str
    ) -> None:
        path = normalize_path(raw_path) if req.target != "*" else "*"
        if path is None:
            await self._local(writer, record, 400, "bad request: invalid path", "-")
            return
        record.path = path[:256]
        record.request_id = _envoy_request_headers(req, self._rng)[:128]
        l7 = self._l7.current
        plan = self._plan(l7, conn)
        # the lower-cased header map, built only when authentication, policy or routing looks at it
        headers: Mapping[str, str] | None = None
        request_principal = ""
        claims: Mapping[str, Any] = {}
        if l7.request_auths:
            headers = req.header_map()
            auth = await self._authenticate(conn, l7.request_auths, headers, query)
            if auth is not None:
                if auth.failure:
                    log.info("waypoint: %s %s from %s: %s", req.method, path, conn.peer, auth.failure)
                    await self._local(writer, record, 401, auth.failure, "-")
                    return
                request_principal, claims = auth.principal, auth.claims
                if auth.remove_headers or auth.set_headers:
                    drop = auth.remove_headers | {h for h, _ in auth.set_headers}
                    req.headers = [(k, v) for k, v in req.headers if k not in drop] + list(auth.set_headers)
                    headers = req.header_map()
        if plan.policies:  # (with none applicable, evaluate allows without audit: nothing to do)
            if headers is None:
                headers = req.header_map()
            attrs = RequestAttrs(principal=conn.peer.uri, port=conn.port, method=req.method, path=path,
                                 host=req.authority, headers=headers, source_ip=conn.source_addr.rpartition(":")[0],
                                 request_principal=request_principal, auth_claims=claims)
            decision = evaluate(plan.policies, attrs)
            if decision.audit:
                record.audit = ",".join(decision.audit)
            if decision.denied:
                log.info("waypoint: %s %s from %s denied: %s", req.method, path, conn.peer, decision.reason)
                record.details = decision.details
                await self._local(writer, record, 403, RBAC_DENIED, "RBAC")
                return
        view = self._state()
        target = path + (f"?{query}" if query else "")
        fwd = Request(req.method, target, req.authority, req.headers, req.body, req.protocol, req.scheme,
                      req.content_length, req.has_body, req.upgrade)
        if conn.service is None:  # workload-addressed: straight to that pod
            assert conn.workload is not None
            await self._forward(conn, fwd, writer, record, view, None, None, None)
            return
        routed = plan.default_route or route_request(
            l7.routes, conn.service.name, conn.service.namespace, conn.port,
            RequestInfo(req.method, path, req.header_map() if headers is None else headers, query), self._rng)
        if not isinstance(routed, RouteDecision):
            if isinstance(routed, NoRoute):
                await self._local(writer, record, routed.status, routed.reason, "NR")
            else:
                await self._redirect(req, writer, record, routed)
            return
        route = routed.route
        if route is not None:
            record.route = route.key
            rule = route.rules[routed.rule_index]
            filters = rule.filters
            if filters is not None:  # None for a rule without filters: the only cost they add to it
                fwd, writer = apply_filters(filters, fwd, writer, path, query)
                if filters.mirrors:
                    await self._mirror(conn, fwd, filters.mirrors, view)
            if rule.fault is not None and await self._fault(rule.fault, writer, record):
                return
        if route is not None and not route.ordered and routed.backend.namespace != route.namespace and \
                not reference_permitted(l7.reference_grants, route.kind, route.namespace, routed.backend.kind,
                                        routed.backend.name, routed.backend.namespace):
            await self._local(writer, record, 500, f"{route.kind} {route.key} may not send to Service "
                              f"{routed.backend.namespace}/{routed.backend.name}: no ReferenceGrant in namespace "
                              f"{routed.backend.namespace} allows it", "NR")
            return
        backend = self._backend_service(view, routed.backend.name, routed.backend.namespace)
        if backend is None:
            await self._local(writer, record, 500, f"backend service {routed.backend.namespace}/"
                              f"{routed.backend.name} not found", "NR")
            return
        labels = None
        subset = routed.backend.subset
        drule = destination_rule_for(l7.destination_rules, backend.name, backend.namespace, backend.hostname) \
            if l7.destination_rules else None
        if subset is not None:
            labels = drule.subsets.get(subset) if drule is not None else None
            if labels is None:  # Envoy: the subset's cluster does not exist
                await self._local(writer, record, 503, f"no DestinationRule defines subset {subset!r} "
                                  f"of {backend.namespace}/{backend.name}", "NC")
                return
        assert routed.backend.port is not None
        policy = DEFAULT_POLICY if drule is None else drule.policy(subset, routed.backend.port)
        await self._forward(conn, fwd, writer, record, view, (backend, routed.backend.port, labels, policy),
                            routed.request_timeout, routed)

    async def _mirror(self, conn: _Conn, fwd: Request, mirrors: tuple[MirrorFilter, ...], view: StateView) -> None:
        """Send a copy of `fwd` to each mirror (its percentage of requests), answer ignored, as Envoy's request
        mirroring: Host gets a `-shadow` suffix; a body is mirrored when it fits `max_retry_body` (it is then
        buffered for the main request too), else the request is not mirrored."""
        chosen = [m for m in mirrors if m.percent >= 100 or self._rng.random() * 100 < m.percent]
        if not chosen or conn.tasks is None:
            return
        data = b""
        if fwd.has_body:
            if fwd.content_length is None or fwd.content_length > self.settings.max_retry_body:
                log.debug("waypoint: %s %s not mirrored: body too large or of unknown length", fwd.method, fwd.target)
                return
            data = await _read_all(fwd, self.settings.max_retry_body)
            fwd.body = BytesBody(data)
        host, sep, port = fwd.authority.rpartition(":") if fwd.authority.count(":") == 1 else (fwd.authority, "", "")
        shadow_authority = f"{host}-shadow{sep}{port}"
        l7 = self._l7.current
        for m in chosen:
            svc = self._backend_service(view, m.name, m.namespace)
            if svc is None:
                log.debug("waypoint: mirror service %s/%s not found", m.namespace, m.name)
                continue
            labels = None
            if m.subset is not None:
                drule = destination_rule_for(l7.destination_rules, svc.name, svc.namespace)
                labels = drule.subsets.get(m.subset) if drule is not None else None
                if labels is None:
                    continue
            shadow = Request(fwd.method, fwd.target, shadow_authority, list(fwd.headers), BytesBody(data),
                             fwd.protocol, fwd.scheme, len(data) if data else None, bool(data))
            backend: _Backend = (svc, m.port or conn.port, labels, DEFAULT_POLICY)
            conn.tasks.create_task(self._shadow(conn, shadow, view, backend))

    async def _shadow(self, conn: _Conn, shadow: Request, view: StateView, backend: _Backend) -> None:
        try:
            async with asyncio.timeout(self.settings.mirror_timeout):
                await self._attempt(conn, shadow, _DiscardWriter(), RequestRecord(), view, backend, ())
        except Exception as exc:  # a mirror never affects the request it copies (nor its connection)
            log.debug("waypoint: mirrored %s %s failed: %s", shadow.method, shadow.target, exc)

    async def _fault(self, fault: Fault, writer: ResponseWriter, record: RequestRecord) -> bool:
        """Istio's fault injection (Envoy's fault filter): the delay, then the abort. True when aborted (the
        answer is written, response flag FI); a delayed request carries flag DI."""
        delay, abort = fault.decide(self._rng)
        if delay:
            record.flags = "DI"
            await asyncio.sleep(delay)
        if abort:
            await self._local(writer, record, abort, "fault filter abort", "FI")
            return True
        return False

    async def _authenticate(self, conn: _Conn, auths: tuple[RequestAuthentication, ...], headers: Mapping[str, str],
                            query: str) -> AuthResult | None:
        """RequestAuthentication for this request (None when none applies to its destination)."""
        s = self.settings
        svc = conn.service
        target = (svc.name, svc.namespace) if svc else None
        rules = applicable_auth(auths, target, (s.gateway_name, s.gateway_namespace))
        if not rules:
            return None
        await self._jwks.ensure(r for p in rules for r in p.rules)
        return authenticate(rules, headers, query, self._jwks.keys, time.time(), self._verified)

    @staticmethod
    async def _redirect(req: Request, writer: ResponseWriter, record: RequestRecord, r: Redirect) -> None:
        """A RequestRedirect rule: the waypoint answers itself (empty body), nothing reaches a backend."""
        record.route, record.status = r.route.key, r.status
        headers = [("location", r.location(req.authority, req.scheme)), ("content-length", "0")]
        if r.response_headers is not None:
            headers = r.response_headers.apply(headers)
        await writer.start(r.status, headers)
        await writer.end()

    def _backend_service(self, view: StateView, name: str, namespace: str) -> Service | None:
        cache = self._by_view(view)
        key = ("service", name, namespace)
        if key in cache:
            return cache[key]  # type: ignore[no-any-return]
        hostname = f"{name}.{namespace}.svc.{self.settings.cluster_domain}"
        svc = view.service_by_hostname(namespace, hostname)
        if svc is None:
            svc = next((s for s in view.services() if s.name == name and s.namespace == namespace), None)
        cache[key] = svc
        return svc

    async def _forward(
        self,
        conn: _Conn,
        req: Request,
        writer: ResponseWriter,
        record: RequestRecord,
        view: StateView,
        backend: _Backend | None,
        request_timeout: float | None,
        routed: Any,
    ) -> None:
        retry = routed.retry if routed is not None else None
        backend_timeout = routed.backend_timeout if routed is not None else None
        if req.upgrade is not None and hasattr(writer, "upgrade"):  # else forwarded as a plain request
            if not upgrade.allowed(req.upgrade):
                await self._local(writer, record, 403, f"upgrade to {req.upgrade!r} is not allowed "
                                  f"(allowed: {', '.join(sorted(upgrade.ALLOWED_UPGRADES))})", "UPE")
                return
            await self._forward_upgrade(conn, req, writer, record, view, backend, request_timeout, backend_timeout)
            return
        breaker = None
        if backend is not None and backend[3].pool.limited:
            breaker = self._breakers.breaker((backend[0].key, backend[1], _subset_key(backend[2])), backend[3].pool)
        if breaker is not None:
            try:
                await breaker.acquire()
            except UpstreamError as exc:  # DestinationRule connectionPool overflow
                await self._local(writer, record, exc.status, exc.message, exc.flags)
                return
        try:
            await self._attempts(conn, req, writer, record, view, backend, request_timeout, retry, backend_timeout)
        finally:
            if breaker is not None:
                breaker.release()

    async def _attempts(
        self,
        conn: _Conn,
        req: Request,
        writer: ResponseWriter,
        record: RequestRecord,
        view: StateView,
        backend: _Backend | None,
        request_timeout: float | None,
        retry: RetryPolicy | None,
        backend_timeout: float | None,
    ) -> None:
        """The request's attempts (retries per the route, decided by `retry`) within its timeouts, answering
        errors locally."""
        planned = retry_plan.plan(retry, has_body=req.has_body, content_length=req.content_length,
                                  max_body=self.settings.max_retry_body)
        if planned.buffer_body:
            req.body = BytesBody(await _read_all(req, self.settings.max_retry_body))
        try:
            if request_timeout:
                async with asyncio.timeout(request_timeout):
                    await self._attempt_loop(conn, req, writer, record, view, backend, planned.attempts, retry,
                                             backend_timeout)
            else:  # no route timeout: no timeout scope to pay for
                await self._attempt_loop(conn, req, writer, record, view, backend, planned.attempts, retry,
                                         backend_timeout)
        except TimeoutError:
            if writer.started:
                raise HttpProtocolError("request timed out while streaming the response") from None
            await self._local(writer, record, 504, "upstream request timeout", "UT")
        except UpstreamError as exc:
            if writer.started:
                raise HttpProtocolError(exc.message) from None
            await self._local(writer, record, exc.status, exc.message, exc.flags)

    async def _attempt_loop(
        self,
        conn: _Conn,
        req: Request,
        writer: ResponseWriter,
        record: RequestRecord,
        view: StateView,
        backend: _Backend | None,
        attempts: int,
        retry: RetryPolicy | None,
        backend_timeout: float | None,
    ) -> None:
        """`_attempts`' attempts, each within `backend_timeout` (a TimeoutError or UpstreamError that ends them
        is raised)."""
        body_bytes = req.body.data if isinstance(req.body, BytesBody) else None
        for attempt in range(attempts):
            last = attempt == attempts - 1
            if body_bytes is not None:
                req.body = BytesBody(body_bytes)
            codes = retry_plan.refused_codes(retry, attempt, attempts)
            try:
                if backend_timeout:
                    async with asyncio.timeout(backend_timeout):
                        status = await self._attempt(conn, req, writer, record, view, backend, codes)
                else:
                    status = await self._attempt(conn, req, writer, record, view, backend, codes)
            except TimeoutError:
                step = retry_plan.after(retry_plan.Outcome.TIMED_OUT, started=writer.started, last=last)
                if step is retry_plan.Step.RAISE:
                    raise
            except UpstreamError as exc:
                step = retry_plan.after(retry_plan.Outcome.FAILED, started=writer.started, last=last)
                if step is retry_plan.Step.RAISE:
                    raise
                log.info("waypoint: attempt %d for %s failed (%s); retrying", attempt + 1, req.target,
                         exc.message)
            else:
                step = retry_plan.after(retry_plan.Outcome.ANSWERED, started=writer.started, last=last)
                if step is retry_plan.Step.DONE:
                    record.status = status
                    return
            if step is retry_plan.Step.RETRY_AFTER_BACKOFF and retry is not None:
                await asyncio.sleep(retry.backoff)

    async def _forward_upgrade(
        self,
        conn: _Conn,
        req: Request,
        writer: ResponseWriter,
        record: RequestRecord,
        view: StateView,
        backend: _Backend | None,
        request_timeout: float | None,
        backend_timeout: float | None,
    ) -> None:
        """An HTTP/1.1 upgrade request: one attempt (no retries) on a new upstream connection of its own; on
        101 the two connections are spliced. The route's timeouts bound only the wait for the answer: an
        established session lasts until both sides ended."""
        timeouts = [t for t in (request_timeout, backend_timeout) if t]
        upstream: Http1Upstream | None = None
        try:
            async with asyncio.timeout(min(timeouts) if timeouts else None):
                await req.body.read()  # the (empty) request's end: the client may now switch protocols
                if backend is None:
                    assert conn.workload is not None
                    ep = _Endpoint(conn.workload, conn.request.target_ip, conn.port)
                    svc = None
                else:
                    svc = backend[0]
                    ep = self._pick(conn, svc, backend[1], view, record, backend[2], None)
                self._describe(ep, svc, record)
                origination = self._origination(ep, backend[3] if backend is not None else None)
                upstream = Http1Upstream(await self._open(conn, ep, svc, record, origination), self.settings.limits)
                status, headers, up_buffered = await upstream.exchange_upgrade(req, req.authority, req.headers,
                                                                               writer)
            record.status = status
            if headers is None:  # an ordinary answer, already passed on
                return
            assert req.upgrade is not None
            switch = writer.upgrade  # type: ignore[attr-defined]  # (checked by the caller)
            down, down_buffered = await switch(upgrade.switching_headers(headers, req.upgrade))
            try:
                result = await upgrade.splice(down, down_buffered, upstream.stream, up_buffered)
            except (HboneError, OSError) as exc:  # either side broke: the session is over
                record.error, record.flags = f"upgraded connection failed: {exc}", "UC"
                return
            # as in ztunnel's log: sent = towards the backend
            record.bytes_sent, record.bytes_recv = result.a_to_b, result.b_to_a
        except TimeoutError:
            if writer.started:
                raise HttpProtocolError("request timed out while streaming the response") from None
            await self._local(writer, record, 504, "upstream request timeout", "UT")
        except UpstreamError as exc:
            if writer.started:
                raise HttpProtocolError(exc.message) from None
            await self._local(writer, record, exc.status, exc.message, exc.flags)
        finally:
            if upstream is not None:
                upstream.close()  # never pooled

    async def _attempt(
        self,
        conn: _Conn,
        req: Request,
        writer: ResponseWriter,
        record: RequestRecord,
        view: StateView,
        backend: _Backend | None,
        retry_codes: Collection[int],
    ) -> int:
        svc: Service | None = None
        if backend is None:
            assert conn.workload is not None
            ep = _Endpoint(conn.workload, conn.request.target_ip, conn.port)
        else:
            svc = backend[0]
            outlier = self._breakers.outlier((svc.key, backend[1], _subset_key(backend[2])), backend[3].outlier) \
                if backend[3].outlier is not None else None
            policy = backend[3]
            hash_key = None
            if policy.hash_header:
                hash_key = next((v for k, v in req.headers if k == policy.hash_header), "")
            elif policy.hash_source_ip:
                hash_key = conn.source_addr.rpartition(":")[0]
            ep = self._pick(conn, svc, backend[1], view, record, backend[2], outlier,
                            policy if policy.lb_simple or hash_key is not None else None, hash_key)
            if outlier is not None:
                return await self._attempt_watched(conn, req, writer, record, view, backend, retry_codes, ep, outlier)
        return await self._exchange(conn, req, writer, record, backend, retry_codes, ep)

    async def _attempt_watched(
        self,
        conn: _Conn,
        req: Request,
        writer: ResponseWriter,
        record: RequestRecord,
        view: StateView,
        backend: _Backend,
        retry_codes: Collection[int],
        ep: _Endpoint,
        outlier: OutlierDetector,
    ) -> int:
        """An attempt whose answer (503 for a connection failure) is reported to outlier detection."""
        host = f"{ep.workload.uid}/{ep.ip}:{ep.port}"
        status = 503  # a connection failure or reset counts as a 503 (Envoy's locally originated errors)
        try:
            status = await self._exchange(conn, req, writer, record, backend, retry_codes, ep)
            return status
        finally:
            if outlier.report(host, status, len(view.endpoints(backend[0].key))):
                log.warning("waypoint: outlier detection ejected %s of %s after answer %d", host,
                            backend[0].hostname, status)

    async def _exchange(
        self,
        conn: _Conn,
        req: Request,
        writer: ResponseWriter,
        record: RequestRecord,
        backend: _Backend | None,
        retry_codes: Collection[int],
        ep: _Endpoint,
    ) -> int:
        svc = backend[0] if backend is not None else None
        self._describe(ep, svc, record)
        if backend is None or backend[3].lb_simple not in ("LEAST_REQUEST", "LEAST_CONN"):
            return await self._exchange_on(conn, req, writer, record, svc, backend, retry_codes, ep)
        host = f"{ep.workload.uid}/{ep.ip}:{ep.port}"
        self._balancer.in_flight[host] += 1
        try:
            return await self._exchange_on(conn, req, writer, record, svc, backend, retry_codes, ep)
        finally:
            self._balancer.in_flight[host] -= 1
            if self._balancer.in_flight[host] <= 0:
                del self._balancer.in_flight[host]

    async def _exchange_on(
        self,
        conn: _Conn,
        req: Request,
        writer: ResponseWriter,
        record: RequestRecord,
        svc: Service | None,
        backend: _Backend | None,
        retry_codes: Collection[int],
        ep: _Endpoint,
    ) -> int:
        accept = (lambda status: status not in retry_codes) if retry_codes else None
        port = (svc.port(backend[1]) if svc is not None and backend is not None else None) or (
            conn.service.port(conn.port) if conn.service is not None else None)
        h2 = req.protocol == "HTTP/2" and (
            req.is_grpc or (port is not None and port.app_protocol in (AppProtocol.HTTP2, AppProtocol.GRPC)))
        key = (ep.workload.uid, ep.ip, ep.port, h2)
        origination = self._origination(ep, backend[3] if backend is not None else None)
        upstream = self._pool.take(key, origination)
        if upstream is not None:
            try:
                status = await upstream.exchange(req, req.authority, req.headers, writer, accept)
            except UpstreamError as exc:
                upstream.close()
                replayable = not req.has_body or isinstance(req.body, BytesBody)
                # a pooled connection the backend had closed: nothing was sent back, replay on a new one
                if not (exc.before_response and not writer.started and replayable):
                    raise
                if isinstance(req.body, BytesBody):
                    req.body = BytesBody(req.body.data)
            except BaseException:  # cancelled (timeout, client reset) mid-exchange: not reusable
                upstream.close()
                raise
            else:
                self._reuse(key, upstream, backend, origination)
                return status
        stream = await self._open(conn, ep, svc, record, origination)
        upstream = (Http2Upstream if h2 else Http1Upstream)(stream, self.settings.limits)
        try:
            status = await upstream.exchange(req, req.authority, req.headers, writer, accept)
        except BaseException:
            upstream.close()
            raise
        self._reuse(key, upstream, backend, origination)
        return status

    def _origination(self, ep: _Endpoint, policy: TrafficPolicy | None) -> _Origination | None:
        """How a connection to `ep` is opened under `policy`: the DestinationRule's TLS origination towards an
        endpoint outside the mesh and its `credentialName` read from the current Secrets (raises UpstreamError
        503 UF when it cannot be); None for HBONE or plain TCP."""
        if policy is None or policy.tls is None or ep.workload.in_mesh:
            return None
        return policy.tls, self._credentials.resolve(policy.tls, self._l7.current.secrets)

    def _reuse(self, key: Any, upstream: Any, backend: _Backend | None, origination: _Origination | None) -> None:
        """Pool `upstream` (opened as `origination`) for the next request, unless it served the DestinationRule's
        maxRequestsPerConnection (then it is closed, as Envoy's max_requests_per_connection)."""
        limit = backend[3].pool.max_requests_per_connection if backend is not None else 0
        if limit:
            used = self._uses.get(upstream, 0) + 1
            if used >= limit:
                self._uses.pop(upstream, None)
                upstream.close()
                return
            self._uses[upstream] = used
        self._pool.give(key, upstream, origination)

    def _pick(self, conn: _Conn, svc: Service, port_number: int, view: StateView, record: RequestRecord,
              subset: Mapping[str, str] | None = None, outlier: OutlierDetector | None = None,
              lb: TrafficPolicy | None = None, hash_key: str | None = None) -> _Endpoint:
        record.dst_service = svc.hostname
        record.dst_service_name, record.dst_service_namespace = svc.name, svc.namespace
        port, family, endpoints, balancing, hostname_only = self._targets(view, svc, port_number)
        if subset is not None:  # a DestinationRule subset: the endpoints whose pod has all its labels
            pods = self._l7.current.pod_labels
            endpoints = tuple(wl for wl in endpoints
                              if _has_labels(pods.get((wl.namespace, wl.name)) or {}, subset))
        if outlier is not None:  # ejected endpoints get nothing, unless all are (Envoy's panic mode)
            healthy = tuple(wl for wl in endpoints if not any(
                outlier.ejected(f"{wl.uid}/{a}:{resolve_target_port(svc, port, wl)}") for a in wl.addresses))
            endpoints = healthy or endpoints
        if subset is not None or outlier is not None:
            hostname_only = is_hostname_only(endpoints)
        if hostname_only:  # a resolution-DNS ServiceEntry: named endpoints, resolved when dialled
            named = pick_hostname_endpoint(svc, port, endpoints, self._rng)
            if named is None:
                raise UpstreamError(f"no healthy endpoint for {svc.hostname}:{port_number}", status=503, flags="UH")
            return _Endpoint(named[0], named[0].hostname, named[1], by_name=True)

        def target(wl: Workload) -> int | None:
            return resolve_target_port(svc, port, wl)

        if lb is not None and len(endpoints) > 1:  # a DestinationRule loadBalancer: choose among the usable
            usable = [p for wl in endpoints
                      if (p := pick_endpoint(conn.source, (wl,), balancing, self._rng, family=family, target=target))]
            if usable:
                hosts = [f"{w.uid}/{a.ip}:{a.port}" for w, a, _ in usable]
                i = self._balancer.choose((svc.key, port_number, _subset_key(subset)), hosts, lb.lb_simple,
                                          hash_key, self._rng)
                endpoints = (usable[i][0],)
        picked = pick_endpoint(conn.source, endpoints, balancing, self._rng, family=family, target=target)
        if picked is None:
            raise UpstreamError(f"no healthy endpoint for {svc.hostname}:{port_number}", status=503, flags="UH")
        return _Endpoint(picked.workload, str(picked.addr.ip), picked.addr.port)

    def _by_view(self, view: StateView) -> dict[Any, Any]:
        """Answers that depend only on the state snapshot `view` (`_targets`, `_backend_service`), kept while it
        is the current one: a state change publishes a new StateView object (never mutated), so the first
        lookup in it starts afresh. Bounded: emptied when full."""
        if self._cached_view is not view or len(self._view_cache) >= _VIEW_CACHE_LIMIT:
            self._cached_view, self._view_cache = view, {}
        return self._view_cache

    def _targets(self, view: StateView, svc: Service, port_number: int,
                 ) -> tuple[Port, int, tuple[Workload, ...], LoadBalancing, bool]:
        """Of Service `svc` on `port_number` in `view`: the port (the number itself when the Service does not
        list it), the address family its endpoints are dialled in, its endpoints, its load balancing and
        whether all endpoints are named by host. The same for every request until the state changes."""
        cache = self._by_view(view)
        key = ("targets", svc.key, port_number)
        hit = cache.get(key)
        if hit is not None and hit[0] is svc:  # (a connection may hold the Service of an older snapshot)
            return hit[1]  # type: ignore[no-any-return]
        endpoints = view.endpoints(svc.key)
        answer = (svc.port(port_number) or Port(port_number, port_number),
                  6 if svc.addresses and svc.addresses[0].address.version == 6 else 4,
                  endpoints, svc.load_balancing or LoadBalancing(), is_hostname_only(endpoints))
        cache[key] = (svc, answer)
        return answer

    async def _open_service(
        self, conn: _Conn, svc: Service, port_number: int, view: StateView, record: RequestRecord
    ) -> tuple[_Endpoint, ByteStream]:
        ep = self._pick(conn, svc, port_number, view, record)
        self._describe(ep, svc, record)
        return ep, await self._open(conn, ep, svc, record)

    def _describe(self, ep: _Endpoint, svc: Service | None, record: RequestRecord) -> None:
        wl = ep.workload
        # the endpoint's fields are the same for every request to it: worked out once per endpoint and state
        cache = self._by_view(self._cached_view) if self._cached_view is not None else {}
        key = ("describe", wl.uid, ep.ip, ep.port, ep.by_name)
        hit = cache.get(key)
        if hit is None or hit[0] is not wl:
            host = f"[{ep.ip}]" if ":" in ep.ip and not ep.by_name else ep.ip  # canonical text: no re-parsing
            hbone_addr = f"{host}:{ep.port}"
            identity, addr = (wl.identity, f"{host}:{self.settings.hbone_port}") if wl.in_mesh else (None, hbone_addr)
            hit = cache[key] = (wl, wl.workload_name or wl.name, wl.canonical_name, hbone_addr, identity, addr)
        _, record.dst_workload_name, record.dst_canonical, record.dst_hbone_addr, identity, record.dst_addr = hit
        record.dst_workload, record.dst_namespace = wl.name, wl.namespace
        if identity is not None:
            record.dst_identity = identity

    async def _open(self, conn: _Conn, ep: _Endpoint, svc: Service | None, record: RequestRecord,
                    origination: _Origination | None = None) -> ByteStream:
        wl = ep.workload
        if not wl.in_mesh:
            ip = await resolve_host(ep.ip, ep.port, self.settings.resolve_timeout) if ep.by_name else ep.ip
            if origination is not None:  # DestinationRule TLS origination
                return await open_tls(ip, ep.port, origination[0], svc.hostname if svc is not None else ep.ip,
                                      origination[1])
            authority = format_authority(ip, ep.port)
            try:
                return await TcpByteStream.connect(ip, ep.port)
            except OSError as exc:
                raise UpstreamError(f"cannot connect to {authority}: {exc.strerror or exc}", flags="UF") from None
        authority = format_authority(ep.ip, ep.port)
        hbone = (ep.ip, self.settings.hbone_port)
        expected = {wl.identity, *(svc.subject_alt_names if svc else ())}
        headers = {k: v for k, v in (("forwarded", conn.request.forwarded or ""),
                                     ("baggage", conn.request.headers.get("baggage", ""))) if v}
        # the downstream connection's correlation id continues on the upstream connection (a pooled upstream
        # keeps the id of the request that opened it)
        headers["traceparent"] = child_traceparent(conn.trace_id)
        try:
            return await self._client.connect(self._certs(), hbone, expected, authority, headers)
        except HboneStatusError as exc:
            raise UpstreamError(exc.message, status=503, flags="UF") from None
        except HboneError as exc:
            raise UpstreamError(exc.message, flags="UF", hint=exc.hint) from None

    async def aclose(self) -> None:
        """Close pooled upstream connections (the HBONE client is the owner's to close)."""
        self._pool.close_all()


class _DiscardWriter:
    """Where a mirrored request's answer goes: nowhere."""

    def __init__(self) -> None:
        self.started = False
        self.ended = False

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.started = True

    async def write(self, data: bytes) -> None:
        pass

    async def end(self, trailers: list[tuple[str, str]] | None = None) -> None:
        self.ended = True


def _subset_key(labels: Mapping[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) if labels else ""


def _has_labels(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


def _envoy_request_headers(req: Request, rng: random.Random) -> str:
    """What Envoy's connection manager does to a request's headers with Istio's waypoint settings
    (`use_remote_address: false`, `xff_num_trusted_hops: 0`, request ids generated), before any filter:
    - `x-request-id`: a new UUID4 when the request has none; an existing one is kept (the request is not an
      edge request) and forwarded. It is not added to the response.
    - `x-forwarded-proto`: set to `http` (the HTTP inside the HBONE tunnel is plaintext) when absent; kept
      when the client sent one.
    - `x-forwarded-for`: left as the client sent it: Envoy appends the peer address only when it uses the
      remote address, which the waypoint's listener does not.
    Returns the request id."""
    request_id: str | None = None
    has_proto = False
    for k, v in req.headers:
        if k == "x-request-id":
            if request_id is None:
                request_id = v
        elif k == "x-forwarded-proto":
            has_proto = True
    if request_id is None:
        request_id = uuid4_text(rng.getrandbits(128))
        req.headers.append(("x-request-id", request_id))
    if not has_proto:
        req.headers.append(("x-forwarded-proto", "http"))
    return request_id


_UUID4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))  # the variant and version bits
_UUID4_SET = (0x8000 << 48) | (4 << 76)  # RFC 4122 variant, version 4


def uuid4_text(bits: int) -> str:
    """`str(uuid.UUID(int=bits, version=4))` for 128 random bits, without building the UUID object."""
    h = "%032x" % ((bits & _UUID4_CLEAR) | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


async def _read_all(req: Request, limit: int) -> bytes:
    buf = bytearray()
    while chunk := await req.body.read():
        buf += chunk
        if len(buf) > limit:
            raise HttpProtocolError("request body larger than its content-length", status=400)
    return bytes(buf)

