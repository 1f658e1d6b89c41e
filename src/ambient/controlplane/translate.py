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
- CUSTOM/AUDIT policies and policies attached by `targetRefs` (they are for waypoints) are never sent.
  HTTP-only fields drop the whole rule inside an ALLOW (the rule can never match: narrower, safe) and are
  ignored inside a DENY (it denies more: safe); both are reported as "more restrictive than requested".
- PeerAuthentication STRICT follows Istio: one static DENY policy `<root>/istio_converted_static_strict`
  (deny any connection without a peer identity) referenced by each workload whose effective mode is STRICT;
  a selector policy with port-level modes becomes `<ns>/converted_peer_authentication_<name>` instead.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import empty_pb2

from ambient.protocol.gen.istio.security import authorization_pb2 as sec
from ambient.protocol.gen.istio.workload import workload_pb2 as wl

Obj = dict[str, Any]

ROOT_NAMESPACE = "istio-system"
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
DRY_RUN_ANNOTATION = "istio.io/dry-run"
STATIC_STRICT_NAME = "istio_converted_static_strict"
CONVERTED_PA_PREFIX = "converted_peer_authentication_"

_CANONICAL_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_CANONICAL_REVISION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
_APP_PROTOCOLS = {
    "http": wl.HTTP11,
    "http1": wl.HTTP11,
    "http2": wl.HTTP2,
    "h2c": wl.HTTP2,
    "kubernetes.io/h2c": wl.HTTP2,
    "grpc": wl.GRPC,
    "tcp": wl.TCP,
    "tls": wl.TLS,
}
# `when` keys a node proxy can enforce; every other key (request.*, ...) is HTTP-only.
_L4_WHEN_KEYS = {
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
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


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """matchLabels semantics: every selector pair present in labels. An empty selector matches all."""
    return all(labels.get(k) == v for k, v in selector.items())


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


def app_protocol(port: Obj) -> int:
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
    for svc in ctx.services:
        sel = (svc.get("spec") or {}).get("selector") or {}
        if not sel or not selector_matches(sel, labels):
            continue
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
        s.ports.append(wl.Port(service_port=int(p.get("port") or 0), target_port=target_num, app_protocol=app_protocol(p)))
    labels = meta.get("labels") or {}
    self_gw = f"{ns}/{labels[GATEWAY_NAME_LABEL]}" if labels.get(GATEWAY_NAME_LABEL) else None
    waypoint = _waypoint_address(_waypoint_ref(labels, ns, namespace_labels or {}), gateways or {}, "service", self_gw)
    if waypoint is not None:
        s.waypoint.CopyFrom(waypoint)
    return s


# ------------------------------------------------------------------------------------- authorization


@dataclass(frozen=True)
class PolicyTranslation:
    """A translated AuthorizationPolicy: the resource to send (None: not sent) and a status message
    explaining any narrowing or omission (None: enforced as written)."""

    authorization: sec.Authorization | None
    message: str | None = None


def policy_scope(namespace: str, selector: Mapping[str, str] | None, root_namespace: str) -> int:
    if selector:
        return sec.WORKLOAD_SELECTOR
    return sec.GLOBAL if namespace == root_namespace else sec.NAMESPACE


def policy_selector(policy: Obj) -> dict[str, str]:
    return dict(((policy.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})


def string_match(value: str, *, strip_spiffe: bool = False) -> sec.StringMatch:
    """Istio's string forms: "*" presence, "x*" prefix, "*x" suffix, else exact."""
    if strip_spiffe and value.startswith("spiffe://"):
        value = value[len("spiffe://") :]
    if value == "*":
        return sec.StringMatch(presence=empty_pb2.Empty())
    if value.endswith("*"):
        return sec.StringMatch(prefix=value[:-1])
    if value.startswith("*"):
        return sec.StringMatch(suffix=value[1:])
    return sec.StringMatch(exact=value)


def cidr(value: str) -> sec.Address:
    net = ipaddress.ip_network(value.strip(), strict=False)
    return sec.Address(address=net.network_address.packed, length=net.prefixlen)


def _ports(values: Iterable[Any]) -> list[int]:
    return [int(v) for v in values]


_SOURCE_L7 = ("requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks")
_OPERATION_L7 = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")


def _source_match(src: Obj) -> sec.Match:
    return sec.Match(
        principals=[string_match(v, strip_spiffe=True) for v in src.get("principals") or []],
        not_principals=[string_match(v, strip_spiffe=True) for v in src.get("notPrincipals") or []],
        namespaces=[string_match(v) for v in src.get("namespaces") or []],
        not_namespaces=[string_match(v) for v in src.get("notNamespaces") or []],
        source_ips=[cidr(v) for v in src.get("ipBlocks") or []],
        not_source_ips=[cidr(v) for v in src.get("notIpBlocks") or []],
    )


def _when_match(key: str, values: list[str], negate: bool) -> sec.Match:
    m = sec.Match()
    if key == "source.ip":
        (m.not_source_ips if negate else m.source_ips).extend(cidr(v) for v in values)
    elif key == "source.namespace":
        (m.not_namespaces if negate else m.namespaces).extend(string_match(v) for v in values)
    elif key == "source.principal":
        (m.not_principals if negate else m.principals).extend(string_match(v, strip_spiffe=True) for v in values)
    elif key == "destination.ip":
        (m.not_destination_ips if negate else m.destination_ips).extend(cidr(v) for v in values)
    elif key == "destination.port":
        (m.not_destination_ports if negate else m.destination_ports).extend(_ports(values))
    return m


def _translate_rule(rule: Obj, allow: bool, dropped: list[str]) -> sec.Rule | None:
    """One AuthorizationPolicy rule -> one Rule: a clause for `from`, one for `to`, one per `when`.
    Returns None when an ALLOW rule uses HTTP-only fields (the rule must never match)."""
    out = sec.Rule()
    l7: list[str] = []
    froms = rule.get("from") or []
    if froms:
        clause = sec.Clause()
        for f in froms:
            src = f.get("source") or {}
            l7 += [f"from.source.{k}" for k in _SOURCE_L7 if src.get(k)]
            clause.matches.append(_source_match(src))
        out.clauses.append(clause)
    tos = rule.get("to") or []
    if tos:
        clause = sec.Clause()
        for t in tos:
            op = t.get("operation") or {}
            l7 += [f"to.operation.{k}" for k in _OPERATION_L7 if op.get(k)]
            clause.matches.append(
                sec.Match(
                    destination_ports=_ports(op.get("ports") or []),
                    not_destination_ports=_ports(op.get("notPorts") or []),
                )
            )
        out.clauses.append(clause)
    for cond in rule.get("when") or []:
        key = str(cond.get("key") or "")
        if key not in _L4_WHEN_KEYS:
            l7.append(f"when.{key}")
            continue
        clause = sec.Clause()
        if cond.get("values"):
            clause.matches.append(_when_match(key, list(cond["values"]), negate=False))
        if cond.get("notValues"):
            clause.matches.append(_when_match(key, list(cond["notValues"]), negate=True))
        out.clauses.append(clause)
    if l7:
        dropped.extend(l7)
        if allow:
            return None
    return out


def authorization_from_policy(policy: Obj, root_namespace: str = ROOT_NAMESPACE) -> PolicyTranslation:
    """AuthorizationPolicy (security.istio.io/v1) -> Authorization, as protocols.md s.3 describes."""
    meta = _meta(policy)
    spec = policy.get("spec") or {}
    name, ns = str(meta.get("name") or ""), str(meta.get("namespace") or "default")
    action = str(spec.get("action") or "ALLOW").upper()
    if action in ("CUSTOM", "AUDIT"):
        return PolicyTranslation(None, f"not enforced by the node proxy: action {action} is not supported at L4")
    if action not in ("ALLOW", "DENY"):
        return PolicyTranslation(None, f"not enforced: unknown action {action!r}")
    if spec.get("targetRefs") or spec.get("targetRef"):
        return PolicyTranslation(None, None)  # bound to a waypoint/gateway, which enforces it (L7)
    selector = policy_selector(policy)
    allow = action == "ALLOW"
    dropped: list[str] = []
    try:
        rules = [r for r in (_translate_rule(rule, allow, dropped) for rule in spec.get("rules") or []) if r is not None]
    except ValueError as exc:  # a bad CIDR or port that validation let through
        return PolicyTranslation(None, f"not enforced: invalid value: {exc}")
    annotations = meta.get("annotations") or {}
    auth = sec.Authorization(
        name=name,
        namespace=ns,
        scope=policy_scope(ns, selector, root_namespace),  # type: ignore[arg-type]
        action=sec.ALLOW if allow else sec.DENY,
        rules=rules,
        dry_run=str(annotations.get(DRY_RUN_ANNOTATION, "")).lower() == "true",
    )
    message = None
    if dropped:
        fields = ", ".join(sorted(set(dropped)))
        how = (
            "rules using HTTP attributes never match at L4 (they are dropped)"
            if allow
            else "HTTP attributes are ignored, so the DENY applies to all matching connections"
        )
        message = f"more restrictive than requested: {how}: {fields}; use a waypoint for L7 policy"
    return PolicyTranslation(auth, message)


# -------------------------------------------------------------------------------- peer authentication


def _pa_mode(value: Any) -> str:
    mode = str(((value or {}).get("mode")) or "UNSET").upper()
    # DISABLE cannot be honoured between mesh workloads (HBONE is always mTLS): it acts as PERMISSIVE.
    return "PERMISSIVE" if mode == "DISABLE" else mode


def _oldest(objs: Iterable[Obj]) -> Obj | None:
    ordered = sorted(objs, key=lambda o: (str(_meta(o).get("creationTimestamp") or ""), str(_meta(o).get("name"))))
    return ordered[0] if ordered else None


def _parent_strict(namespace: str, pas: Sequence[Obj], root_namespace: str) -> bool:
    """Effective mode from the namespace-wide PeerAuthentication, else the mesh-wide one."""
    for scope_ns in (namespace, root_namespace):
        pa = _oldest(p for p in pas if _meta(p).get("namespace") == scope_ns and not policy_selector(p))
        if pa is not None:
            mode = _pa_mode((pa.get("spec") or {}).get("mtls"))
            if mode != "UNSET":
                return mode == "STRICT"
    return False


def _selected_pa(labels: Mapping[str, str], namespace: str, pas: Sequence[Obj]) -> Obj | None:
    """The workload's selector PeerAuthentication (the oldest when several match); root-namespace
    selector policies are ignored, as in the reference."""
    return _oldest(
        p
        for p in pas
        if _meta(p).get("namespace") == namespace
        and policy_selector(p)
        and selector_matches(policy_selector(p), labels)
    )


def _port_modes(pa: Obj) -> dict[int, str]:
    return {int(k): _pa_mode(v) for k, v in ((pa.get("spec") or {}).get("portLevelMtls") or {}).items()}


def peer_authentication_refs(
    labels: Mapping[str, str], namespace: str, pas: Sequence[Obj], root_namespace: str = ROOT_NAMESPACE
) -> list[str]:
    """The converted PeerAuthentication policies a workload must reference (0 or 1 name)."""
    parent = _parent_strict(namespace, pas, root_namespace)
    pa = _selected_pa(labels, namespace, pas)
    if pa is None:
        return [f"{root_namespace}/{STATIC_STRICT_NAME}"] if parent else []
    base = _pa_mode((pa.get("spec") or {}).get("mtls"))
    strict = parent if base == "UNSET" else base == "STRICT"
    ports = _port_modes(pa)
    if ports and converted_peer_authentication(pa, parent, root_namespace) is not None:
        return [f"{namespace}/{CONVERTED_PA_PREFIX}{_meta(pa).get('name')}"]
    return [f"{root_namespace}/{STATIC_STRICT_NAME}"] if strict else []


def _deny_plaintext(**ports: list[int]) -> sec.Rule:
    match = sec.Match(not_principals=[sec.StringMatch(presence=empty_pb2.Empty())], **ports)
    return sec.Rule(clauses=[sec.Clause(matches=[match])])


def static_strict_policy(root_namespace: str = ROOT_NAMESPACE) -> sec.Authorization:
    """DENY every connection without a peer identity; referenced by workloads whose mode is STRICT."""
    return sec.Authorization(
        name=STATIC_STRICT_NAME,
        namespace=root_namespace,
        scope=sec.WORKLOAD_SELECTOR,
        action=sec.DENY,
        rules=[_deny_plaintext()],
    )


def converted_peer_authentication(
    pa: Obj, parent_strict: bool, root_namespace: str = ROOT_NAMESPACE
) -> sec.Authorization | None:
    """A selector PeerAuthentication with port-level modes as a DENY policy (None: nothing to convert).

    Base STRICT (own or inherited) with PERMISSIVE ports: deny plaintext except on those ports.
    Base PERMISSIVE with STRICT ports: deny plaintext on those ports only."""
    meta = _meta(pa)
    ns = str(meta.get("namespace") or "default")
    if ns == root_namespace or not policy_selector(pa):
        return None
    ports = _port_modes(pa)
    if not ports:
        return None
    base = _pa_mode((pa.get("spec") or {}).get("mtls"))
    strict = parent_strict if base == "UNSET" else base == "STRICT"
    if strict:
        open_ports = sorted(p for p, m in ports.items() if m == "PERMISSIVE")
        if not open_ports:
            return None
        rule = _deny_plaintext(not_destination_ports=open_ports)
    else:
        strict_ports = sorted(p for p, m in ports.items() if m == "STRICT")
        if not strict_ports:
            return None
        rule = _deny_plaintext(destination_ports=strict_ports)
    return sec.Authorization(
        name=f"{CONVERTED_PA_PREFIX}{meta.get('name')}",
        namespace=ns,
        scope=sec.WORKLOAD_SELECTOR,
        action=sec.DENY,
        rules=[rule],
    )


# ------------------------------------------------------------------------------------------- naming


def resource_name(resource: wl.Address | sec.Authorization) -> str:
    """The xDS resource name: workload uid, "namespace/hostname" for a service, "namespace/name"."""
    if isinstance(resource, sec.Authorization):
        return f"{resource.namespace}/{resource.name}"
    if resource.HasField("workload"):
        return resource.workload.uid
    return f"{resource.service.namespace}/{resource.service.hostname}"
