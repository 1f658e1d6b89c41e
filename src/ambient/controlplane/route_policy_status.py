"""Status of the Istio objects a waypoint applies (pure): VirtualService and RequestAuthentication.

Role: `virtual_service_status_fields(vs, waypoint_of, httproutes)` -> (status, reason, message) of the
`WaypointAccepted` condition the control plane writes on a VirtualService (the condition type Istio uses for
objects a waypoint enforces). `waypoint_of(name, namespace)` answers the waypoint ("ns/name") a Service
uses, or None; `httproutes` are the mesh HTTPRoutes' Service parents.

Outcomes (first that applies):
- False / InvalidSpec: the VirtualService cannot be translated (bad duration or regular expression).
- False / NoWaypoint: none of its hosts is a Service that uses a waypoint (ambient applies a VirtualService
  only at the destination's waypoint; traffic to such a Service bypasses it).
- False / Overridden: every waypoint-bound host also has an HTTPRoute: the Gateway API route takes
  precedence at the waypoint (mixing both is undefined in Istio; this waypoint makes HTTPRoute win).
- False / UnsupportedValue: accepted, but parts are not implemented (those rules answer 500) or hosts do not
  bind (named).
- True / Accepted: bound to the named waypoint(s).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

CONDITION_TYPE = "WaypointAccepted"


def virtual_service_status_fields(
    vs: Mapping[str, Any],
    waypoint_of: Callable[[str, str], str | None],
    httproute_parents: Mapping[tuple[str, str], Iterable[str]],
) -> tuple[str, str, str]:
    from ambient.l7.errors import ConfigError
    from ambient.l7.virtual_service import parse_virtual_service

    try:
        translated = parse_virtual_service(vs)
    except ConfigError as exc:
        return "False", "InvalidSpec", exc.message
    bound: list[str] = []
    unbound: list[str] = []
    overridden: list[str] = []
    for parent in translated.route.parents:
        svc = f"{parent.namespace}/{parent.name}"
        waypoint = waypoint_of(parent.name, parent.namespace)
        if waypoint is None:
            unbound.append(svc)
            continue
        routes = sorted(httproute_parents.get((parent.namespace, parent.name), ()))
        if routes:
            overridden.append(f"{svc} (HTTPRoute {', '.join(routes)})")
        else:
            bound.append(f"{svc} via waypoint {waypoint}")
    if not bound and not overridden:
        hosts = ", ".join(unbound) or "none of its hosts is a Service of this cluster"
        return ("False", "NoWaypoint", f"no host uses a waypoint ({hosts}): a VirtualService applies only at the "
                "destination Service's waypoint; label the Service or namespace istio.io/use-waypoint")
    if not bound:
        return ("False", "Overridden", "Gateway API routes take precedence at the waypoint for "
                + "; ".join(overridden))
    notes = list(translated.problems)
    notes += [f"{s} uses no waypoint" for s in unbound]
    notes += [f"{s} takes precedence" for s in overridden]
    if notes:
        return "False", "UnsupportedValue", f"bound to {', '.join(bound)}; but: " + "; ".join(notes)
    return "True", "Accepted", f"bound to {', '.join(bound)}"


def is_waypoint_gateway(gw: Mapping[str, Any] | None) -> bool:
    return gw is not None and (gw.get("spec") or {}).get("gatewayClassName") == "istio-waypoint"


def request_authentication_status_fields(
    ra: Mapping[str, Any],
    waypoint_of: Callable[[str, str], str | None],
    is_waypoint: Callable[[str, str], bool],
) -> tuple[str, str, str] | None:
    """`WaypointAccepted` of a RequestAuthentication with targetRefs (None for a selector one: no waypoint
    takes it). True when every target is a waypoint Gateway or a Service that uses one; else False /
    TargetNotFound naming the targets no waypoint enforces it for."""
    meta = ra.get("metadata") or {}
    ns = str(meta.get("namespace") or "default")
    spec = ra.get("spec") or {}
    refs = list(spec.get("targetRefs") or ()) + ([spec["targetRef"]] if spec.get("targetRef") else [])
    if not refs:
        return None
    bound: list[str] = []
    missing: list[str] = []
    for ref in refs:
        kind, name, rns = str(ref.get("kind")), str(ref.get("name")), str(ref.get("namespace") or ns)
        if kind == "Gateway" and is_waypoint(name, rns):
            bound.append(f"waypoint {rns}/{name}")
        elif kind == "Service" and (wp := waypoint_of(name, rns)) is not None:
            bound.append(f"Service {rns}/{name} via waypoint {wp}")
        else:
            missing.append(f"{kind} {rns}/{name}")
    if missing:
        return ("False", "TargetNotFound", f"no waypoint enforces it for {', '.join(missing)}"
                + (f" (bound to {', '.join(bound)})" if bound else ""))
    return "True", "Accepted", f"bound to {', '.join(bound)}"


_DR_UNSUPPORTED_LB = ("httpCookie", "httpQueryParameterName", "ringHash", "maglev", "minimumRingSize")


def _policy_gaps(tp: Mapping[str, Any], where: str) -> list[str]:
    gaps = []
    lb = tp.get("loadBalancer") or {}
    for key in _DR_UNSUPPORTED_LB:
        if (lb.get("consistentHash") or {}).get(key):
            gaps.append(f"{where}loadBalancer.consistentHash.{key}")
    for key in ("localityLbSetting", "warmup", "warmupDurationSecs"):
        if lb.get(key):
            gaps.append(f"{where}loadBalancer.{key}")
    for key in ("tunnel", "proxyProtocol", "retryBudget"):
        if tp.get(key):
            gaps.append(f"{where}{key}")
    for i, level in enumerate(tp.get("portLevelSettings") or ()):
        gaps += _policy_gaps(level, f"{where}portLevelSettings[{i}].")
    return gaps


def destination_rule_status_fields(
    dr: Mapping[str, Any], waypoint_of: Callable[[str, str], str | None],
    entry_waypoint_of: Callable[[str], str | None] = lambda _host: None,
) -> tuple[str, str, str]:
    """`WaypointAccepted` of a DestinationRule: applied by the waypoint of its host's Service; False /
    NoWaypoint when that Service uses none (or the host names no Service here), False / UnsupportedValue
    naming the settings the waypoint does not implement (they are ignored; the rest applies): cookie / query /
    ring hashing, locality and warm-up settings, tunnel, proxyProtocol, retryBudget. (tls `credentialName` is
    read by the waypoint, from a Secret of the waypoint's namespace.)"""
    from ambient.l7.virtual_service import resolve_host

    meta = dr.get("metadata") or {}
    ns = str(meta.get("namespace") or "default")
    spec = dr.get("spec") or {}
    host = str(spec.get("host") or "")
    svc = resolve_host(host, ns)
    waypoint = waypoint_of(*svc) if svc is not None else entry_waypoint_of(host.lower())
    if waypoint is None:
        what = f"Service {svc[1]}/{svc[0]}" if svc is not None else \
            f"host {host!r} (no Service of this cluster, no ServiceEntry host behind a waypoint)"
        return ("False", "NoWaypoint", f"{what} uses no waypoint: a DestinationRule applies at the destination's "
                "waypoint; label the Service or namespace istio.io/use-waypoint")
    gaps = _policy_gaps(spec.get("trafficPolicy") or {}, "trafficPolicy.")
    for s in spec.get("subsets") or ():
        gaps += _policy_gaps(s.get("trafficPolicy") or {}, f"subsets[{s.get('name')}].trafficPolicy.")
    if gaps:
        return ("False", "UnsupportedValue", f"applied by waypoint {waypoint}, except (ignored): " + "; ".join(gaps))
    return "True", "Accepted", f"applied by waypoint {waypoint}"


def written_condition(obj: Mapping[str, Any]) -> tuple[str, str, str] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == CONDITION_TYPE:
            return str(cond.get("status")), str(cond.get("reason")), str(cond.get("message"))
    return None
