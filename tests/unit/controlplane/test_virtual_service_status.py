"""The WaypointAccepted condition of a VirtualService (pure), and the index queuing it."""

from __future__ import annotations

from typing import Any

import pytest

from ambient.controlplane.index import MeshIndex
from ambient.controlplane.route_policy_status import virtual_service_status_fields


def vs(hosts: list[str], **http: Any) -> dict[str, Any]:
    return {"kind": "VirtualService", "metadata": {"name": "r", "namespace": "shop"},
            "spec": {"hosts": hosts, "http": [{"route": [{"destination": {"host": hosts[0]}}], **http}]}}


def bound(*services: str) -> Any:
    return lambda name, ns: "shop/waypoint" if f"{ns}/{name}" in services else None


@pytest.mark.parametrize(("obj", "waypoints", "routes", "want"), [
    (vs(["reviews"]), bound("shop/reviews"), {}, ("True", "Accepted")),
    (vs(["reviews"]), bound(), {}, ("False", "NoWaypoint")),
    (vs(["reviews"]), bound("shop/reviews"), {("shop", "reviews"): ["shop/hr"]}, ("False", "Overridden")),
    (vs(["reviews"], corsPolicy={"allowOrigins": []}), bound("shop/reviews"), {}, ("False", "UnsupportedValue")),
    (vs(["reviews", "ratings"]), bound("shop/reviews"), {}, ("False", "UnsupportedValue")),
    (vs(["reviews"], timeout="soon"), bound("shop/reviews"), {}, ("False", "InvalidSpec")),
])
def test_status_fields(obj: dict[str, Any], waypoints: Any, routes: Any, want: tuple[str, str]) -> None:
    status, reason, message = virtual_service_status_fields(obj, waypoints, routes)
    assert (status, reason) == want, message


def test_no_waypoint_message_says_what_to_do() -> None:
    _, _, message = virtual_service_status_fields(vs(["reviews"]), bound(), {})
    assert "shop/reviews" in message and "istio.io/use-waypoint" in message


def test_index_queues_the_condition_and_requeues_when_the_service_gets_a_waypoint() -> None:
    index = MeshIndex()
    index.upsert("Namespace", {"kind": "Namespace", "metadata": {"name": "shop"}})
    index.upsert("Service", {"kind": "Service", "metadata": {"name": "reviews", "namespace": "shop"},
                             "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80}]}})
    index.upsert("VirtualService", vs(["reviews"]))
    index.flush()
    assert index.status_pending[("VirtualService", "shop", "r")][:2] == ("False", "NoWaypoint")
    index.status_pending.clear()
    index.upsert("Gateway", {"kind": "Gateway", "metadata": {"name": "waypoint", "namespace": "shop"},
                             "spec": {"gatewayClassName": "istio-waypoint"}})
    index.upsert("Namespace", {"kind": "Namespace", "metadata": {"name": "shop",
                                                                 "labels": {"istio.io/use-waypoint": "waypoint"}}})
    index.flush()
    assert index.status_pending[("VirtualService", "shop", "r")][:2] == ("True", "Accepted")


def ra(*refs: dict[str, str]) -> dict[str, Any]:
    return {"kind": "RequestAuthentication", "metadata": {"name": "jwt", "namespace": "shop"},
            "spec": {"targetRefs": list(refs), "jwtRules": [{"issuer": "i", "jwks": "{}"}]}}


def test_request_authentication_status() -> None:
    from ambient.controlplane.route_policy_status import request_authentication_status_fields as f

    waypoint = {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}
    svc = {"kind": "Service", "group": "", "name": "reviews"}
    is_wp = lambda n, s: (s, n) == ("shop", "waypoint")  # noqa: E731
    assert f(ra(waypoint), bound(), is_wp)[:2] == ("True", "Accepted")  # type: ignore[index]
    assert f(ra(svc), bound("shop/reviews"), is_wp)[:2] == ("True", "Accepted")  # type: ignore[index]
    got = f(ra(svc), bound(), is_wp)
    assert got is not None and got[:2] == ("False", "TargetNotFound") and "Service shop/reviews" in got[2]
    assert f({"kind": "RequestAuthentication", "metadata": {"name": "x"}, "spec": {"selector": {}}}, bound(),
             is_wp) is None


def test_grpc_and_tcp_routes_get_the_accepted_condition() -> None:
    from ambient.controlplane.index import route_status_fields

    parent = [{"group": "", "kind": "Service", "name": "greeter"}]
    grpc = {"kind": "GRPCRoute", "metadata": {"name": "g", "namespace": "shop"},
            "spec": {"parentRefs": parent, "rules": [{"filters": [{"type": "ExtensionRef", "extensionRef": {
                "group": "x", "kind": "Y", "name": "z"}}], "backendRefs": [{"name": "a"}]}]}}
    got = route_status_fields(grpc, "GRPCRoute")
    assert got is not None and got[:2] == ("False", "UnsupportedValue") and "ExtensionRef" in got[2]
    tcp = {"kind": "TCPRoute", "metadata": {"name": "t", "namespace": "shop"},
           "spec": {"parentRefs": parent, "rules": [{"backendRefs": [{"name": "a", "port": 1}]}]}}
    assert route_status_fields(tcp, "TCPRoute") == ("True", "Accepted", "routed by the waypoints as written")


def test_destination_rule_status() -> None:
    from ambient.controlplane.route_policy_status import destination_rule_status_fields as f

    def dr(**policy: Any) -> dict[str, Any]:
        return {"kind": "DestinationRule", "metadata": {"name": "reviews", "namespace": "shop"},
                "spec": {"host": "reviews", "trafficPolicy": policy}}

    assert f(dr(), bound("shop/reviews"))[:2] == ("True", "Accepted")
    assert f(dr(), bound())[:2] == ("False", "NoWaypoint")
    assert f(dr(tls={"mode": "SIMPLE"}), bound("shop/reviews"))[:2] == ("True", "Accepted")  # originated
    for tls in ({"mode": "SIMPLE", "credentialName": "c"}, {"mode": "MUTUAL", "credentialName": "c"}):
        assert f(dr(tls=tls), bound("shop/reviews"))[:2] == ("True", "Accepted"), tls  # read from the Secret
    status, reason, message = f(dr(tunnel={"protocol": "CONNECT"}), bound("shop/reviews"))
    assert (status, reason) == ("False", "UnsupportedValue") and "trafficPolicy.tunnel" in message
