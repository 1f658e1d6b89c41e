"""Routing at an ingress gateway: attachment to a listener (parentRef, sectionName, port, hostnames), the
listener of a host, and the waypoint's rule choice and weights applied to it."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from ambient.l7.gateway_routing import (
    AttachedRoute,
    Listener,
    gateway_parents,
    host_matches,
    listener_for,
    request_host,
    route_gateway_request,
)
from ambient.l7.routing import NoRoute, Redirect, RequestInfo, RouteDecision, parse_http_route

HTTP = Listener("http", 8080, "HTTP")
WEB = Listener("web", 8443, "HTTPS", "web.example.test")


def route(name: str = "r", parent: dict[str, Any] | None = None, hostnames: list[str] | None = None,
          rules: list[dict[str, Any]] | None = None) -> AttachedRoute:
    obj = {"metadata": {"name": name, "namespace": "web"},
           "spec": {"parentRefs": [parent or {"name": "ingress"}], "hostnames": hostnames or [],
                    "rules": rules or [{"backendRefs": [{"name": "echo", "port": 80}]}]}}
    return AttachedRoute(parse_http_route(obj), gateway_parents(obj))


def decide(routes: list[AttachedRoute], listener: Listener = HTTP, host: str = "web.example.test",
           path: str = "/") -> Any:
    return route_gateway_request(routes, "ingress", "web", listener, host, RequestInfo("GET", path),
                                 random.Random(7))


@pytest.mark.parametrize(("pattern", "host", "ok"), [
    ("web.example.test", "WEB.example.test.", True), ("*.example.test", "a.b.example.test", True),
    ("*.example.test", "example.test", False), ("web.example.test", "api.example.test", False),
])
def test_host_matching(pattern: str, host: str, ok: bool) -> None:
    assert host_matches(pattern, host) is ok


def test_request_host_strips_the_port() -> None:
    assert [request_host(a) for a in ("web:8080", "web", "[fd00::1]:80")] == ["web", "web", "fd00::1"]


@pytest.mark.parametrize(("parent", "listener", "attached"), [
    ({"name": "ingress"}, HTTP, True),
    ({"name": "other"}, HTTP, False),
    ({"name": "ingress", "namespace": "elsewhere"}, HTTP, False),
    ({"name": "ingress", "sectionName": "web"}, HTTP, False),
    ({"name": "ingress", "sectionName": "http"}, HTTP, True),
    ({"name": "ingress", "port": 8443}, HTTP, False),
    ({"name": "ingress", "kind": "Service"}, HTTP, False),
])
def test_attachment(parent: dict[str, Any], listener: Listener, attached: bool) -> None:
    assert isinstance(decide([route(parent=parent)], listener), RouteDecision) is attached


def test_route_hostnames_must_serve_the_host_and_fit_the_listener() -> None:
    assert isinstance(decide([route(hostnames=["web.example.test"])]), RouteDecision)
    miss = decide([route(hostnames=["api.example.test"])])
    assert isinstance(miss, NoRoute) and miss.status == 404
    assert isinstance(decide([route(hostnames=["*.example.test"])], WEB), RouteDecision)
    assert isinstance(decide([route(hostnames=["api.other.test"])], WEB, "api.other.test"), NoRoute)


def test_listener_for_prefers_exact_then_wildcard_then_any() -> None:
    wild = Listener("wild", 8443, "HTTPS", "*.example.test")
    bare = Listener("bare", 8443, "HTTPS")
    assert listener_for([bare, wild, WEB], 8443, "web.example.test") == WEB
    assert listener_for([bare, wild, WEB], 8443, "api.example.test") == wild
    assert listener_for([bare, wild, WEB], 8443, "x.other") == bare
    assert listener_for([WEB], 8443, "x.other") is None


def test_weights_matches_and_redirects_use_the_waypoint_engine() -> None:
    split = route(rules=[{"backendRefs": [{"name": "v1", "port": 80, "weight": 80},
                                          {"name": "v2", "port": 80, "weight": 20}]}])
    rng = random.Random(1)
    seen = Counter(route_gateway_request([split], "ingress", "web", HTTP, "h", RequestInfo("GET", "/"), rng)
                   .backend.name for _ in range(2000))  # type: ignore[union-attr]
    assert abs(seen["v1"] / 2000 - 0.8) < 0.03
    precise = route("p", rules=[{"matches": [{"path": {"type": "Exact", "value": "/get"}}],
                                 "backendRefs": [{"name": "exact", "port": 80}]},
                                {"backendRefs": [{"name": "rest", "port": 80}]}])
    assert decide([precise], path="/get").backend.name == "exact"
    assert decide([precise], path="/other").backend.name == "rest"
    moved = route("m", rules=[{"filters": [{"type": "RequestRedirect",
                                            "requestRedirect": {"scheme": "https", "statusCode": 301}}]}])
    out = decide([moved])
    assert isinstance(out, Redirect) and out.location("web.example.test:8080") == "https://web.example.test/"
