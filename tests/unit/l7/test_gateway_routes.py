"""GRPCRoute and TCPRoute translation (pure)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from ambient.l7.gateway_routes import (
    parse_grpc_route,
    parse_reference_grant,
    parse_tcp_route,
    pick_tcp_backend,
    reference_permitted,
)
from ambient.l7.routing import NoRoute, RequestInfo, RouteDecision, route_request

PARENT = [{"group": "", "kind": "Service", "name": "greeter", "port": 50051}]


def grpc(rules: list[dict[str, Any]]) -> Any:
    return parse_grpc_route({"kind": "GRPCRoute", "metadata": {"name": "g", "namespace": "shop"},
                             "spec": {"parentRefs": PARENT, "rules": rules}})


def backend(path: str, route: Any, headers: dict[str, str] | None = None) -> str:
    got = route_request([route], "greeter", "shop", 50051, RequestInfo("POST", path, headers or {}),
                        random.Random(1))
    return got.backend.name if isinstance(got, RouteDecision) else f"{got.status}"  # type: ignore[union-attr]


ROUTE = grpc([
    {"matches": [{"method": {"service": "helloworld.Greeter", "method": "SayHello"}}],
     "backendRefs": [{"name": "hello", "port": 50051}]},
    {"matches": [{"method": {"service": "helloworld.Greeter"}}],
     "backendRefs": [{"name": "greeter-any", "port": 50051}]},
    {"matches": [{"method": {"method": "Check"}}], "backendRefs": [{"name": "check", "port": 50051}]},
    {"matches": [{"method": {"type": "RegularExpression", "service": "admin\\..*"}}],
     "backendRefs": [{"name": "admin", "port": 50051}]},
    {"matches": [{"headers": [{"name": "X-Canary", "value": "1"}]}], "backendRefs": [{"name": "canary", "port": 1}]},
])


@pytest.mark.parametrize(("path", "headers", "want"), [
    ("/helloworld.Greeter/SayHello", {}, "hello"),  # exact method beats the service-wide match
    ("/helloworld.Greeter/SayBye", {}, "greeter-any"),
    ("/grpc.health.v1.Health/Check", {}, "check"),
    ("/admin.Users/List", {}, "admin"),
    ("/other.Svc/Call", {"x-canary": "1"}, "canary"),
    ("/other.Svc/Call", {}, "404"),
])
def test_grpc_method_and_header_matches(path: str, headers: dict[str, str], want: str) -> None:
    assert backend(path, ROUTE, headers) == want


def test_grpc_weights_and_unsupported_filters() -> None:
    split = grpc([{"backendRefs": [{"name": "a", "port": 1, "weight": 9}, {"name": "b", "port": 1, "weight": 1}]}])
    assert [b.weight for b in split.rules[0].backends] == [9, 1]
    ext = grpc([{"filters": [{"type": "ExtensionRef", "extensionRef": {"group": "x", "kind": "Y", "name": "z"}}],
                 "backendRefs": [{"name": "a", "port": 1}]}])
    got = route_request([ext], "greeter", "shop", 50051, RequestInfo("POST", "/x/y"), random.Random(1))
    assert isinstance(got, NoRoute) and got.status == 500 and "ExtensionRef" in got.reason


def test_tcp_route_weights_are_exact_per_connection() -> None:
    route = parse_tcp_route({"kind": "TCPRoute", "metadata": {"name": "t", "namespace": "shop"},
                             "spec": {"parentRefs": [{"kind": "Service", "group": "", "name": "echo", "port": 9000}],
                                      "rules": [{"backendRefs": [{"name": "v1", "port": 9000, "weight": 80},
                                                                 {"name": "v2", "weight": 20}]}]}})
    picks = [pick_tcp_backend([route], "echo", "shop", 9000) for _ in range(100)]
    names = [p[1].name for p in picks if p is not None]
    assert names.count("v1") == 80 and names.count("v2") == 20
    assert {p[1].port for p in picks if p is not None} == {9000}  # default: the connection's port
    assert pick_tcp_backend([route], "echo", "shop", 9001) is None
    assert pick_tcp_backend([route], "other", "shop", 9000) is None


def test_reference_grant_permits_cross_namespace_backends() -> None:
    grant = parse_reference_grant({"kind": "ReferenceGrant", "metadata": {"name": "g", "namespace": "backend"},
                                   "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                                      "namespace": "shop"}],
                                            "to": [{"group": "", "kind": "Service", "name": "db"}]}})
    assert reference_permitted([], "HTTPRoute", "shop", "Service", "x", "shop")  # same namespace
    assert not reference_permitted([], "HTTPRoute", "shop", "Service", "db", "backend")
    assert reference_permitted([grant], "HTTPRoute", "shop", "Service", "db", "backend")
    assert not reference_permitted([grant], "HTTPRoute", "shop", "Service", "cache", "backend")  # other name
    assert not reference_permitted([grant], "GRPCRoute", "shop", "Service", "db", "backend")  # other kind
    assert not reference_permitted([grant], "HTTPRoute", "other", "Service", "db", "backend")  # other namespace
