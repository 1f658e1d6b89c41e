"""xDS protobuf -> the node proxy's model (`state.model`): a field copy.

Role: decode `istio.workload.Address` (Workload | Service) and `istio.security.Authorization` messages into
the frozen model values the store holds. The xDS client converts a whole response before applying any of
it, so a malformed resource NACKs the response and leaves the state untouched.

Invariants: raw address bytes must be 4 or 16 long (else `InvalidResourceError`); an unset
`GatewayAddress.hbone_mtls_port` (0) becomes 15008; enum values are taken by number (an unknown number
from a newer control plane is an error, not silently mapped to 0).
"""

from __future__ import annotations

import enum

from ambient.protocol.gen.istio.security import authorization_pb2 as sec
from ambient.protocol.gen.istio.workload import workload_pb2 as wl
from ambient.state import model as m
from ambient.state.errors import InvalidResourceError


def _enum(cls: type[enum.IntEnum], value: int, what: str) -> enum.IntEnum:
    try:
        return cls(value)
    except ValueError:
        raise InvalidResourceError(
            f"{what}: unknown value {value}", hint="the control plane is newer than this proxy; upgrade the proxy"
        ) from None


def _network_address(na: wl.NetworkAddress) -> m.NetworkAddress:
    return m.NetworkAddress(address=m.parse_ip(na.address), network=na.network)


def gateway_address(ga: wl.GatewayAddress) -> m.GatewayAddress | None:
    which = ga.WhichOneof("destination")
    if which is None:
        return None
    dest: m.NamespacedHostname | m.NetworkAddress
    if which == "hostname":
        dest = m.NamespacedHostname(namespace=ga.hostname.namespace, hostname=ga.hostname.hostname)
    else:
        dest = _network_address(ga.address)
    return m.GatewayAddress(destination=dest, hbone_mtls_port=ga.hbone_mtls_port or m.DEFAULT_HBONE_PORT)


def _port(p: wl.Port) -> m.Port:
    proto = _enum(m.AppProtocol, p.app_protocol, "port app_protocol")
    return m.Port(service_port=p.service_port, target_port=p.target_port, app_protocol=m.AppProtocol(proto))


def workload(w: wl.Workload) -> m.Workload:
    return m.Workload(
        uid=w.uid,
        name=w.name,
        namespace=w.namespace,
        addresses=tuple(m.parse_ip(a) for a in w.addresses),
        hostname=w.hostname,
        network=w.network,
        tunnel_protocol=m.TunnelProtocol(_enum(m.TunnelProtocol, w.tunnel_protocol, "tunnel_protocol")),
        trust_domain=w.trust_domain or m.DEFAULT_TRUST_DOMAIN,
        service_account=w.service_account or m.DEFAULT_SERVICE_ACCOUNT,
        waypoint=gateway_address(w.waypoint) if w.HasField("waypoint") else None,
        network_gateway=gateway_address(w.network_gateway) if w.HasField("network_gateway") else None,
        node=w.node,
        canonical_name=w.canonical_name,
        canonical_revision=w.canonical_revision,
        workload_type=m.WorkloadType(_enum(m.WorkloadType, w.workload_type, "workload_type")),
        workload_name=w.workload_name,
        native_tunnel=w.native_tunnel,
        authorization_policies=tuple(w.authorization_policies),
        status=m.WorkloadStatus(_enum(m.WorkloadStatus, w.status, "status")),
        cluster_id=w.cluster_id,
        services={k: tuple(_port(p) for p in v.ports) for k, v in w.services.items()},
        application_tunnel=(
            m.ApplicationTunnel(
                protocol=m.ApplicationTunnelProtocol(
                    _enum(m.ApplicationTunnelProtocol, w.application_tunnel.protocol, "application_tunnel")
                ),
                port=w.application_tunnel.port,
            )
            if w.HasField("application_tunnel")
            else None
        ),
        locality=(
            m.Locality(w.locality.region, w.locality.zone, w.locality.subzone) if w.HasField("locality") else None
        ),
        network_mode=m.NetworkMode(_enum(m.NetworkMode, w.network_mode, "network_mode")),
        capacity=w.capacity.value if w.HasField("capacity") else None,
    )


def service(s: wl.Service) -> m.Service:
    lb = None
    if s.HasField("load_balancing"):
        lb = m.LoadBalancing(
            routing_preference=tuple(
                m.LoadBalancingScope(_enum(m.LoadBalancingScope, x, "routing_preference"))
                for x in s.load_balancing.routing_preference
            ),
            mode=m.LoadBalancingMode(_enum(m.LoadBalancingMode, s.load_balancing.mode, "load_balancing.mode")),
            health_policy=m.HealthPolicy(_enum(m.HealthPolicy, s.load_balancing.health_policy, "health_policy")),
        )
    weighted = []
    for ww in s.weighted_waypoints:
        dest = gateway_address(ww.destination)
        if dest is not None:
            weighted.append(m.WeightedWaypoint(destination=dest, weight=ww.weight))
    return m.Service(
        name=s.name,
        namespace=s.namespace,
        hostname=s.hostname,
        addresses=tuple(_network_address(a) for a in s.addresses),
        ports=tuple(_port(p) for p in s.ports),
        subject_alt_names=tuple(s.subject_alt_names),
        waypoint=gateway_address(s.waypoint) if s.HasField("waypoint") else None,
        load_balancing=lb,
        ip_families=m.IpFamilies(_enum(m.IpFamilies, s.ip_families, "ip_families")),
        canonical=s.canonical,
        ingress_use_waypoint=s.ingress_use_waypoint,
        weighted_waypoints=tuple(weighted),
        visibility=m.ServiceVisibility(_enum(m.ServiceVisibility, s.visibility, "visibility")),
    )


def address(a: wl.Address) -> m.Workload | m.Service:
    which = a.WhichOneof("type")
    if which == "workload":
        return workload(a.workload)
    if which == "service":
        return service(a.service)
    raise InvalidResourceError("Address resource has neither a workload nor a service")


def _string_match(sm: sec.StringMatch) -> m.StringMatch:
    which = sm.WhichOneof("match_type")
    if which == "exact":
        return m.StringMatch.exact(sm.exact)
    if which == "prefix":
        return m.StringMatch.prefix(sm.prefix)
    if which == "suffix":
        return m.StringMatch.suffix(sm.suffix)
    if which == "presence":
        return m.StringMatch.presence()
    raise InvalidResourceError("StringMatch has no match type set")


def _cidr(a: sec.Address) -> m.Address:
    return m.Address(address=m.parse_ip(a.address), length=a.length)


def _sa(x: sec.ServiceAccountMatch) -> m.ServiceAccountMatch:
    return m.ServiceAccountMatch(namespace=x.namespace, service_account=x.serviceAccount)


def _match(x: sec.Match) -> m.Match:
    return m.Match(
        namespaces=tuple(_string_match(v) for v in x.namespaces),
        not_namespaces=tuple(_string_match(v) for v in x.not_namespaces),
        principals=tuple(_string_match(v) for v in x.principals),
        not_principals=tuple(_string_match(v) for v in x.not_principals),
        source_ips=tuple(_cidr(v) for v in x.source_ips),
        not_source_ips=tuple(_cidr(v) for v in x.not_source_ips),
        destination_ips=tuple(_cidr(v) for v in x.destination_ips),
        not_destination_ips=tuple(_cidr(v) for v in x.not_destination_ips),
        destination_ports=tuple(x.destination_ports),
        not_destination_ports=tuple(x.not_destination_ports),
        service_accounts=tuple(_sa(v) for v in x.service_accounts),
        not_service_accounts=tuple(_sa(v) for v in x.not_service_accounts),
    )


def authorization(a: sec.Authorization) -> m.Authorization:
    return m.Authorization(
        name=a.name,
        namespace=a.namespace,
        scope=m.Scope(_enum(m.Scope, a.scope, "scope")),
        action=m.Action(_enum(m.Action, a.action, "action")),
        rules=tuple(
            m.Rule(clauses=tuple(m.Clause(matches=tuple(_match(x) for x in c.matches)) for c in r.clauses))
            for r in a.rules
        ),
        dry_run=a.dry_run,
    )
