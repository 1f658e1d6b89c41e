"""Routing at an ingress gateway: which HTTPRoutes (and VirtualServices) attach to a Gateway listener and
serve a request's host, then the same rule choice as the waypoint (`routing._most_specific` / `_first_match`
/ `_decide`: one implementation of matches, precedence, weights, filters, timeouts and retries).

Gateway API attachment: a route attaches to a listener through a parentRef of kind Gateway naming the
Gateway (its namespace defaults to the route's), with `sectionName` (the listener name) and `port` unset or
matching; its `hostnames` must intersect the listener's `hostname` (both may use a leading `*.` wildcard)
and the request's Host (port stripped, case-insensitive) must match both (an empty list matches anything).

Pure: no I/O, table-tested.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ambient.l7.routing import (
    HttpRoute,
    NoRoute,
    Redirect,
    RequestInfo,
    RouteDecision,
    _decide,
    _first_match,
    _most_specific,
)


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    port: int
    protocol: str  # HTTP | HTTPS
    hostname: str | None = None


@dataclass(frozen=True, slots=True)
class GatewayParent:
    """One parentRef of a route as the gateway needs it (kept beside the parsed route)."""

    name: str
    namespace: str
    section: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class AttachedRoute:
    route: HttpRoute
    parents: tuple[GatewayParent, ...]


def gateway_parents(obj: Mapping[str, Any]) -> tuple[GatewayParent, ...]:
    """The Gateway parentRefs of an HTTPRoute object."""
    ns = str((obj.get("metadata") or {}).get("namespace") or "default")
    out = []
    for ref in (obj.get("spec") or {}).get("parentRefs") or ():
        if (ref.get("kind") or "Gateway") != "Gateway" or (ref.get("group") or "gateway.networking.k8s.io") not in (
                "gateway.networking.k8s.io",):
            continue
        port = ref.get("port")
        out.append(GatewayParent(str(ref.get("name")), str(ref.get("namespace") or ns), ref.get("sectionName"),
                                 int(port) if port is not None else None))
    return tuple(out)


def host_matches(pattern: str, host: str) -> bool:
    """`*.example.com` matches `a.example.com` and `a.b.example.com` (not `example.com`); else exact."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def request_host(authority: str) -> str:
    host = authority.strip()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def attaches(route: AttachedRoute, gateway: str, namespace: str, listener: Listener) -> bool:
    for p in route.parents:
        if (p.name, p.namespace) != (gateway, namespace):
            continue
        if p.section is not None and p.section != listener.name:
            continue
        if p.port is not None and p.port != listener.port:
            continue
        if listener.hostname and route.route.hostnames and not any(
                host_matches(h, listener.hostname) or host_matches(listener.hostname, h)
                for h in route.route.hostnames):
            continue
        return True
    return False


def listener_for(listeners: Sequence[Listener], port: int, host: str) -> Listener | None:
    """The listener of `port` serving `host`: an exact hostname first, then a wildcard, then none set."""
    on_port = [x for x in listeners if x.port == port]
    for pick in (lambda x: x.hostname and not x.hostname.startswith("*") and host_matches(x.hostname, host),
                 lambda x: x.hostname and x.hostname.startswith("*") and host_matches(x.hostname, host),
                 lambda x: not x.hostname):
        found = [x for x in on_port if pick(x)]
        if found:
            return found[0]
    return None


def route_gateway_request(
    routes: Iterable[AttachedRoute],
    gateway: str,
    namespace: str,
    listener: Listener,
    host: str,
    request: RequestInfo,
    rng: random.Random,
) -> RouteDecision | Redirect | NoRoute:
    """The rule and backend for a request arriving at `listener` with Host `host` (404 when no route of
    this listener serves the host or no rule matches, as Envoy answers at a gateway)."""
    attached = [r.route for r in routes if attaches(r, gateway, namespace, listener)
                and (not r.route.hostnames or any(host_matches(h, host) for h in r.route.hostnames))]
    if not attached:
        return NoRoute(404, f"no route of listener {listener.name} serves host {host!r}")
    gateway_api = [r for r in attached if not r.ordered]
    chosen = _most_specific(gateway_api, request) if gateway_api else _first_match(attached, request)
    if chosen is None:
        return NoRoute(404, f"no rule of {', '.join(r.key for r in attached)} matches {request.method} {request.path}")
    route, ri = chosen
    return _decide(route, ri, listener.port, request, rng)
