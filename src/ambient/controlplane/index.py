"""The control plane's index of watched objects and of the xDS resources they translate to.

Role: hold the latest Namespace, Pod, Service, AuthorizationPolicy, PeerAuthentication and Gateway objects,
track which resources an object change can affect, and on `flush()` recompute only those (with the pure
functions of `translate`) and return what changed. Also answers the CA's question "which service accounts
run on node N".

Invariants:
- Single-threaded (the control plane's event loop); no locks.
- `flush()` returns only real changes: a recomputed resource equal to the previous one is not reported, so
  a status-only object update does not reach proxies.
- Dependencies (why a resource is recomputed): a pod on its own change, its namespace's change, a Service
  or selector policy whose old or new selector matches it, any PeerAuthentication or Gateway change of
  its namespace or the root namespace; a Service on its own change, its namespace's, or any Gateway's.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ambient.controlplane import serviceentry as se
from ambient.controlplane import translate as tr
from ambient.controlplane.policy import peer_authentication_warning
from ambient.controlplane.route_policy_status import CONDITION_TYPE as VS_CONDITION_TYPE
from ambient.controlplane.route_policy_status import (
    destination_rule_status_fields,
    is_waypoint_gateway,
    request_authentication_status_fields,
    virtual_service_status_fields,
)
from ambient.controlplane.route_policy_status import written_condition as written_vs_condition
from ambient.protocol.gen.istio.security import authorization_pb2 as sec
from ambient.protocol.gen.istio.workload import workload_pb2 as wl

log = logging.getLogger(__name__)

Obj = dict[str, Any]
KINDS = ("Namespace", "Pod", "Service", "AuthorizationPolicy", "PeerAuthentication", "Gateway", "HTTPRoute",
         "ServiceEntry", "VirtualService", "GRPCRoute", "TCPRoute", "RequestAuthentication", "DestinationRule",
         "ReferenceGrant")


@dataclass
class IndexDelta:
    """Changed resources per type: name -> message, or None when removed."""

    addresses: dict[str, wl.Address | None] = field(default_factory=dict)
    authorizations: dict[str, sec.Authorization | None] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.addresses and not self.authorizations


def _ns_name(obj: Obj) -> tuple[str, str]:
    m = obj.get("metadata") or {}
    return str(m.get("namespace") or ""), str(m.get("name") or "")


class MeshIndex:
    """Objects in, changed xDS resources out (see module docstring)."""

    def __init__(self, root_namespace: str = tr.ROOT_NAMESPACE) -> None:
        self.root_namespace = root_namespace
        # kind -> namespace -> name -> object (cluster-scoped kinds use namespace "")
        self._objs: dict[str, dict[str, dict[str, Obj]]] = {k: {} for k in KINDS}
        self._pod_uid: dict[tuple[str, str], str] = {}  # (ns, name) -> workload resource name
        self._node_sas: dict[str, Counter[tuple[str, str]]] = {}  # node -> (ns, sa) -> pod count
        self.addresses: dict[str, wl.Address] = {}
        self.authorizations: dict[str, sec.Authorization] = {}
        self.policy_status: dict[tuple[str, str], str | None] = {}  # AP (ns, name) -> status message
        # AP (ns, name) -> translation whose status condition differs from the object's: to be written back
        # (kind, namespace, name) -> (status, reason, message) of the ZtunnelAccepted condition to write
        self.status_pending: dict[tuple[str, str, str], tuple[str, str, str]] = {}
        # routes: (kind, ns, name) -> (status, reason, message) of the ResolvedRefs condition written beside
        # the pending Accepted one (see `route_resolved_refs`)
        self.route_resolved: dict[tuple[str, str, str], tuple[str, str, str]] = {}
        # (kind, ns, name) -> further status fields written with the pending condition (ServiceEntry addresses)
        self.status_extra: dict[tuple[str, str, str], Obj] = {}
        self._dirty_pods: set[tuple[str, str]] = set()
        self._dirty_services: set[tuple[str, str]] = set()
        self._dirty_policies: set[tuple[str, str]] = set()
        self._dirty_pa = False
        # HTTPRoutes (and GRPCRoutes, TCPRoutes): only their status (waypoints route): (kind, ns, name)
        self._dirty_routes: set[tuple[str, str, str]] = set()
        # RequestAuthentications, DestinationRules: their WaypointAccepted condition: (kind, ns, name)
        self._dirty_auth: set[tuple[str, str, str]] = set()
        self._dirty_vs: set[tuple[str, str]] = set()  # VirtualServices: only their status (waypoints route)
        self._pa_warned: dict[str, str] = {}  # "ns/name" -> the warning last logged for it
        self._dirty_entries: set[tuple[str, str]] = set()  # ServiceEntries to re-translate
        self._entry_keys: dict[tuple[str, str], set[str]] = {}  # ServiceEntry -> address resource names
        self.entry_vips: dict[str, str] = {}  # "ns/name/host" -> auto-allocated VIP

    # ------------------------------------------------------------------ queries
    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self._objs[kind].get(namespace, {}).get(name)

    def objects(self, kind: str, namespace: str | None = None) -> Iterable[Obj]:
        if namespace is not None:
            return list(self._objs[kind].get(namespace, {}).values())
        return [o for by_name in self._objs[kind].values() for o in by_name.values()]

    def node_service_accounts(self, node: str) -> set[tuple[str, str]]:
        """(namespace, service account) of the pods scheduled on `node`."""
        return {k for k, n in self._node_sas.get(node, Counter()).items() if n > 0}

    # ------------------------------------------------------------------ updates
    def replace(self, kind: str, items: Iterable[Obj]) -> None:
        """A full re-list of `kind`: objects not in `items` are deleted."""
        new = {_ns_name(o): o for o in items}
        for ns, by_name in list(self._objs[kind].items()):
            for name, obj in list(by_name.items()):
                if (ns, name) not in new:
                    self.delete(kind, obj)
        for obj in new.values():
            self.upsert(kind, obj)

    def upsert(self, kind: str, obj: Obj) -> None:
        ns, name = _ns_name(obj)
        old = self._objs[kind].setdefault(ns, {}).get(name)
        self._objs[kind][ns][name] = obj
        self._changed(kind, ns, name, old, obj)

    def delete(self, kind: str, obj: Obj) -> None:
        ns, name = _ns_name(obj)
        by_name = self._objs[kind].get(ns, {})
        old = by_name.pop(name, None)
        if not by_name:
            self._objs[kind].pop(ns, None)
        if old is not None:
            self._changed(kind, ns, name, old, None)

    def _changed(self, kind: str, ns: str, name: str, old: Obj | None, new: Obj | None) -> None:
        if kind == "Pod":
            self._dirty_pods.add((ns, name))
            self._track_node(old, -1)
            self._track_node(new, +1)
        elif kind == "Namespace":
            self._dirty_pods.update((name, p) for p in self._objs["Pod"].get(name, {}))
            self._dirty_services.update((name, s) for s in self._objs["Service"].get(name, {}))
        elif kind == "Service":
            self._dirty_services.add((ns, name))
            sels = [((o.get("spec") or {}).get("selector") or {}) for o in (old, new) if o is not None]
            self._dirty_pods_matching(ns, [s for s in sels if s])
        elif kind == "AuthorizationPolicy":
            self._dirty_policies.add((ns, name))
            sels = [tr.policy_selector(o) for o in (old, new) if o is not None]
            sels = [s for s in sels if s]
            self._dirty_pods_matching(None if ns == self.root_namespace else ns, sels)
        elif kind == "PeerAuthentication":
            self._dirty_pa = True
            if ns == self.root_namespace:
                self._dirty_pods.update(self._all_pod_keys())
            else:
                self._dirty_pods.update((ns, p) for p in self._objs["Pod"].get(ns, {}))
        elif kind in ROUTE_KINDS:
            self._dirty_routes.add((kind, ns, name))
        if kind == "ReferenceGrant" or (kind == "Service" and (old is None or new is None)):
            # a route's ResolvedRefs depends on its backends' existence and the grants beside them
            self._dirty_routes.update((k, n, r) for k in ROUTE_KINDS for n, r in self._all_keys(k))
        elif kind in ("RequestAuthentication", "DestinationRule"):
            self._dirty_auth.add((kind, ns, name))
        if kind == "ServiceEntry":
            self._dirty_auth.update(("DestinationRule", n, v) for n, v in self._all_keys("DestinationRule"))
        if kind in ("Service", "Namespace", "Gateway"):
            for k in ("RequestAuthentication", "DestinationRule"):
                self._dirty_auth.update((k, n, v) for n, by_name in self._objs[k].items() for v in by_name)
        if kind == "VirtualService":
            self._dirty_vs.add((ns, name))
        elif kind in ("Service", "Namespace", "Gateway", "HTTPRoute") and self._objs["VirtualService"]:
            # a VirtualService's status depends on its hosts' waypoints and the HTTPRoutes beside it
            self._dirty_vs.update((n, v) for n, by_name in self._objs["VirtualService"].items() for v in by_name)
        elif kind == "ServiceEntry":
            self._dirty_entries.add((ns, name))
        elif kind == "Gateway":
            # Waypoint bindings may change anywhere (use-waypoint-namespace): rare, recompute all.
            self._dirty_pods.update(self._all_pod_keys())
            self._dirty_services.update((n, s) for n, by_name in self._objs["Service"].items() for s in by_name)
            self._dirty_entries.update(self._all_keys("ServiceEntry"))
        if kind == "Namespace":
            self._dirty_entries.update((name, e) for e in self._objs["ServiceEntry"].get(name, {}))

    def _all_keys(self, kind: str) -> list[tuple[str, str]]:
        return [(n, o) for n, by_name in self._objs[kind].items() for o in by_name]

    def _all_pod_keys(self) -> Iterable[tuple[str, str]]:
        return [(n, p) for n, by_name in self._objs["Pod"].items() for p in by_name]

    def _dirty_pods_matching(self, ns: str | None, selectors: list[Mapping[str, str]]) -> None:
        if not selectors:
            return
        spaces = [ns] if ns is not None else list(self._objs["Pod"])
        for space in spaces:
            for pname, pod in self._objs["Pod"].get(space, {}).items():
                labels = (pod.get("metadata") or {}).get("labels") or {}
                if any(tr.selector_matches(s, labels) for s in selectors):
                    self._dirty_pods.add((space, pname))

    def _track_node(self, pod: Obj | None, delta: int) -> None:
        if pod is None:
            return
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        if not node:
            return
        ns = str((pod.get("metadata") or {}).get("namespace") or "default")
        counter = self._node_sas.setdefault(str(node), Counter())
        key = (ns, str(spec.get("serviceAccountName") or "default"))
        counter[key] += delta
        if counter[key] <= 0:
            del counter[key]

    # ------------------------------------------------------------------ recompute
    def _namespace_labels(self, ns: str) -> Mapping[str, str]:
        obj = self.get("Namespace", "", ns)
        return ((obj or {}).get("metadata") or {}).get("labels") or {}

    def _gateways(self) -> dict[str, Obj]:
        return {f"{n}/{g}": obj for n, by_name in self._objs["Gateway"].items() for g, obj in by_name.items()}

    def _pod_context(self, ns: str, gateways: dict[str, Obj]) -> tr.PodContext:
        root = self.root_namespace
        spaces = [ns] if ns == root else [ns, root]
        selector_policies: list[tuple[str, Mapping[str, str]]] = []
        for space in spaces:
            for pname, pol in self._objs["AuthorizationPolicy"].get(space, {}).items():
                sel = tr.policy_selector(pol)
                if sel and f"{space}/{pname}" in self.authorizations:
                    selector_policies.append((f"{space}/{pname}", sel))
        pas = [pa for space in spaces for pa in self._objs["PeerAuthentication"].get(space, {}).values()]
        return tr.PodContext(
            namespace_labels=self._namespace_labels(ns),
            services=list(self._objs["Service"].get(ns, {}).values()),
            selector_policies=selector_policies,
            peer_authentications=pas,
            gateways=gateways,
            root_namespace=root,
        )

    def flush(self) -> IndexDelta:
        """Recompute what the changes since the last flush affect; return the resources that differ."""
        delta = IndexDelta()
        # Policies first: a workload lists only selector policies that are actually sent.
        for ns, name in sorted(self._dirty_policies):
            key = f"{ns}/{name}"
            obj = self.get("AuthorizationPolicy", ns, name)
            result = tr.authorization_from_policy(obj, self.root_namespace) if obj else tr.PolicyTranslation(None)
            if obj is not None:
                if result.message and self.policy_status.get((ns, name)) != result.message:
                    log.warning("AuthorizationPolicy %s: %s", key, result.message)
                self.policy_status[(ns, name)] = result.message
                ours = result.authorization is not None or result.message is not None  # else a waypoint's
                fields = status_condition_fields(result)
                if ours and _written_condition(obj) != fields:
                    self.status_pending[("AuthorizationPolicy", ns, name)] = fields
            else:
                self.policy_status.pop((ns, name), None)
                self.status_pending.pop(("AuthorizationPolicy", ns, name), None)
            self._set_auth(delta, key, result.authorization)
        if self._dirty_pa:
            self._flush_peer_authentications(delta)
        if self._dirty_routes:
            self._flush_routes()
        gateways = self._gateways()
        if self._dirty_vs:
            self._flush_virtual_services(gateways)
        if self._dirty_auth:
            self._flush_request_authentications(gateways)
        for ns, name in sorted(self._dirty_services):
            svc = self.get("Service", ns, name)
            msg = tr.service_from_k8s(svc, self._namespace_labels(ns), gateways) if svc else None
            key = f"{ns}/{tr.service_hostname(name, ns)}"
            self._set_addr(delta, key, wl.Address(service=msg) if msg is not None else None)
        if self._dirty_entries:
            self._flush_service_entries(delta, gateways)
        contexts: dict[str, tr.PodContext] = {}
        for ns, name in sorted(self._dirty_pods):
            pod = self.get("Pod", ns, name)
            old_uid = self._pod_uid.pop((ns, name), None)
            work = None
            if pod is not None:
                if ns not in contexts:
                    contexts[ns] = self._pod_context(ns, gateways)
                work = tr.workload_from_pod(pod, contexts[ns])
            if old_uid is not None and (work is None or work.uid != old_uid):
                self._set_addr(delta, old_uid, None)
            if work is not None:
                self._pod_uid[(ns, name)] = work.uid
                self._set_addr(delta, work.uid, wl.Address(workload=work))
        self._dirty_pods.clear()
        self._dirty_services.clear()
        self._dirty_policies.clear()
        self._dirty_pa = False
        return delta

    def _flush_routes(self) -> None:
        """Accepted and ResolvedRefs of each changed mesh route (written together, per Service parent)."""
        from ambient.l7.gateway_routes import parse_reference_grant

        grants = [parse_reference_grant(g) for g in self.objects("ReferenceGrant")]
        for kind, ns, name in sorted(self._dirty_routes):
            key = (kind, ns, name)
            route = self.get(kind, ns, name)
            accepted = route_status_fields(route, kind) if route is not None else None
            if route is None or accepted is None:
                self.status_pending.pop(key, None)
                self.route_resolved.pop(key, None)
                continue
            resolved = route_resolved_refs(route, kind, lambda n, s: self.get("Service", s, n) is not None, grants)
            self.route_resolved[key] = resolved
            if _written_route_conditions(route) != (accepted, resolved):
                self.status_pending[key] = accepted
        self._dirty_routes.clear()

    def _flush_service_entries(self, delta: IndexDelta, gateways: dict[str, Obj]) -> None:
        """Re-translate the dirty ServiceEntries; VIPs are allocated over all of them (stable, see
        `serviceentry.allocate_vips`), and resources an entry no longer produces are removed."""
        entries = self.objects("ServiceEntry")
        wanted = [se.vip_key(e, h) for e in entries if se.wants_auto_vip(e) for h in se.hosts(e)]
        self.entry_vips = se.allocate_vips(wanted, self.entry_vips)
        for ns, name in sorted(self._dirty_entries):
            obj = self.get("ServiceEntry", ns, name)
            produced: dict[str, wl.Address] = {}
            if obj is not None:
                labels = (obj.get("metadata") or {}).get("labels") or {}
                ref = tr._waypoint_ref(labels, ns, self._namespace_labels(ns))
                waypoint = tr._waypoint_address(ref, gateways, "service", None)
                result = se.translate(obj, self.entry_vips, waypoint, tr.CLUSTER_ID)
                produced.update({k: wl.Address(service=v) for k, v in result.services.items()})
                produced.update({k: wl.Address(workload=v) for k, v in result.workloads.items()})
            for key in self._entry_keys.pop((ns, name), set()) - set(produced):
                self._set_addr(delta, key, None)
            for key, msg in produced.items():
                self._set_addr(delta, key, msg)
            if produced:
                self._entry_keys[(ns, name)] = set(produced)
            skey = ("ServiceEntry", ns, name)
            if obj is None:
                self.status_pending.pop(skey, None)
                self.status_extra.pop(skey, None)
                continue
            addresses, fields = se.entry_status(obj, self.entry_vips)
            self.status_extra[skey] = {"addresses": addresses}
            written = (obj.get("status") or {}).get("addresses") or []
            if _written_condition(obj, "Accepted") != fields or written != addresses:
                self.status_pending[skey] = fields
        self._dirty_entries.clear()

    def _flush_peer_authentications(self, delta: IndexDelta) -> None:
        root = self.root_namespace
        wanted: dict[str, sec.Authorization] = {}
        pas = self.objects("PeerAuthentication")
        if pas:
            static = tr.static_strict_policy(root)
            wanted[f"{root}/{static.name}"] = static
        warned: dict[str, str] = {}
        for pa in pas:
            ns, name = _ns_name(pa)
            warning = peer_authentication_warning(pa)
            if warning:
                warned[f"{ns}/{name}"] = warning
                if self._pa_warned.get(f"{ns}/{name}") != warning:
                    log.warning("PeerAuthentication %s/%s: %s", ns, name, warning)
            fields = ("False", "UnsupportedValue", warning) if warning else ACCEPTED
            if _written_condition(pa) != fields:
                self.status_pending[("PeerAuthentication", ns, name)] = fields
            related = [p for p in pas if _ns_name(p)[0] in (ns, root)]
            conv = tr.converted_peer_authentication(pa, tr.parent_strict(ns, related, root), root)
            if conv is not None:
                wanted[f"{conv.namespace}/{conv.name}"] = conv
        self._pa_warned = warned
        for key in [k for k in self.authorizations if _is_converted(k)]:
            if key not in wanted:
                self._set_auth(delta, key, None)
        for key, msg in wanted.items():
            self._set_auth(delta, key, msg)

    def _set_addr(self, delta: IndexDelta, key: str, msg: wl.Address | None) -> None:
        old = self.addresses.get(key)
        if msg is None:
            if old is not None:
                del self.addresses[key]
                delta.addresses[key] = None
        elif old != msg:
            self.addresses[key] = msg
            delta.addresses[key] = msg

    def _flush_request_authentications(self, gateways: dict[str, Obj]) -> None:
        """The `WaypointAccepted` condition of each changed RequestAuthentication (see route_policy_status)."""
        for kind, ns, name in sorted(self._dirty_auth):
            obj = self.get(kind, ns, name)
            key = (kind, ns, name)
            if obj is None:
                self.status_pending.pop(key, None)
                continue
            if kind == "DestinationRule":
                fields: tuple[str, str, str] | None = destination_rule_status_fields(
                    obj, lambda n, s: self._waypoint_of(n, s, gateways), self._entry_waypoint_of)
            else:
                fields = request_authentication_status_fields(
                    obj, lambda n, s: self._waypoint_of(n, s, gateways),
                    lambda n, s: is_waypoint_gateway(gateways.get(f"{s}/{n}")))
            if fields is None:
                self.status_pending.pop(key, None)
            elif written_vs_condition(obj) != fields:
                self.status_pending[key] = fields
        self._dirty_auth.clear()

    def _entry_waypoint_of(self, host: str) -> str | None:
        """"ns/name" of the waypoint a ServiceEntry host uses (the oldest entry naming it), None when none."""
        for entry in sorted(self.objects("ServiceEntry"),
                            key=lambda e: str((e.get("metadata") or {}).get("creationTimestamp") or "")):
            if host in se.hosts(entry):
                ns, _ = _ns_name(entry)
                labels = (entry.get("metadata") or {}).get("labels") or {}
                ref = tr._waypoint_ref(labels, ns, self._namespace_labels(ns))
                return f"{ref[0]}/{ref[1]}" if ref is not None else None
        return None

    def _waypoint_of(self, name: str, ns: str, gateways: dict[str, Obj]) -> str | None:
        """"ns/name" of the waypoint Service `ns/name` uses, None when it uses none."""
        svc = self.get("Service", ns, name)
        msg = tr.service_from_k8s(svc, self._namespace_labels(ns), gateways) if svc else None
        if msg is None or not msg.HasField("waypoint"):
            return None
        host = msg.waypoint.hostname
        return f"{host.namespace}/{host.hostname.split('.')[0]}" if host.hostname else "(by address)"

    def _flush_virtual_services(self, gateways: dict[str, Obj]) -> None:
        """The `WaypointAccepted` condition of each changed VirtualService (see route_policy_status)."""

        parents: dict[tuple[str, str], list[str]] = {}
        for route in self.objects("HTTPRoute"):
            rns, rname = _ns_name(route)
            for ref in mesh_parent_refs(route):
                parents.setdefault((str(ref.get("namespace") or rns), str(ref.get("name"))), []).append(
                    f"{rns}/{rname}")
        for ns, name in sorted(self._dirty_vs):
            obj = self.get("VirtualService", ns, name)
            key = ("VirtualService", ns, name)
            if obj is None:
                self.status_pending.pop(key, None)
                continue
            fields = virtual_service_status_fields(obj, lambda n, s: self._waypoint_of(n, s, gateways), parents)
            if written_vs_condition(obj) != fields:
                self.status_pending[key] = fields
        self._dirty_vs.clear()

    def _set_auth(self, delta: IndexDelta, key: str, msg: sec.Authorization | None) -> None:
        old = self.authorizations.get(key)
        if msg is None:
            if old is not None:
                del self.authorizations[key]
                delta.authorizations[key] = None
        elif old != msg:
            self.authorizations[key] = msg
            delta.authorizations[key] = msg


STATUS_CONDITION = "ZtunnelAccepted"
# the condition type written for each kind (others: STATUS_CONDITION; HTTPRoutes: per-parent `Accepted`)
CONDITION_TYPES = {kind: VS_CONDITION_TYPE for kind in ("VirtualService", "RequestAuthentication", "DestinationRule")}
CONDITION_TYPES["ServiceEntry"] = "Accepted"


ACCEPTED = ("True", "Accepted", "enforced by the node proxies as written")


def status_condition_fields(result: tr.PolicyTranslation) -> tuple[str, str, str]:
    """(status, reason, message) of the `ZtunnelAccepted` condition describing a translation."""
    if result.authorization is None and result.message:
        return "False", "NotEnforced", result.message
    if result.message:
        return "False", "UnsupportedValue", result.message
    return ACCEPTED


ROUTE_CONTROLLER = "istio.io/gateway-controller"


def mesh_parent_refs(route: Obj) -> list[Obj]:
    """The route's parentRefs that are Services (GAMMA mesh routes: the waypoints' to honour)."""
    return [dict(ref) for ref in (route.get("spec") or {}).get("parentRefs") or []
            if ref.get("kind") == "Service" and ref.get("group", "") in ("", "core")]


ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "TCPRoute")


def route_status_fields(route: Obj, kind: str = "HTTPRoute") -> tuple[str, str, str] | None:
    """(status, reason, message) of the `Accepted` condition the control plane reports for an HTTPRoute's
    Service parents (None: the route has none, it is not a mesh route). Not accepted as written when a rule
    uses a filter the waypoints do not implement (those rules answer 500) or the route cannot be parsed."""
    if not mesh_parent_refs(route):
        return None
    from ambient.l7.errors import ConfigError
    from ambient.l7.gateway_routes import parse_grpc_route, parse_tcp_route
    from ambient.l7.routing import parse_http_route

    try:
        if kind == "TCPRoute":
            parse_tcp_route(route)
            return "True", "Accepted", "routed by the waypoints as written"
        parsed = parse_grpc_route(route) if kind == "GRPCRoute" else parse_http_route(route)
    except ConfigError as exc:
        return "False", "UnsupportedValue", exc.message
    unsupported = [f"rule {i}: {what}" for i, rule in enumerate(parsed.rules) if rule.filters is not None
                   for what in rule.filters.unsupported]
    if unsupported:
        return ("False", "UnsupportedValue", "not implemented by the waypoint, those rules answer 500: "
                + "; ".join(unsupported))
    return "True", "Accepted", "routed by the waypoints as written"


def route_resolved_refs(
    route: Obj,
    kind: str,
    service_exists: Callable[[str, str], bool],
    grants: Iterable[Any],
) -> tuple[str, str, str]:
    """(status, reason, message) of a mesh route's `ResolvedRefs` condition (Gateway API): every rule's
    backendRef must be a core Service (else InvalidKind), in the route's namespace or allowed there by a
    ReferenceGrant (else RefNotPermitted), and exist (else BackendNotFound). The first failing reason in that
    order is reported; the message names every offending ref. `service_exists(name, namespace)`; `grants` are
    parsed ReferenceGrants."""
    from ambient.l7.gateway_routes import reference_permitted

    rns = str((route.get("metadata") or {}).get("namespace") or "default")
    problems: dict[str, list[str]] = {"InvalidKind": [], "RefNotPermitted": [], "BackendNotFound": []}
    for ri, rule in enumerate((route.get("spec") or {}).get("rules") or ()):
        for ref in rule.get("backendRefs") or ():
            bkind, group = str(ref.get("kind") or "Service"), str(ref.get("group") or "")
            name, bns = str(ref.get("name") or ""), str(ref.get("namespace") or rns)
            what = f"rule {ri}: {bkind} {bns}/{name}"
            if bkind != "Service" or group not in ("", "core"):
                problems["InvalidKind"].append(f"{what} (group {group!r}; only core Services are supported)")
            elif not reference_permitted(grants, kind, rns, "Service", name, bns):
                problems["RefNotPermitted"].append(f"{what} (no ReferenceGrant in namespace {bns} allows "
                                                   f"{kind}s from {rns})")
            elif not service_exists(name, bns):
                problems["BackendNotFound"].append(f"{what} not found")
    for reason, found in problems.items():
        if found:
            return "False", reason, "; ".join(found)
    return "True", "ResolvedRefs", "all backend references resolved"


def route_status(route: Obj, fields: tuple[str, str, str], now: str,
                 resolved: tuple[str, str, str] | None = None) -> Obj:
    """The `status` patch of a mesh route: one entry per Service parent, with the Accepted condition (and
    ResolvedRefs when given)."""
    generation = (route.get("metadata") or {}).get("generation")
    conditions = []
    for ctype, cfields in (("Accepted", fields), ("ResolvedRefs", resolved)):
        if cfields is not None:
            status, reason, message = cfields
            conditions.append({"type": ctype, "status": status, "reason": reason, "message": message,
                               "lastTransitionTime": now, "observedGeneration": generation})
    return {"parents": [{"parentRef": ref, "controllerName": ROUTE_CONTROLLER, "conditions": list(conditions)}
                        for ref in mesh_parent_refs(route)]}


def _written_route_conditions(route: Obj) -> tuple[tuple[str, str, str] | None, tuple[str, str, str] | None]:
    """The (Accepted, ResolvedRefs) fields written on every Service parent (None where absent or differing)."""
    parents = (route.get("status") or {}).get("parents") or []
    ours = [p for p in parents if p.get("controllerName") == ROUTE_CONTROLLER]
    if len(ours) != len(mesh_parent_refs(route)):
        return None, None
    found: list[tuple[str, str, str] | None] = []
    for ctype in ("Accepted", "ResolvedRefs"):
        written = {(str(c.get("status")), str(c.get("reason")), str(c.get("message")))
                   for p in ours for c in p.get("conditions") or [] if c.get("type") == ctype}
        found.append(written.pop() if len(written) == 1 else None)
    return found[0], found[1]


def _written_condition(obj: Obj, ctype: str = STATUS_CONDITION) -> tuple[str, str, str] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return str(cond.get("status")), str(cond.get("reason")), str(cond.get("message"))
    return None


def _is_converted(key: str) -> bool:
    name = key.split("/", 1)[-1]
    return name == tr.STATIC_STRICT_NAME or name.startswith(tr.CONVERTED_PA_PREFIX)
