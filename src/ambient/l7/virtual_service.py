"""Istio's VirtualService and DestinationRule (networking.istio.io/v1) -> the shared route model, pure.

Role: `parse_virtual_service(obj)` turns a validated VirtualService into an `HttpRoute` of kind
"VirtualService" (the model of `routing.py`, so one engine routes both APIs) plus the list of what it
could not honour; `parse_destination_rule(obj)` gives the subsets (and traffic policy) of one host;
`subset_labels(...)` finds the labels of `host/subset`. Used by the waypoint (and any gateway below which a
VirtualService binds): no I/O, no clock.

Semantics (Istio, ambient mode: a VirtualService binds to a Service's waypoint through `hosts`):
- Hosts: a short name (`reviews`) is the Service of that name in the VirtualService's namespace;
  `reviews.ns`, `reviews.ns.svc` and `reviews.ns.svc.<domain>` name it fully. Wildcards and other names
  (ServiceEntry hosts) do not bind here and are listed as problems.
- `http` routes are tried in order, the first match wins (Envoy's route order). Each `match` of a route
  becomes a rule of its own (as Istio writes one Envoy route per match), so a prefix rewrite knows the
  prefix that matched. No `match` matches everything. Inside a match: uri exact / prefix (plain string) /
  regex (full match), `ignoreUriCase` for exact and prefix, `headers` and `queryParams` (exact / prefix /
  regex; header names case-insensitive), `method` exact: all must hold.
- `route` destinations: weighted (a single destination takes everything; with several, a missing weight is
  0, and all missing means equal shares), picked by smooth weighted round robin so that any window of
  sum(weights) requests is split exactly (Envoy picks at random: the same shares on average); `subset`
  names a DestinationRule subset; `port.number` defaults to the request's port.
- `rewrite.uri` replaces the matched prefix (or the whole path for an exact or regex match, `/` without a
  uri match, Envoy's prefix_rewrite); `rewrite.authority` the Host. `redirect` answers `redirectCode`
  (default 301) with the uri / authority / scheme / port replaced. `headers.request` / `.response` set, add,
  remove at route level. `timeout` bounds the whole request (none by default); `retries` (attempts,
  perTryTimeout, retryOn: 5xx, gateway-error, retriable-status-codes (503), connect-failure, reset,
  refused-stream, numeric codes) - absent retries mean Istio's default of 2 attempts on connection failures
  and 503. `fault`: delay (`fixedDelay`, `percentage.value`, default 100) then abort (`httpStatus`,
  `percentage.value`, default 100), answered with response flags DI / FI.
- `mirror` + `mirrorPercentage` (default 100) and `mirrors`: a copy of the request to that destination,
  its answer ignored (see the waypoint's mirroring).
- Not implemented (a rule using one answers 500 naming it, never skipped silently; listed as problems for
  the status): `directResponse`, `delegate`, `corsPolicy`, `rewrite.uriRegexRewrite`,
  per-destination `headers`, match conditions on `scheme`, `authority`, `port`, `sourceLabels`,
  `sourceNamespace`, `withoutHeaders`, non-exact `method`, `gateways` other than `mesh`; `tcp` and `tls` routes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ambient.l7.errors import ConfigError
from ambient.l7.filters import (
    _FRAMING_HEADERS,
    _REQUEST_FORBIDDEN,
    HeaderModifier,
    MirrorFilter,
    PathModifier,
    RedirectFilter,
    RewriteFilter,
    RuleFilters,
    header_modifier,
)
from ambient.l7.routing import (
    VIRTUAL_SERVICE,
    BackendRef,
    Fault,
    HttpRoute,
    ParentRef,
    PathMatch,
    RetryPolicy,
    RouteMatch,
    RouteRule,
    ValueMatch,
    WeightedRoundRobin,
)
from ambient.l7.traffic_policy import TrafficPolicy
from ambient.l7.traffic_policy import resolve as resolve_policy

_GO_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|us|ns|m|s)")
_GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(h|m|s|ms|us|ns))+$")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
# Istio's default retry policy for a route without `retries` (pilot's DefaultRetryPolicy)
DEFAULT_RETRY = RetryPolicy(2, 0.025, frozenset({503}))
_GATEWAY_ERRORS = frozenset({502, 503, 504})


def go_duration(text: Any, where: str) -> float:
    """Protobuf / Go duration ("2s", "0.5s", "100ms", "1m30s") -> seconds."""
    if not isinstance(text, str) or not _GO_DURATION.match(text):
        raise ConfigError(f"{where}: invalid duration {text!r}", hint='use a duration like "2s" or "100ms"')
    return sum(float(n) * _UNITS[u] for n, u in _GO_DURATION_PART.findall(text))


def resolve_host(host: str, namespace: str, domain: str = "cluster.local") -> tuple[str, str] | None:
    """A VirtualService / DestinationRule host -> (Service name, namespace), None when it names no Service
    of this cluster (a wildcard, an external name)."""
    if not host or "*" in host:
        return None
    parts = host.split(".")
    if len(parts) == 1:
        return parts[0], namespace
    if len(parts) == 2 or (len(parts) == 3 and parts[2] == "svc"):
        return parts[0], parts[1]
    suffix = f".svc.{domain}"
    if host.endswith(suffix) and host.count(".") == 2 + domain.count(".") + 1:
        return parts[0], parts[1]
    return None


@dataclass(frozen=True)
class VirtualServiceRoutes:
    """A translated VirtualService: the route (parents = the Services its hosts name) and what of it this
    proxy cannot honour (for the status and the log)."""

    route: HttpRoute
    problems: tuple[str, ...] = ()


def _string_match(name: str, m: Mapping[str, Any], where: str) -> ValueMatch:
    if m.get("regex") is not None:
        try:
            return ValueMatch(name, str(m["regex"]), re.compile(str(m["regex"])))
        except re.error as exc:
            raise ConfigError(f"{where}: invalid regular expression: {exc}") from None
    if m.get("prefix") is not None:
        return ValueMatch(name, str(m["prefix"]), None, prefix=True)
    return ValueMatch(name, str(m.get("exact", "")))


_UNSUPPORTED_MATCH = ("scheme", "authority", "port", "sourceLabels", "sourceNamespace", "withoutHeaders")


def _match(m: Mapping[str, Any], where: str, unsupported: list[str]) -> RouteMatch:
    for key in _UNSUPPORTED_MATCH:
        if m.get(key):
            unsupported.append(f"match.{key}")
    if any(g != "mesh" for g in m.get("gateways") or ()):
        unsupported.append("match.gateways")
    ignore = bool(m.get("ignoreUriCase"))
    uri = m.get("uri") or {}
    if uri.get("exact") is not None:
        path = PathMatch("Exact", str(uri["exact"]), ignore_case=ignore)
    elif uri.get("prefix") is not None:
        path = PathMatch("Prefix", str(uri["prefix"]), ignore_case=ignore)
    elif uri.get("regex") is not None:
        try:
            path = PathMatch("RegularExpression", str(uri["regex"]), re.compile(str(uri["regex"])))
        except re.error as exc:
            raise ConfigError(f"{where}.uri: invalid regular expression: {exc}") from None
    else:
        path = PathMatch("Prefix", "/")
    method = None
    mm = m.get("method")
    if mm:
        if mm.get("exact") is None:
            unsupported.append("match.method (only exact)")
        else:
            method = str(mm["exact"]).upper()
    headers = tuple(_string_match(str(k).lower(), v or {}, f"{where}.headers.{k}")
                    for k, v in (m.get("headers") or {}).items())
    query = tuple(_string_match(str(k), v or {}, f"{where}.queryParams.{k}")
                  for k, v in (m.get("queryParams") or {}).items())
    return RouteMatch(path, method, headers, query)


def _header_ops(ops: Mapping[str, Any] | None, where: str, forbidden: frozenset[str]) -> HeaderModifier | None:
    if not ops:
        return None
    as_list = {
        "set": [{"name": k, "value": v} for k, v in (ops.get("set") or {}).items()],
        "add": [{"name": k, "value": v} for k, v in (ops.get("add") or {}).items()],
        "remove": list(ops.get("remove") or ()),
    }
    return header_modifier(as_list, where, forbidden)


def _percent(obj: Mapping[str, Any]) -> float:
    pct = obj.get("percentage")
    if pct is not None and pct.get("value") is not None:
        return float(pct["value"])
    if obj.get("percent") is not None:  # deprecated integer form
        return float(obj["percent"])
    return 100.0


def _fault(obj: Mapping[str, Any] | None, where: str) -> Fault | None:
    if not obj:
        return None
    delay = obj.get("delay") or {}
    abort = obj.get("abort") or {}
    seconds = go_duration(delay["fixedDelay"], f"{where}.delay.fixedDelay") if delay.get("fixedDelay") else 0.0
    status = int(abort.get("httpStatus") or 0)
    return Fault(seconds, _percent(delay) if seconds else 0.0, status, _percent(abort) if status else 0.0)


def _retry(obj: Mapping[str, Any] | None, where: str) -> tuple[RetryPolicy | None, float | None]:
    """(retry policy, per-try timeout)."""
    if obj is None:
        return DEFAULT_RETRY, None
    attempts = int(obj.get("attempts") or 0)
    per_try = go_duration(obj["perTryTimeout"], f"{where}.perTryTimeout") if obj.get("perTryTimeout") else None
    if attempts <= 0:
        return None, per_try
    codes: set[int] = set()
    for item in str(obj.get("retryOn") or "").split(","):
        item = item.strip()
        if item == "5xx":
            codes.update(range(500, 600))
        elif item == "gateway-error":
            codes.update(_GATEWAY_ERRORS)
        elif item in ("retriable-status-codes", "unavailable"):
            codes.add(503)
        elif item.isdigit():
            codes.add(int(item))
        # connect-failure, refused-stream, reset, ...: connection failures, always retried
    return RetryPolicy(attempts, 0.025, frozenset(codes)), per_try


def _destination(dest: Mapping[str, Any], namespace: str, domain: str, weight: int) -> BackendRef:
    host = str(dest.get("host") or "")
    resolved = resolve_host(host, namespace, domain)
    name, ns = resolved if resolved is not None else (host, namespace)
    port = (dest.get("port") or {}).get("number")
    return BackendRef(name, ns, int(port) if port is not None else None, weight, "Service",
                      str(dest["subset"]) if dest.get("subset") else None)


def _mirror(dest: Mapping[str, Any], namespace: str, domain: str, percent: float) -> MirrorFilter:
    b = _destination(dest, namespace, domain, 1)
    return MirrorFilter(b.name, b.namespace, b.port, percent, b.subset)


def parse_virtual_service(obj: Mapping[str, Any], domain: str = "cluster.local") -> VirtualServiceRoutes:
    """A validated VirtualService -> its routes and problems. Raises `ConfigError` for what no proxy could
    make sense of (a bad duration or regular expression)."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    namespace = str(meta.get("namespace") or "default")
    spec = obj.get("spec") or {}
    where = f"VirtualService {namespace}/{name}"
    problems: list[str] = []
    parents = []
    for host in spec.get("hosts") or ():
        resolved = resolve_host(str(host), namespace, domain)
        if resolved is None:
            problems.append(f"host {host!r} does not name a Service of this cluster")
        else:
            parents.append(ParentRef(resolved[0], resolved[1]))
    if any(g != "mesh" for g in spec.get("gateways") or ()):
        problems.append(f"gateways {spec.get('gateways')} (only mesh applies at a waypoint)")
    for key in ("tcp", "tls"):
        if spec.get(key):
            problems.append(f"{key} routes are not supported")
    rules: list[RouteRule] = []
    for hi, http in enumerate(spec.get("http") or ()):
        hw = f"{where} http[{hi}]"
        unsupported: list[str] = []
        for key in ("directResponse", "delegate", "corsPolicy"):
            if http.get(key):
                unsupported.append(key)
        mirrors = []
        if http.get("mirror"):
            pct = http.get("mirrorPercentage") or {}
            pct_value = pct.get("value") if pct.get("value") is not None else http.get("mirrorPercent")
            mirrors.append(_mirror(http["mirror"], namespace, domain, 100.0 if pct_value is None else float(pct_value)))
        for m in http.get("mirrors") or ():
            value = (m.get("percentage") or {}).get("value")
            mirrors.append(_mirror(m.get("destination") or {}, namespace, domain,
                                   100.0 if value is None else float(value)))
        dests = http.get("route") or ()
        if any(d.get("headers") for d in dests):
            unsupported.append("route[].headers")
        explicit = [d.get("weight") for d in dests]
        if len(dests) == 1:
            weights = [1]
        elif all(w is None for w in explicit):
            weights = [1] * len(dests)
        else:
            weights = [int(w or 0) for w in explicit]
        backends = tuple(_destination(d.get("destination") or {}, namespace, domain, w)
                         for d, w in zip(dests, weights, strict=True))
        headers = http.get("headers") or {}
        req_h = _header_ops(headers.get("request"), f"{hw}.headers.request", _REQUEST_FORBIDDEN)
        resp_h = _header_ops(headers.get("response"), f"{hw}.headers.response", _FRAMING_HEADERS)
        rewrite_obj = http.get("rewrite") or {}
        if rewrite_obj.get("uriRegexRewrite"):
            unsupported.append("rewrite.uriRegexRewrite")
        redirect_obj = http.get("redirect")
        timeout = go_duration(http["timeout"], f"{hw}.timeout") if http.get("timeout") else None
        retry, per_try = _retry(http.get("retries"), f"{hw}.retries")
        fault = _fault(http.get("fault"), f"{hw}.fault")
        match_objs = http.get("match") or [{}]
        for mi, m in enumerate(match_objs):
            mu = list(unsupported)
            match = _match(m, f"{hw}.match[{mi}]", mu)
            rewrite = None
            if rewrite_obj.get("uri") is not None or rewrite_obj.get("authority") is not None:
                path_mod = None
                if rewrite_obj.get("uri") is not None:
                    uri = str(rewrite_obj["uri"])
                    if match.path.kind == "Prefix":
                        path_mod = PathModifier("ReplaceStringPrefix", uri, match.path.value)
                    else:
                        path_mod = PathModifier("ReplaceFullPath", uri)
                rewrite = RewriteFilter(rewrite_obj.get("authority") or None, path_mod)
            redirect = None
            if redirect_obj is not None:
                uri = redirect_obj.get("uri")
                port = redirect_obj.get("port")
                redirect = RedirectFilter(redirect_obj.get("scheme") or None, redirect_obj.get("authority") or None,
                                          PathModifier("ReplaceFullPath", str(uri)) if uri else None,
                                          int(port) if port is not None else None,
                                          int(redirect_obj.get("redirectCode") or 301))
            if mu:
                problems.append(f"http[{hi}]: {', '.join(dict.fromkeys(mu))} not supported")
            filters = None
            if req_h or resp_h or rewrite or redirect or mu or mirrors:
                filters = RuleFilters(req_h, resp_h, redirect, rewrite, tuple(dict.fromkeys(mu)), tuple(mirrors))
            balancer = WeightedRoundRobin([b.weight for b in backends]) if len(backends) > 1 else None
            rules.append(RouteRule((match,), backends, timeout, per_try, retry, filters, fault, balancer))
    route = HttpRoute(name, namespace, tuple(parents), tuple(rules), str(meta.get("creationTimestamp") or ""),
                      tuple(str(h) for h in spec.get("hosts") or ()), VIRTUAL_SERVICE)
    return VirtualServiceRoutes(route, tuple(dict.fromkeys(problems)))


# ------------------------------------------------------------------------------------- DestinationRule


@dataclass(frozen=True)
class DestinationRule:
    """The parts of a DestinationRule this proxy uses: the Service it applies to and its subsets' labels
    (plus the raw traffic policies, for the connection-pool / outlier / load-balancer settings)."""

    name: str
    namespace: str
    service: tuple[str, str] | None  # (name, namespace) of the host; None when it names no Service here
    subsets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    traffic_policy: Mapping[str, Any] = field(default_factory=dict)
    subset_policies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    created: str = ""
    host: str = ""  # spec.host as written (a ServiceEntry host matches its Services by hostname)
    # resolved policies by (subset, port): resolved once, not per request (the rule itself never changes)
    _resolved: dict[tuple[str, int], TrafficPolicy] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def policy(self, subset: str | None, port: int) -> TrafficPolicy:
        """The traffic policy for requests to `port` of `subset` (None: the whole Service)."""
        k = (subset or "", port)
        found = self._resolved.get(k)
        if found is None:
            if len(self._resolved) > 1024:
                self._resolved.clear()
            found = self._resolved[k] = resolve_policy(self.traffic_policy, self.subset_policies.get(subset or ""),
                                                       port)
        return found


def parse_destination_rule(obj: Mapping[str, Any], domain: str = "cluster.local") -> DestinationRule:
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    spec = obj.get("spec") or {}
    subsets: dict[str, Mapping[str, str]] = {}
    policies: dict[str, Mapping[str, Any]] = {}
    for s in spec.get("subsets") or ():
        subsets[str(s["name"])] = {str(k): str(v) for k, v in (s.get("labels") or {}).items()}
        if s.get("trafficPolicy"):
            policies[str(s["name"])] = s["trafficPolicy"]
    return DestinationRule(str(meta.get("name", "")), namespace, resolve_host(str(spec.get("host") or ""),
                           namespace, domain), subsets, spec.get("trafficPolicy") or {}, policies,
                           str(meta.get("creationTimestamp") or ""), str(spec.get("host") or "").lower())


def destination_rule_for(rules: Iterable[DestinationRule], name: str, namespace: str,
                         hostname: str = "") -> DestinationRule | None:
    """The DestinationRule of Service `namespace/name` (or of the ServiceEntry host `hostname`): the oldest
    one whose host names it (Istio merges only non-conflicting rules; taking the oldest is its outcome for
    conflicting ones)."""
    found = [r for r in rules if r.service == (name, namespace) or (hostname and r.host == hostname)]
    return min(found, key=lambda r: (r.created, r.key)) if found else None


def subset_labels(rules: Iterable[DestinationRule], name: str, namespace: str, subset: str) -> Mapping[str, str] | None:
    """The labels of `subset` of Service `namespace/name`, None when no DestinationRule defines it."""
    rule = destination_rule_for(rules, name, namespace)
    if rule is None:
        return None
    return rule.subsets.get(subset)
