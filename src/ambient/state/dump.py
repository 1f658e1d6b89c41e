"""JSON rendering of a `StateView` for the admin `/config_dump` and `ambient zc`.

Role: turn model values into plain JSON-able dicts (str/int/bool/list/dict only), in the shape of the
reference node proxy's dump: camelCase keys, enums by name, addresses as text, VIPs as "network/ip".
Invariants: output is deterministic (sorted by key) so dumps can be diffed and golden-tested; nothing here
is read back except by `state.static`, which accepts this same shape as the standalone config format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ambient.state.model import (
    Address,
    Authorization,
    GatewayAddress,
    HealthPolicy,
    LoadBalancingMode,
    Match,
    NamespacedHostname,
    Port,
    Service,
    ServiceAccountMatch,
    Workload,
    WorkloadStatus,
)

if TYPE_CHECKING:
    from ambient.state.store import StateView


def dump_state(view: StateView) -> dict[str, Any]:
    """`{"workloads": [...], "services": [...], "policies": [...]}` sorted by resource name."""
    return {
        "workloads": [dump_workload(w) for w in sorted(view.workloads(), key=lambda w: w.uid)],
        "services": [dump_service(s, view) for s in sorted(view.services(), key=lambda s: s.key)],
        "policies": [dump_policy(p) for p in sorted(view.policies(), key=lambda p: p.key)],
    }


def _title(name: str) -> str:
    return name.title().replace("_", "")


def dump_gateway(gw: GatewayAddress | None) -> dict[str, Any] | None:
    if gw is None:
        return None
    dest = gw.destination
    if isinstance(dest, NamespacedHostname):
        return {"destination": dest.key, "hboneMtlsPort": gw.hbone_mtls_port}
    return {"destination": f"{dest.network}/{dest.address}", "hboneMtlsPort": gw.hbone_mtls_port}


def _ports(ports: tuple[Port, ...]) -> dict[str, int]:
    return {str(p.service_port): p.target_port for p in ports}


def dump_workload(w: Workload) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uid": w.uid,
        "workloadIps": [str(ip) for ip in w.addresses],
        "protocol": "HBONE" if w.in_mesh else "TCP",
        "name": w.name,
        "namespace": w.namespace,
        "serviceAccount": w.service_account,
        "workloadName": w.workload_name,
        "workloadType": w.workload_type.name.lower(),
        "canonicalName": w.canonical_name,
        "canonicalRevision": w.canonical_revision,
        "clusterId": w.cluster_id,
        "trustDomain": w.trust_domain,
        "identity": w.identity,
        "node": w.node,
        "network": w.network,
        "status": "Healthy" if w.status == WorkloadStatus.HEALTHY else "Unhealthy",
        "hostname": w.hostname,
        "services": {k: _ports(v) for k, v in sorted(w.services.items())},
        "authorizationPolicies": list(w.authorization_policies),
        "waypoint": dump_gateway(w.waypoint),
        "networkMode": _title(w.network_mode.name),
    }
    if w.capacity is not None:
        out["capacity"] = w.capacity
    if w.native_tunnel:
        out["nativeTunnel"] = True
    if w.application_tunnel is not None:
        out["applicationTunnel"] = {
            "protocol": w.application_tunnel.protocol.name,
            "port": w.application_tunnel.port,
        }
    if w.locality is not None:
        out["locality"] = {"region": w.locality.region, "zone": w.locality.zone, "subzone": w.locality.subzone}
    if w.network_gateway is not None:
        out["networkGateway"] = dump_gateway(w.network_gateway)
    return out


def dump_service(s: Service, view: StateView) -> dict[str, Any]:
    endpoints = view.endpoints(s.key)
    out: dict[str, Any] = {
        "name": s.name,
        "namespace": s.namespace,
        "hostname": s.hostname,
        "vips": [f"{a.network}/{a.address}" for a in s.addresses],
        "ports": _ports(s.ports),
        "endpoints": {
            w.uid: {
                "workloadUid": w.uid,
                "status": "Healthy" if w.status == WorkloadStatus.HEALTHY else "Unhealthy",
                "port": _ports(w.services.get(s.key, ())),
            }
            for w in endpoints
        },
        "subjectAltNames": list(s.subject_alt_names),
        "waypoint": dump_gateway(s.waypoint),
        "ipFamilies": s.ip_families.name,
        "canonical": s.canonical,
        "ingressUseWaypoint": s.ingress_use_waypoint,
        "visibility": s.visibility.name,
    }
    lb = s.load_balancing
    if lb is not None:
        out["loadBalancer"] = {
            "routingPreferences": [scope.name for scope in lb.routing_preference],
            "mode": lb.mode.name if lb.mode != LoadBalancingMode.UNSPECIFIED_MODE else "UNSPECIFIED",
            "healthPolicy": "AllowAll" if lb.health_policy == HealthPolicy.ALLOW_ALL else "OnlyHealthy",
        }
    return out


def _addrs(addrs: tuple[Address, ...]) -> list[str]:
    return [str(a) for a in addrs]


def _sas(sas: tuple[ServiceAccountMatch, ...]) -> list[str]:
    return [f"{sa.namespace}/{sa.service_account}" for sa in sas]


def dump_match(m: Match) -> dict[str, Any]:
    """Only the non-empty fields, string matches in Istio's `*` notation."""
    raw: dict[str, list[Any]] = {
        "namespaces": [str(x) for x in m.namespaces],
        "notNamespaces": [str(x) for x in m.not_namespaces],
        "principals": [str(x) for x in m.principals],
        "notPrincipals": [str(x) for x in m.not_principals],
        "sourceIps": _addrs(m.source_ips),
        "notSourceIps": _addrs(m.not_source_ips),
        "destinationIps": _addrs(m.destination_ips),
        "notDestinationIps": _addrs(m.not_destination_ips),
        "destinationPorts": list(m.destination_ports),
        "notDestinationPorts": list(m.not_destination_ports),
        "serviceAccounts": _sas(m.service_accounts),
        "notServiceAccounts": _sas(m.not_service_accounts),
    }
    return {k: v for k, v in raw.items() if v}


def dump_policy(p: Authorization) -> dict[str, Any]:
    return {
        "name": p.name,
        "namespace": p.namespace,
        "scope": _title(p.scope.name),
        "action": _title(p.action.name),
        "dryRun": p.dry_run,
        "rules": [[[dump_match(m) for m in c.matches] for c in r.clauses] for r in p.rules],
    }
