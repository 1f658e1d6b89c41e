"""HTTPRoute rule filters for the waypoint (Gateway API v1 core filters), pure: the model, its parsing from
a validated HTTPRoute rule, and the helpers that apply it (header modification, path rewrite, redirect
Location). `routing.py` attaches the parsed `RuleFilters` to a rule; `server.py` applies them.

Invariants: a rule without filters has `filters=None` (nothing to do on the hot path); a filter this
waypoint does not implement is listed in `RuleFilters.unsupported` (the rule then answers 500: never
skipped); headers that describe the message or the connection (framing, hop-by-hop; Host for requests)
cannot be modified.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ambient.l7.errors import ConfigError


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    """RequestHeaderModifier / ResponseHeaderModifier: names lower-cased (HTTP/2 and our messages use
    lower-case names)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: frozenset[str] = frozenset()

    def apply(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A new header list: `remove` and the names of `set` dropped (every occurrence), then `set`, then
        `add` appended (a second field line: the same as a comma-joined value for HTTP, and right for
        set-cookie)."""
        drop = self.remove.union(n for n, _ in self.set)
        out = [(k, v) for k, v in headers if k not in drop]
        out.extend(self.set)
        out.extend(self.add)
        return out


# ReplaceStringPrefix: Istio's VirtualService `rewrite.uri` (Envoy prefix_rewrite): the matched prefix,
# compared as a plain string (not by path segments), is replaced by the value.
PathModifierKind = Literal["ReplaceFullPath", "ReplacePrefixMatch", "ReplaceStringPrefix"]


@dataclass(frozen=True, slots=True)
class PathModifier:
    """ReplaceFullPath, or ReplacePrefixMatch of `prefix`: the value of the rule's one PathPrefix match (the
    only rules where ReplacePrefixMatch is allowed), so the rewrite needs nothing from the request but its
    path."""

    kind: PathModifierKind
    value: str
    prefix: str = "/"

    def apply(self, path: str) -> str:
        if self.kind == "ReplaceFullPath":
            return self.value
        if self.kind == "ReplaceStringPrefix":
            if path.lower().startswith(self.prefix.lower()):  # the match may have ignored case
                return self.value + path[len(self.prefix):] or "/"
            return path
        return replace_prefix(path, self.prefix, self.value)


def replace_prefix(path: str, prefix: str, replacement: str) -> str:
    """Gateway API ReplacePrefixMatch: the matched prefix (whole segments, trailing `/` ignored on both
    sides) becomes `replacement`; `/foo/bar` with `/foo` -> `/xyz` is `/xyz/bar`, with `/foo` -> `` or `/` is
    `/bar`; `/foo` with `/foo` -> `/xyz` is `/xyz`; an empty result is `/`."""
    stem = prefix.rstrip("/")
    rest = path[len(stem):] if path.startswith(stem) else path
    if not stem and rest == "/":  # prefix "/" matched "/": nothing is left after the prefix
        rest = ""
    out = replacement.rstrip("/") + rest
    return out if out.startswith("/") else "/" + out


@dataclass(frozen=True, slots=True)
class RedirectFilter:
    """RequestRedirect: fields left None keep the request's value (port: see `redirect_location`)."""

    scheme: str | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = None
    status: int = 302


@dataclass(frozen=True, slots=True)
class RewriteFilter:
    """URLRewrite: the Host (authority) and/or path the backend sees."""

    hostname: str | None = None
    path: PathModifier | None = None


@dataclass(frozen=True, slots=True)
class MirrorFilter:
    """RequestMirror (HTTPRoute) / `mirror` + `mirrorPercentage` (VirtualService): a copy of the request goes
    to Service `namespace/name` (port: the request's when None; `subset` for a VirtualService), its answer
    ignored, for `percent`% of requests."""

    name: str
    namespace: str
    port: int | None = None
    percent: float = 100.0
    subset: str | None = None


@dataclass(frozen=True, slots=True)
class RuleFilters:
    """The filters of one rule (None on a rule without any). `unsupported` names the filters this
    waypoint does not implement: such a rule answers 500 rather than skip them."""

    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: RedirectFilter | None = None
    rewrite: RewriteFilter | None = None
    unsupported: tuple[str, ...] = ()
    mirrors: tuple[MirrorFilter, ...] = ()


_DEFAULT_PORTS = {"http": 80, "https": 443}


def split_authority(authority: str) -> tuple[str, int | None]:
    """`host[:port]` (IPv6 in brackets) -> (host without brackets, port or None)."""
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = authority.rpartition(":") if authority.count(":") == 1 else (authority, "", "")
    return host, int(port) if port.isdigit() else None


def redirect_location(r: RedirectFilter, scheme: str, authority: str, path: str, query: str, listener_port: int) -> str:
    """The Location of a RequestRedirect (Gateway API v1): scheme and hostname default to the request's;
    the port is the filter's, else the well-known port of a redirect `scheme` (http 80, https 443), else
    the listener's (for a Service parent: the service port the request came to); it is left out when it
    is the scheme's well-known port. The path is the request's (normalised) unless the filter rewrites it;
    the query is kept."""
    scheme = r.scheme or scheme or "http"
    host = r.hostname or split_authority(authority)[0]
    if r.port is not None:
        port = r.port
    elif r.scheme is not None:
        port = _DEFAULT_PORTS.get(r.scheme, listener_port)
    else:
        port = listener_port
    if ":" in host:
        host = f"[{host}]"
    netloc = host if _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    if r.path is not None:
        path = r.path.apply(path)
    return f"{scheme}://{netloc}{path}{'?' + query if query else ''}"


SUPPORTED_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite",
                     "RequestMirror")
# request headers a filter may not touch: Host is the authority (URLRewrite hostname changes it); framing and
# hop-by-hop headers describe one message on one connection, not the request
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
                              "upgrade", "te", "trailer", "proxy-authenticate", "proxy-authorization",
                              "http2-settings"})
_REQUEST_FORBIDDEN = _FRAMING_HEADERS | {"host"}


def header_modifier(obj: Any, where: str, forbidden: frozenset[str]) -> HeaderModifier:
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{where}: required for this filter type")

    def check(name: Any, w: str) -> str:
        lower = str(name).lower()
        if not lower or lower in forbidden or lower.startswith(":"):
            raise ConfigError(f"{w}: header {name!r} cannot be modified by a filter")
        return lower

    def value(v: Any, w: str) -> str:
        text = str(v if v is not None else "")
        if any(c in text for c in "\r\n\0"):
            raise ConfigError(f"{w}: a header value cannot contain CR, LF or NUL")
        return text

    set_ = tuple((check(h.get("name"), f"{where}.set[{i}]"), value(h.get("value"), f"{where}.set[{i}]"))
                 for i, h in enumerate(obj.get("set") or ()))
    add = tuple((check(h.get("name"), f"{where}.add[{i}]"), value(h.get("value"), f"{where}.add[{i}]"))
                for i, h in enumerate(obj.get("add") or ()))
    remove = frozenset(check(n, f"{where}.remove[{i}]") for i, n in enumerate(obj.get("remove") or ()))
    return HeaderModifier(set_, add, remove)


def path_modifier(obj: Any, where: str, prefix: str | None) -> PathModifier | None:
    if obj is None:
        return None
    kind = obj.get("type")
    if kind == "ReplaceFullPath":
        value = obj.get("replaceFullPath")
        if not isinstance(value, str) or not value.startswith("/"):
            raise ConfigError(f"{where}.replaceFullPath: a path starting with / is required")
        return PathModifier("ReplaceFullPath", value)
    if kind == "ReplacePrefixMatch":
        value = obj.get("replacePrefixMatch")
        if not isinstance(value, str) or (value and not value.startswith("/")):
            raise ConfigError(f"{where}.replacePrefixMatch: a path starting with / (or empty) is required")
        if prefix is None:
            raise ConfigError(f"{where}: ReplacePrefixMatch needs a rule with exactly one PathPrefix match")
        return PathModifier("ReplacePrefixMatch", value, prefix)
    raise ConfigError(f"{where}.type: unsupported {kind!r}", hint="use ReplaceFullPath or ReplacePrefixMatch")


def parse_rule_filters(rule: Mapping[str, Any], prefix: str | None, where: str,
                       namespace: str = "default") -> RuleFilters | None:
    """The `filters` of one HTTPRoute rule (and a note of backendRef filters, not implemented); `prefix` is
    the value of the rule's one PathPrefix match (None otherwise: ReplacePrefixMatch is then refused)."""
    items = rule.get("filters") or ()
    backend_filters = [f"backendRefs[{i}].filters" for i, b in enumerate(rule.get("backendRefs") or ())
                       if b.get("filters")]
    if not items and not backend_filters:
        return None
    req = resp = None
    redirect: RedirectFilter | None = None
    rewrite: RewriteFilter | None = None
    unsupported: list[str] = []
    mirrors: list[MirrorFilter] = []
    seen: set[str] = set()
    for i, f in enumerate(items):
        fw = f"{where}.filters[{i}]"
        kind = f.get("type")
        if kind in seen and kind in SUPPORTED_FILTERS:
            raise ConfigError(f"{fw}: a rule can have one {kind} filter")
        seen.add(str(kind))
        if kind == "RequestHeaderModifier":
            req = header_modifier(f.get("requestHeaderModifier"), f"{fw}.requestHeaderModifier", _REQUEST_FORBIDDEN)
        elif kind == "ResponseHeaderModifier":
            resp = header_modifier(f.get("responseHeaderModifier"), f"{fw}.responseHeaderModifier",
                                    _FRAMING_HEADERS)
        elif kind == "RequestRedirect":
            r = f.get("requestRedirect")
            if not isinstance(r, Mapping):
                raise ConfigError(f"{fw}.requestRedirect: required for this filter type")
            status = int(r.get("statusCode") or 302)
            if status not in (301, 302):
                raise ConfigError(f"{fw}.requestRedirect.statusCode: 301 or 302, got {status}")
            scheme = r.get("scheme")
            if scheme is not None and scheme not in ("http", "https"):
                raise ConfigError(f"{fw}.requestRedirect.scheme: http or https, got {scheme!r}")
            port = r.get("port")
            redirect = RedirectFilter(scheme, r.get("hostname") or None,
                                      path_modifier(r.get("path"), f"{fw}.requestRedirect.path", prefix),
                                      int(port) if port is not None else None, status)
        elif kind == "URLRewrite":
            r = f.get("urlRewrite")
            if not isinstance(r, Mapping):
                raise ConfigError(f"{fw}.urlRewrite: required for this filter type")
            rewrite = RewriteFilter(r.get("hostname") or None,
                                    path_modifier(r.get("path"), f"{fw}.urlRewrite.path", prefix))
        elif kind == "RequestMirror":
            mirrors.append(request_mirror(f.get("requestMirror"), f"{fw}.requestMirror", namespace))
        else:
            unsupported.append(f"filter {kind}")
    if redirect is not None and rewrite is not None:
        raise ConfigError(f"{where}.filters: RequestRedirect and URLRewrite cannot be used on the same rule")
    unsupported += backend_filters
    return RuleFilters(req, resp, redirect, rewrite, tuple(unsupported), tuple(mirrors))


def request_mirror(obj: Any, where: str, namespace: str) -> MirrorFilter:
    """A RequestMirror filter: `backendRef` (a Service), `percent` or `fraction` (default all requests)."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("backendRef"), Mapping):
        raise ConfigError(f"{where}.backendRef: required for this filter type")
    ref = obj["backendRef"]
    if (ref.get("kind") or "Service") != "Service":
        raise ConfigError(f"{where}.backendRef.kind: only Service is supported, got {ref.get('kind')!r}")
    percent = 100.0
    if obj.get("percent") is not None:
        percent = float(obj["percent"])
    elif isinstance(obj.get("fraction"), Mapping):
        frac = obj["fraction"]
        percent = 100.0 * float(frac.get("numerator", 0)) / float(frac.get("denominator") or 100)
    port = ref.get("port")
    return MirrorFilter(str(ref.get("name")), str(ref.get("namespace") or namespace),
                        int(port) if port is not None else None, percent)


