"""Pure routing decisions of the node proxy: where an outbound connection goes, and whether an inbound
CONNECT's authority is acceptable (protocols.md sections 2, 5 and 8).

Role: "decide, then do". `decide_outbound` maps (source workload, original destination, state) to one
`Route` value with no I/O; the outbound listener then dials what it says (HBONE or plain TCP) or resets
the client. `check_inbound_authority` is the CONNECT-validation half of the inbound path.

Outbound decision order:
1. Unknown source workload -> Reject (the caller waits briefly for config before asking).
2. Destination is a Service VIP: the Service has a waypoint (and the source is not that waypoint) ->
   ViaWaypoint (a waypoint pod `ip:15008`, authority = original VIP:port). Else the Service must have the
   port; an endpoint is picked: healthy only (unless health_policy ALLOW_ALL), with an address and a
   resolvable target port (the workload's own port map first, then the Service's number; `0` means a
   named port that this workload does not resolve), capacity > 0, narrowed by the load-balancing routing
   preference (STRICT: must share every scope with the source; FAILOVER/unspecified: the best-ranked
   group, ranked by how many leading scopes match), then weighted random by capacity (default 1).
   No usable endpoint -> Reject ("had endpoints but none usable" / "has no endpoints"). Endpoints known only
   by hostname (ServiceEntry resolution DNS) -> DirectHostname: resolved when dialled. Service-addressed
   traffic does not take the endpoint's *workload* waypoint (it is the service's waypoint that counts).
   Mode PASSTHROUGH -> Passthrough to the VIP (load balancing is left to whatever owns the VIP).
3. Destination is a workload IP: with a workload waypoint (and the source is not that waypoint) ->
   ViaWaypoint (authority = pod ip:port); HBONE workload -> Hbone(pod:15008, authority pod:port);
   otherwise Direct(pod:port).
4. Unknown address -> Passthrough (plain TCP to the original destination).
Self-port protection: a mesh destination's target port that is one of the proxy's own ports
(15001/15006/15008) -> Reject: the peer proxy would see a self-call/loop.

Invariants: functions here never raise for bad state (every failure is a `Reject` with a reason that names
the service/workload); randomness only comes from the injected `random.Random`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from typing import NamedTuple, Protocol

from ambient.state.model import (
    DEFAULT_HBONE_PORT,
    GatewayAddress,
    HealthPolicy,
    IPAddress,
    LoadBalancing,
    LoadBalancingMode,
    LoadBalancingScope,
    Locality,
    NamespacedHostname,
    Port,
    Service,
    Workload,
    WorkloadStatus,
    canonical_ip,
)

OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
HBONE_PORT = DEFAULT_HBONE_PORT
PROXY_PORTS = frozenset({OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT})


class RouteView(Protocol):
    """The narrow read access routing needs (implemented by `state.store.StateView`)."""

    def service(self, key: str) -> Service | None: ...

    def service_by_vip(self, ip: IPAddress, network: str = "") -> Service | None: ...

    def workload_by_ip(self, ip: IPAddress, network: str = "") -> Workload | None: ...

    def endpoints(self, key: str) -> Sequence[Workload]: ...


@dataclass(frozen=True, slots=True)
class SocketAddr:
    ip: IPAddress
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> SocketAddr | None:
        """'10.0.0.1:80' or '[fd00::1]:80' (the HBONE authority form); None when malformed."""
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            if not sep:
                return None
        else:
            host, sep, port = text.rpartition(":")
            if not sep or ":" in host:
                return None
        if not port.isdigit() or len(port) > 5:
            return None
        try:
            ip = ip_address(host)
        except ValueError:
            return None
        if text.startswith("[") and ip.version != 6:
            return None
        number = int(port)
        if not 0 < number < 65536:
            return None
        return cls(ip, number)


# --------------------------------------------------------------------------------------- route values


@dataclass(frozen=True)
class Reject:
    """Reset the client's connection; log `reason`."""

    reason: str


@dataclass(frozen=True)
class ViaWaypoint:
    """HBONE to a waypoint pod; the waypoint takes `authority` as the destination."""

    address: SocketAddr  # waypoint pod ip:15008
    authority: SocketAddr  # the original VIP:port (service) or pod ip:port (workload waypoint)
    expected_identities: tuple[str, ...]
    waypoint: Workload
    service: Service | None = None
    destination: Workload | None = None

    @property
    def service_hostname(self) -> str | None:
        return self.service.hostname if self.service else None


@dataclass(frozen=True)
class Hbone:
    """HBONE straight to the destination pod's proxy: dial `address`, CONNECT `authority`."""

    address: SocketAddr  # pod ip:15008
    authority: SocketAddr  # pod ip:target port
    expected_identities: tuple[str, ...]
    workload: Workload
    service: Service | None = None
    pick: str = ""  # why this endpoint of the Service (for tracing): see `pick_endpoint`

    @property
    def service_hostname(self) -> str | None:
        """For the `forwarded: ...;host=` header: only when the target is a known Service."""
        return self.service.hostname if self.service else None


@dataclass(frozen=True)
class Direct:
    """Plain TCP to a workload that is not in the mesh."""

    address: SocketAddr
    workload: Workload
    service: Service | None = None
    pick: str = ""  # why this endpoint of the Service (for tracing)


@dataclass(frozen=True)
class DirectHostname:
    """Plain TCP to an endpoint known by name only (a ServiceEntry with resolution DNS): the proxy resolves
    `hostname` when it dials, as ztunnel does, then connects to the first address on `port`."""

    hostname: str
    port: int
    workload: Workload
    service: Service | None = None

    def __str__(self) -> str:
        return f"{self.hostname}:{self.port}"


@dataclass(frozen=True)
class Passthrough:
    """Plain TCP to the original destination: an address the mesh does not know."""

    address: SocketAddr


Route = Reject | ViaWaypoint | Hbone | Direct | DirectHostname | Passthrough


# ------------------------------------------------------------------------------------------ outbound


def decide_outbound(
    source: Workload | None,
    dst_ip: IPAddress,
    dst_port: int,
    view: RouteView,
    rng: random.Random | None = None,
) -> Route:
    """The outbound route for a connection from `source` to the original destination `dst_ip:dst_port`."""
    if source is None:
        return Reject("unknown source: no workload in the proxy's state for the client address")
    rng = rng if rng is not None else random.Random()
    dst_ip = canonical_ip(dst_ip)
    svc = view.service_by_vip(dst_ip, source.network)
    if svc is not None:
        return _to_service(source, svc, SocketAddr(dst_ip, dst_port), view, rng)
    wl = view.workload_by_ip(dst_ip, source.network)
    if wl is None:
        return Passthrough(SocketAddr(dst_ip, dst_port))
    return _to_workload(source, wl, SocketAddr(dst_ip, dst_port), view, rng)


def _to_service(source: Workload, svc: Service, vip: SocketAddr, view: RouteView, rng: random.Random) -> Route:
    if svc.waypoint is not None and not is_waypoint_for(source, svc.waypoint, view):
        return _via_waypoint(svc.waypoint, vip, view, rng, f"service {svc.key}", service=svc)
    port = svc.port(vip.port)
    if port is None:
        known = ", ".join(str(p.service_port) for p in svc.ports) or "none"
        return Reject(f"service {svc.key} has no port {vip.port} (ports: {known})")
    lb = svc.load_balancing or LoadBalancing()
    if lb.mode == LoadBalancingMode.PASSTHROUGH:
        return Passthrough(vip)
    endpoints = view.endpoints(svc.key)
    by_name = [wl for wl in endpoints if wl.hostname and not wl.addresses]
    if by_name and len(by_name) == len(endpoints):
        return _to_hostname_endpoint(svc, port, by_name, lb, rng)
    picked = pick_endpoint(source, endpoints, lb, rng, family=vip.ip.version,
                           target=_service_target(svc, port))
    if picked is None:
        if endpoints:
            return Reject(
                f"service {svc.key} had {len(endpoints)} endpoint(s) but none usable for port {vip.port} "
                "(unhealthy, no address or target port, zero capacity, or outside the routing preference)"
            )
        return Reject(f"service {svc.key} has no endpoints")
    wl, addr, why = picked
    return _to_endpoint(wl, addr, service=svc, pick=why)


def _to_hostname_endpoint(
    svc: Service, port: Port, endpoints: Sequence[Workload], lb: LoadBalancing, rng: random.Random
) -> Route:
    """One of a Service's hostname-only endpoints (they are outside the mesh: plain TCP after resolution)."""
    allow_unhealthy = lb.health_policy == HealthPolicy.ALLOW_ALL
    usable = [(wl, target) for wl in endpoints
              if (wl.status == WorkloadStatus.HEALTHY or allow_unhealthy) and wl.weight > 0
              and (target := resolve_target_port(svc, port, wl)) is not None]
    if not usable:
        return Reject(f"service {svc.key} had {len(endpoints)} endpoint(s) but none usable for port "
                      f"{port.service_port} (unhealthy, no target port or zero capacity)")
    wl, target = usable[0] if len(usable) == 1 else rng.choices(usable, weights=[w.weight for w, _ in usable])[0]
    return DirectHostname(wl.hostname, target, wl, svc)


def _to_workload(source: Workload, wl: Workload, dst: SocketAddr, view: RouteView, rng: random.Random) -> Route:
    if wl.in_mesh and dst.port in PROXY_PORTS:
        return Reject(f"port {dst.port} of workload {wl.namespace}/{wl.name} is a proxy port (loop)")
    if wl.waypoint is not None and not is_waypoint_for(source, wl.waypoint, view):
        return _via_waypoint(wl.waypoint, dst, view, rng, f"workload {wl.namespace}/{wl.name}", destination=wl)
    return _to_endpoint(wl, dst, service=None)


def _to_endpoint(wl: Workload, addr: SocketAddr, service: Service | None, pick: str = "") -> Route:
    if not wl.in_mesh:
        return Direct(addr, wl, service, pick)
    if addr.port in PROXY_PORTS:
        return Reject(f"target port {addr.port} of workload {wl.namespace}/{wl.name} is a proxy port (loop)")
    identities = [wl.identity]
    if service is not None:
        identities += [san for san in service.subject_alt_names if san not in identities]
    return Hbone(SocketAddr(addr.ip, HBONE_PORT), addr, tuple(identities), wl, service, pick)


def _via_waypoint(
    gw: GatewayAddress,
    authority: SocketAddr,
    view: RouteView,
    rng: random.Random,
    what: str,
    *,
    service: Service | None = None,
    destination: Workload | None = None,
) -> Route:
    resolved = resolve_waypoint(gw, view, rng, family=authority.ip.version)
    if isinstance(resolved, Reject):
        return Reject(f"{what}: {resolved.reason}")
    wl, ip = resolved
    return ViaWaypoint(SocketAddr(ip, gw.hbone_mtls_port), authority, (wl.identity,), wl, service, destination)


def resolve_waypoint(
    gw: GatewayAddress, view: RouteView, rng: random.Random, family: int = 4
) -> tuple[Workload, IPAddress] | Reject:
    """The waypoint pod to dial: a waypoint Service (by hostname or VIP) load-balanced to one of its
    endpoints, or a workload address. Unknown waypoints are a Reject: dialling an address whose identity
    we cannot name would skip the server-identity check."""
    dest = gw.destination
    if isinstance(dest, NamespacedHostname):
        svc = view.service(dest.key)
        if svc is None:
            return Reject(f"waypoint {dest.key} not found")
    else:
        svc = view.service_by_vip(canonical_ip(dest.address), dest.network)
        if svc is None:
            wl = view.workload_by_ip(canonical_ip(dest.address), dest.network)
            if wl is None:
                return Reject(f"waypoint address {dest.address} is not a known workload or service")
            return wl, canonical_ip(dest.address)
    picked = pick_endpoint(
        None,
        view.endpoints(svc.key),
        svc.load_balancing or LoadBalancing(),
        rng,
        family=family,
        target=lambda _wl: gw.hbone_mtls_port,
    )
    if picked is None:
        return Reject(f"waypoint {svc.key} has no usable endpoints")
    return picked.workload, picked.addr.ip


def is_waypoint_for(wl: Workload, gw: GatewayAddress, view: RouteView) -> bool:
    """True when `wl` is (one of the pods of) the waypoint `gw`: traffic from it must not loop back."""
    dest = gw.destination
    if isinstance(dest, NamespacedHostname):
        return dest.key in wl.services
    ip = canonical_ip(dest.address)
    if any(canonical_ip(a) == ip for a in wl.addresses):
        return True
    svc = view.service_by_vip(ip, dest.network)
    return svc is not None and svc.key in wl.services


# ------------------------------------------------------------------------------------ load balancing


class _Target(Protocol):
    def __call__(self, wl: Workload, /) -> int | None: ...


def _service_target(svc: Service, port: Port) -> _Target:
    def target(wl: Workload) -> int | None:
        return resolve_target_port(svc, port, wl)

    return target


def resolve_target_port(svc: Service, port: Port, wl: Workload) -> int | None:
    """The workload's own mapping for this service port (named ports resolved per pod) first, then the
    Service's number; None when neither gives a port (a named port this workload does not expose)."""
    for p in wl.services.get(svc.key, ()):
        if p.service_port == port.service_port and p.target_port:
            return p.target_port
    return port.target_port or None


class Pick(NamedTuple):
    """An endpoint picked for a connection, and why (for tracing)."""

    workload: Workload
    addr: SocketAddr
    why: str


def pick_endpoint(
    source: Workload | None,
    endpoints: Sequence[Workload],
    lb: LoadBalancing,
    rng: random.Random,
    *,
    family: int,
    target: _Target,
) -> Pick | None:
    """One usable endpoint (workload, ip:target port), weighted random by capacity; None when none fit. With
    why, in words: "only usable endpoint (of N)", "weighted random among K usable (of N)", with "after the
    routing preference (M usable)" when locality narrowed the choice."""
    allow_unhealthy = lb.health_policy == HealthPolicy.ALLOW_ALL
    usable: list[tuple[Workload, SocketAddr]] = []
    for wl in endpoints:
        if wl.status != WorkloadStatus.HEALTHY and not allow_unhealthy:
            continue
        if wl.weight <= 0:
            continue
        ip = _address_for(wl, family)
        port = target(wl)
        if ip is None or port is None:
            continue
        usable.append((wl, SocketAddr(ip, port)))
    before = len(usable)
    if source is not None:
        usable = _narrow_by_locality(source, usable, lb)
    if not usable:
        return None
    narrowed = f" after the routing preference ({before} usable)" if len(usable) < before else ""
    if len(usable) == 1:
        return Pick(*usable[0], f"only usable endpoint (of {len(endpoints)}){narrowed}")
    wl, addr = rng.choices(usable, weights=[wl.weight for wl, _ in usable])[0]
    return Pick(wl, addr, f"weighted random among {len(usable)} usable (of {len(endpoints)}){narrowed}")


def _address_for(wl: Workload, family: int) -> IPAddress | None:
    for ip in wl.addresses:
        if ip.version == family:
            return ip
    return wl.addresses[0] if wl.addresses else None


def _narrow_by_locality(
    source: Workload, usable: list[tuple[Workload, SocketAddr]], lb: LoadBalancing
) -> list[tuple[Workload, SocketAddr]]:
    scopes = lb.routing_preference
    if not scopes or not usable:
        return usable
    ranked = [(_rank(source, wl, scopes), (wl, addr)) for wl, addr in usable]
    if lb.mode == LoadBalancingMode.STRICT:
        return [item for rank, item in ranked if rank == len(scopes)]
    # FAILOVER (and unspecified with a preference): the closest group that has anything.
    best = max(rank for rank, _ in ranked)
    return [item for rank, item in ranked if rank == best]


def _rank(source: Workload, wl: Workload, scopes: Sequence[LoadBalancingScope]) -> int:
    """How many of the leading preference scopes the endpoint shares with the source."""
    rank = 0
    for scope in scopes:
        if not _same(source, wl, scope):
            break
        rank += 1
    return rank


_NO_LOCALITY = Locality()


def _same(a: Workload, b: Workload, scope: LoadBalancingScope) -> bool:
    la, lb = a.locality or _NO_LOCALITY, b.locality or _NO_LOCALITY
    if scope == LoadBalancingScope.REGION:
        return la.region == lb.region
    if scope == LoadBalancingScope.ZONE:
        return la.zone == lb.zone
    if scope == LoadBalancingScope.SUBZONE:
        return la.subzone == lb.subzone
    if scope == LoadBalancingScope.NODE:
        return a.node == b.node
    if scope == LoadBalancingScope.CLUSTER:
        return a.cluster_id == b.cluster_id
    if scope == LoadBalancingScope.NETWORK:
        return a.network == b.network
    return True


# ------------------------------------------------------------------------------------------- inbound


@dataclass(frozen=True)
class InboundCheck:
    """Outcome of CONNECT authority validation: `status` 200 (go on to policy + connect), 400 or 503."""

    status: int
    reason: str
    target: SocketAddr | None = None
    via_waypoint: bool = False  # the local workload is the target's waypoint (authority != dialled IP)

    @property
    def ok(self) -> bool:
        return self.status == 200


def check_inbound_authority(
    dialled_ip: IPAddress,
    authority: str,
    local_workload: Workload | None,
    state: RouteView,
    *,
    proxy_ports: frozenset[int] = PROXY_PORTS,
) -> InboundCheck:
    """Validate an HBONE CONNECT's `:authority` against the address the client dialled.

    400: malformed authority, a proxy port (self-call/loop), a loopback/unspecified/multicast target, or an
    authority IP different from the dialled IP (allowed only when `local_workload` is the target's
    waypoint). 503: no known local workload for the dialled address. 200: proceed with authorization and
    the upstream connect. Authorization (401) and the connect itself (503) happen after this.
    """
    target = SocketAddr.parse(authority)
    if target is None:
        return InboundCheck(400, f"malformed CONNECT authority {authority!r} (expected ip:port or [ip]:port)")
    tip = canonical_ip(target.ip)
    if target.port in proxy_ports:
        return InboundCheck(400, f"CONNECT to proxy port {target.port} refused (self-call/loop)", target)
    if tip.is_loopback or tip.is_unspecified or tip.is_multicast:
        return InboundCheck(400, f"CONNECT to {target} refused: not a workload address", target)
    if local_workload is None:
        return InboundCheck(503, f"no workload known for dialled address {dialled_ip}", target)
    dialled = canonical_ip(dialled_ip)
    if tip == dialled:
        if not any(canonical_ip(a) == dialled for a in local_workload.addresses):
            return InboundCheck(
                503,
                f"dialled address {dialled} is not an address of workload "
                f"{local_workload.namespace}/{local_workload.name}",
                target,
            )
        return InboundCheck(200, "ok", target)
    # Authority differs from the dialled IP: only a waypoint may receive traffic for someone else.
    svc = state.service_by_vip(tip, local_workload.network)
    if svc is not None and svc.waypoint is not None and is_waypoint_for(local_workload, svc.waypoint, state):
        return InboundCheck(200, f"waypoint for service {svc.key}", target, via_waypoint=True)
    wl = state.workload_by_ip(tip, local_workload.network)
    if wl is not None and wl.waypoint is not None and is_waypoint_for(local_workload, wl.waypoint, state):
        return InboundCheck(200, f"waypoint for workload {wl.namespace}/{wl.name}", target, via_waypoint=True)
    return InboundCheck(400, f"CONNECT authority {target} does not match the dialled address {dialled_ip}", target)
