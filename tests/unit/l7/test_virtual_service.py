"""VirtualService / DestinationRule translation into the shared route model (pure, table-tested)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from ambient.l7.errors import ConfigError
from ambient.l7.routing import Fault, NoRoute, Redirect, RequestInfo, RouteDecision, route_request
from ambient.l7.virtual_service import (
    DEFAULT_RETRY,
    go_duration,
    parse_destination_rule,
    parse_virtual_service,
    resolve_host,
    subset_labels,
)


def vs(http: list[dict[str, Any]], hosts: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"kind": "VirtualService", "metadata": {"name": "r", "namespace": "shop"},
            "spec": {"hosts": hosts or ["reviews"], "http": http, **spec}}


def route(obj: dict[str, Any], path: str = "/", headers: dict[str, str] | None = None, method: str = "GET",
          query: str = "") -> RouteDecision | Redirect | NoRoute:
    r = parse_virtual_service(obj).route
    return route_request([r], "reviews", "shop", 80, RequestInfo(method, path, headers or {}, query), random.Random(1))


@pytest.mark.parametrize(("host", "want"), [
    ("reviews", ("reviews", "shop")),
    ("reviews.other", ("reviews", "other")),
    ("reviews.other.svc", ("reviews", "other")),
    ("reviews.other.svc.cluster.local", ("reviews", "other")),
    ("*.shop.svc.cluster.local", None),
    ("httpbin.example.test", None),
    ("", None),
])
def test_resolve_host(host: str, want: tuple[str, str] | None) -> None:
    assert resolve_host(host, "shop") == want


@pytest.mark.parametrize(("text", "seconds"), [("2s", 2.0), ("0.5s", 0.5), ("100ms", 0.1), ("1m30s", 90.0)])
def test_go_duration(text: str, seconds: float) -> None:
    assert go_duration(text, "x") == pytest.approx(seconds)


def test_bad_duration_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_virtual_service(vs([{"route": [{"destination": {"host": "reviews"}}], "timeout": "soon"}]))


def d(subset: str, weight: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"destination": {"host": "reviews", "subset": subset}}
    if weight is not None:
        out["weight"] = weight
    return out


@pytest.mark.parametrize(("match", "path", "headers", "query", "hit"), [
    ({"uri": {"exact": "/a"}}, "/a", {}, "", True),
    ({"uri": {"exact": "/a"}}, "/A", {}, "", False),
    ({"uri": {"exact": "/a"}, "ignoreUriCase": True}, "/A", {}, "", True),
    ({"uri": {"prefix": "/api"}}, "/apiv2", {}, "", True),  # a plain string prefix, not path segments
    ({"uri": {"prefix": "/API"}, "ignoreUriCase": True}, "/api/x", {}, "", True),
    ({"uri": {"regex": "/u/[0-9]+"}}, "/u/12", {}, "", True),
    ({"uri": {"regex": "/u/[0-9]+"}}, "/u/12/x", {}, "", False),
    ({"headers": {"End-User": {"exact": "jason"}}}, "/", {"end-user": "jason"}, "", True),
    ({"headers": {"end-user": {"prefix": "ja"}}}, "/", {"end-user": "jason"}, "", True),
    ({"headers": {"end-user": {"regex": "j.*n"}}}, "/", {"end-user": "mary"}, "", False),
    ({"queryParams": {"v": {"exact": "2"}}}, "/", {}, "v=2", True),
    ({"queryParams": {"v": {"exact": "2"}}}, "/", {}, "v=3", False),
])
def test_match_conditions(match: dict[str, Any], path: str, headers: dict[str, str], query: str, hit: bool) -> None:
    got = route(vs([{"match": [match], "route": [d("v2")]}, {"route": [d("v1")]}]), path, headers, query=query)
    assert isinstance(got, RouteDecision)
    assert got.backend.subset == ("v2" if hit else "v1")


def test_first_matching_http_route_wins_in_order() -> None:
    obj = vs([{"match": [{"uri": {"prefix": "/"}}], "route": [d("v1")]},
              {"match": [{"uri": {"exact": "/exact"}}], "route": [d("v2")]}])
    got = route(obj, "/exact")
    assert isinstance(got, RouteDecision) and got.backend.subset == "v1"


def test_no_matching_route_is_404() -> None:
    got = route(vs([{"match": [{"uri": {"exact": "/only"}}], "route": [d("v1")]}]), "/other")
    assert isinstance(got, NoRoute) and got.status == 404


def test_weights_single_destination_and_defaults() -> None:
    r = parse_virtual_service(vs([{"route": [d("v1", 80), d("v2", 20)]}, {"route": [d("v1", 0)]},
                                  {"route": [d("v1"), d("v2")]}])).route
    assert [b.weight for b in r.rules[0].backends] == [80, 20]
    assert [b.weight for b in r.rules[1].backends] == [1]  # one destination takes all traffic
    assert [b.weight for b in r.rules[2].backends] == [1, 1]


def test_retries_timeout_and_fault() -> None:
    r = parse_virtual_service(vs([
        {"route": [d("v1")], "timeout": "3s", "retries": {"attempts": 3, "perTryTimeout": "500ms",
                                                          "retryOn": "gateway-error,connect-failure"},
         "fault": {"delay": {"fixedDelay": "2s", "percentage": {"value": 100}},
                   "abort": {"httpStatus": 500, "percentage": {"value": 50}}}},
        {"route": [d("v1")]},
        {"route": [d("v1")], "retries": {"attempts": 0}},
    ])).route
    first = r.rules[0]
    assert first.request_timeout == 3.0 and first.backend_timeout == 0.5
    assert first.retry is not None and first.retry.attempts == 3 and first.retry.codes == {502, 503, 504}
    assert first.fault == Fault(2.0, 100.0, 500, 50.0)
    assert r.rules[1].retry == DEFAULT_RETRY and r.rules[2].retry is None


def test_fault_decisions_follow_the_percentages() -> None:
    rng = random.Random(3)
    fault = Fault(0.0, 0.0, 500, 50.0)
    aborted = sum(1 for _ in range(1000) if fault.decide(rng)[1] == 500)
    assert 450 <= aborted <= 550
    assert Fault(1.5, 100.0).decide(rng) == (1.5, 0)


def test_redirect_and_rewrite() -> None:
    obj = vs([{"match": [{"uri": {"prefix": "/old"}}], "redirect": {"uri": "/new", "authority": "x.test"}},
              {"match": [{"uri": {"prefix": "/api"}}], "rewrite": {"uri": "/v2", "authority": "in"},
               "route": [d("v1")]}])
    got = route(obj, "/old/a", query="q=1")
    assert isinstance(got, Redirect) and got.status == 301
    assert got.location("reviews.shop:80", "http") == "http://x.test/new?q=1"
    r = parse_virtual_service(obj).route
    rewrite = r.rules[1].filters.rewrite  # type: ignore[union-attr]
    assert rewrite is not None and rewrite.hostname == "in" and rewrite.path is not None
    assert rewrite.path.apply("/api/items") == "/v2/items"


def test_unsupported_parts_are_named_and_answer_500() -> None:
    v = parse_virtual_service(vs([{"route": [d("v1")], "directResponse": {"status": 204}}],
                                 hosts=["reviews", "*.example.test"]))
    assert any("directResponse" in p for p in v.problems) and any("*.example.test" in p for p in v.problems)
    got = route_request([v.route], "reviews", "shop", 80, RequestInfo("GET", "/"), random.Random(1))
    assert isinstance(got, NoRoute) and got.status == 500 and "directResponse" in got.reason


def test_mirror_and_mirror_percentage() -> None:
    r = parse_virtual_service(vs([{"route": [d("v1")], "mirror": {"host": "reviews", "subset": "v2"},
                                   "mirrorPercentage": {"value": 25.0}}])).route
    filters = r.rules[0].filters
    assert filters is not None and not filters.unsupported
    (m,) = filters.mirrors
    assert (m.name, m.namespace, m.subset, m.percent) == ("reviews", "shop", "v2", 25.0)


def test_each_match_is_a_rule_of_its_own() -> None:
    r = parse_virtual_service(vs([{"match": [{"uri": {"prefix": "/a"}}, {"uri": {"prefix": "/b"}}],
                                   "route": [d("v1")]}])).route
    assert [rule.matches[0].path.value for rule in r.rules] == ["/a", "/b"]


def test_destination_rule_subsets() -> None:
    dr = parse_destination_rule({"kind": "DestinationRule", "metadata": {"name": "dr", "namespace": "shop"},
                                 "spec": {"host": "reviews.shop.svc.cluster.local",
                                          "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}})
    assert dr.service == ("reviews", "shop")
    assert subset_labels([dr], "reviews", "shop", "v1") == {"version": "v1"}
    assert subset_labels([dr], "reviews", "shop", "v9") is None
    assert subset_labels([dr], "ratings", "shop", "v1") is None


def test_weights_are_exact_over_every_window() -> None:
    obj = vs([{"route": [d("v1", 80), d("v2", 20)]}])
    r = parse_virtual_service(obj).route
    picks = [route_request([r], "reviews", "shop", 80, RequestInfo("GET", "/"), random.Random(1))
             for _ in range(200)]
    subsets = [p.backend.subset for p in picks if isinstance(p, RouteDecision)]
    assert subsets.count("v1") == 160 and subsets[:5].count("v2") <= 1  # interleaved, not 80 then 20
    for start in range(0, 200, 100):
        assert subsets[start:start + 100].count("v2") == 20
