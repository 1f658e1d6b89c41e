"""Table tests of HTTPRoute filters in the pure routing (Gateway API v1): header modifiers, URLRewrite,
RequestRedirect Location, unsupported filters answering 500, and parsing errors."""

from __future__ import annotations

import random
from typing import Any

import pytest

from ambient.l7.errors import ConfigError
from ambient.l7.filters import HeaderModifier, replace_prefix, split_authority
from ambient.l7.routing import (
    HttpRoute,
    NoRoute,
    Redirect,
    RequestInfo,
    RouteDecision,
    parse_http_route,
    route_request,
)


def mk(rules: list[dict[str, Any]], name: str = "r") -> HttpRoute:
    return parse_http_route({
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"parentRefs": [{"kind": "Service", "name": "reviews"}], "rules": rules},
    })


AUTHORITY = "reviews.shop.svc.cluster.local"


def req(path: str = "/", query: str = "") -> RequestInfo:
    return RequestInfo("GET", path, {}, query)


def pick(routes: list[HttpRoute], request: RequestInfo, port: int = 80) -> RouteDecision | Redirect | NoRoute:
    return route_request(routes, "reviews", "shop", port, request, random.Random(1))


def prefix_rule(prefix: str, *filters: dict[str, Any], backends: bool = True) -> dict[str, Any]:
    rule: dict[str, Any] = {"matches": [{"path": {"type": "PathPrefix", "value": prefix}}], "filters": list(filters)}
    if backends:
        rule["backendRefs"] = [{"name": "reviews-v1", "port": 80}]
    return rule


def redirect(**fields: Any) -> dict[str, Any]:
    return {"type": "RequestRedirect", "requestRedirect": fields}


def rewrite(**fields: Any) -> dict[str, Any]:
    return {"type": "URLRewrite", "urlRewrite": fields}


# --------------------------------------------------------------------------------------- no filters: None


def test_rule_without_filters_has_none_and_decision_carries_none() -> None:
    r = mk([{"backendRefs": [{"name": "reviews-v1"}]}])
    assert r.rules[0].filters is None
    d = pick([r], req("/x"))
    assert isinstance(d, RouteDecision) and d.filters is None


# ------------------------------------------------------------------------------------- header modifiers

H = [("x-keep", "1"), ("x-drop", "a"), ("x-set", "old"), ("x-set", "old2"), ("x-add", "first")]


@pytest.mark.parametrize(("mod", "expected"), [
    (HeaderModifier(), H),
    (HeaderModifier(remove=frozenset({"x-drop", "absent"})),
     [("x-keep", "1"), ("x-set", "old"), ("x-set", "old2"), ("x-add", "first")]),
    # set replaces every occurrence by one
    (HeaderModifier(set=(("x-set", "new"),)),
     [("x-keep", "1"), ("x-drop", "a"), ("x-add", "first"), ("x-set", "new")]),
    # set of an absent header adds it
    (HeaderModifier(set=(("x-new", "v"),)), [*H, ("x-new", "v")]),
    # add appends a field line, existing values stay
    (HeaderModifier(add=(("x-add", "second"),)), [*H, ("x-add", "second")]),
    # remove, then set, then add
    (HeaderModifier(set=(("x-drop", "back"),), add=(("x-drop", "more"),), remove=frozenset({"x-drop"})),
     [("x-keep", "1"), ("x-set", "old"), ("x-set", "old2"), ("x-add", "first"), ("x-drop", "back"),
      ("x-drop", "more")]),
])
def test_header_modifier(mod: HeaderModifier, expected: list[tuple[str, str]]) -> None:
    before = list(H)
    assert mod.apply(H) == expected
    assert before == H  # input never mutated


def test_header_modifier_parsing_lowercases_names() -> None:
    r = mk([{"filters": [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {
            "set": [{"name": "X-Set", "value": "1"}], "add": [{"name": "X-Add", "value": "2"}], "remove": ["X-Rm"]}},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "X-Resp", "value": "3"}]}},
    ], "backendRefs": [{"name": "reviews-v1"}]}])
    f = r.rules[0].filters
    assert f is not None and not f.unsupported
    assert f.request_headers == HeaderModifier((("x-set", "1"),), (("x-add", "2"),), frozenset({"x-rm"}))
    assert f.response_headers == HeaderModifier((), (("x-resp", "3"),))
    d = pick([r], req("/a"))
    assert isinstance(d, RouteDecision) and d.filters is f


@pytest.mark.parametrize(("kind", "name"), [
    ("RequestHeaderModifier", "Host"), ("RequestHeaderModifier", "content-length"),
    ("RequestHeaderModifier", "Transfer-Encoding"), ("ResponseHeaderModifier", "connection"),
    ("ResponseHeaderModifier", ":status"),
])
def test_framing_and_host_headers_cannot_be_modified(kind: str, name: str) -> None:
    field = kind[0].lower() + kind[1:]
    with pytest.raises(ConfigError, match="cannot be modified"):
        mk([{"filters": [{"type": kind, field: {"set": [{"name": name, "value": "x"}]}}]}])


def test_header_value_with_newline_is_refused() -> None:
    with pytest.raises(ConfigError, match="CR, LF"):
        mk([{"filters": [{"type": "RequestHeaderModifier",
                          "requestHeaderModifier": {"add": [{"name": "x", "value": "a\r\nb: c"}]}}]}])


# ------------------------------------------------------------------------------------------ path rewrite


@pytest.mark.parametrize(("path", "prefix", "replacement", "out"), [
    # the Gateway API's own table (HTTPPathModifier.replacePrefixMatch)
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"),
    ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
    # prefix "/" (or no match at all): the replacement is put in front of the whole path
    ("/a/b", "/", "/v2", "/v2/a/b"),
    ("/", "/", "/v2", "/v2"),
    ("/", "/", "", "/"),
])
def test_replace_prefix(path: str, prefix: str, replacement: str, out: str) -> None:
    assert replace_prefix(path, prefix, replacement) == out


def test_url_rewrite_prefix_and_hostname_on_the_decision() -> None:
    r = mk([prefix_rule("/api/v1", rewrite(hostname="backend.internal",
                                           path={"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}))])
    d = pick([r], req("/api/v1/users/7", "a=1"))
    assert isinstance(d, RouteDecision) and d.filters is not None
    rw = d.filters.rewrite
    assert rw is not None and rw.path is not None and rw.path.prefix == "/api/v1"
    assert rw.path.apply("/api/v1/users/7") == "/v2/users/7"
    assert rw.hostname == "backend.internal"
    assert d.backend.name == "reviews-v1"


def test_url_rewrite_full_path() -> None:
    r = mk([prefix_rule("/old", rewrite(path={"type": "ReplaceFullPath", "replaceFullPath": "/new/place"}))])
    d = pick([r], req("/old/deep/path"))
    assert isinstance(d, RouteDecision) and d.filters is not None and d.filters.rewrite is not None
    assert d.filters.rewrite.path is not None and d.filters.rewrite.path.apply("/old/deep/path") == "/new/place"


def test_rule_without_matches_rewrites_prefix_slash() -> None:
    r = mk([{"filters": [rewrite(path={"type": "ReplacePrefixMatch", "replacePrefixMatch": "/app"})],
             "backendRefs": [{"name": "reviews-v1"}]}])
    d = pick([r], req("/x"))
    assert isinstance(d, RouteDecision) and d.filters is not None and d.filters.rewrite is not None
    assert d.filters.rewrite.path is not None and d.filters.rewrite.path.apply("/x") == "/app/x"


@pytest.mark.parametrize("matches", [
    [{"path": {"type": "Exact", "value": "/a"}}],
    [{"path": {"type": "PathPrefix", "value": "/a"}}, {"path": {"type": "PathPrefix", "value": "/b"}}],
])
def test_replace_prefix_needs_exactly_one_prefix_match(matches: list[dict[str, Any]]) -> None:
    for f in (rewrite(path={"type": "ReplacePrefixMatch", "replacePrefixMatch": "/x"}),
              redirect(path={"type": "ReplacePrefixMatch", "replacePrefixMatch": "/x"})):
        with pytest.raises(ConfigError, match="exactly one PathPrefix"):
            mk([{"matches": matches, "filters": [f]}])


# -------------------------------------------------------------------------------------------- redirects


@pytest.mark.parametrize(("fields", "info", "port", "location"), [
    # defaults: request scheme and host (port of the Host dropped), listener (service) port, path and query
    ({}, (req("/a", "q=1"), "reviews:80"), 80, "http://reviews/a?q=1"),
    ({}, (req("/a"), "reviews:8080"), 8080, "http://reviews:8080/a"),
    ({}, (req("/a"), "reviews", "https"), 443, "https://reviews/a"),
    # a redirect scheme brings its well-known port, which is then left out
    ({"scheme": "https"}, req("/a"), 80, "https://reviews.shop.svc.cluster.local/a"),
    ({"scheme": "http"}, req("/a"), 8080, "http://reviews.shop.svc.cluster.local/a"),
    # an explicit port is shown unless it is the scheme's own
    ({"scheme": "https", "port": 8443}, req("/a"), 80, "https://reviews.shop.svc.cluster.local:8443/a"),
    ({"port": 80}, req("/a"), 9080, "http://reviews.shop.svc.cluster.local/a"),
    ({"hostname": "example.com"}, req("/a", "x=y"), 80, "http://example.com/a?x=y"),
    ({"path": {"type": "ReplaceFullPath", "replaceFullPath": "/login"}}, req("/old/a"), 80,
     "http://reviews.shop.svc.cluster.local/login"),
    ({"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}, req("/old/a/b"), 80,
     "http://reviews.shop.svc.cluster.local/new/a/b"),
    # IPv6 authority keeps its brackets
    ({}, (req("/a"), "[fd00::1]:80"), 80, "http://[fd00::1]/a"),
])
def test_redirect_location(fields: dict[str, Any], info: RequestInfo | tuple[Any, ...], port: int,
                           location: str) -> None:
    """`info`: the request, or (request, authority[, scheme]) when the Host is not the service's name."""
    r = mk([prefix_rule("/old", redirect(**fields)), prefix_rule("/", redirect(**fields))])
    request, *on_the_wire = info if isinstance(info, tuple) else (info, AUTHORITY)
    d = pick([r], request, port)
    assert isinstance(d, Redirect), d
    assert (d.status, d.location(*on_the_wire)) == (302, location)


def test_redirect_status_301_and_no_backend_needed() -> None:
    r = mk([prefix_rule("/", redirect(statusCode=301, scheme="https"),
                        {"type": "ResponseHeaderModifier",
                         "responseHeaderModifier": {"set": [{"name": "x-r", "value": "1"}]}},
                        backends=False)])
    d = pick([r], req("/p"))
    assert isinstance(d, Redirect)
    assert (d.status, d.route.key, d.rule_index) == (301, "shop/r", 0)
    assert d.location(AUTHORITY) == "https://reviews.shop.svc.cluster.local/p"
    assert d.response_headers == HeaderModifier((("x-r", "1"),))


def test_redirect_only_for_the_rule_it_is_on() -> None:
    r = mk([prefix_rule("/old", redirect(hostname="new.example")), prefix_rule("/", )])
    assert isinstance(pick([r], req("/old/x")), Redirect)
    assert isinstance(pick([r], req("/other")), RouteDecision)


@pytest.mark.parametrize(("fields", "error"), [
    ({"statusCode": 307}, "301 or 302"),
    ({"scheme": "ftp"}, "http or https"),
    ({"path": {"type": "ReplaceFullPath", "replaceFullPath": "relative"}}, "starting with /"),
    ({"path": {"type": "Other"}}, "unsupported"),
])
def test_bad_redirects_are_config_errors(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        mk([prefix_rule("/", redirect(**fields))])


def test_redirect_and_rewrite_on_one_rule_is_an_error() -> None:
    with pytest.raises(ConfigError, match="cannot be used on the same rule"):
        mk([prefix_rule("/", redirect(), rewrite(hostname="x"))])


def test_repeated_filter_is_an_error() -> None:
    with pytest.raises(ConfigError, match="one URLRewrite"):
        mk([prefix_rule("/", rewrite(hostname="x"), rewrite(hostname="y"))])


@pytest.mark.parametrize(("authority", "parts"), [
    ("host", ("host", None)), ("host:8080", ("host", 8080)), ("[fd00::1]:80", ("fd00::1", 80)),
    ("[fd00::1]", ("fd00::1", None)), ("10.0.0.1:9", ("10.0.0.1", 9)), ("", ("", None)),
])
def test_split_authority(authority: str, parts: tuple[str, int | None]) -> None:
    assert split_authority(authority) == parts


# ------------------------------------------------------------------------------------ unsupported: 500


@pytest.mark.parametrize(("rule", "named"), [
    (prefix_rule("/", {"type": "ExtensionRef", "extensionRef": {"group": "x", "kind": "Y", "name": "z"}}),
     "filter ExtensionRef"),
    (prefix_rule("/", {"type": "CORS", "cors": {}}), "filter CORS"),
    ({"backendRefs": [{"name": "reviews-v1", "filters": [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}]}]},
     "backendRefs[0].filters"),
])
def test_unsupported_filters_answer_500_naming_route_and_filter(rule: dict[str, Any], named: str) -> None:
    r = mk([rule, {"matches": [{"path": {"type": "PathPrefix", "value": "/fine"}}],
                   "backendRefs": [{"name": "reviews-v2"}]}])
    f = r.rules[0].filters
    assert f is not None and f.unsupported == (named,)
    d = pick([r], req("/any"))
    assert isinstance(d, NoRoute) and d.status == 500
    assert "HTTPRoute shop/r" in d.reason and named in d.reason and "rule 0" in d.reason
    # other rules of the same route are not affected
    ok = pick([r], req("/fine/x"))
    assert isinstance(ok, RouteDecision) and ok.backend.name == "reviews-v2"
