"""Waypoint Gateway controller: pure planning and status, then whole passes against the real object store."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from store_client import StoreClient

from ambient.api.store import Store
from ambient.api.validation import validate_object
from ambient.cli.waypoint import gateway_manifest
from ambient.cluster import waypoints as W
from ambient.cluster.controllers import ControllerManager

CFG = W.WaypointConfig(controlplane="172.18.0.3:15012", root_cert="/s/ca/root-cert.pem",
                       api_socket="/s/apiserver.sock", python="/venv/bin/python")


def gateway(name: str = "waypoint", ns: str = "shop", uid: str = "gw-uid", traffic: str = "service") -> dict[str, Any]:
    gw = gateway_manifest(name, ns, traffic)
    gw["metadata"].update(uid=uid, generation=1)
    return gw


def by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objs}


# ----------------------------------------------------------------------------- planning (pure)


def test_plan_creates_service_account_deployment_and_hbone_service() -> None:
    objs = by_kind(W.plan_waypoint(gateway(), CFG))
    assert set(objs) == {"ServiceAccount", "Deployment", "Service"}
    for o in objs.values():
        meta = o["metadata"]
        assert (meta["name"], meta["namespace"]) == ("waypoint", "shop")
        assert meta["ownerReferences"] == [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                                            "name": "waypoint", "uid": "gw-uid", "controller": True,
                                            "blockOwnerDeletion": True}]
        assert meta["labels"][W.MANAGED_LABEL] == W.MANAGED_VALUE
        validate_object(copy.deepcopy(o))  # the API server accepts every planned object
    deploy = objs["Deployment"]["spec"]
    assert deploy["replicas"] == 1
    tmpl = deploy["template"]
    assert tmpl["metadata"]["labels"] == {
        "gateway.networking.k8s.io/gateway-name": "waypoint", "istio.io/dataplane-mode": "none",
        W.MANAGED_LABEL: W.MANAGED_VALUE, "istio.io/waypoint-for": "service"}
    assert tmpl["spec"]["serviceAccountName"] == "waypoint"
    c = tmpl["spec"]["containers"][0]
    argv = [*c["command"], *c["args"]]
    assert argv[:3] == ["/venv/bin/python", "-m", "ambient.waypoint"]

    def flag(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert flag("--listen") == "0.0.0.0:15008"
    assert flag("--xds") == "172.18.0.3:15012"
    assert flag("--root-cert") == "/s/ca/root-cert.pem"
    assert flag("--api-socket") == "/s/apiserver.sock"
    assert (flag("--name"), flag("--namespace"), flag("--service-account")) == ("waypoint", "shop", "waypoint")
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    svc = objs["Service"]["spec"]
    assert svc["selector"] == {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    assert svc["ports"] == [{"name": "mesh", "port": 15008, "targetPort": 15008, "appProtocol": "HBONE"}]


def test_plan_hash_changes_only_with_the_spec() -> None:
    a = by_kind(W.plan_waypoint(gateway(), CFG))["Deployment"]
    b = by_kind(W.plan_waypoint(gateway(uid="other"), CFG))["Deployment"]
    c = by_kind(W.plan_waypoint(gateway(traffic="all"), CFG))["Deployment"]
    h = W.HASH_ANNOTATION
    assert a["metadata"]["annotations"][h] == b["metadata"]["annotations"][h]
    assert a["metadata"]["annotations"][h] != c["metadata"]["annotations"][h]


def test_config_for_state_dir_points_at_the_cluster_files(tmp_path: Path) -> None:
    cfg = W.WaypointConfig.for_state_dir(tmp_path)
    assert cfg.root_cert == str(tmp_path / "ca" / "root-cert.pem")
    assert cfg.api_socket == str(tmp_path / "apiserver.sock")
    assert cfg.controlplane == "172.18.0.3:15012"


def _pod(ready: bool) -> dict[str, Any]:
    return {"metadata": {"name": "waypoint-abcde", "namespace": "shop"},
            "status": {"phase": "Running", "podIP": "10.244.1.9",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def _svc(vip: str | None) -> dict[str, Any]:
    return {"metadata": {"name": "waypoint", "namespace": "shop"}, "spec": {"clusterIP": vip} if vip else {}}


@pytest.mark.parametrize(("service", "pods", "programmed", "addresses"), [
    (None, [], "False", []),
    (_svc(None), [_pod(True)], "False", []),
    (_svc("10.96.0.7"), [], "False", [{"type": "IPAddress", "value": "10.96.0.7"}]),
    (_svc("10.96.0.7"), [_pod(False)], "False", [{"type": "IPAddress", "value": "10.96.0.7"}]),
    (_svc("10.96.0.7"), [_pod(False), _pod(True)], "True", [{"type": "IPAddress", "value": "10.96.0.7"}]),
])
def test_status_programmed_needs_vip_and_ready_pod(service: Any, pods: Any, programmed: str,
                                                    addresses: Any) -> None:
    status = W.gateway_status(gateway(), service, pods, now="T0")
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Accepted"]["status"] == "True"
    assert conds["Programmed"]["status"] == programmed
    assert conds["Programmed"]["reason"] == ("Programmed" if programmed == "True" else "Pending")
    assert status["addresses"] == addresses


def test_status_keeps_transition_time_while_unchanged() -> None:
    gw = gateway()
    gw["status"] = W.gateway_status(gw, _svc("10.96.0.7"), [_pod(True)], now="T0")
    again = W.gateway_status(gw, _svc("10.96.0.7"), [_pod(True)], now="T1")
    assert not W.status_differs(gw, again)  # nothing to write
    flipped = W.gateway_status(gw, _svc("10.96.0.7"), [], now="T2")
    conds = {c["type"]: c for c in flipped["conditions"]}
    assert conds["Programmed"]["lastTransitionTime"] == "T2" and conds["Accepted"]["lastTransitionTime"] == "T0"


def test_orphaned_by_gateway_uid() -> None:
    obj = by_kind(W.plan_waypoint(gateway(), CFG))["Service"]
    assert not W.orphaned(obj, {("shop", "waypoint", "gw-uid")})
    assert W.orphaned(obj, {("shop", "waypoint", "new-uid")})  # recreated Gateway: old objects go
    assert W.orphaned(obj, set())
    unmanaged = {"metadata": {"name": "x", "namespace": "shop", "ownerReferences": [{"kind": "Gateway"}]}}
    assert not W.orphaned(unmanaged, set())  # never touch what we did not make


# ----------------------------------------------------------------------------- whole passes


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path)
    s.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    s.patch("Node", "node-1", None, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, status=True)
    s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    return s


async def test_controller_creates_reports_programmed_and_cleans_up(store: Store) -> None:
    cm = ControllerManager(StoreClient(store), waypoints=CFG)
    store.create(gateway_manifest("waypoint", "shop", "service"))
    # A Gateway of another class (istio: the ingress gateway controller's) is none of the waypoints' business.
    other = gateway_manifest("ingress", "shop", "service")
    other["spec"]["gatewayClassName"] = "istio"
    store.create(other)
    await cm.reconcile_once()
    await cm.reconcile_once()
    assert store.get("ServiceAccount", "waypoint", "shop")["metadata"]["labels"][W.MANAGED_LABEL]
    deploy = store.get("Deployment", "waypoint", "shop")
    svc = store.get("Service", "waypoint", "shop")
    vip = svc["spec"]["clusterIP"]
    pods = [p for p in store.list("Pod", "shop")[0]
            if p["metadata"]["labels"].get(W.GATEWAY_NAME_LABEL) == "waypoint"]
    assert len(pods) == 1 and pods[0]["spec"]["nodeName"] == "node-1"
    assert pods[0]["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"
    gw_uid = store.get("Gateway", "waypoint", "shop")["metadata"]["uid"]
    assert deploy["metadata"]["ownerReferences"][0]["uid"] == gw_uid
    with pytest.raises(Exception):  # noqa: B017 - nothing made for the other class
        store.get("Deployment", "ingress", "shop")

    gw = store.get("Gateway", "waypoint", "shop")
    conds = {c["type"]: c["status"] for c in gw["status"]["conditions"]}
    assert conds == {"Accepted": "True", "Programmed": "False"}
    assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": vip}]

    # The kubelet reports the pod Ready: Programmed.
    name = pods[0]["metadata"]["name"]
    store.patch("Pod", name, "shop", {"status": {"phase": "Running", "podIP": "10.244.1.9", "conditions": [
        {"type": "Ready", "status": "True"}]}}, status=True)
    await cm.reconcile_once()
    gw = store.get("Gateway", "waypoint", "shop")
    assert {c["type"]: c["status"] for c in gw["status"]["conditions"]}["Programmed"] == "True"
    rv = gw["metadata"]["resourceVersion"]
    await cm.reconcile_once()
    assert store.get("Gateway", "waypoint", "shop")["metadata"]["resourceVersion"] == rv  # idempotent

    # A changed Gateway (waypoint-for) rolls the Deployment's template.
    store.patch("Gateway", "waypoint", "shop", {"metadata": {"labels": {"istio.io/waypoint-for": "all"}}})
    await cm.reconcile_once()
    labels = store.get("Deployment", "waypoint", "shop")["spec"]["template"]["metadata"]["labels"]
    assert labels["istio.io/waypoint-for"] == "all"

    # Deleting the Gateway removes everything it owned (pods through the Deployment GC).
    store.delete("Gateway", "waypoint", "shop")
    await cm.reconcile_once()
    await cm.reconcile_once()
    for kind in ("Deployment", "Service", "ServiceAccount"):
        assert [o["metadata"]["name"] for o in store.list(kind, "shop")[0]
                if o["metadata"]["name"] == "waypoint"] == [], kind
    assert [p for p in store.list("Pod", "shop")[0]
            if p["metadata"]["labels"].get(W.GATEWAY_NAME_LABEL) == "waypoint"] == []
    assert store.get("ServiceAccount", "default", "shop")  # the namespace's own account stays


async def test_controller_does_not_adopt_a_users_service(store: Store) -> None:
    store.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "waypoint", "namespace": "shop"},
                  "spec": {"selector": {"app": "mine"}, "ports": [{"port": 80}]}})
    cm = ControllerManager(StoreClient(store), waypoints=CFG)
    store.create(gateway_manifest("waypoint", "shop", "service"))
    await cm.reconcile_once()
    svc = store.get("Service", "waypoint", "shop")
    assert svc["spec"]["selector"] == {"app": "mine"}  # left alone
    gw = store.get("Gateway", "waypoint", "shop")
    assert {c["type"]: c["status"] for c in gw["status"]["conditions"]}["Programmed"] == "False"


async def test_recreated_gateway_replaces_the_old_objects_in_one_pass(store: Store) -> None:
    cm = ControllerManager(StoreClient(store), waypoints=CFG)
    store.create(gateway_manifest("waypoint", "shop", "service"))
    await cm.reconcile_once()
    old_uid = store.get("Deployment", "waypoint", "shop")["metadata"]["uid"]
    store.delete("Gateway", "waypoint", "shop")
    new_gw = store.create(gateway_manifest("waypoint", "shop", "service"))
    await cm.reconcile_once()
    deploy = store.get("Deployment", "waypoint", "shop")
    assert deploy["metadata"]["uid"] != old_uid
    assert deploy["metadata"]["ownerReferences"][0]["uid"] == new_gw["metadata"]["uid"]
