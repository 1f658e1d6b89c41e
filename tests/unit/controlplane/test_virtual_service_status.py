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
    (vs(["reviews"], mirror={"host": "reviews"}), bound("shop/reviews"), {}, ("False", "UnsupportedValue")),
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
