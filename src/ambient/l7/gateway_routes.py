"""Gateway API GRPCRoute and TCPRoute (GAMMA: parentRefs of kind Service) -> the shared route model, pure.

GRPCRoute (gateway.networking.k8s.io/v1) becomes an `HttpRoute` of kind "GRPCRoute" routed by the same
engine as HTTPRoute (gRPC is HTTP/2 with the path `/<service>/<method>`):
- `method` match, type Exact: service and method -> path Exact `/<service>/<method>`; service only ->
  path prefix `/<service>/`; method only -> any service's `/<...>/<method>`. Type RegularExpression: the
  service and method regular expressions (default `.+`) over the two path segments. No match: any path.
- `headers` matches as HTTPRoute's (Exact / RegularExpression, names case-insensitive).
- `backendRefs` weighted (default 1); RequestHeaderModifier / ResponseHeaderModifier filters as HTTPRoute's;
  other filters and backendRef filters: the rule answers 500 naming them (never skipped).
- Precedence between rules (and with HTTPRoutes on the same Service): the HTTPRoute ranking, where an exact
  method (Exact path) beats a service-only match (prefix) and regular expressions rank last.

TCPRoute (gateway.networking.k8s.io/v1alpha2) becomes a `TcpRoute`: its Service parents and weighted
backends; `pick_tcp_backend` chooses one per connection (smooth weighted round robin: exact shares).

ReferenceGrant (gateway.networking.k8s.io/v1beta1): a Gateway API route (HTTPRoute, GRPCRoute, TCPRoute)
may send to a Service in another namespace only when a ReferenceGrant there allows its kind from its
namespace (`reference_permitted`); otherwise the waypoint answers 500 (TCP: refuses the connection) naming
the missing grant. VirtualService destinations are not subject to it (Istio's own API).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ambient.l7.errors import ConfigError
from ambient.l7.filters import parse_rule_filters
from ambient.l7.routing import (
    BackendRef,
    HttpRoute,
    ParentRef,
    PathMatch,
    RouteMatch,
    RouteRule,
    ValueMatch,
    WeightedRoundRobin,
)

GRPC_ROUTE = "GRPCRoute"


def _parents(spec: Mapping[str, Any], namespace: str) -> tuple[ParentRef, ...]:
    out = []
    for ref in spec.get("parentRefs") or ():
        port = ref.get("port")
        out.append(ParentRef(str(ref["name"]), str(ref.get("namespace") or namespace), ref.get("kind") or "Gateway",
                             int(port) if port is not None else None))
    return tuple(out)


def _backends(rule: Mapping[str, Any], namespace: str) -> tuple[BackendRef, ...]:
    return tuple(
        BackendRef(str(b["name"]), str(b.get("namespace") or namespace),
                   int(b["port"]) if b.get("port") is not None else None,
                   int(b["weight"]) if b.get("weight") is not None else 1, str(b.get("kind") or "Service"))
        for b in rule.get("backendRefs") or ())


def _compile(value: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as exc:
        raise ConfigError(f"{where}: invalid regular expression {value!r}: {exc}") from None


def _method_path(method: Mapping[str, Any] | None, where: str) -> PathMatch:
    if not method:
        return PathMatch("PathPrefix", "/")
    service, name = method.get("service"), method.get("method")
    if (method.get("type") or "Exact") == "RegularExpression":
        pattern = f"/(?:{service or '[^/]+'})/(?:{name or '[^/]+'})"
        return PathMatch("RegularExpression", pattern, _compile(pattern, where))
    if service and name:
        return PathMatch("Exact", f"/{service}/{name}")
    if service:
        return PathMatch("Prefix", f"/{service}/")
    if name:
        pattern = f"/[^/]+/{re.escape(str(name))}"
        return PathMatch("RegularExpression", pattern, re.compile(pattern))
    return PathMatch("PathPrefix", "/")


def parse_grpc_route(obj: Mapping[str, Any]) -> HttpRoute:
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    namespace = str(meta.get("namespace") or "default")
    spec = obj.get("spec") or {}
    where = f"GRPCRoute {namespace}/{name}"
    rules = []
    for ri, rule in enumerate(spec.get("rules") or ()):
        rw = f"{where} rules[{ri}]"
        matches = []
        for mi, m in enumerate(rule.get("matches") or ()):
            headers = []
            for hi, h in enumerate(m.get("headers") or ()):
                value = str(h.get("value", ""))
                regex = _compile(value, f"{rw}.matches[{mi}].headers[{hi}]") \
                    if h.get("type") == "RegularExpression" else None
                headers.append(ValueMatch(str(h.get("name", "")).lower(), value, regex))
            matches.append(RouteMatch(_method_path(m.get("method"), f"{rw}.matches[{mi}].method"), None,
                                      tuple(headers)))
        rules.append(RouteRule(tuple(matches) or (RouteMatch(),), _backends(rule, namespace),
                               filters=parse_rule_filters(rule, None, rw, namespace)))
    return HttpRoute(name, namespace, _parents(spec, namespace), tuple(rules), str(meta.get("creationTimestamp") or ""),
                     tuple(spec.get("hostnames") or ()), GRPC_ROUTE)


@dataclass(frozen=True)
class TcpRoute:
    name: str
    namespace: str
    parents: tuple[ParentRef, ...]
    backends: tuple[BackendRef, ...]  # of the first rule (TCPRoute allows one rule per route in practice)
    created: str = ""
    balancer: WeightedRoundRobin | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def attaches_to(self, service: str, namespace: str, port: int) -> bool:
        return any(p.kind == "Service" and (p.name, p.namespace) == (service, namespace)
                   and (p.port is None or p.port == port) for p in self.parents)


def parse_tcp_route(obj: Mapping[str, Any]) -> TcpRoute:
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    spec = obj.get("spec") or {}
    rules = spec.get("rules") or ()
    if len(rules) > 1:
        raise ConfigError(f"TCPRoute {namespace}/{meta.get('name')}: only one rule is supported",
                          hint="put every backendRef in one rule (weights split the connections)")
    backends = _backends(rules[0], namespace) if rules else ()
    return TcpRoute(str(meta.get("name", "")), namespace, _parents(spec, namespace), backends,
                    str(meta.get("creationTimestamp") or ""), WeightedRoundRobin([b.weight for b in backends]))


def pick_tcp_backend(routes: Iterable[TcpRoute], service: str, namespace: str,
                     port: int) -> tuple[TcpRoute, BackendRef] | None:
    """The backend of a new connection to `service.namespace:port`: from the oldest TCPRoute attached to it
    (None when no route is attached; a route without usable backends answers the caller's refusal)."""
    attached = sorted((r for r in routes if r.attaches_to(service, namespace, port)), key=lambda r: (r.created, r.key))
    if not attached:
        return None
    route = attached[0]
    index = route.balancer.pick() if route.balancer is not None else None
    if index is None:
        return route, BackendRef("", namespace, port, 0)
    b = route.backends[index]
    return route, BackendRef(b.name, b.namespace, b.port if b.port is not None else port, b.weight, b.kind)


# ------------------------------------------------------------------------------------------ ReferenceGrant

GATEWAY_GROUP = "gateway.networking.k8s.io"


@dataclass(frozen=True)
class ReferenceGrant:
    """Who (`froms`: group, kind, namespace) may refer to what (`tos`: group, kind, name or "" for any) in
    the grant's namespace."""

    namespace: str
    froms: tuple[tuple[str, str, str], ...]
    tos: tuple[tuple[str, str, str], ...]


def parse_reference_grant(obj: Mapping[str, Any]) -> ReferenceGrant:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    return ReferenceGrant(
        str(meta.get("namespace") or "default"),
        tuple((str(f.get("group") or ""), str(f.get("kind") or ""), str(f.get("namespace") or ""))
              for f in spec.get("from") or ()),
        tuple((str(t.get("group") or ""), str(t.get("kind") or ""), str(t.get("name") or ""))
              for t in spec.get("to") or ()),
    )


def reference_permitted(grants: Iterable[ReferenceGrant], route_kind: str, route_namespace: str,
                        backend_kind: str, backend_name: str, backend_namespace: str) -> bool:
    """May a route of `route_kind` in `route_namespace` send to `backend_kind` `backend_namespace/name`?
    Always within a namespace; across namespaces only with a ReferenceGrant in the backend's namespace
    (Gateway API: the owner of the target consents)."""
    if backend_namespace == route_namespace:
        return True
    group = "" if backend_kind == "Service" else GATEWAY_GROUP
    for g in grants:
        if g.namespace != backend_namespace:
            continue
        if not any(f == (GATEWAY_GROUP, route_kind, route_namespace) for f in g.froms):
            continue
        if any((tg, tk) == (group, backend_kind) and tn in ("", backend_name) for tg, tk, tn in g.tos):
            return True
    return False
