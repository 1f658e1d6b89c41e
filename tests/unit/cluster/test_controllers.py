"""Controller-manager: pure decisions (VIPs, endpoints, scheduling, deployment plans) and whole reconcile
passes against the real object store (in-process, no sockets)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from store_client import StoreClient

from ambient.api.store import Store
from ambient.cluster import deployments as D
from ambient.cluster.controllers import ControllerManager
from ambient.cluster.scheduler import RoundRobinScheduler
from ambient.cluster.services import VipAllocator, compute_endpoints, plan_cluster_ips


def node(name: str, ready: bool = True) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(name: str, labels: dict[str, str] | None = None, ip: str | None = None, ready: bool = False,
        node_name: str | None = None, ports: list[dict[str, Any]] | None = None,
        owner: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default", "labels": labels or {}, "uid": f"uid-{name}"}
    if owner:
        meta["ownerReferences"] = [{"kind": "Deployment", "name": owner}]
    status: dict[str, Any] = {}
    if ip:
        status = {"podIP": ip, "phase": "Running",
                  "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    spec: dict[str, Any] = {"containers": [{"name": "c", "command": ["true"], "ports": ports or []}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


# ----------------------------------------------------------------------------- VIPs


def test_allocator_skips_reserved_and_never_duplicates() -> None:
    alloc = VipAllocator()
    got = [alloc.allocate() for _ in range(12)]
    assert "10.96.0.1" not in got and "10.96.0.10" not in got and "10.96.0.0" not in got
    assert len(set(got)) == 12
    assert not alloc.reserve(got[0])  # already used
    assert not alloc.reserve("10.96.0.10") and not alloc.reserve("10.97.0.5") and not alloc.reserve("x")


def test_allocator_exhaustion_is_a_clear_error() -> None:
    from ambient.cluster.services import VipExhaustedError

    alloc = VipAllocator(ipaddress.ip_network("10.96.0.0/29"))  # hosts .1-.6, .1 reserved
    assert [alloc.allocate() for _ in range(5)] == [f"10.96.0.{i}" for i in range(2, 7)]
    with pytest.raises(VipExhaustedError, match="no free service IP"):
        alloc.allocate()


def test_plan_keeps_valid_ips_and_reassigns_duplicates_to_the_younger() -> None:
    def s(name: str, ip: str | None, ts: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "default", "creationTimestamp": ts},
                "spec": {"clusterIP": ip} if ip else {}}

    plan = plan_cluster_ips([s("young", "10.96.0.5", "2026-01-02T00:00:00Z"),
                             s("old", "10.96.0.5", "2026-01-01T00:00:00Z"),
                             s("new", None, "2026-01-03T00:00:00Z"),
                             s("dns-clash", "10.96.0.10", "2026-01-01T00:00:00Z")])
    assert "old" not in {k[1] for k in plan}
    assert set(plan) == {("default", "young"), ("default", "new"), ("default", "dns-clash")}
    assert len(set(plan.values())) == 3 and "10.96.0.5" not in plan.values()


# ----------------------------------------------------------------------------- endpoints


def test_endpoints_ready_pods_only_and_named_target_port() -> None:
    service = {"metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"app": "web"},
                        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}
    pods = [
        pod("a", {"app": "web"}, "10.244.1.2", ready=True, ports=[{"name": "http", "containerPort": 8080}]),
        pod("b", {"app": "web"}, "10.244.2.2", ready=True, ports=[{"name": "http", "containerPort": 9090}]),
        pod("c", {"app": "web"}, "10.244.1.3", ready=False, ports=[{"name": "http", "containerPort": 8080}]),
        pod("d", {"app": "other"}, "10.244.1.4", ready=True, ports=[{"name": "http", "containerPort": 8080}]),
        pod("e", {"app": "web"}, None),  # no IP yet
        pod("f", {"app": "web"}, "10.244.1.5", ready=True),  # does not declare the named port
    ]
    ep = compute_endpoints(service, pods)
    by_port = {s["ports"][0]["port"]: s for s in ep["subsets"]}
    assert [a["ip"] for a in by_port[8080]["addresses"]] == ["10.244.1.2"]
    assert [a["ip"] for a in by_port[8080]["notReadyAddresses"]] == ["10.244.1.3"]
    assert [a["ip"] for a in by_port[9090]["addresses"]] == ["10.244.2.2"]
    assert by_port[8080]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert by_port[8080]["addresses"][0]["targetRef"]["name"] == "a"


def test_endpoints_empty_without_matching_pods() -> None:
    service = {"metadata": {"name": "none", "namespace": "default"},
               "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 80, "targetPort": 80}]}}
    assert compute_endpoints(service, [pod("a", {"app": "web"}, "10.244.1.2", ready=True)])["subsets"] == []


# ----------------------------------------------------------------------------- scheduler


def test_scheduler_spreads_owner_pods_and_skips_unready_nodes() -> None:
    sched = RoundRobinScheduler()
    nodes = [node("node-1"), node("node-2"), node("node-3", ready=False)]
    bound: list[dict[str, Any]] = []
    for i in range(6):
        p = pod(f"web-{i}", owner="web")
        p["spec"]["nodeName"] = sched.pick(p, nodes, bound)
        bound.append(p)
    counts = {n: sum(1 for p in bound if p["spec"]["nodeName"] == n) for n in ("node-1", "node-2", "node-3")}
    assert counts == {"node-1": 3, "node-2": 3, "node-3": 0}
    assert sched.pick(pod("x"), [node("n", ready=False)], []) is None


def test_scheduler_round_robins_single_pods() -> None:
    sched = RoundRobinScheduler()
    nodes = [node("node-1"), node("node-2")]
    picks = [sched.pick(pod(f"p{i}"), nodes, []) for i in range(4)]
    assert picks == ["node-1", "node-2", "node-1", "node-2"]


# ----------------------------------------------------------------------------- deployments


def deployment(replicas: int, image: str = "v1") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": image, "command": ["x"]}]}}}}


def owned(d: dict[str, Any], name: str, ready: bool, ts: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    p = D.new_pod(d, name)
    p["metadata"]["creationTimestamp"] = ts
    if ready:
        p["status"] = {"podIP": "10.244.1.9", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    return p


def test_plan_scale_up_down_and_names() -> None:
    d = deployment(3)
    assert D.plan(d, []).create == 3
    pods = [owned(d, f"web-{i}", ready=i != 1, ts=f"2026-01-0{i + 1}T00:00:00Z") for i in range(4)]
    plan = D.plan(d, pods)
    assert plan.create == 0 and plan.delete == ["web-1"]  # the not-Ready one goes first
    plan = D.plan(deployment(1), pods)
    assert plan.delete == ["web-1", "web-3", "web-2"]  # then the newest
    assert D.random_suffix().isalnum() and len(D.random_suffix()) == 5


def test_template_change_replaces_pods_keeping_capacity() -> None:
    old_d = deployment(2, "v1")
    olds = [owned(old_d, "web-a", True), owned(old_d, "web-b", True)]
    new_d = deployment(2, "v2")
    assert D.template_hash(old_d["spec"]["template"]) != D.template_hash(new_d["spec"]["template"])
    plan = D.plan(new_d, olds)
    assert plan.create == 2 and plan.delete == []  # no new pod Ready yet: keep the old ones
    news = [owned(new_d, "web-c", True), owned(new_d, "web-d", False)]
    plan = D.plan(new_d, olds + news)
    assert plan.create == 0 and plan.delete == ["web-a"]  # one new Ready -> one old goes
    assert D.new_pod(new_d, "web-x")["metadata"]["labels"][D.HASH_LABEL] == D.template_hash(
        new_d["spec"]["template"])


# ----------------------------------------------------------------------------- whole passes


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path)
    for n in ("node-1", "node-2"):
        s.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}})
        s.patch("Node", n, None, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, status=True)
    return s


async def test_reconcile_deployment_service_endpoints(store: Store) -> None:
    cm = ControllerManager(StoreClient(store))
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    d = deployment(4)
    del d["metadata"]["uid"], d["metadata"]["generation"]
    store.create(d)
    store.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                  "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    await cm.reconcile_once()
    await cm.reconcile_once()  # second pass binds the pods the first one created
    pods, _ = store.list("Pod", "default")
    assert len(pods) == 4 and all(p["metadata"]["name"].startswith("web-") for p in pods)
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["node-1", "node-1", "node-2", "node-2"]
    assert all(p["metadata"]["ownerReferences"][0]["name"] == "web" for p in pods)
    sas = {(sa["metadata"]["namespace"], sa["metadata"]["name"]) for sa in store.list("ServiceAccount")[0]}
    assert ("shop", "default") in sas and ("default", "default") in sas
    vip = store.get("Service", "web", "default")["spec"]["clusterIP"]
    assert ipaddress.ip_address(vip) in ipaddress.ip_network("10.96.0.0/16") and vip not in ("10.96.0.1",
                                                                                               "10.96.0.10")
    assert store.get("Endpoints", "web", "default")["subsets"] == []  # nothing Ready yet

    # The kubelets report two pods Ready: endpoints follow.
    for i, p in enumerate(pods[:2]):
        store.patch("Pod", p["metadata"]["name"], "default", {"status": {
            "phase": "Running", "podIP": f"10.244.1.{i + 2}",
            "conditions": [{"type": "Ready", "status": "True"}]}}, status=True)
    await cm.reconcile_once()
    subsets = store.get("Endpoints", "web", "default")["subsets"]
    assert [a["ip"] for a in subsets[0]["addresses"]] == ["10.244.1.2", "10.244.1.3"]
    assert store.get("Deployment", "web", "default")["status"]["readyReplicas"] == 2

    # Scale down to 1: the not-Ready pods go first.
    store.patch("Deployment", "web", "default", {"spec": {"replicas": 1}})
    await cm.reconcile_once()
    left = store.list("Pod", "default")[0]
    assert len(left) == 1 and left[0]["status"].get("podIP")

    # A Service without selector keeps the Endpoints its user wrote.
    store.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": "default"},
                  "spec": {"ports": [{"port": 80}]}})
    manual = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ext", "namespace": "default"},
              "subsets": [{"addresses": [{"ip": "10.244.2.9"}], "ports": [{"port": 80}]}]}
    store.create(manual)
    await cm.reconcile_once()
    assert store.get("Endpoints", "ext", "default")["subsets"] == manual["subsets"]
    store.delete("Service", "ext", "default")

    # Deleting the Service deletes its Endpoints; deleting the Deployment garbage-collects its pods.
    store.delete("Service", "web", "default")
    store.delete("Deployment", "web", "default")
    await cm.reconcile_once()
    assert store.list("Endpoints", "default")[0] == []
    assert store.list("Pod", "default")[0] == []


async def test_pod_with_node_name_is_left_alone_and_no_nodes_means_unschedulable(store: Store) -> None:
    cm = ControllerManager(StoreClient(store))
    pinned = pod("pinned", node_name="node-2")
    del pinned["status"]
    store.create(pinned)
    for n in ("node-1", "node-2"):
        store.patch("Node", n, None, {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
                    status=True)
    free = pod("free")
    del free["status"]
    store.create(free)
    await cm.reconcile_once()
    assert store.get("Pod", "pinned", "default")["spec"]["nodeName"] == "node-2"
    got = store.get("Pod", "free", "default")
    assert not got["spec"].get("nodeName")
    assert got["status"]["conditions"][0]["reason"] == "Unschedulable"
