"""Spec checks of the mesh kinds: AuthorizationPolicy, PeerAuthentication, Gateway, HTTPRoute.

Role: one `_check_<kind>(spec, obj)` per kind (Istio security API and Gateway API), called by
`validate_object` through its dispatch table.

Invariants:
- `selector` (workloads, enforced by the node proxy) and `targetRefs` (Service/Gateway, enforced by a
  waypoint) are mutually exclusive.
- Normalisation makes re-validation a no-op: Istio ports become strings ("8080"), PeerAuthentication
  `portLevelMtls` keys become strings, HTTPRoute path matches default to PathPrefix "/", header/query matches
  to Exact, backend weights to 1, RequestRedirect statusCode to 302.
- HTTPRoute filters of every Gateway API type are accepted when well-formed (the object is valid Gateway
  API); which ones the waypoint implements is the waypoint's to say (it warns and answers 500 for others).
"""

from __future__ import annotations

import re

from ambient.api.validation.fields import (
    Obj,
    _check_cidr,
    _duration,
    _enum,
    _fail,
    _int,
    _items,
    _list,
    _map,
    _port_number,
    _str,
    _str_list,
)
from ambient.api.validation.metadata import _label_selector, check_name


def _check_target_refs(spec: Obj, path: str) -> None:
    refs = _items(spec, "targetRefs", path)
    single = _map(spec, "targetRef", path)
    if single is not None:
        refs.append((f"{path}.targetRef", single))
    for rp, ref in refs:
        _str(ref, "group", rp)
        _str(ref, "kind", rp, required=True)
        _str(ref, "name", rp, required=True)
        _str(ref, "namespace", rp)


def _check_selector_xor_target(spec: Obj) -> None:
    if spec.get("selector") is not None and (spec.get("targetRefs") or spec.get("targetRef")):
        raise _fail("spec", "selector and targetRefs are mutually exclusive",
                    hint="use selector for workloads (L4, node proxy) or targetRefs for a Service/Gateway "
                    "(L7, waypoint)")


def _string_ports(d: Obj, key: str, path: str) -> None:
    """Istio ports are strings ("8080"); accept YAML integers too and normalise them to strings."""
    ports = _list(d, key, path)
    for i, port in enumerate(ports):
        p = f"{path}.{key}[{i}]"
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        _port_number(port, p)
        ports[i] = str(port)


_SOURCE_FIELDS = ("principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
                  "namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts")
_SOURCE_IP_FIELDS = ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks")
_OPERATION_FIELDS = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")


def _check_authorization_policy(spec: Obj, obj: Obj) -> None:
    _label_selector(spec, "selector", "spec")
    _check_target_refs(spec, "spec")
    _check_selector_xor_target(spec)
    action = _enum(spec, "action", "spec", ("ALLOW", "DENY", "AUDIT", "CUSTOM"))
    provider = _map(spec, "provider", "spec")
    if action == "CUSTOM" and provider is None:
        raise _fail("spec.provider", "required when action is CUSTOM")
    for rp, rule in _items(spec, "rules", "spec"):
        for fp, frm in _items(rule, "from", rp):
            source = _map(frm, "source", fp, required=True)
            assert source is not None
            for field in _SOURCE_FIELDS:
                _str_list(source, field, f"{fp}.source")
            for field in _SOURCE_IP_FIELDS:
                _str_list(source, field, f"{fp}.source", check=_check_cidr)
        for tp, to in _items(rule, "to", rp):
            op = _map(to, "operation", tp, required=True)
            assert op is not None
            for field in _OPERATION_FIELDS:
                _str_list(op, field, f"{tp}.operation")
            _string_ports(op, "ports", f"{tp}.operation")
            _string_ports(op, "notPorts", f"{tp}.operation")
        for wp, cond in _items(rule, "when", rp):
            _str(cond, "key", wp, required=True)
            _str_list(cond, "values", wp)
            _str_list(cond, "notValues", wp)


_MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


def _check_peer_authentication(spec: Obj, obj: Obj) -> None:
    _label_selector(spec, "selector", "spec")
    mtls = _map(spec, "mtls", "spec")
    if mtls is not None:
        _enum(mtls, "mode", "spec.mtls", _MTLS_MODES)
    levels = _map(spec, "portLevelMtls", "spec")
    if levels is not None:
        normalised: Obj = {}
        for port, setting in levels.items():
            p = f"spec.portLevelMtls.{port}"
            number = int(port) if isinstance(port, str) and port.isdigit() else port
            _port_number(number, p + " (key)")
            if not isinstance(setting, dict):
                raise _fail(p, "an object", setting)
            _enum(setting, "mode", p, _MTLS_MODES)
            # JSON object keys are strings: normalise YAML integer keys so stored == re-validated.
            normalised[str(number)] = setting
        spec["portLevelMtls"] = normalised


_LISTENER_PROTOCOLS = ("HTTP", "HTTPS", "TLS", "TCP", "UDP", "HBONE")


def _check_gateway(spec: Obj, obj: Obj) -> None:
    _str(spec, "gatewayClassName", "spec", required=True)
    names: set[str] = set()
    for lp, listener in _items(spec, "listeners", "spec", required=True, nonempty=True):
        name = check_name(listener.get("name"), f"{lp}.name")
        if name in names:
            raise _fail(f"{lp}.name", f'duplicate listener name "{name}"')
        names.add(name)
        _int(listener, "port", lp, lo=1, hi=65535, required=True)
        _enum(listener, "protocol", lp, _LISTENER_PROTOCOLS)
        if listener.get("protocol") is None:
            raise _fail(f"{lp}.protocol", "required field is missing")
        _str(listener, "hostname", lp)
        _map(listener, "tls", lp)
        _map(listener, "allowedRoutes", lp)
    for ap, addr in _items(spec, "addresses", "spec"):
        _str(addr, "type", ap)
        _str(addr, "value", ap, required=True)


_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


def _check_route_match(match: Obj, path: str) -> None:
    mpath = _map(match, "path", path)
    if mpath is not None:
        _enum(mpath, "type", f"{path}.path", ("Exact", "PathPrefix", "RegularExpression"), default="PathPrefix")
        value = _str(mpath, "value", f"{path}.path")
        if value is None:
            mpath["value"] = "/"
        elif mpath["type"] != "RegularExpression" and not value.startswith("/"):
            raise _fail(f"{path}.path.value", 'a path starting with "/"', value)
        elif mpath["type"] == "RegularExpression":
            try:
                re.compile(value)
            except re.error as exc:
                raise _fail(f"{path}.path.value", f"a valid regular expression ({exc})", value) from None
    for key in ("headers", "queryParams"):
        for hp, header in _items(match, key, path):
            _enum(header, "type", hp, ("Exact", "RegularExpression"), default="Exact")
            _str(header, "name", hp, required=True)
            _str(header, "value", hp, required=True)
    _enum(match, "method", path, _HTTP_METHODS)


# Gateway API v1 HTTPRouteFilter types (standard and experimental channels). All are valid objects; the
# waypoint implements the first four and answers 500 on rules using the others (ambient.l7.routing).
_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "RequestMirror": "requestMirror",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
    "ExternalAuth": "externalAuth",
}
_FILTER_TYPES = tuple(_FILTER_FIELDS)
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,256}$")
_HEADER_VALUE = re.compile(r"^[^\x00-\x08\x0a-\x1f\x7f]{0,4096}$")  # no CR, LF or other controls (tab is fine)
_PRECISE_HOSTNAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_REPLACEMENT_PATH = re.compile(r"^/[\x21-\x7e]*$")
# headers that describe one message on one hop (framing, hop-by-hop): no filter may change them
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
                              "upgrade", "te", "trailer", "proxy-authenticate", "proxy-authorization",
                              "http2-settings"})


def _check_header_modifier(mod: Obj, path: str, forbidden: frozenset[str]) -> None:
    def name(value: object, p: str) -> str:
        if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value):
            raise _fail(p, "an HTTP header name", value)
        if value.lower() in forbidden:
            hint = "use a URLRewrite filter's hostname to change Host" if value.lower() == "host" else None
            raise _fail(p, f'header "{value}" cannot be modified by a filter', hint=hint)
        return value.lower()

    for key in ("set", "add"):
        seen: set[str] = set()
        entries = _items(mod, key, path)
        if len(entries) > 16:
            raise _fail(f"{path}.{key}", "at most 16 headers")
        for hp, header in entries:
            lower = name(header.get("name"), f"{hp}.name")
            if lower in seen:
                raise _fail(f"{hp}.name", f'duplicate header "{header["name"]}" (names are case-insensitive)')
            seen.add(lower)
            value = _str(header, "value", hp, required=True)
            assert value is not None
            if not _HEADER_VALUE.fullmatch(value):
                raise _fail(f"{hp}.value", "a header value without control characters (at most 4096)", value)
    removes = _list(mod, "remove", path)
    if len(removes) > 16:
        raise _fail(f"{path}.remove", "at most 16 headers")
    for i, item in enumerate(removes):
        name(item, f"{path}.remove[{i}]")


def _check_path_modifier(mod: Obj, path: str, prefix_ok: bool) -> None:
    kind = _enum(mod, "type", path, ("ReplaceFullPath", "ReplacePrefixMatch"))
    if kind is None:
        raise _fail(f"{path}.type", "required field is missing")
    field, other = (("replaceFullPath", "replacePrefixMatch") if kind == "ReplaceFullPath"
                    else ("replacePrefixMatch", "replaceFullPath"))
    if mod.get(other) is not None:
        raise _fail(f"{path}.{other}", f"must not be set when type is {kind}")
    value = _str(mod, field, path, required=True)
    assert value is not None
    if not (_REPLACEMENT_PATH.fullmatch(value) or (value == "" and kind == "ReplacePrefixMatch")) or \
            len(value) > 1024 or "?" in value or "#" in value:
        raise _fail(f"{path}.{field}", 'a path starting with "/" (printable ASCII, no "?" or "#")', value)
    if kind == "ReplacePrefixMatch" and not prefix_ok:
        raise _fail(f"{path}.type", "ReplacePrefixMatch needs a rule with exactly one match, of type PathPrefix")


def _check_filters(owner: Obj, path: str, prefix_ok: bool) -> None:
    """Rule (or backendRef) filters: the structure the Gateway API CRD enforces (type with its own field
    only, each core filter at most once, RequestRedirect xor URLRewrite, ReplacePrefixMatch only with one
    PathPrefix match)."""
    seen: set[str] = set()
    for fp, f in _items(owner, "filters", path):
        kind = _enum(f, "type", fp, _FILTER_TYPES)
        if kind is None:
            raise _fail(f"{fp}.type", "required field is missing")
        for other_kind, other in _FILTER_FIELDS.items():
            if other_kind != kind and f.get(other) is not None:
                raise _fail(f"{fp}.{other}", f"must not be set when type is {kind}")
        if kind in seen and kind in ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect",
                                     "URLRewrite", "CORS"):
            raise _fail(fp, f"a {kind} filter cannot be repeated")
        seen.add(kind)
        config = _map(f, _FILTER_FIELDS[kind], fp, required=kind != "CORS")
        cp = f"{fp}.{_FILTER_FIELDS[kind]}"
        if config is None:
            continue
        if kind == "RequestHeaderModifier":
            _check_header_modifier(config, cp, _FRAMING_HEADERS | {"host"})
        elif kind == "ResponseHeaderModifier":
            _check_header_modifier(config, cp, _FRAMING_HEADERS)
        elif kind in ("RequestRedirect", "URLRewrite"):
            if kind == "RequestRedirect":
                _enum(config, "scheme", cp, ("http", "https"))
                _int(config, "port", cp, lo=1, hi=65535)
                code = config.setdefault("statusCode", 302)
                if code not in (301, 302) or isinstance(code, bool):
                    raise _fail(f"{cp}.statusCode", "301 or 302", code)
            hostname = _str(config, "hostname", cp)
            if hostname is not None and (len(hostname) > 253 or not _PRECISE_HOSTNAME.fullmatch(hostname)):
                raise _fail(f"{cp}.hostname", "a lower-case DNS name (no wildcard, no port)", hostname)
            mod = _map(config, "path", cp)
            if mod is not None:
                _check_path_modifier(mod, f"{cp}.path", prefix_ok)
    if {"RequestRedirect", "URLRewrite"} <= seen:
        raise _fail(f"{path}.filters", "RequestRedirect and URLRewrite cannot be used on the same rule")


def _check_http_route(spec: Obj, obj: Obj) -> None:
    for pp, ref in _items(spec, "parentRefs", "spec"):
        _str(ref, "group", pp)
        _str(ref, "kind", pp)
        _str(ref, "name", pp, required=True)
        _str(ref, "namespace", pp)
        _str(ref, "sectionName", pp)
        _int(ref, "port", pp, lo=1, hi=65535)
    _str_list(spec, "hostnames", "spec")
    for rp, rule in _items(spec, "rules", "spec"):
        matches = _items(rule, "matches", rp)
        for mp, match in matches:
            _check_route_match(match, mp)
        # ReplacePrefixMatch rewrites the prefix that matched: there must be exactly one, a PathPrefix (no
        # matches at all means the default PathPrefix "/")
        prefix_ok = not matches or (len(matches) == 1 and ((matches[0][1].get("path") or {}).get("type")
                                                             or "PathPrefix") == "PathPrefix")
        _check_filters(rule, rp, prefix_ok)
        for bp, backend in _items(rule, "backendRefs", rp):
            _check_filters(backend, bp, prefix_ok)
            _str(backend, "group", bp)
            _str(backend, "kind", bp)
            _str(backend, "name", bp, required=True)
            _str(backend, "namespace", bp)
            _int(backend, "port", bp, lo=1, hi=65535)
            if backend.get("weight") is None:
                backend["weight"] = 1
            else:
                _int(backend, "weight", bp, lo=0, hi=1_000_000)
        timeouts = _map(rule, "timeouts", rp)
        if timeouts is not None:
            _duration(timeouts, "request", f"{rp}.timeouts")
            _duration(timeouts, "backendRequest", f"{rp}.timeouts")
        retry = _map(rule, "retry", rp)
        if retry is not None:
            _int(retry, "attempts", f"{rp}.retry", lo=0)
            _duration(retry, "backoff", f"{rp}.retry")
            for i, code in enumerate(_list(retry, "codes", f"{rp}.retry")):
                if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
                    raise _fail(f"{rp}.retry.codes[{i}]", "an HTTP status code 400-599", code)
