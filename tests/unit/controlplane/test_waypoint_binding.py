"""Waypoint binding end to end through the control plane's index: the objects the Gateway controller makes
(cluster.waypoints) + `istio.io/use-waypoint` labels -> Service/Workload waypoints, and the destination
proxy's authority check accepting the waypoint's authority only from the waypoint itself."""

from __future__ import annotations

import ipaddress
from typing import Any

from ambient.cli.waypoint import gateway_manifest
from ambient.cluster import deployments as D
from ambient.cluster import waypoints as W
from ambient.controlplane.index import MeshIndex
from ambient.state import convert
from ambient.state.model import NamespacedHostname, Service, Workload
from ambient.state.route import check_inbound_authority
from ambient.state.store import view_of

CFG = W.WaypointConfig(root_cert="/s/ca/root-cert.pem", api_socket="/s/apiserver.sock", python="python3")


def ns(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}


def running(pod: dict[str, Any], uid: str, ip: str) -> dict[str, Any]:
    pod["metadata"]["uid"] = uid
    pod["spec"]["nodeName"] = "node-1"
    pod["status"] = {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
    return pod


def app_pod(name: str, uid: str, ip: str, namespace: str = "shop",
            labels: dict[str, str] | None = None) -> dict[str, Any]:
    return running({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": "echo"}},
                    "spec": {"containers": [{"name": "c", "command": ["x"]}]}}, uid, ip)


def service(name: str, vip: str, namespace: str = "shop", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"selector": {"app": "echo"}, "clusterIP": vip, "ports": [{"name": "http", "port": 80,
                                                                                "targetPort": 8080}]}}


def world(index: MeshIndex, gw_ns: str = "shop", traffic: str = "service") -> None:
    """A waypoint as the Gateway controller makes it, its pod as the Deployment controller makes it."""
    gw = gateway_manifest("waypoint", gw_ns, traffic)
    gw["metadata"]["uid"] = f"gw-{gw_ns}"
    index.upsert("Gateway", gw)
    objs = {o["kind"]: o for o in W.plan_waypoint(gw, CFG)}
    wsvc = objs["Service"]
    wsvc["spec"]["clusterIP"] = "10.96.0.50" if gw_ns == "shop" else "10.96.0.60"
    index.upsert("Service", wsvc)
    deploy = objs["Deployment"]
    deploy["metadata"]["uid"] = f"d-{gw_ns}"
    wpod = D.new_pod(deploy, "waypoint-abcde")
    index.upsert("Pod", running(wpod, f"wp-{gw_ns}", "10.244.1.50" if gw_ns == "shop" else "10.244.1.60"))


def key(gw: Any) -> str:
    """The "namespace/hostname" a waypoint GatewayAddress names."""
    assert gw is not None and isinstance(gw.destination, NamespacedHostname)
    return gw.destination.key


def models(index: MeshIndex) -> tuple[dict[str, Workload], dict[str, Service]]:
    index.flush()
    workloads, services = {}, {}
    for addr in index.addresses.values():
        m = convert.address(addr)
        if isinstance(m, Workload):
            workloads[m.name] = m
        else:
            services[f"{m.namespace}/{m.name}"] = m
    return workloads, services


def test_namespace_label_binds_services_but_not_the_waypoint_itself() -> None:
    index = MeshIndex()
    index.upsert("Namespace", ns("shop", {"istio.io/use-waypoint": "waypoint", "istio.io/dataplane-mode": "ambient"}))
    world(index)
    index.upsert("Service", service("echo", "10.96.0.9"))
    index.upsert("Pod", app_pod("echo-1", "u-echo", "10.244.1.9"))
    workloads, services = models(index)

    echo = services["shop/echo"]
    assert echo.waypoint is not None
    assert key(echo.waypoint) == "shop/waypoint.shop.svc.cluster.local"
    assert echo.waypoint.hbone_mtls_port == 15008
    assert services["shop/waypoint"].waypoint is None  # a waypoint never routes through itself
    wp = workloads["waypoint-abcde"]
    assert wp.in_mesh and wp.waypoint is None  # HBONE (not captured, speaks it natively), no loop
    assert wp.identity == "spiffe://cluster.local/ns/shop/sa/waypoint"
    assert "shop/waypoint.shop.svc.cluster.local" in wp.services  # member of its own Service
    assert workloads["echo-1"].waypoint is None  # waypoint-for defaults to service: pods are not bound

    # The destination proxy's authority check: the waypoint may receive CONNECTs for echo's VIP, an
    # ordinary pod may not.
    view = view_of(workloads.values(), services.values())
    via = check_inbound_authority(ipaddress.ip_address("10.244.1.50"), "10.96.0.9:80", wp, view)
    assert via.ok and via.via_waypoint
    other = check_inbound_authority(ipaddress.ip_address("10.244.1.9"), "10.96.0.9:80", workloads["echo-1"], view)
    assert other.status == 400


def test_waypoint_for_workload_and_all_bind_pods() -> None:
    for traffic, svc_bound, pod_bound in (("workload", False, True), ("all", True, True), ("none", False, False),
                                          ("service", True, False)):
        index = MeshIndex()
        index.upsert("Namespace", ns("shop", {"istio.io/use-waypoint": "waypoint"}))
        world(index, traffic=traffic)
        index.upsert("Service", service("echo", "10.96.0.9"))
        index.upsert("Pod", app_pod("echo-1", "u-echo", "10.244.1.9"))
        workloads, services = models(index)
        assert (services["shop/echo"].waypoint is not None) is svc_bound, traffic
        assert (workloads["echo-1"].waypoint is not None) is pod_bound, traffic
        assert workloads["waypoint-abcde"].waypoint is None, traffic


def test_service_and_pod_labels_and_other_namespace() -> None:
    index = MeshIndex()
    index.upsert("Namespace", ns("shop"))
    index.upsert("Namespace", ns("infra"))
    world(index, gw_ns="infra", traffic="all")
    index.upsert("Service", service("echo", "10.96.0.9", labels={
        "istio.io/use-waypoint": "waypoint", "istio.io/use-waypoint-namespace": "infra"}))
    index.upsert("Service", service("plain", "10.96.0.10"))
    index.upsert("Pod", app_pod("echo-1", "u-echo", "10.244.1.9", labels={
        "app": "echo", "istio.io/use-waypoint": "waypoint", "istio.io/use-waypoint-namespace": "infra"}))
    workloads, services = models(index)
    assert services["shop/echo"].waypoint is not None
    assert key(services["shop/echo"].waypoint) == "infra/waypoint.infra.svc.cluster.local"
    assert services["shop/plain"].waypoint is None
    assert workloads["echo-1"].waypoint is not None
    assert key(workloads["echo-1"].waypoint) == "infra/waypoint.infra.svc.cluster.local"


def test_removing_the_namespace_label_unbinds_and_none_opts_out() -> None:
    index = MeshIndex()
    index.upsert("Namespace", ns("shop", {"istio.io/use-waypoint": "waypoint"}))
    world(index)
    index.upsert("Service", service("echo", "10.96.0.9"))
    index.upsert("Service", service("optout", "10.96.0.11", labels={"istio.io/use-waypoint": "none"}))
    _, services = models(index)
    assert services["shop/echo"].waypoint is not None and services["shop/optout"].waypoint is None
    index.upsert("Namespace", ns("shop"))
    delta = index.flush()
    changed = {convert.address(a).name for a in delta.addresses.values() if a is not None}
    assert "echo" in changed
    _, services = models(index)
    assert services["shop/echo"].waypoint is None
