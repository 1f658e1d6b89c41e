"""Table tests of the pure HTTPRoute routing (Gateway API precedence, weighted split, timeouts/retry)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from ambient.l7.errors import ConfigError
from ambient.l7.routing import (
    HttpRoute,
    NoRoute,
    RequestInfo,
    RouteDecision,
    normalize_path,
    parse_duration,
    parse_http_route,
    route_request,
)


def mk(name: str, rules: list[dict[str, Any]], *, created: str = "2024-01-01T00:00:00Z", ns: str = "shop",
       parent: dict[str, Any] | None = None) -> HttpRoute:
    return parse_http_route({
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
        "spec": {"parentRefs": [parent or {"group": "", "kind": "Service", "name": "reviews"}], "rules": rules},
    })


def to(*names: str, weight: int | None = None) -> list[dict[str, Any]]:
    return [{"name": n, "port": 80, **({"weight": weight} if weight is not None else {})} for n in names]


def req(path: str = "/", method: str = "GET", query: str = "", **headers: str) -> RequestInfo:
    return RequestInfo(method, path, {k.replace("_", "-"): v for k, v in headers.items()}, query)


def pick(routes: list[HttpRoute], request: RequestInfo, *, port: int = 80, seed: int = 1) -> RouteDecision | NoRoute:
    return route_request(routes, "reviews", "shop", port, request, random.Random(seed))


def backend(routes: list[HttpRoute], request: RequestInfo, **kw: Any) -> str:
    d = pick(routes, request, **kw)
    assert isinstance(d, RouteDecision), d
    return d.backend.name


def test_no_route_attached_goes_to_the_service_itself() -> None:
    other = mk("other", [{"backendRefs": to("x")}], parent={"kind": "Service", "name": "ratings"})
    d = pick([other], req("/any"))
    assert isinstance(d, RouteDecision) and d.default
    assert (d.backend.name, d.backend.namespace, d.backend.port) == ("reviews", "shop", 80)


def test_gateway_parent_does_not_attach() -> None:
    r = mk("gw", [{"backendRefs": to("x")}], parent={"kind": "Gateway", "name": "reviews"})
    assert pick([r], req()).default  # type: ignore[union-attr]


def test_parent_namespace_defaults_to_route_namespace() -> None:
    r = mk("r", [{"backendRefs": to("x")}], ns="other")
    assert pick([r], req()).default  # type: ignore[union-attr]
    r2 = mk("r2", [{"backendRefs": to("x")}], ns="other",
            parent={"kind": "Service", "name": "reviews", "namespace": "shop"})
    assert backend([r2], req()) == "x"


def test_parent_port_restricts_attachment() -> None:
    r = mk("r", [{"backendRefs": to("x")}], parent={"kind": "Service", "name": "reviews", "port": 9080})
    assert pick([r], req(), port=80).default  # type: ignore[union-attr]
    assert backend([r], req(), port=9080) == "x"


def test_rule_without_matches_matches_everything() -> None:
    assert backend([mk("r", [{"backendRefs": to("x")}])], req("/deep/path")) == "x"


def test_no_matching_rule_is_404() -> None:
    r = mk("r", [{"matches": [{"path": {"type": "Exact", "value": "/a"}}], "backendRefs": to("x")}])
    d = pick([r], req("/b"))
    assert isinstance(d, NoRoute) and d.status == 404 and "shop/r" in d.reason


def test_rule_without_backends_is_500() -> None:
    d = pick([mk("r", [{}])], req())
    assert isinstance(d, NoRoute) and d.status == 500


def test_all_zero_weights_is_500() -> None:
    d = pick([mk("r", [{"backendRefs": to("a", "b", weight=0)}])], req())
    assert isinstance(d, NoRoute) and d.status == 500


@pytest.mark.parametrize(("prefix", "path", "hit"), [
    ("/foo", "/foo", True), ("/foo", "/foo/", True), ("/foo", "/foo/bar", True), ("/foo", "/foobar", False),
    ("/foo/", "/foo", True), ("/foo/", "/foo/x", True), ("/", "/anything", True), ("/foo", "/fo", False),
])
def test_path_prefix_matches_whole_segments(prefix: str, path: str, hit: bool) -> None:
    r = mk("r", [{"matches": [{"path": {"type": "PathPrefix", "value": prefix}}], "backendRefs": to("x")}])
    assert isinstance(pick([r], req(path)), RouteDecision) is hit


def test_exact_beats_longer_prefix() -> None:
    r = mk("r", [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/api/v1/users"}}], "backendRefs": to("prefix")},
        {"matches": [{"path": {"type": "Exact", "value": "/api"}}], "backendRefs": to("exact")},
        {"matches": [{"path": {"type": "Exact", "value": "/api/v1/users"}}], "backendRefs": to("exact2")},
    ])
    assert backend([r], req("/api/v1/users")) == "exact2"
    assert backend([r], req("/api/v1/users/7")) == "prefix"


def test_longest_prefix_wins_regardless_of_order() -> None:
    r = mk("r", [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": to("root")},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "backendRefs": to("api")},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/api/v2"}}], "backendRefs": to("v2")},
    ])
    assert backend([r], req("/api/v2/x")) == "v2"
    assert backend([r], req("/api/v1")) == "api"
    assert backend([r], req("/web")) == "root"


def test_regex_ranks_below_prefix_and_is_a_full_match() -> None:
    r = mk("r", [
        {"matches": [{"path": {"type": "RegularExpression", "value": "/items/[0-9]+"}}], "backendRefs": to("re")},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/items"}}], "backendRefs": to("prefix")},
    ])
    assert backend([r], req("/items/42")) == "prefix"
    only_re = mk("re", [{"matches": [{"path": {"type": "RegularExpression", "value": "/items/[0-9]+"}}],
                         "backendRefs": to("re")}])
    assert backend([only_re], req("/items/42")) == "re"
    assert isinstance(pick([only_re], req("/items/42/x")), NoRoute)


def test_method_match_beats_no_method_at_same_path() -> None:
    r = mk("r", [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "backendRefs": to("any")},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}, "method": "POST"}], "backendRefs": to("post")},
    ])
    assert backend([r], req("/a", "POST")) == "post"
    assert backend([r], req("/a", "GET")) == "any"


def test_path_precedence_beats_method() -> None:
    r = mk("r", [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}, "method": "GET"}], "backendRefs": to("method")},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/long"}}], "backendRefs": to("long")},
    ])
    assert backend([r], req("/long/x", "GET")) == "long"


def test_more_header_matches_win() -> None:
    r = mk("r", [
        {"matches": [{"headers": [{"name": "x-a", "value": "1"}]}], "backendRefs": to("one")},
        {"matches": [{"headers": [{"name": "x-a", "value": "1"}, {"name": "x-b", "value": "2"}]}],
         "backendRefs": to("two")},
    ])
    assert backend([r], req(x_a="1", x_b="2")) == "two"
    assert backend([r], req(x_a="1")) == "one"


def test_header_names_case_insensitive_values_exact_or_regex() -> None:
    r = mk("r", [
        {"matches": [{"headers": [{"name": "X-User", "value": "jason"}]}], "backendRefs": to("exact")},
        {"matches": [{"headers": [{"type": "RegularExpression", "name": "x-env", "value": "dev-[a-z]+"}]}],
         "backendRefs": to("regex")},
    ])
    assert backend([r], req(x_user="jason")) == "exact"
    assert isinstance(pick([r], req(x_user="Jason")), NoRoute)
    assert backend([r], req(x_env="dev-eu")) == "regex"
    assert isinstance(pick([r], req(x_env="dev-eu1")), NoRoute)


def test_query_param_match() -> None:
    r = mk("r", [
        {"matches": [{"queryParams": [{"name": "v", "value": "2"}]}], "backendRefs": to("v2")},
        {"backendRefs": to("v1")},
    ])
    assert backend([r], req("/", query="v=2&x=1")) == "v2"
    assert backend([r], req("/", query="v=3")) == "v1"


def test_matches_within_a_rule_or_together_fields_and() -> None:
    r = mk("r", [{"matches": [{"path": {"type": "Exact", "value": "/a"}, "method": "GET"},
                              {"path": {"type": "Exact", "value": "/b"}}], "backendRefs": to("x")}])
    assert backend([r], req("/a")) == "x" and backend([r], req("/b", "PUT")) == "x"
    assert isinstance(pick([r], req("/a", "PUT")), NoRoute)


def test_ties_go_to_oldest_route_then_name() -> None:
    rule = [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": to("x")}]
    old = mk("zzz", [{**rule[0], "backendRefs": to("old")}], created="2023-01-01T00:00:00Z")
    new = mk("aaa", [{**rule[0], "backendRefs": to("new")}], created="2024-06-01T00:00:00Z")
    assert backend([new, old], req()) == "old"
    same_a = mk("aaa", [{**rule[0], "backendRefs": to("a")}], created="2024-01-01T00:00:00Z")
    same_b = mk("bbb", [{**rule[0], "backendRefs": to("b")}], created="2024-01-01T00:00:00Z")
    assert backend([same_b, same_a], req()) == "a"


def test_first_rule_wins_on_equal_specificity_within_a_route() -> None:
    r = mk("r", [{"backendRefs": to("first")}, {"backendRefs": to("second")}])
    assert backend([r], req()) == "first"


def test_weighted_split_90_10_over_1000_requests_within_3_percent() -> None:
    r = mk("r", [{"backendRefs": [{"name": "v1", "port": 80, "weight": 90}, {"name": "v2", "port": 80, "weight": 10}]}])
    rng = random.Random(2024)
    counts: Counter[str] = Counter()
    for _ in range(1000):
        d = route_request([r], "reviews", "shop", 80, req(), rng)
        assert isinstance(d, RouteDecision)
        counts[d.backend.name] += 1
    assert abs(counts["v1"] / 1000 - 0.90) <= 0.03
    assert abs(counts["v2"] / 1000 - 0.10) <= 0.03


def test_weighted_pick_is_deterministic_for_a_seed_and_skips_zero_weight() -> None:
    r = mk("r", [{"backendRefs": [{"name": "a", "port": 80, "weight": 1}, {"name": "z", "port": 80, "weight": 0},
                                  {"name": "b", "port": 80, "weight": 1}]}])
    seq1 = [backend([r], req(), seed=s) for s in range(50)]
    seq2 = [backend([r], req(), seed=s) for s in range(50)]
    assert seq1 == seq2 and "z" not in seq1 and {"a", "b"} <= set(seq1)


def test_backend_defaults_port_namespace_and_weight() -> None:
    r = parse_http_route({"kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "shop"},
                          "spec": {"parentRefs": [{"kind": "Service", "name": "reviews"}],
                                   "rules": [{"backendRefs": [{"name": "v1"}]}]}})
    d = route_request([r], "reviews", "shop", 9080, req(), random.Random(0))
    assert isinstance(d, RouteDecision)
    assert (d.backend.name, d.backend.namespace, d.backend.port, d.backend.weight) == ("v1", "shop", 9080, 1)
    assert d.route is r and d.rule_index == 0


def test_timeouts_and_retry_values() -> None:
    r = mk("r", [{"backendRefs": to("x"), "timeouts": {"request": "1m30s", "backendRequest": "500ms"},
                  "retry": {"attempts": 3, "backoff": "100ms", "codes": [502, 503]}}])
    d = pick([r], req())
    assert isinstance(d, RouteDecision)
    assert d.request_timeout == 90.0 and d.backend_timeout == 0.5
    assert d.retry is not None and d.retry.attempts == 3 and d.retry.backoff == 0.1
    assert d.retry.codes == frozenset({502, 503})


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10.0), ("500ms", 0.5), ("1h", 3600.0), ("0s", 0.0),
                                                ("1m30s", 90.0), (None, None)])
def test_parse_duration(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_garbage() -> None:
    with pytest.raises(ConfigError):
        parse_duration("10 seconds")


def test_invalid_regex_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="regular expression"):
        mk("r", [{"matches": [{"path": {"type": "RegularExpression", "value": "(["}}]}])


@pytest.mark.parametrize(("raw", "norm"), [
    ("/a/b/../c", "/a/c"), ("/a/./b/", "/a/b/"), ("/%61dmin", "/admin"), ("/..", "/"), ("/a%2fb", "/a%2Fb"),
    ("/%2e%2e/admin", "/admin"), ("/a b", None), ("/x/%zz", None), ("relative", None), ("/a\\b", None),
])
def test_normalize_path(raw: str, norm: str | None) -> None:
    assert normalize_path(raw) == norm


def test_already_normal_paths_are_answered_as_the_full_normalisation_would() -> None:
    """The shortcut for a path with no escape and no dot segment changes no answer (random paths of the
    characters that matter: dots, escapes, slashes, refused characters, non-ASCII)."""
    from ambient.l7 import routing

    rng = random.Random(3)
    pieces = ["/", ".", "%", "2", "e", "E", "a", "~", "#", "\\", " ", "\x7f", "\x00", "\u00e9", "?", "%2F", "%2e",
              "..", "/./", "/../", "%4", "-"]
    paths = ["", "/", "//", "/.", "/..", "/a/.", "/a/..", "/.a", "/..a", "/a.b/c", "/a%20b", "/\u00e9", "/a//b/"]
    paths += [rng.choice(("", "/")) + "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
              for _ in range(20000)]
    assert [normalize_path(p) for p in paths] == [routing._normalize(p) for p in paths]
