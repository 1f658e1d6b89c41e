"""Pure HTTP routing of the waypoint: HTTPRoute (Gateway API, GAMMA mesh mode) -> the backend of a request.

Role: `parse_http_route(obj)` turns a Kubernetes-shaped HTTPRoute into an immutable `HttpRoute`;
`route_request(routes, service, request, rng)` picks the rule and a weighted backend for one request. No
I/O, no clock: randomness comes only from the injected `random.Random`, so a 90/10 split is testable.

Semantics (Gateway API):
- A route applies to a destination Service when one of its `parentRefs` is kind Service with the Service's
  name and namespace (parentRef.namespace, default the route's own) and, when the parentRef has a `port`,
  the request's service port. `hostnames` are not used for Service parents (GAMMA).
- No route attached: the request goes to the destination Service itself (`RouteDecision.default`).
- Routes attached but no rule matches: 404. A rule without backends, or whose weights are all 0: 500.
- A rule without `matches` matches `PathPrefix /`. Inside a match, path, method, every header and every
  query parameter must match (AND); the matches of a rule OR together.
- Path types: Exact; PathPrefix by whole path segments (`/foo` matches `/foo`, `/foo/` and `/foo/bar`, never
  `/foobar`); RegularExpression as a full match. Header names are case-insensitive, values exact or regex.
- Precedence among all matching (rule, match) pairs of all attached routes: Exact path > longest PathPrefix
  (RegularExpression ranks below every prefix) > has a method > most header matches > most query matches;
  ties: oldest route (creationTimestamp), then `namespace/name` alphabetically, then rule and match order.
- Backend weights: weighted random among weight > 0 (default weight 1); backend port defaults to the
  request's service port; backend namespace defaults to the route's.
- Timeouts (`request`, `backendRequest`) and retry (`attempts`, `backoff`, `codes`) are carried on the
  decision as numbers; `0s` means no timeout.
- Rule `filters` (core Gateway API filters): `RequestHeaderModifier` and `ResponseHeaderModifier` (remove,
  then set, then add; names case-insensitive), `URLRewrite` (hostname, path ReplaceFullPath /
  ReplacePrefixMatch of the matched PathPrefix) and `RequestRedirect` (scheme, hostname, path, port,
  statusCode 301/302, default 302: `route_request` answers `Redirect`, whose `location(authority, scheme)`
  is the Location; no backend is picked). Any other filter type (RequestMirror, ExtensionRef, CORS, ...)
  and filters on a backendRef are not implemented: the rule is kept (so the route still takes its traffic,
  never falling through to the Service unfiltered) and its requests answer 500 naming the route and filter
  (the Gateway API's rule for a filter that cannot be honoured: never skip it). A rule without filters has
  `filters=None`, so routing and forwarding test one attribute and do nothing more. The filter model, its
  parsing and the Location/rewrite helpers live in `filters.py`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

from ambient.l7.errors import ConfigError
from ambient.l7.filters import (
    HeaderModifier,
    RedirectFilter,
    RuleFilters,
    parse_rule_filters,
    redirect_location,
)

# Prefix: a plain string prefix (Istio's `uri.prefix`), unlike PathPrefix's whole path segments
PathKind = Literal["Exact", "PathPrefix", "RegularExpression", "Prefix"]
VIRTUAL_SERVICE = "VirtualService"
_DURATION_PART = re.compile(r"([0-9]+)(ms|h|m|s)")
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str | None) -> float | None:
    """Gateway API duration (`10s`, `500ms`, `1m30s`) -> seconds; None when absent; 0 means disabled."""
    if text is None:
        return None
    if not _DURATION.match(text):
        raise ConfigError(f"invalid duration {text!r}", hint='use a duration like "10s", "500ms" or "1m30s"')
    return sum(int(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class PathMatch:
    kind: PathKind = "PathPrefix"
    value: str = "/"
    regex: re.Pattern[str] | None = field(default=None, compare=False)
    ignore_case: bool = False  # Istio's ignoreUriCase (Exact and Prefix)

    def matches(self, path: str) -> bool:
        if self.kind == "Exact":
            return path.lower() == self.value.lower() if self.ignore_case else path == self.value
        if self.kind == "RegularExpression":
            assert self.regex is not None
            return self.regex.fullmatch(path) is not None
        if self.kind == "Prefix":
            return path.lower().startswith(self.value.lower()) if self.ignore_case else path.startswith(self.value)
        prefix = self.value.rstrip("/")
        if not prefix:
            return True
        return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A header or query-parameter match (name lower-cased for headers)."""

    name: str
    value: str
    regex: re.Pattern[str] | None = field(default=None, compare=False)
    prefix: bool = False  # Istio's StringMatch `prefix`

    def matches(self, candidate: str | None) -> bool:
        if candidate is None:
            return False
        if self.regex is not None:
            return self.regex.fullmatch(candidate) is not None
        if self.prefix:
            return candidate.startswith(self.value)
        return candidate == self.value


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path: PathMatch = PathMatch()
    method: str | None = None
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = ()

    def matches(self, request: RequestInfo) -> bool:
        if self.method is not None and request.method != self.method:
            return False
        if not self.path.matches(request.path):
            return False
        if any(not h.matches(request.headers.get(h.name)) for h in self.headers):
            return False
        query = request.query
        return all(q.matches(query.get(q.name)) for q in self.query_params)

    def rank(self) -> tuple[int, int, int, int, int]:
        """Sort key, larger = more specific (Gateway API precedence)."""
        kind = {"Exact": 2, "PathPrefix": 1, "Prefix": 1, "RegularExpression": 0}[self.path.kind]
        length = len(self.path.value) if self.path.kind in ("PathPrefix", "Prefix") else 0
        return (kind, length, 1 if self.method else 0, len(self.headers), len(self.query_params))


@dataclass(frozen=True, slots=True)
class BackendRef:
    name: str
    namespace: str
    port: int | None = None
    weight: int = 1
    kind: str = "Service"
    subset: str | None = None  # a DestinationRule subset of the Service (VirtualService destinations)


@dataclass(frozen=True, slots=True)
class Fault:
    """Istio's HTTPFaultInjection: a delay of `delay` seconds for `delay_percent`% of requests, then an abort
    answered `abort_status` for `abort_percent`% (Envoy's fault filter: delay first, abort after)."""

    delay: float = 0.0
    delay_percent: float = 0.0
    abort_status: int = 0
    abort_percent: float = 0.0

    def decide(self, rng: random.Random) -> tuple[float, int]:
        """(seconds to delay, status to abort with or 0) for one request."""
        delay = self.delay if self.delay > 0 and rng.random() * 100 < self.delay_percent else 0.0
        abort = self.abort_status if self.abort_status and rng.random() * 100 < self.abort_percent else 0
        return delay, abort


class WeightedRoundRobin:
    """Smooth weighted round robin over a rule's backends (nginx's algorithm): every window of `sum(weights)`
    picks gives each backend exactly its weight, interleaved. Used for VirtualService weights so an 80/20
    split is 80/20 over any 100 requests, not only on average. Mutable state inside the immutable model:
    one picker per rule, replaced with the config; the waypoint is single-threaded (asyncio)."""

    __slots__ = ("_current", "_weights")

    def __init__(self, weights: Sequence[int]) -> None:
        self._weights = [max(0, w) for w in weights]
        self._current = [0] * len(weights)

    def pick(self) -> int | None:
        total = sum(self._weights)
        if total <= 0:
            return None
        best = -1
        for i, w in enumerate(self._weights):
            self._current[i] += w
            if w > 0 and (best < 0 or self._current[i] > self._current[best]):
                best = i
        self._current[best] -= total
        return best


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 0
    backoff: float = 0.025
    codes: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class RouteRule:
    matches: tuple[RouteMatch, ...] = (RouteMatch(),)
    backends: tuple[BackendRef, ...] = ()
    request_timeout: float | None = None
    backend_timeout: float | None = None
    retry: RetryPolicy | None = None
    filters: RuleFilters | None = None
    fault: Fault | None = None
    balancer: WeightedRoundRobin | None = field(default=None, compare=False)  # else weighted random


@dataclass(frozen=True, slots=True)
class ParentRef:
    name: str
    namespace: str
    kind: str = "Service"
    port: int | None = None


@dataclass(frozen=True, slots=True)
class HttpRoute:
    name: str
    namespace: str
    parents: tuple[ParentRef, ...]
    rules: tuple[RouteRule, ...]
    created: str = ""  # RFC 3339 timestamps sort chronologically as strings
    hostnames: tuple[str, ...] = ()
    # "HTTPRoute", or "VirtualService" (translated by `virtual_service.py`): its rules are tried in order and
    # the first match wins, as Istio orders a VirtualService's http routes
    kind: str = "HTTPRoute"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ordered(self) -> bool:
        return self.kind == VIRTUAL_SERVICE

    def attaches_to(self, service_name: str, service_namespace: str, port: int | None) -> bool:
        for p in self.parents:
            if p.kind != "Service" or p.name != service_name or p.namespace != service_namespace:
                continue
            if p.port is None or port is None or p.port == port:
                return True
        return False


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What routing looks at: method, path (normalised, no query), lower-cased headers, raw query."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    raw_query: str = ""

    @property
    def query(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in parse_qsl(self.raw_query, keep_blank_values=True):
            out.setdefault(k, v)  # the first value wins, like Envoy
        return out


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where the request goes. `route` is None for the default (no HTTPRoute attached). The rule's filters
    are `filters` (kept off the decision itself: a decision is built per request, and a field costs every
    request, filtered or not)."""

    backend: BackendRef
    route: HttpRoute | None = None
    rule_index: int = 0
    request_timeout: float | None = None
    backend_timeout: float | None = None
    retry: RetryPolicy | None = None

    @property
    def default(self) -> bool:
        return self.route is None

    @property
    def filters(self) -> RuleFilters | None:
        return self.route.rules[self.rule_index].filters if self.route is not None else None


@dataclass(frozen=True, slots=True)
class Redirect:
    """Answer locally with a redirect (RequestRedirect filter), no backend: `status` 301/302 and
    `location(authority, scheme)` of the request. `path`/`query` are the request's (normalised path),
    `port` the service port it came to; `response_headers` is the rule's ResponseHeaderModifier, if any."""

    status: int
    redirect: RedirectFilter
    path: str
    query: str
    port: int
    route: HttpRoute
    rule_index: int
    response_headers: HeaderModifier | None = None

    def location(self, authority: str, scheme: str = "http") -> str:
        return redirect_location(self.redirect, scheme, authority, self.path, self.query, self.port)


@dataclass(frozen=True, slots=True)
class NoRoute:
    """Answer locally with `status` (404 no rule matched, 500 rule without usable backends)."""

    status: int
    reason: str


# -------------------------------------------------------------------------------------------- decision


def routes_for(
    routes: Iterable[HttpRoute], service_name: str, service_namespace: str, port: int | None
) -> list[HttpRoute]:
    return [r for r in routes if r.attaches_to(service_name, service_namespace, port)]


def route_request(
    routes: Iterable[HttpRoute],
    service_name: str,
    service_namespace: str,
    port: int,
    request: RequestInfo,
    rng: random.Random,
) -> RouteDecision | Redirect | NoRoute:
    """Pick the rule for `request` to `service_name.service_namespace:port` and a backend of it (or the
    redirect of a RequestRedirect rule)."""
    attached = routes_for(routes, service_name, service_namespace, port)
    if not attached:
        return RouteDecision(BackendRef(service_name, service_namespace, port))
    # Gateway API routes take precedence over VirtualServices for the same Service (reported in the
    # VirtualService's status); mixing both is undefined in Istio, this makes it deterministic
    gateway_api = [r for r in attached if not r.ordered]
    chosen = _first_match(attached, request) if not gateway_api else _most_specific(gateway_api, request)
    if chosen is None:
        return NoRoute(404, f"no rule of {', '.join(r.key for r in attached)} matches {request.method} {request.path}")
    route, ri = chosen
    return _decide(route, ri, port, request, rng)


def _first_match(vss: list[HttpRoute], request: RequestInfo) -> tuple[HttpRoute, int] | None:
    """VirtualServices: oldest first (then namespace/name), their rules in order; the first match wins."""
    for route in sorted(vss, key=lambda r: (r.created, r.key)):
        for ri, rule in enumerate(route.rules):
            if any(m.matches(request) for m in rule.matches):
                return route, ri
    return None


def _most_specific(attached: list[HttpRoute], request: RequestInfo) -> tuple[HttpRoute, int] | None:
    best: tuple[Any, ...] | None = None
    chosen: tuple[HttpRoute, int] | None = None
    for route in attached:
        for ri, rule in enumerate(route.rules):
            for mi, match in enumerate(rule.matches):
                if not match.matches(request):
                    continue
                # larger rank first; then older, then name, then rule/match order (negated for max())
                key = (match.rank(), _neg(route.created), _neg(route.key), -ri, -mi)
                if best is None or key > best:
                    best, chosen = key, (route, ri)
    return chosen


def _decide(
    route: HttpRoute, ri: int, port: int, request: RequestInfo, rng: random.Random
) -> RouteDecision | Redirect | NoRoute:
    rule = route.rules[ri]
    filters = rule.filters
    if filters is not None:
        if filters.unsupported:
            return NoRoute(500, f"rule {ri} of {route.kind} {route.key} uses {', '.join(filters.unsupported)}, "
                           "not supported by this waypoint")
        r = filters.redirect
        if r is not None:
            return Redirect(r.status, r, request.path, request.raw_query, port, route, ri, filters.response_headers)
    if rule.balancer is not None:
        index = rule.balancer.pick()
        backend = rule.backends[index] if index is not None else None
    else:
        backend = pick_backend(rule.backends, rng)
    if backend is None:
        return NoRoute(500, f"rule {ri} of {route.kind} {route.key} has no backend with weight > 0")
    if backend.port is None:
        backend = BackendRef(backend.name, backend.namespace, port, backend.weight, backend.kind, backend.subset)
    return RouteDecision(backend, route, ri, rule.request_timeout, rule.backend_timeout, rule.retry)


class _Neg:
    """Reverses string order inside a tuple sort key (older / alphabetically first wins under max())."""

    __slots__ = ("s",)

    def __init__(self, s: str) -> None:
        self.s = s

    def __lt__(self, other: _Neg) -> bool:
        return self.s > other.s

    def __gt__(self, other: _Neg) -> bool:
        return self.s < other.s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Neg) and self.s == other.s

    def __hash__(self) -> int:
        return hash(self.s)


def _neg(s: str) -> _Neg:
    return _Neg(s)


def pick_backend(backends: Sequence[BackendRef], rng: random.Random) -> BackendRef | None:
    """Weighted random among backends with weight > 0; None when there is none."""
    usable = [b for b in backends if b.weight > 0]
    if not usable:
        return None
    if len(usable) == 1:
        return usable[0]
    total = sum(b.weight for b in usable)
    point = rng.random() * total
    for b in usable:
        point -= b.weight
        if point < 0:
            return b
    return usable[-1]


# ---------------------------------------------------------------------------------------------- parsing


def _compile(value: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as exc:
        raise ConfigError(f"{where}: invalid regular expression {value!r}: {exc}") from None


def _value_matches(items: Any, where: str, *, lower: bool) -> tuple[ValueMatch, ...]:
    out = []
    for i, item in enumerate(items or ()):
        name = str(item.get("name", ""))
        value = str(item.get("value", ""))
        kind = item.get("type", "Exact")
        regex = _compile(value, f"{where}[{i}]") if kind == "RegularExpression" else None
        out.append(ValueMatch(name.lower() if lower else name, value, regex))
    return tuple(out)


def _match(obj: Mapping[str, Any], where: str) -> RouteMatch:
    p = obj.get("path") or {}
    kind = p.get("type", "PathPrefix")
    if kind not in ("Exact", "PathPrefix", "RegularExpression"):
        raise ConfigError(f"{where}.path.type: unsupported {kind!r}", hint="use Exact, PathPrefix or RegularExpression")
    value = str(p.get("value", "/"))
    regex = _compile(value, f"{where}.path") if kind == "RegularExpression" else None
    method = obj.get("method")
    return RouteMatch(
        PathMatch(kind, value, regex),
        str(method).upper() if method else None,
        _value_matches(obj.get("headers"), f"{where}.headers", lower=True),
        _value_matches(obj.get("queryParams"), f"{where}.queryParams", lower=False),
    )


def _replace_prefix_of(matches: tuple[RouteMatch, ...]) -> str | None:
    """ReplacePrefixMatch rewrites the prefix that matched: only defined for a rule with one PathPrefix match."""
    return matches[0].path.value if len(matches) == 1 and matches[0].path.kind == "PathPrefix" else None


def parse_http_route(obj: Mapping[str, Any]) -> HttpRoute:
    """A Kubernetes-shaped HTTPRoute (as validated by `ambient.api.validation`) -> `HttpRoute`."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    namespace = str(meta.get("namespace") or "default")
    spec = obj.get("spec") or {}
    where = f"HTTPRoute {namespace}/{name}"
    parents = []
    for ref in spec.get("parentRefs") or ():
        kind = ref.get("kind") or "Gateway"
        port = ref.get("port")
        parents.append(ParentRef(str(ref["name"]), str(ref.get("namespace") or namespace), kind,
                                 int(port) if port is not None else None))
    rules = []
    for ri, rule in enumerate(spec.get("rules") or ()):
        rw = f"{where} rules[{ri}]"
        matches = tuple(_match(m, f"{rw}.matches[{i}]") for i, m in enumerate(rule.get("matches") or ()))
        backends = tuple(
            BackendRef(
                str(b["name"]),
                str(b.get("namespace") or namespace),
                int(b["port"]) if b.get("port") is not None else None,
                int(b.get("weight", 1) if b.get("weight") is not None else 1),
                str(b.get("kind") or "Service"),
            )
            for b in rule.get("backendRefs") or ()
        )
        timeouts = rule.get("timeouts") or {}
        retry_obj = rule.get("retry")
        retry = None
        if retry_obj is not None:
            backoff = parse_duration(retry_obj.get("backoff"))
            retry = RetryPolicy(
                int(retry_obj.get("attempts") or 0),
                0.025 if backoff is None else backoff,
                frozenset(int(c) for c in retry_obj.get("codes") or ()),
            )
        matches = matches or (RouteMatch(),)
        rules.append(
            RouteRule(
                matches,
                backends,
                parse_duration(timeouts.get("request")),
                parse_duration(timeouts.get("backendRequest")),
                retry,
                parse_rule_filters(rule, _replace_prefix_of(matches), rw, namespace),
            )
        )
    return HttpRoute(
        name, namespace, tuple(parents), tuple(rules), str(meta.get("creationTimestamp") or ""),
        tuple(spec.get("hostnames") or ()),
    )


# ------------------------------------------------------------------------------------ path normalisation

# a path with nothing to decode, refuse or remove (a dot segment needs "/.", checked besides)
_NORMAL_PATH = re.compile(r"/[^\x00-\x20\x7f#\\%]*")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalize_path(path: str) -> str | None:
    """RFC 3986 normalisation of a request path (no query): percent-encoded unreserved characters decoded,
    hex upper-cased, dot segments removed. None for a path that must be refused (not starting with `/`,
    control characters, backslashes, fragments, bad escapes). Routing, authorization and the forwarded
    request all use the result, so what policy saw is exactly what the backend gets."""
    if "/." not in path and _NORMAL_PATH.fullmatch(path):  # no escape, no dot segment: already normal
        return path
    return _normalize(path)


def _normalize(path: str) -> str | None:
    """`normalize_path` for any path, character by character."""
    if not path.startswith("/") or any(c in path for c in "#\\") or any(ord(c) < 0x21 or ord(c) == 0x7F for c in path):
        return None
    out = []
    i = 0
    while i < len(path):
        c = path[i]
        if c == "%":
            code = path[i + 1 : i + 3]
            if len(code) != 2 or any(h not in "0123456789abcdefABCDEF" for h in code):
                return None
            ch = chr(int(code, 16))
            out.append(ch if ch in _UNRESERVED else f"%{code.upper()}")
            i += 3
            continue
        out.append(c)
        i += 1
    segments: list[str] = []
    parts = "".join(out).split("/")[1:]
    for n, seg in enumerate(parts):
        last = n == len(parts) - 1
        if seg == ".":
            if last:
                segments.append("")
            continue
        if seg == "..":
            if segments:
                segments.pop()
            if last:
                segments.append("")
            continue
        segments.append(seg)
    return "/" + "/".join(segments)
