"""Pure translation of Kubernetes-shaped objects into the node proxy's xDS resources.

Role: Pods -> `istio.workload.Workload`, Services -> `istio.workload.Service`, AuthorizationPolicy and
PeerAuthentication -> `istio.security.Authorization` (protocols.md section 3). Nothing here does I/O or
keeps state: every function gets the object plus the few related objects it depends on (a `PodContext`),
so the index (`controlplane.index`) decides what to recompute and these functions stay table-testable.

Invariants:
- Resource names: workload = pod `metadata.uid`; service = "namespace/hostname"; authorization =
  "namespace/name" (`resource_name` computes them from the messages).
- A pod is enrolled (tunnel protocol HBONE) when its label `istio.io/dataplane-mode` is `ambient`, or its
  namespace's is and the pod's is not `none`; waypoint pods speak HBONE natively and are HBONE too.
- Policy translation lives in `controlplane.policy` (CUSTOM/AUDIT not sent, HTTP-only rules narrowed,
  PeerAuthentication STRICT as Istio's static DENY policy) and is re-exported here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ambient.controlplane.policy import (  # re-exported: translate is the one import for all of it
    CONVERTED_PA_PREFIX,
    DRY_RUN_ANNOTATION,
    ROOT_NAMESPACE,
    STATIC_STRICT_NAME,
    PolicyTranslation,
    authorization_from_policy,
    cidr,
    converted_peer_authentication,
    parent_strict,
    peer_authentication_refs,
    policy_scope,
    policy_selector,
    selector_matches,
    static_strict_policy,
    string_match,
)
from ambient.protocol.gen.istio.security import authorization_pb2 as sec
from ambient.protocol.gen.istio.workload import workload_pb2 as wl

Obj = dict[str, Any]

CLUSTER_ID = "Kubernetes"
TRUST_DOMAIN = "cluster.local"
DOMAIN_SUFFIX = "svc.cluster.local"
HBONE_PORT = 15008

DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
USE_WAYPOINT_LABEL = "istio.io/use-waypoint"
USE_WAYPOINT_NS_LABEL = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR_LABEL = "istio.io/waypoint-for"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
MANAGED_GATEWAY_LABEL = "gateway.istio.io/managed"
MESH_CONTROLLER = "istio.io-mesh-controller"

_CANONICAL_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_CANONICAL_REVISION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
_APP_PROTOCOLS: dict[str, wl.AppProtocol] = {
    "http": wl.HTTP11,
    "http1": wl.HTTP11,
    "http2": wl.HTTP2,
    "h2c": wl.HTTP2,
    "kubernetes.io/h2c": wl.HTTP2,
    "grpc": wl.GRPC,
    "tcp": wl.TCP,
    "tls": wl.TLS,
}
_RS_HASH_RE = re.compile(r"^(.+)-[0-9a-z]{5,10}$")
_CRONJOB_JOB_RE = re.compile(r"^(.+)-[0-9]{8,}$")


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _labels(obj: Obj) -> Mapping[str, str]:
    return _meta(obj).get("labels") or {}


def _key(obj: Obj) -> str:
    m = _meta(obj)
    return f"{m.get('namespace') or ''}/{m.get('name') or ''}"


def service_hostname(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.{DOMAIN_SUFFIX}"


def _ip_bytes(text: str) -> bytes | None:
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------- pods


def is_enrolled(pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str]) -> bool:
    mode = pod_labels.get(DATAPLANE_MODE_LABEL)
    if mode is not None:
        return mode == "ambient"
    return namespace_labels.get(DATAPLANE_MODE_LABEL) == "ambient"


def is_waypoint_pod(pod_labels: Mapping[str, str]) -> bool:
    return pod_labels.get(MANAGED_GATEWAY_LABEL) == MESH_CONTROLLER


@dataclass(frozen=True)
class PodContext:
    """Everything a pod's Workload depends on besides the pod (all of the pod's namespace unless said).

    `selector_policies`: (resource name, matchLabels) of the selector-scoped policies that are sent, of the
    pod's namespace and of the root namespace. `peer_authentications`: PeerAuthentication objects of the
    pod's namespace and of the root namespace. `gateways`: "ns/name" -> Gateway object (any namespace).
    """

    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    services: Sequence[Obj] = ()
    selector_policies: Sequence[tuple[str, Mapping[str, str]]] = ()
    peer_authentications: Sequence[Obj] = ()
    gateways: Mapping[str, Obj] = field(default_factory=dict)
    root_namespace: str = ROOT_NAMESPACE

    @cached_property
    def _services_by_label(self) -> dict[tuple[str, str], list[Obj]]:
        # Services indexed by one (key, value) of their selector: a pod only checks the Services that
        # share a label with it, not every Service of the namespace (1,000 Services x 10,000 pods).
        out: dict[tuple[str, str], list[Obj]] = {}
        for svc in self.services:
            sel = (svc.get("spec") or {}).get("selector") or {}
            if sel:
                out.setdefault(min(sel.items()), []).append(svc)
        return out

    def services_for(self, labels: Mapping[str, str]) -> list[Obj]:
        """The Services whose (non-empty) selector matches `labels`, in the order of `services`."""
        index = self._services_by_label
        found = [s for item in labels.items() for s in index.get(item, ())]
        if len(found) > 1:
            order = {id(s): i for i, s in enumerate(self.services)}
            found = sorted({id(s): s for s in found}.values(), key=lambda s: order[id(s)])
        return [s for s in found if selector_matches((s.get("spec") or {}).get("selector") or {}, labels)]


def workload_identity(pod: Obj) -> tuple[str, str]:
    """(name, type) of the workload that owns a pod: a Deployment (ReplicaSet hash stripped), a Job or
    CronJob, or the pod itself."""
    meta = _meta(pod)
    labels = meta.get("labels") or {}
    for ref in meta.get("ownerReferences") or []:
        kind, name = ref.get("kind"), str(ref.get("name") or "")
        if not name:
            continue
        if kind == "Deployment":
            return name, "DEPLOYMENT"
        if kind == "ReplicaSet":
            pth = labels.get("pod-template-hash")
            if pth and name.endswith("-" + pth):
                return name[: -len(pth) - 1], "DEPLOYMENT"
            m = _RS_HASH_RE.match(name)
            return (m.group(1) if m else name), "DEPLOYMENT"
        if kind == "Job":
            m = _CRONJOB_JOB_RE.match(name)
            return (m.group(1), "CRONJOB") if m else (name, "JOB")
        if kind == "CronJob":
            return name, "CRONJOB"
    return str(meta.get("name") or ""), "POD"


def _first_label(labels: Mapping[str, str], keys: Iterable[str]) -> str | None:
    for k in keys:
        if labels.get(k):
            return labels[k]
    return None


def _pod_ready(pod: Obj) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status")) == "True"
    return False


def pod_ips(pod: Obj) -> list[bytes]:
    status = pod.get("status") or {}
    texts = [str(p.get("ip")) for p in status.get("podIPs") or [] if p.get("ip")]
    if not texts and status.get("podIP"):
        texts = [str(status["podIP"])]
    out: list[bytes] = []
    for t in texts:
        b = _ip_bytes(t)
        if b is not None and b not in out:
            out.append(b)
    return out


def app_protocol(port: Obj) -> wl.AppProtocol:
    proto = str(port.get("appProtocol") or "").lower()
    if proto in _APP_PROTOCOLS:
        return _APP_PROTOCOLS[proto]
    name = str(port.get("name") or "").lower()
    prefix = name.split("-", 1)[0]
    return _APP_PROTOCOLS.get(prefix, wl.UNKNOWN)


def _container_port(pod: Obj, name: str) -> int | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == name and p.get("containerPort"):
                return int(p["containerPort"])
    return None


def pod_service_ports(pod: Obj, service: Obj) -> list[wl.Port]:
    """A Service's ports as this pod serves them: named targetPorts resolved against the pod's container
    ports (a name the pod does not declare drops that port, as the reference does)."""
    out: list[wl.Port] = []
    for p in (service.get("spec") or {}).get("ports") or []:
        target = p.get("targetPort", p.get("port"))
        if isinstance(target, str) and not target.isdigit():
            resolved = _container_port(pod, target)
            if resolved is None:
                continue
            target_num = resolved
        else:
            target_num = int(target if target is not None else p.get("port") or 0)
        out.append(wl.Port(service_port=int(p.get("port") or 0), target_port=target_num, app_protocol=app_protocol(p)))
    return out


def _waypoint_ref(
    labels: Mapping[str, str], namespace: str, namespace_labels: Mapping[str, str]
) -> tuple[str, str] | None:
    """(namespace, gateway name) named by `istio.io/use-waypoint` on the object, else its namespace;
    None when unset or `none` (the object's own `none` opts out of a namespace waypoint)."""
    for src in (labels, namespace_labels):
        name = src.get(USE_WAYPOINT_LABEL)
        if name:
            if name == "none":
                return None
            return src.get(USE_WAYPOINT_NS_LABEL) or namespace, name
    return None


def _waypoint_address(
    ref: tuple[str, str] | None, gateways: Mapping[str, Obj], for_kind: str, self_gateway: str | None
) -> wl.GatewayAddress | None:
    """The GatewayAddress of a waypoint if it serves `for_kind` ("service" or "workload").

    The Gateway's `istio.io/waypoint-for` label decides (default "service"); without a Gateway object the
    default applies, so a Service label still binds before Gateways are modelled."""
    if ref is None:
        return None
    ns, name = ref
    if self_gateway == f"{ns}/{name}":
        return None  # a waypoint never routes through itself
    gw = gateways.get(f"{ns}/{name}")
    traffic = (_labels(gw).get(WAYPOINT_FOR_LABEL) if gw is not None else None) or "service"
    if traffic not in ("all", for_kind):
        return None
    return wl.GatewayAddress(
        hostname=wl.NamespacedHostname(namespace=ns, hostname=service_hostname(name, ns)),
        hbone_mtls_port=HBONE_PORT,
    )


def workload_from_pod(pod: Obj, ctx: PodContext) -> wl.Workload | None:
    """The Workload for a pod, or None while it has no IP or after it terminated."""
    meta = _meta(pod)
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    uid = str(meta.get("uid") or "")
    ips = pod_ips(pod)
    if not uid or not ips or status.get("phase") in ("Succeeded", "Failed"):
        return None
    ns = str(meta.get("namespace") or "default")
    labels = meta.get("labels") or {}
    host_network = bool(spec.get("hostNetwork"))
    waypoint_pod = is_waypoint_pod(labels)
    enrolled = not host_network and (waypoint_pod or is_enrolled(labels, ctx.namespace_labels))
    wname, wtype = workload_identity(pod)
    self_gw = f"{ns}/{labels[GATEWAY_NAME_LABEL]}" if labels.get(GATEWAY_NAME_LABEL) else None
    w = wl.Workload(
        uid=uid,
        name=str(meta.get("name") or ""),
        namespace=ns,
        addresses=ips,
        tunnel_protocol=wl.HBONE if enrolled else wl.NONE,
        trust_domain=TRUST_DOMAIN,
        service_account=str(spec.get("serviceAccountName") or "default"),
        node=str(spec.get("nodeName") or ""),
        canonical_name=_first_label(labels, _CANONICAL_NAME_LABELS) or wname,
        canonical_revision=_first_label(labels, _CANONICAL_REVISION_LABELS) or "latest",
        workload_type=getattr(wl, wtype),
        workload_name=wname,
        status=wl.HEALTHY if _pod_ready(pod) and not meta.get("deletionTimestamp") else wl.UNHEALTHY,
        cluster_id=CLUSTER_ID,
        network_mode=wl.HOST_NETWORK if host_network else wl.STANDARD,
    )
    waypoint = _waypoint_address(_waypoint_ref(labels, ns, ctx.namespace_labels), ctx.gateways, "workload", self_gw)
    if waypoint is not None:
        w.waypoint.CopyFrom(waypoint)
    policies = [name for name, sel in ctx.selector_policies if selector_matches(sel, labels)]
    policies += peer_authentication_refs(labels, ns, ctx.peer_authentications, ctx.root_namespace)
    w.authorization_policies.extend(sorted(set(policies)))
    for svc in ctx.services_for(labels):
        smeta = _meta(svc)
        key = f"{ns}/{service_hostname(str(smeta.get('name')), ns)}"
        w.services[key].ports.extend(pod_service_ports(pod, svc))
    return w


# ------------------------------------------------------------------------------------------ services


def service_from_k8s(
    svc: Obj, namespace_labels: Mapping[str, str] | None = None, gateways: Mapping[str, Obj] | None = None
) -> wl.Service | None:
    """The Service resource for a Kubernetes Service (None for ExternalName services)."""
    meta = _meta(svc)
    spec = svc.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return None
    name, ns = str(meta.get("name") or ""), str(meta.get("namespace") or "default")
    s = wl.Service(name=name, namespace=ns, hostname=service_hostname(name, ns))
    ips = [str(x) for x in spec.get("clusterIPs") or [] if x and x != "None"]
    if not ips and spec.get("clusterIP") and spec.get("clusterIP") != "None":
        ips = [str(spec["clusterIP"])]
    families: set[int] = set()
    for text in ips:
        b = _ip_bytes(text)
        if b is not None:
            s.addresses.append(wl.NetworkAddress(network="", address=b))
            families.add(len(b))
    if families == {4}:
        s.ip_families = wl.IPV4_ONLY
    elif families == {16}:
        s.ip_families = wl.IPV6_ONLY
    elif families:
        s.ip_families = wl.DUAL
    for p in spec.get("ports") or []:
        target = p.get("targetPort", p.get("port"))
        target_num = int(target) if isinstance(target, int) or (isinstance(target, str) and target.isdigit()) else 0
        s.ports.append(
            wl.Port(service_port=int(p.get("port") or 0), target_port=target_num, app_protocol=app_protocol(p))
        )
    labels = meta.get("labels") or {}
    self_gw = f"{ns}/{labels[GATEWAY_NAME_LABEL]}" if labels.get(GATEWAY_NAME_LABEL) else None
    waypoint = _waypoint_address(_waypoint_ref(labels, ns, namespace_labels or {}), gateways or {}, "service", self_gw)
    if waypoint is not None:
        s.waypoint.CopyFrom(waypoint)
    return s


# ------------------------------------------------------------------------------------------- naming


def resource_name(resource: wl.Address | sec.Authorization) -> str:
    """The xDS resource name: workload uid, "namespace/hostname" for a service, "namespace/name"."""
    if isinstance(resource, sec.Authorization):
        return f"{resource.namespace}/{resource.name}"
    if resource.HasField("workload"):
        return resource.workload.uid
    return f"{resource.service.namespace}/{resource.service.hostname}"


__all__ = [
    "CLUSTER_ID",
    "CONVERTED_PA_PREFIX",
    "DRY_RUN_ANNOTATION",
    "ROOT_NAMESPACE",
    "STATIC_STRICT_NAME",
    "PodContext",
    "PolicyTranslation",
    "authorization_from_policy",
    "cidr",
    "converted_peer_authentication",
    "parent_strict",
    "peer_authentication_refs",
    "policy_scope",
    "policy_selector",
    "resource_name",
    "selector_matches",
    "service_from_k8s",
    "service_hostname",
    "static_strict_policy",
    "string_match",
    "workload_from_pod",
]
