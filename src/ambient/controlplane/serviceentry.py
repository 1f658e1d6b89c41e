"""Pure translation of Istio `ServiceEntry` objects into the node proxy's Services and Workloads.

Role: as Istio does over WDS (pilot serviceregistry/kube/controller/ambient), each host of a ServiceEntry
becomes one `istio.workload.Service` (resource name "namespace/host", name and namespace of the
ServiceEntry) and its endpoints become `istio.workload.Workload`s that back every host:
- resolution STATIC: one workload per endpoint, addressed by its IP;
- resolution DNS / DNS_ROUND_ROBIN: one workload per endpoint, by `hostname` when the endpoint address is a
  name (the node proxy resolves it when a connection is made, as ztunnel does), by IP when it is one;
  without endpoints, one hostname workload per host (the host itself is resolved);
- resolution NONE: no workloads; the Service passes connections through to the address dialled.
Endpoints are plain TCP (tunnel protocol NONE): nothing outside the mesh speaks HBONE.

Addresses: `spec.addresses` (single IPs; CIDRs are kept by the validation but route nothing here) or, for a
host without addresses and resolution other than NONE, an auto-allocated VIP from `AUTO_ALLOCATE_CIDR`
(Istio's auto-allocation range, 240.240.0.0/16): `allocate_vips` is deterministic for a given set of hosts
(sorted keys, hash slot, linear probe) and keeps the VIPs already handed out, so a host keeps its address
while the control plane runs. The node proxy's DNS proxy answers the host with that VIP.

Invariants: nothing here does I/O; workload uids are
"Kubernetes/networking.istio.io/ServiceEntry/<ns>/<name>/<address or host>" (stable and unique per endpoint).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ambient.protocol.gen.istio.workload import workload_pb2 as wl

Obj = dict[str, Any]

AUTO_ALLOCATE_CIDR = ipaddress.IPv4Network("240.240.0.0/16")
_SE_UID_PREFIX = "networking.istio.io/ServiceEntry"
_PROTOCOLS: dict[str, wl.AppProtocol] = {"HTTP": wl.HTTP11, "HTTP2": wl.HTTP2, "GRPC": wl.GRPC,
                                         "TCP": wl.TCP, "TLS": wl.TLS, "HTTPS": wl.TLS}


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def se_key(obj: Obj) -> tuple[str, str]:
    m = _meta(obj)
    return str(m.get("namespace") or "default"), str(m.get("name") or "")


def hosts(obj: Obj) -> list[str]:
    return [str(h).lower().rstrip(".") for h in (obj.get("spec") or {}).get("hosts") or []]


def static_ips(obj: Obj) -> list[bytes]:
    """The single-IP `spec.addresses` as raw bytes (CIDRs route nothing at the node proxy)."""
    out: list[bytes] = []
    for text in (obj.get("spec") or {}).get("addresses") or []:
        try:
            net = ipaddress.ip_network(str(text), strict=False)
        except ValueError:
            continue
        if net.num_addresses == 1:
            out.append(net.network_address.packed)
    return out


def wants_auto_vip(obj: Obj) -> bool:
    """Istio allocates VIPs only for resolution other than NONE, and never for wildcard hosts."""
    spec = obj.get("spec") or {}
    return not static_ips(obj) and spec.get("resolution", "NONE") != "NONE"


def allocate_vips(wanted: Iterable[str], previous: Mapping[str, str]) -> dict[str, str]:
    """VIP per key ("ns/name/host") of `wanted`: kept from `previous` when present, else the key's hash slot
    in AUTO_ALLOCATE_CIDR, probing linearly past taken ones (network and broadcast addresses skipped)."""
    keys = sorted(set(wanted))
    out = {k: previous[k] for k in keys if k in previous}
    taken = set(out.values())
    size = AUTO_ALLOCATE_CIDR.num_addresses
    base = int(AUTO_ALLOCATE_CIDR.network_address)
    for key in keys:
        if key in out:
            continue
        slot = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % size
        for step in range(size):
            offset = (slot + step) % size
            if offset in (0, size - 1):
                continue
            ip = str(ipaddress.IPv4Address(base + offset))
            if ip not in taken:
                out[key] = ip
                taken.add(ip)
                break
    return out


def vip_key(obj: Obj, host: str) -> str:
    ns, name = se_key(obj)
    return f"{ns}/{name}/{host}"


@dataclass
class Translation:
    services: dict[str, wl.Service] = field(default_factory=dict)  # "ns/host" -> Service
    workloads: dict[str, wl.Workload] = field(default_factory=dict)  # uid -> Workload


def _ports(obj: Obj) -> list[Obj]:
    return [p for p in (obj.get("spec") or {}).get("ports") or [] if isinstance(p, dict)]


def translate(
    obj: Obj, vips: Mapping[str, str], waypoint: wl.GatewayAddress | None = None, cluster_id: str = "Kubernetes"
) -> Translation:
    """The Services and Workloads of one ServiceEntry (`vips`: the auto-allocated ones, by `vip_key`)."""
    ns, name = se_key(obj)
    spec = obj.get("spec") or {}
    resolution = str(spec.get("resolution") or "NONE")
    out = Translation()
    ports = _ports(obj)
    for host in hosts(obj):
        svc = wl.Service(name=name, namespace=ns, hostname=host)
        addrs = static_ips(obj)
        if not addrs and vip_key(obj, host) in vips:
            addrs = [ipaddress.ip_address(vips[vip_key(obj, host)]).packed]
        for b in addrs:
            svc.addresses.append(wl.NetworkAddress(network="", address=b))
        if addrs:
            svc.ip_families = wl.IPV4_ONLY if all(len(b) == 4 for b in addrs) else wl.DUAL
        for p in ports:
            svc.ports.append(wl.Port(service_port=int(p.get("number") or 0),
                                     target_port=int(p.get("targetPort") or p.get("number") or 0),
                                     app_protocol=_PROTOCOLS.get(str(p.get("protocol") or "").upper(), wl.UNKNOWN)))
        svc.subject_alt_names.extend(str(s) for s in spec.get("subjectAltNames") or [])
        if resolution == "NONE":
            svc.load_balancing.CopyFrom(wl.LoadBalancing(mode=wl.LoadBalancing.PASSTHROUGH))
        if waypoint is not None:
            svc.waypoint.CopyFrom(waypoint)
        out.services[f"{ns}/{host}"] = svc
    if resolution == "NONE":
        return out
    endpoints = [e for e in spec.get("endpoints") or [] if isinstance(e, dict)]
    if not endpoints and resolution != "STATIC":
        endpoints = [{"address": h, "_host": True} for h in hosts(obj)]
    for ep in endpoints:
        address = str(ep.get("address") or "")
        if not address:
            continue
        w = wl.Workload(
            uid=f"{cluster_id}/{_SE_UID_PREFIX}/{ns}/{name}/{address}",
            name=name, namespace=ns, tunnel_protocol=wl.NONE, trust_domain="cluster.local",
            service_account=str(ep.get("serviceAccount") or "default"), canonical_name=name,
            canonical_revision="latest", workload_type=wl.POD, workload_name=name, status=wl.HEALTHY,
            cluster_id=cluster_id,
        )
        try:
            w.addresses.append(ipaddress.ip_address(address).packed)
        except ValueError:
            w.hostname = address
        if ep.get("weight") is not None:
            w.capacity.value = int(ep["weight"])
        ep_ports: Mapping[str, int] = ep.get("ports") or {}
        # A host's own hostname workload backs only that host; listed endpoints back every host.
        backed = [address] if ep.get("_host") else hosts(obj)
        for host in backed:
            key = f"{ns}/{host}"
            for p in ports:
                number = int(p.get("number") or 0)
                target = ep_ports.get(str(p.get("name") or "")) or p.get("targetPort") or number
                w.services[key].ports.append(wl.Port(service_port=number, target_port=int(target)))
        out.workloads[w.uid] = w
    return out


def entry_status(obj: Obj, vips: Mapping[str, str]) -> tuple[list[Obj], tuple[str, str, str]]:
    """What the control plane writes back on a ServiceEntry, as Istio's IP auto-allocation does:
    `status.addresses` (`{host, value}` per host given an auto-allocated VIP, in host order) and the
    (status, reason, message) of its `Accepted` condition naming how the node proxies reach the hosts (False /
    UnsupportedValue when `exportTo` narrows visibility: as in Istio ambient, it is not enforced)."""
    spec = obj.get("spec") or {}
    resolution = str(spec.get("resolution") or "NONE")
    addresses = [{"host": h, "value": vips[vip_key(obj, h)]} for h in hosts(obj) if vip_key(obj, h) in vips]
    if static_ips(obj):
        how = "spec.addresses"
    elif addresses:
        how = "auto-allocated " + ", ".join(f"{a['host']}={a['value']}" for a in addresses)
    elif resolution == "NONE":
        how = "no address (resolution NONE: connections pass through to the address dialled)"
    else:
        how = "no address"
    served = f"served to the node proxies (resolution {resolution}); addresses: {how}"
    export = [str(x) for x in spec.get("exportTo") or ()]
    if export and export != ["*"]:
        # Istio ambient does not scope ServiceEntries by exportTo either (istio/istio#55163: the node proxies
        # get every Service; exportTo is a sidecar scalability knob, not a boundary): say so, do not pretend.
        return addresses, ("False", "UnsupportedValue", f"{served}; but exportTo {export} is not enforced: "
                           "every namespace's workloads can resolve and reach it (use an AuthorizationPolicy "
                           "on an egress waypoint to restrict who may)")
    return addresses, ("True", "Accepted", served)
