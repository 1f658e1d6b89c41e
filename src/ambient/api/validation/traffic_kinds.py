"""Schemas and spec checks of the traffic-management kinds: Istio networking v1 (VirtualService,
DestinationRule), Istio security v1 RequestAuthentication, and Gateway API GRPCRoute, TCPRoute and
ReferenceGrant.

Role: `TRAFFIC_SCHEMAS` (merged into `schema.SCHEMAS`: which fields exist) and `TRAFFIC_CHECKS` (merged into
the dispatch table of `validate_object`: types and values). What the waypoint implements of a valid object
is the waypoint's to say (it reports the rest in the object's status); these checks only refuse objects
that are not valid for Istio / the Gateway API.

Invariants: field lists follow istio.io/api networking/v1 and security/v1 and Gateway API v1 (standard and
experimental channels), so a real manifest keeps every field; durations are Go/protobuf durations ("2s",
"0.5s", "100ms", "1m30s"); regular expressions must compile; VirtualService `hosts` is non-empty.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ambient.api.validation.fields import Obj, _bool, _enum, _fail, _int, _items, _list, _map, _str, _str_list
from ambient.api.validation.schema import OPAQUE, SCALAR, ListOf, MapOf, _fields

_STRINGS = ListOf(SCALAR)
_STRING_MAP = MapOf(SCALAR)

# ----------------------------------------------------------------------------- Istio networking v1

_STRING_MATCH = _fields("exact", "prefix", "regex")
_PORT_SELECTOR = _fields("number")
_DESTINATION = _fields("host", "subset", port=_PORT_SELECTOR)
_HEADER_OPS = _fields(set=_STRING_MAP, add=_STRING_MAP, remove=_STRINGS)
_HEADERS = _fields(request=_HEADER_OPS, response=_HEADER_OPS)
_PERCENT = _fields("value")
_HTTP_MATCH = _fields(
    "name", "port", "ignoreUriCase", "sourceNamespace", "statPrefix",
    uri=_STRING_MATCH, scheme=_STRING_MATCH, method=_STRING_MATCH, authority=_STRING_MATCH,
    headers=MapOf(_STRING_MATCH), queryParams=MapOf(_STRING_MATCH), withoutHeaders=MapOf(_STRING_MATCH),
    sourceLabels=_STRING_MAP, gateways=_STRINGS,
)
_HTTP_ROUTE = _fields(
    "name", "timeout", "mirrorPercent",
    match=ListOf(_HTTP_MATCH),
    route=ListOf(_fields("weight", destination=_DESTINATION, headers=_HEADERS)),
    redirect=_fields("uri", "authority", "port", "derivePort", "scheme", "redirectCode"),
    directResponse=_fields("status", body=_fields("string", "bytes")),
    delegate=_fields("name", "namespace"),
    rewrite=_fields("uri", "authority", uriRegexRewrite=_fields("match", "rewrite")),
    retries=_fields("attempts", "perTryTimeout", "retryOn", "retryRemoteLocalities"),
    fault=_fields(
        delay=_fields("fixedDelay", "exponentialDelay", "percent", percentage=_PERCENT),
        abort=_fields("httpStatus", "grpcStatus", "http2Error", percentage=_PERCENT),
    ),
    mirror=_DESTINATION, mirrorPercentage=_PERCENT,
    mirrors=ListOf(_fields(destination=_DESTINATION, percentage=_PERCENT)),
    corsPolicy=OPAQUE, headers=_HEADERS,
)
_L4_MATCH = _fields("port", "sourceSubnet", "sourceNamespace", destinationSubnets=_STRINGS,
                    sourceLabels=_STRING_MAP, gateways=_STRINGS, sniHosts=_STRINGS)
_L4_ROUTE = ListOf(_fields("weight", destination=_DESTINATION))
VIRTUAL_SERVICE_SPEC = _fields(
    hosts=_STRINGS, gateways=_STRINGS, exportTo=_STRINGS,
    http=ListOf(_HTTP_ROUTE),
    tls=ListOf(_fields(match=ListOf(_L4_MATCH), route=_L4_ROUTE)),
    tcp=ListOf(_fields(match=ListOf(_L4_MATCH), route=_L4_ROUTE)),
)

_LOAD_BALANCER = _fields(
    "simple", "warmupDurationSecs",
    consistentHash=_fields(
        "httpHeaderName", "useSourceIp", "httpQueryParameterName", "minimumRingSize",
        httpCookie=_fields("name", "path", "ttl", attributes=ListOf(_fields("name", "value"))),
        ringHash=_fields("minimumRingSize"), maglev=_fields("tableSize"),
    ),
    localityLbSetting=OPAQUE, warmup=OPAQUE,
)
_CONNECTION_POOL = _fields(
    tcp=_fields("maxConnections", "connectTimeout", "maxConnectionDuration", "idleTimeout",
                tcpKeepalive=_fields("probes", "time", "interval")),
    http=_fields("http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection", "maxRetries",
                 "idleTimeout", "h2UpgradePolicy", "useClientProtocol", "maxConcurrentStreams"),
)
_OUTLIER = _fields(
    "consecutiveErrors", "consecutive5xxErrors", "consecutiveGatewayErrors", "consecutiveLocalOriginFailures",
    "splitExternalLocalOriginErrors", "interval", "baseEjectionTime", "maxEjectionPercent", "minHealthPercent",
)
_CLIENT_TLS = _fields("mode", "clientCertificate", "privateKey", "caCertificates", "credentialName", "sni",
                      "insecureSkipVerify", "caCrl", subjectAltNames=_STRINGS)
_PORT_POLICY = _fields(port=_PORT_SELECTOR, loadBalancer=_LOAD_BALANCER, connectionPool=_CONNECTION_POOL,
                       outlierDetection=_OUTLIER, tls=_CLIENT_TLS)
_TRAFFIC_POLICY = _fields(
    loadBalancer=_LOAD_BALANCER, connectionPool=_CONNECTION_POOL, outlierDetection=_OUTLIER, tls=_CLIENT_TLS,
    portLevelSettings=ListOf(_PORT_POLICY), tunnel=OPAQUE, proxyProtocol=OPAQUE, retryBudget=OPAQUE,
)
DESTINATION_RULE_SPEC = _fields(
    "host",
    trafficPolicy=_TRAFFIC_POLICY,
    subsets=ListOf(_fields("name", labels=_STRING_MAP, trafficPolicy=_TRAFFIC_POLICY)),
    exportTo=_STRINGS, workloadSelector=_fields(matchLabels=_STRING_MAP),
)

# ----------------------------------------------------------------------------- Istio security v1

_TARGET_REF = _fields("group", "kind", "name", "namespace")
REQUEST_AUTHENTICATION_SPEC = _fields(
    selector=_fields(matchLabels=_STRING_MAP), targetRef=_TARGET_REF, targetRefs=ListOf(_TARGET_REF),
    jwtRules=ListOf(_fields(
        "issuer", "jwksUri", "jwks", "outputPayloadToHeader", "forwardOriginalToken", "timeout",
        audiences=_STRINGS, fromParams=_STRINGS, fromCookies=_STRINGS,
        fromHeaders=ListOf(_fields("name", "prefix")),
        outputClaimToHeaders=ListOf(_fields("header", "claim")),
    )),
)

# ----------------------------------------------------------------------------- Gateway API

_PARENT_REF = _fields("group", "kind", "namespace", "name", "sectionName", "port")
_HEADER = _fields("name", "value")
_HEADER_MODIFIER = _fields(set=ListOf(_HEADER), add=ListOf(_HEADER), remove=_STRINGS)
_BACKEND_OBJECT_REF = _fields("group", "kind", "name", "namespace", "port")
_GRPC_FILTER = _fields(
    "type",
    requestHeaderModifier=_HEADER_MODIFIER, responseHeaderModifier=_HEADER_MODIFIER,
    requestMirror=_fields("percent", backendRef=_BACKEND_OBJECT_REF, fraction=_fields("numerator", "denominator")),
    extensionRef=_fields("group", "kind", "name"),
)
GRPC_ROUTE_SPEC = _fields(
    parentRefs=ListOf(_PARENT_REF), hostnames=_STRINGS,
    rules=ListOf(_fields(
        "name",
        matches=ListOf(_fields(method=_fields("type", "service", "method"),
                               headers=ListOf(_fields("type", "name", "value")))),
        filters=ListOf(_GRPC_FILTER),
        backendRefs=ListOf(_fields("group", "kind", "name", "namespace", "port", "weight",
                                   filters=ListOf(_GRPC_FILTER))),
        sessionPersistence=OPAQUE,
    )),
)
TCP_ROUTE_SPEC = _fields(
    parentRefs=ListOf(_PARENT_REF),
    rules=ListOf(_fields("name", backendRefs=ListOf(_fields("group", "kind", "name", "namespace", "port",
                                                            "weight")))),
)
REFERENCE_GRANT_SPEC = _fields(**{"from": ListOf(_fields("group", "kind", "namespace"))},
                               to=ListOf(_fields("group", "kind", "name")))


def _kind(spec: Any) -> dict[str, Any]:
    from ambient.api.validation.schema import OBJECT_META

    return _fields("apiVersion", "kind", metadata=OBJECT_META, status=OPAQUE, spec=spec)


TRAFFIC_SCHEMAS: dict[str, dict[str, Any]] = {
    "VirtualService": _kind(VIRTUAL_SERVICE_SPEC),
    "DestinationRule": _kind(DESTINATION_RULE_SPEC),
    "RequestAuthentication": _kind(REQUEST_AUTHENTICATION_SPEC),
    "GRPCRoute": _kind(GRPC_ROUTE_SPEC),
    "TCPRoute": _kind(TCP_ROUTE_SPEC),
    "ReferenceGrant": _kind(REFERENCE_GRANT_SPEC),
}

# ----------------------------------------------------------------------------- checks

_GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(h|m|s|ms|us|ns))+$")


def _go_duration(d: Obj, key: str, path: str) -> None:
    value = d.get(key)
    if value is not None and (not isinstance(value, str) or not _GO_DURATION.match(value)):
        raise _fail(f"{path}.{key}", 'a duration like "2s", "0.5s", "100ms" or "1m30s"', value)


def _regex(value: Any, path: str) -> None:
    try:
        re.compile(value)
    except (re.error, TypeError) as exc:
        raise _fail(path, f"a valid regular expression ({exc})", value) from None


def _string_match(m: Obj | None, path: str) -> None:
    if m is None:
        return
    if not isinstance(m, dict):
        raise _fail(path, "an object with one of exact, prefix, regex", m)
    present = [k for k in ("exact", "prefix", "regex") if m.get(k) is not None]
    if len(present) != 1:
        raise _fail(path, "exactly one of exact, prefix, regex", hint="e.g. {prefix: /reviews}")
    _str(m, present[0], path)
    if present[0] == "regex":
        _regex(m["regex"], f"{path}.regex")


def _percentage(owner: Obj, path: str) -> None:
    pct = _map(owner, "percentage", path)
    if pct is not None:
        value = pct.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            raise _fail(f"{path}.percentage.value", "a number 0-100", value)


def _destination(dest: Obj | None, path: str) -> None:
    if dest is None:
        raise _fail(path, "required field is missing")
    _str(dest, "host", path, required=True)
    _str(dest, "subset", path)
    port = _map(dest, "port", path)
    if port is not None:
        _int(port, "number", f"{path}.port", lo=1, hi=65535)


def _header_ops(headers: Obj | None, path: str) -> None:
    for side in ("request", "response"):
        ops = _map(headers or {}, side, path)
        if ops is None:
            continue
        for key in ("set", "add"):
            for name, value in (_map(ops, key, f"{path}.{side}") or {}).items():
                if not isinstance(value, str):
                    raise _fail(f"{path}.{side}.{key}.{name}", "a string", value)
        _str_list(ops, "remove", f"{path}.{side}")


def _check_virtual_service(spec: Obj, obj: Obj) -> None:
    _str_list(spec, "hosts", "spec")
    if not spec.get("hosts"):
        raise _fail("spec.hosts", "must have at least one entry", hint="name the Service, e.g. hosts: [reviews]")
    _str_list(spec, "gateways", "spec")
    for hp, http in _items(spec, "http", "spec"):
        for mp, match in _items(http, "match", hp):
            for key in ("uri", "scheme", "method", "authority"):
                _string_match(match.get(key), f"{mp}.{key}")
            for key in ("headers", "queryParams", "withoutHeaders"):
                for name, m in (_map(match, key, mp) or {}).items():
                    _string_match(m, f"{mp}.{key}.{name}")
            _bool(match, "ignoreUriCase", mp)
            _int(match, "port", mp, lo=1, hi=65535)
        routes = _items(http, "route", hp)
        for rp, route in routes:
            _destination(route.get("destination"), f"{rp}.destination")
            _int(route, "weight", rp, lo=0)
            _header_ops(route.get("headers"), f"{rp}.headers")
        redirect = _map(http, "redirect", hp)
        if redirect is not None and routes:
            raise _fail(hp, "redirect and route are mutually exclusive")
        if redirect is not None:
            _int(redirect, "redirectCode", f"{hp}.redirect", lo=300, hi=399)
            _int(redirect, "port", f"{hp}.redirect", lo=1, hi=65535)
        if not routes and redirect is None and http.get("directResponse") is None and http.get("delegate") is None:
            raise _fail(hp, "needs one of route, redirect, directResponse or delegate")
        _go_duration(http, "timeout", hp)
        retries = _map(http, "retries", hp)
        if retries is not None:
            _int(retries, "attempts", f"{hp}.retries", lo=0)
            _go_duration(retries, "perTryTimeout", f"{hp}.retries")
            _str(retries, "retryOn", f"{hp}.retries")
        fault = _map(http, "fault", hp)
        if fault is not None:
            delay = _map(fault, "delay", f"{hp}.fault")
            if delay is not None:
                _go_duration(delay, "fixedDelay", f"{hp}.fault.delay")
                _percentage(delay, f"{hp}.fault.delay")
            abort = _map(fault, "abort", f"{hp}.fault")
            if abort is not None:
                _int(abort, "httpStatus", f"{hp}.fault.abort", lo=200, hi=599)
                _percentage(abort, f"{hp}.fault.abort")
        if http.get("mirror") is not None:
            _destination(http.get("mirror"), f"{hp}.mirror")
        _percentage({"percentage": http["mirrorPercentage"]} if http.get("mirrorPercentage") is not None else {},
                    f"{hp}.mirror")
        _header_ops(http.get("headers"), f"{hp}.headers")
        rewrite = _map(http, "rewrite", hp)
        if rewrite is not None:
            _str(rewrite, "uri", f"{hp}.rewrite")
            _str(rewrite, "authority", f"{hp}.rewrite")


_LB_SIMPLE = ("UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST")
_TLS_MODES = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")


def _traffic_policy(tp: Obj | None, path: str) -> None:
    if tp is None:
        return
    lb = _map(tp, "loadBalancer", path)
    if lb is not None:
        _enum(lb, "simple", f"{path}.loadBalancer", _LB_SIMPLE)
        ch = _map(lb, "consistentHash", f"{path}.loadBalancer")
        if ch is not None:
            _str(ch, "httpHeaderName", f"{path}.loadBalancer.consistentHash")
            _bool(ch, "useSourceIp", f"{path}.loadBalancer.consistentHash")
    pool = _map(tp, "connectionPool", path)
    if pool is not None:
        tcp = _map(pool, "tcp", f"{path}.connectionPool") or {}
        _int(tcp, "maxConnections", f"{path}.connectionPool.tcp", lo=0)
        _go_duration(tcp, "connectTimeout", f"{path}.connectionPool.tcp")
        http = _map(pool, "http", f"{path}.connectionPool") or {}
        for key in ("http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection", "maxRetries"):
            _int(http, key, f"{path}.connectionPool.http", lo=0)
    od = _map(tp, "outlierDetection", path)
    if od is not None:
        for key in ("consecutiveErrors", "consecutive5xxErrors", "consecutiveGatewayErrors"):
            _int(od, key, f"{path}.outlierDetection", lo=0)
        _int(od, "maxEjectionPercent", f"{path}.outlierDetection", lo=0, hi=100)
        for key in ("interval", "baseEjectionTime"):
            _go_duration(od, key, f"{path}.outlierDetection")
    tls = _map(tp, "tls", path)
    if tls is not None:
        _client_tls(tls, f"{path}.tls")
    for pp, port_policy in _items(tp, "portLevelSettings", path):
        port = _map(port_policy, "port", pp, required=True) or {}
        _int(port, "number", f"{pp}.port", lo=1, hi=65535, required=True)
        _traffic_policy({k: v for k, v in port_policy.items() if k != "port"}, pp)


def _client_tls(tls: Obj, path: str) -> None:
    """ClientTLSSettings, with the rules of Istio's `ValidateTLS` (pkg/config/validation/agent): a
    `credentialName` (SIMPLE / MUTUAL) replaces the certificate, key, CA and CRL files, so it cannot be given
    with them; MUTUAL without one needs `clientCertificate` and `privateKey`; `insecureSkipVerify` excludes
    what would verify the server (`caCertificates`, `subjectAltNames`, and for SIMPLE a `credentialName`, whose
    only use there is the CA)."""
    mode = _enum(tls, "mode", path, _TLS_MODES)
    for key in ("clientCertificate", "privateKey", "caCertificates", "credentialName", "sni", "caCrl"):
        _str(tls, key, path)
    _str_list(tls, "subjectAltNames", path)
    _bool(tls, "insecureSkipVerify", path)
    sans = bool(tls.get("subjectAltNames"))
    if tls.get("insecureSkipVerify"):
        if mode == "SIMPLE" and (tls.get("caCertificates") or tls.get("credentialName") or sans):
            raise _fail(path, "caCertificates, credentialName and subjectAltNames cannot be given when "
                        "insecureSkipVerify is true")
        if mode == "MUTUAL" and (tls.get("caCertificates") or sans):
            raise _fail(path, "caCertificates and subjectAltNames cannot be given when insecureSkipVerify is true")
    if mode in ("SIMPLE", "MUTUAL") and tls.get("credentialName"):
        files = [k for k in ("clientCertificate", "privateKey", "caCertificates", "caCrl") if tls.get(k)]
        if files:
            raise _fail(path, f"{', '.join(files)} cannot be given with credentialName (the Secret holds the "
                        "client certificate, key and CA)")
    elif mode == "MUTUAL":
        missing = [k for k in ("clientCertificate", "privateKey") if not tls.get(k)]
        if missing:
            raise _fail(path, f"mode MUTUAL needs {' and '.join(missing)}, or a credentialName")


def _check_destination_rule(spec: Obj, obj: Obj) -> None:
    _str(spec, "host", "spec", required=True)
    _traffic_policy(_map(spec, "trafficPolicy", "spec"), "spec.trafficPolicy")
    names: set[str] = set()
    for sp, subset in _items(spec, "subsets", "spec"):
        name = _str(subset, "name", sp, required=True)
        if name in names:
            raise _fail(f"{sp}.name", f"duplicate subset name {name!r}")
        names.add(name or "")
        for key, value in (_map(subset, "labels", sp) or {}).items():
            if not isinstance(value, str):
                raise _fail(f"{sp}.labels.{key}", "a string", value)
        _traffic_policy(_map(subset, "trafficPolicy", sp), f"{sp}.trafficPolicy")


def _target_refs(spec: Obj, path: str) -> None:
    refs = _items(spec, "targetRefs", path)
    single = _map(spec, "targetRef", path)
    if single is not None:
        refs.append((f"{path}.targetRef", single))
    for rp, ref in refs:
        _str(ref, "kind", rp, required=True)
        _str(ref, "name", rp, required=True)
    if spec.get("selector") is not None and refs:
        raise _fail(path, "selector and targetRefs are mutually exclusive")


def _check_request_authentication(spec: Obj, obj: Obj) -> None:
    _target_refs(spec, "spec")
    for jp, rule in _items(spec, "jwtRules", "spec"):
        _str(rule, "issuer", jp, required=True)
        _str_list(rule, "audiences", jp)
        _str(rule, "jwksUri", jp)
        _str(rule, "jwks", jp)
        if rule.get("jwks") is not None and rule.get("jwksUri") is not None:
            raise _fail(jp, "jwks and jwksUri are mutually exclusive")
        for hp, header in _items(rule, "fromHeaders", jp):
            _str(header, "name", hp, required=True)
            _str(header, "prefix", hp)
        _str_list(rule, "fromParams", jp)
        _bool(rule, "forwardOriginalToken", jp)
        for op, out in _items(rule, "outputClaimToHeaders", jp):
            _str(out, "header", op, required=True)
            _str(out, "claim", op, required=True)


def _parent_refs(spec: Obj) -> None:
    for pp, ref in _items(spec, "parentRefs", "spec"):
        _str(ref, "name", pp, required=True)
        _int(ref, "port", pp, lo=1, hi=65535)


def _backend_refs(rule: Obj, rp: str) -> None:
    for bp, backend in _items(rule, "backendRefs", rp):
        _str(backend, "name", bp, required=True)
        _str(backend, "namespace", bp)
        _int(backend, "port", bp, lo=1, hi=65535)
        if backend.get("weight") is None:
            backend["weight"] = 1
        else:
            _int(backend, "weight", bp, lo=0, hi=1_000_000)


def _check_grpc_route(spec: Obj, obj: Obj) -> None:
    _parent_refs(spec)
    for rp, rule in _items(spec, "rules", "spec"):
        for mp, match in _items(rule, "matches", rp):
            method = _map(match, "method", mp)
            if method is not None:
                kind = _enum(method, "type", f"{mp}.method", ("Exact", "RegularExpression"), default="Exact")
                for key in ("service", "method"):
                    value = _str(method, key, f"{mp}.method")
                    if value is not None and kind == "RegularExpression":
                        _regex(value, f"{mp}.method.{key}")
            for hp, header in _items(match, "headers", mp):
                _enum(header, "type", hp, ("Exact", "RegularExpression"), default="Exact")
                _str(header, "name", hp, required=True)
                _str(header, "value", hp, required=True)
        _backend_refs(rule, rp)


def _check_tcp_route(spec: Obj, obj: Obj) -> None:
    _parent_refs(spec)
    for rp, rule in _items(spec, "rules", "spec", required=True, nonempty=True):
        _backend_refs(rule, rp)


def _check_reference_grant(spec: Obj, obj: Obj) -> None:
    for fp, item in _items(spec, "from", "spec", required=True, nonempty=True):
        _str(item, "group", fp)
        _str(item, "kind", fp, required=True)
        _str(item, "namespace", fp, required=True)
    for tp, item in _items(spec, "to", "spec", required=True, nonempty=True):
        _str(item, "group", tp)
        _str(item, "kind", tp, required=True)
        _str(item, "name", tp)
    _list(spec, "to", "spec")


TRAFFIC_CHECKS: dict[str, Callable[[Obj, Obj], None]] = {
    "VirtualService": _check_virtual_service,
    "DestinationRule": _check_destination_rule,
    "RequestAuthentication": _check_request_authentication,
    "GRPCRoute": _check_grpc_route,
    "TCPRoute": _check_tcp_route,
    "ReferenceGrant": _check_reference_grant,
}
