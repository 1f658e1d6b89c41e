"""The controller-manager reaches a fixed point on a store that applies Kubernetes' defaults (`api.defaults`):
the objects it plans (waypoint and ingress Deployments and Services, pods from templates, cluster IPs,
Endpoints, DaemonSet status) are stored with fields the plans do not have, and no pass may take that for
a difference to re-apply. Real store, in-process client, no sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_client import StoreClient

from ambient.api.store import Store
from ambient.cli.waypoint import gateway_manifest
from ambient.cluster import layout as L
from ambient.cluster import staticpods as sp
from ambient.cluster import waypoints as W
from ambient.cluster.controllers import ControllerManager

CFG = W.WaypointConfig(controlplane="172.18.0.3:15012", root_cert="/s/ca/root-cert.pem",
                       api_socket="/s/apiserver.sock", python="/venv/bin/python")
LAYOUT = L.build_layout("defaults1", 1, "/tmp/defaults1-state")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path)
    s.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    s.patch("Node", "node-1", None, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, status=True)
    s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    yield s
    s.close()


def _user_objects() -> list[dict[str, Any]]:
    labels = {"app": "web"}
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
              "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                       "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                           {"name": "app", "image": "whoami", "command": ["sleep", "1000"],
                            "ports": [{"containerPort": 8080, "name": "http"}],
                            "livenessProbe": {"httpGet": {"port": "http"}}}]}}}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http", "name": "http"}]}}
    ingress = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "ingress", "namespace": "shop"},
               "spec": {"gatewayClassName": "istio", "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}}
    return [deploy, svc, ingress, gateway_manifest("waypoint", "shop", "service")]


def _all(store: Store) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {}
    for kind in ("Deployment", "DaemonSet", "Service", "Endpoints", "Pod", "ServiceAccount", "Gateway"):
        for obj in store.list(kind)[0]:
            out[(kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj
    return out


def _make_pods_ready(store: Store) -> None:
    """What the kubelet does: every scheduled pod runs and is Ready."""
    for i, pod in enumerate(store.list("Pod")[0]):
        if pod["spec"].get("nodeName") and (pod.get("status") or {}).get("phase") != "Running":
            store.patch("Pod", pod["metadata"]["name"], pod["metadata"]["namespace"], {"status": {
                "phase": "Running", "podIP": f"10.244.1.{i + 2}",
                "conditions": [{"type": "Ready", "status": "True"}]}}, status=True)


async def test_controllers_converge_and_then_write_nothing(store: Store) -> None:
    for obj in [*sp.daemonsets(LAYOUT), *_user_objects()]:
        store.apply(obj)
    cm = ControllerManager(StoreClient(store), waypoints=CFG)
    for _ in range(4):
        await cm.reconcile_once()
        _make_pods_ready(store)
    for _ in range(2):
        await cm.reconcile_once()
    objects = _all(store)
    # The test means something only if the planned objects were stored with fields their plans lack.
    waypoint = objects[("Deployment", "shop", "waypoint")]
    assert waypoint["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": "25%", "maxSurge": "25%"}
    assert waypoint["spec"]["template"]["spec"]["dnsPolicy"] == "ClusterFirst"
    assert objects[("Service", "shop", "waypoint")]["spec"]["sessionAffinity"] == "None"
    assert objects[("Service", "shop", "ingress-istio")]["spec"]["ipFamilies"] == ["IPv4"]
    web_pods = [o for k, o in objects.items() if k[0] == "Pod" and k[2].startswith("web-")]
    assert len(web_pods) == 2 and all(p["spec"]["enableServiceLinks"] is True for p in web_pods)
    assert web_pods[0]["spec"]["containers"][0]["livenessProbe"]["periodSeconds"] == 10
    assert objects[("Endpoints", "shop", "web")]["subsets"][0]["addresses"]
    # The fixed point: further passes write nothing at all.
    version = store.resource_version()
    for _ in range(3):
        await cm.reconcile_once()
    assert store.resource_version() == version, [
        k for k, o in _all(store).items() if o != objects.get(k)]

