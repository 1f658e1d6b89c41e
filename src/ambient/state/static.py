"""Static state: load workloads, services and policies from a YAML/JSON document (standalone mode, tests).

Role: the node proxy without a control plane reads a file of the same model the xDS client delivers, in
the shape `state.dump` writes (camelCase keys, enums by name, addresses as text), so a `/config_dump`
saved from a running proxy can be fed back as a static config. The result is a `StateDelta` with
`replace=True`, applied by the store's single writer like any xDS update.

Not carried (no use at L4 yet): Service.weighted_waypoints, extensions, Port.app_protocol in the
`{servicePort: targetPort}` short form (use the list form).

Invariants: all conversion happens here, before the store is touched; any malformed field raises
`InvalidResourceError` naming its path (e.g. `workloads[2].workloadIps[0]`), so a bad file is refused as a
whole and never half-applied.

Accepted shape (every key optional except the resource names):
    workloads: [{uid, name, namespace, workloadIps: [ip], protocol: HBONE|TCP|NONE|LEGACY_ISTIO_MTLS,
                 serviceAccount, trustDomain, node, network, hostname, clusterId, canonicalName,
                 canonicalRevision, workloadName, workloadType: deployment|pod|job|cronjob,
                 status: Healthy|Unhealthy, capacity, nativeTunnel, networkMode: Standard|HostNetwork,
                 locality: {region, zone, subzone}, applicationTunnel: {protocol: NONE|PROXY, port},
                 services: {"ns/hostname": {servicePort: targetPort} | [{servicePort, targetPort, appProtocol}]},
                 authorizationPolicies: ["ns/name"], waypoint: GATEWAY, networkGateway: GATEWAY}]
    services:  [{name, namespace, hostname, vips: ["[network/]ip"], ports: PORTS, subjectAltNames: [..],
                 waypoint: GATEWAY, ipFamilies: AUTOMATIC|IPV4_ONLY|IPV6_ONLY|DUAL, canonical,
                 ingressUseWaypoint, visibility: PUBLIC|NAMESPACE,
                 loadBalancer: {routingPreferences: [REGION|ZONE|SUBZONE|NODE|CLUSTER|NETWORK],
                                mode: STRICT|FAILOVER|PASSTHROUGH, healthPolicy: OnlyHealthy|AllowAll}}]
    policies:  [{name, namespace, scope: Global|Namespace|WorkloadSelector, action: Allow|Deny, dryRun,
                 rules: [[[MATCH]]]}]       # rules -> clauses -> matches
    GATEWAY = {destination: "ns/hostname" | "[network/]ip", hboneMtlsPort: 15008}
    MATCH   = {namespaces, notNamespaces, principals, notPrincipals: ["exact" | "prefix*" | "*suffix" | "*"],
               sourceIps, notSourceIps, destinationIps, notDestinationIps: ["cidr"],
               destinationPorts, notDestinationPorts: [int], serviceAccounts, notServiceAccounts: ["ns/sa"]}
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ambient.state.errors import InvalidResourceError, StateError
from ambient.state.model import (
    DEFAULT_HBONE_PORT,
    DEFAULT_SERVICE_ACCOUNT,
    DEFAULT_TRUST_DOMAIN,
    Action,
    Address,
    ApplicationTunnel,
    ApplicationTunnelProtocol,
    AppProtocol,
    Authorization,
    Clause,
    GatewayAddress,
    HealthPolicy,
    IpFamilies,
    LoadBalancing,
    LoadBalancingMode,
    LoadBalancingScope,
    Locality,
    Match,
    NamespacedHostname,
    NetworkAddress,
    NetworkMode,
    Port,
    Rule,
    Scope,
    Service,
    ServiceAccountMatch,
    ServiceVisibility,
    StringMatch,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
    WorkloadType,
    parse_ip,
)
from ambient.state.store import StateDelta

E = TypeVar("E", bound=enum.IntEnum)
T = TypeVar("T")


def load_state_file(path: str | Path) -> StateDelta:
    """Read a YAML (or JSON) static state file."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as e:
        raise StateError(f"cannot read static state file {p}: {e}", hint="check the path and permissions") from e
    except yaml.YAMLError as e:
        raise InvalidResourceError(f"{p}: not valid YAML: {e}") from e
    try:
        return load_state(doc if doc is not None else {})
    except InvalidResourceError as e:
        raise InvalidResourceError(f"{p}: {e.message}", hint=e.hint) from e


def load_state(doc: Any) -> StateDelta:
    """Convert a parsed document (dict) to a full-state `StateDelta` (replace=True)."""
    if isinstance(doc, str | bytes):
        doc = json.loads(doc)
    root = _map(doc, "document")
    unknown = set(root) - {"workloads", "services", "policies", "certificates", "workloadState"}
    if unknown:
        raise InvalidResourceError(
            f"document: unknown top-level keys {sorted(unknown)}", hint="expected workloads, services, policies"
        )
    return StateDelta(
        workloads=_each(root, "workloads", _workload),
        services=_each(root, "services", _service),
        policies=_each(root, "policies", _policy),
        replace=True,
    )


# ------------------------------------------------------------------------------------------ helpers


def _map(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidResourceError(f"{path}: expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidResourceError(f"{path}: expected a list, got {type(value).__name__}")
    return value


def _each(obj: Mapping[str, Any], key: str, conv: Callable[[Any, str], T]) -> tuple[T, ...]:
    return tuple(conv(item, f"{key}[{i}]") for i, item in enumerate(_list(obj.get(key), key)))


def _str(obj: Mapping[str, Any], key: str, path: str, default: str = "", required: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise InvalidResourceError(f"{path}.{key}: required")
        return default
    if not isinstance(value, str):
        raise InvalidResourceError(f"{path}.{key}: expected a string, got {value!r}")
    return value


def _int(value: Any, path: str, lo: int = 0, hi: int = 2**32 - 1) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidResourceError(f"{path}: expected an integer in {lo}..{hi}, got {value!r}")
    return value


def _bool(obj: Mapping[str, Any], key: str, path: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise InvalidResourceError(f"{path}.{key}: expected true or false, got {value!r}")
    return value


def _enum(cls: type[E], value: Any, path: str, default: E) -> E:
    """Enum by proto name, CamelCase name (as dumped) or number."""
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return cls(value)
        except ValueError:
            pass
    if isinstance(value, str):
        wanted = value.replace("_", "").lower()
        for member in cls:
            if member.name.replace("_", "").lower() == wanted:
                return member
    names = ", ".join(m.name for m in cls)
    raise InvalidResourceError(f"{path}: unknown {cls.__name__} {value!r}", hint=f"one of {names}")


def _ip(value: Any, path: str) -> Any:
    if not isinstance(value, str):
        raise InvalidResourceError(f"{path}: expected an IP address string, got {value!r}")
    try:
        return parse_ip(value)
    except InvalidResourceError as e:
        raise InvalidResourceError(f"{path}: {e.message}") from e


def _network_address(value: Any, path: str) -> NetworkAddress:
    """'ip' or 'network/ip' (the dump writes '/ip' for the default network)."""
    if not isinstance(value, str):
        raise InvalidResourceError(f"{path}: expected '[network/]ip', got {value!r}")
    network, _, ip = value.rpartition("/")
    return NetworkAddress(_ip(ip, path), network)


def _gateway(value: Any, path: str) -> GatewayAddress | None:
    if value is None:
        return None
    obj = _map(value, path)
    dest = _str(obj, "destination", path, required=True)
    port = _int(obj.get("hboneMtlsPort", DEFAULT_HBONE_PORT), f"{path}.hboneMtlsPort", 1, 65535)
    try:
        return GatewayAddress(_network_address(dest, f"{path}.destination"), port)
    except InvalidResourceError:
        ns, sep, host = dest.partition("/")
        if not sep or not ns or not host:
            raise InvalidResourceError(
                f"{path}.destination: expected 'namespace/hostname' or '[network/]ip', got {dest!r}"
            ) from None
        return GatewayAddress(NamespacedHostname(ns, host), port)


def _ports(value: Any, path: str) -> tuple[Port, ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        return tuple(Port(_int(k, f"{path}.{k}", 1, 65535), _int(v, f"{path}.{k}", 0, 65535)) for k, v in value.items())
    out = []
    for i, item in enumerate(_list(value, path)):
        p = _map(item, f"{path}[{i}]")
        out.append(
            Port(
                _int(p.get("servicePort"), f"{path}[{i}].servicePort", 1, 65535),
                _int(p.get("targetPort", 0), f"{path}[{i}].targetPort", 0, 65535),
                _enum(AppProtocol, p.get("appProtocol"), f"{path}[{i}].appProtocol", AppProtocol.UNKNOWN),
            )
        )
    return tuple(out)


def _strings(obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    items = _list(obj.get(key), f"{path}.{key}")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidResourceError(f"{path}.{key}[{i}]: expected a string, got {item!r}")
    return tuple(items)


# ---------------------------------------------------------------------------------------- resources


def _workload(value: Any, path: str) -> Workload:
    w = _map(value, path)
    locality = None
    if w.get("locality") is not None:
        loc = _map(w["locality"], f"{path}.locality")
        locality = Locality(*(_str(loc, k, f"{path}.locality") for k in ("region", "zone", "subzone")))
    app_tunnel = None
    if w.get("applicationTunnel") is not None:
        at = _map(w["applicationTunnel"], f"{path}.applicationTunnel")
        app_tunnel = ApplicationTunnel(
            _enum(
                ApplicationTunnelProtocol,
                at.get("protocol"),
                f"{path}.applicationTunnel.protocol",
                ApplicationTunnelProtocol.NONE,
            ),
            _int(at.get("port", 0), f"{path}.applicationTunnel.port", 0, 65535),
        )
    protocol = w.get("protocol")
    services = _map(w.get("services") or {}, f"{path}.services")
    return Workload(
        uid=_str(w, "uid", path, required=True),
        name=_str(w, "name", path),
        namespace=_str(w, "namespace", path),
        addresses=tuple(_ip(ip, f"{path}.workloadIps[{i}]") for i, ip in enumerate(_list(w.get("workloadIps"), path))),
        hostname=_str(w, "hostname", path),
        network=_str(w, "network", path),
        tunnel_protocol=(
            TunnelProtocol.NONE
            if protocol == "TCP"
            else _enum(TunnelProtocol, protocol, f"{path}.protocol", TunnelProtocol.NONE)
        ),
        trust_domain=_str(w, "trustDomain", path, DEFAULT_TRUST_DOMAIN),
        service_account=_str(w, "serviceAccount", path, DEFAULT_SERVICE_ACCOUNT),
        waypoint=_gateway(w.get("waypoint"), f"{path}.waypoint"),
        network_gateway=_gateway(w.get("networkGateway"), f"{path}.networkGateway"),
        node=_str(w, "node", path),
        canonical_name=_str(w, "canonicalName", path),
        canonical_revision=_str(w, "canonicalRevision", path),
        workload_type=_enum(WorkloadType, w.get("workloadType"), f"{path}.workloadType", WorkloadType.DEPLOYMENT),
        workload_name=_str(w, "workloadName", path),
        native_tunnel=_bool(w, "nativeTunnel", path),
        authorization_policies=_strings(w, "authorizationPolicies", path),
        status=_enum(WorkloadStatus, w.get("status"), f"{path}.status", WorkloadStatus.HEALTHY),
        cluster_id=_str(w, "clusterId", path),
        services={k: _ports(v, f"{path}.services[{k}]") for k, v in services.items()},
        application_tunnel=app_tunnel,
        locality=locality,
        network_mode=_enum(NetworkMode, w.get("networkMode"), f"{path}.networkMode", NetworkMode.STANDARD),
        capacity=None if w.get("capacity") is None else _int(w["capacity"], f"{path}.capacity"),
    )


def _service(value: Any, path: str) -> Service:
    s = _map(value, path)
    lb = None
    if s.get("loadBalancer") is not None:
        lbm = _map(s["loadBalancer"], f"{path}.loadBalancer")
        prefs = _list(lbm.get("routingPreferences"), f"{path}.loadBalancer.routingPreferences")
        lb = LoadBalancing(
            tuple(
                _enum(
                    LoadBalancingScope,
                    x,
                    f"{path}.loadBalancer.routingPreferences[{i}]",
                    LoadBalancingScope.UNSPECIFIED_SCOPE,
                )
                for i, x in enumerate(prefs)
            ),
            LoadBalancingMode.UNSPECIFIED_MODE
            if lbm.get("mode") in (None, "UNSPECIFIED")
            else _enum(
                LoadBalancingMode, lbm.get("mode"), f"{path}.loadBalancer.mode", LoadBalancingMode.UNSPECIFIED_MODE
            ),
            _enum(
                HealthPolicy, lbm.get("healthPolicy"), f"{path}.loadBalancer.healthPolicy", HealthPolicy.ONLY_HEALTHY
            ),
        )
    return Service(
        name=_str(s, "name", path),
        namespace=_str(s, "namespace", path, required=True),
        hostname=_str(s, "hostname", path, required=True),
        addresses=tuple(
            _network_address(v, f"{path}.vips[{i}]") for i, v in enumerate(_list(s.get("vips"), f"{path}.vips"))
        ),
        ports=_ports(s.get("ports"), f"{path}.ports"),
        subject_alt_names=_strings(s, "subjectAltNames", path),
        waypoint=_gateway(s.get("waypoint"), f"{path}.waypoint"),
        load_balancing=lb,
        ip_families=_enum(IpFamilies, s.get("ipFamilies"), f"{path}.ipFamilies", IpFamilies.AUTOMATIC),
        canonical=_bool(s, "canonical", path),
        ingress_use_waypoint=_bool(s, "ingressUseWaypoint", path),
        visibility=_enum(ServiceVisibility, s.get("visibility"), f"{path}.visibility", ServiceVisibility.PUBLIC),
    )


def _string_match(text: Any, path: str) -> StringMatch:
    if not isinstance(text, str) or not text:
        raise InvalidResourceError(f"{path}: expected a non-empty string, got {text!r}")
    if text == "*":
        return StringMatch.presence()
    if text.endswith("*"):
        return StringMatch.prefix(text[:-1])
    if text.startswith("*"):
        return StringMatch.suffix(text[1:])
    return StringMatch.exact(text)


def _cidr(text: Any, path: str) -> Address:
    try:
        return Address.parse(text)
    except (ValueError, TypeError) as e:
        raise InvalidResourceError(f"{path}: not a CIDR: {text!r}") from e


def _sa(text: Any, path: str) -> ServiceAccountMatch:
    if not isinstance(text, str) or text.count("/") != 1 or not text.partition("/")[2]:
        raise InvalidResourceError(f"{path}: expected 'namespace/serviceaccount', got {text!r}")
    ns, _, sa = text.partition("/")
    return ServiceAccountMatch(ns, sa)


_MATCH_FIELDS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "namespaces": ("namespaces", _string_match),
    "notNamespaces": ("not_namespaces", _string_match),
    "principals": ("principals", _string_match),
    "notPrincipals": ("not_principals", _string_match),
    "sourceIps": ("source_ips", _cidr),
    "notSourceIps": ("not_source_ips", _cidr),
    "destinationIps": ("destination_ips", _cidr),
    "notDestinationIps": ("not_destination_ips", _cidr),
    "destinationPorts": ("destination_ports", lambda v, p: _int(v, p, 0, 65535)),
    "notDestinationPorts": ("not_destination_ports", lambda v, p: _int(v, p, 0, 65535)),
    "serviceAccounts": ("service_accounts", _sa),
    "notServiceAccounts": ("not_service_accounts", _sa),
}


def _match(value: Any, path: str) -> Match:
    m = _map(value, path)
    fields: dict[str, tuple[Any, ...]] = {}
    for key, raw in m.items():
        if key not in _MATCH_FIELDS:
            raise InvalidResourceError(f"{path}: unknown match field {key!r}", hint=f"one of {sorted(_MATCH_FIELDS)}")
        attr, conv = _MATCH_FIELDS[key]
        fields[attr] = tuple(conv(v, f"{path}.{key}[{i}]") for i, v in enumerate(_list(raw, f"{path}.{key}")))
    return Match(**fields)


def _policy(value: Any, path: str) -> Authorization:
    p = _map(value, path)
    rules = tuple(
        Rule(
            tuple(
                Clause(tuple(_match(m, f"{path}.rules[{r}][{c}][{i}]") for i, m in enumerate(_list(cl, path))))
                for c, cl in enumerate(_list(rule, f"{path}.rules[{r}]"))
            )
        )
        for r, rule in enumerate(_list(p.get("rules"), f"{path}.rules"))
    )
    return Authorization(
        name=_str(p, "name", path, required=True),
        namespace=_str(p, "namespace", path, required=True),
        scope=_enum(Scope, p.get("scope"), f"{path}.scope", Scope.WORKLOAD_SELECTOR),
        action=_enum(Action, p.get("action"), f"{path}.action", Action.ALLOW),
        rules=rules,
        dry_run=_bool(p, "dryRun", path),
    )
