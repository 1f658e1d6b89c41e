"""The kubelet's mirror pods of the node components (`kubelet.MirrorPods`), whole passes against the real object
store (in-process, no sockets, no network namespaces): published while wanted, published again when deleted or
out of date, deleted when unwanted or orphaned, status from the supervisor's files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from store_client import StoreClient

from ambient.api.errors import NotFoundError
from ambient.api.store import Store
from ambient.cluster import layout as L
from ambient.cluster import processes
from ambient.cluster import staticpods as sp
from ambient.cluster.kubelet import Kubelet
from ambient.cluster.supervisor import status_file


@pytest.fixture
def world(tmp_path: Path) -> tuple[Store, L.ClusterLayout, Kubelet]:
    layout = L.build_layout("mp1", 2, tmp_path / "state")
    store = Store(tmp_path / "db")
    for n in layout.nodes:
        store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.name}})
    for obj in sp.daemonsets(layout):
        store.create(obj)
    me = f"{os.getpid()} {processes._proc_starttime(os.getpid())}\n"  # a live process stands for each component
    layout.pid_dir.mkdir(parents=True)
    for name in ("ztunnel-node-1", "node-agent-node-1", "ztunnel-node-2"):
        processes.write_spec(layout, processes.ComponentSpecFile(name, ["true"]))
        (layout.pid_dir / f"{name}.pid").write_text(me)
    status_file(layout).write_text(json.dumps({"components": {
        "ztunnel-node-1": {"name": "ztunnel-node-1", "pid": os.getpid(), "started_at": 1.8e9, "restarts": 3,
                           "last_exit": {"reason": "signal 9 (SIGKILL)", "code": None, "signal": 9, "at": 1.8e9,
                                         "ran_for": 3.0}}}}))
    client: Any = StoreClient(store)  # the Client surface the kubelet uses (no watch: passes are driven here)
    kubelet = Kubelet(client, layout, "node-1", cni=object(), kube_proxy=False)
    return store, layout, kubelet


def _pod(store: Store, name: str, ns: str = sp.NAMESPACE) -> dict[str, Any] | None:
    try:
        return store.get("Pod", name, ns)
    except NotFoundError:
        return None


async def test_wanted_components_get_mirror_pods_with_the_supervisors_status(
        world: tuple[Store, L.ClusterLayout, Kubelet]) -> None:
    store, layout, kubelet = world
    assert kubelet.mirrors is not None
    await kubelet.mirrors.sync()
    proxy = _pod(store, "ztunnel-node-1")
    assert proxy is not None and _pod(store, "ambient-node-agent-node-1") is not None
    assert _pod(store, "ztunnel-node-2") is None  # node-2's kubelet publishes node-2's
    ds_uid = store.get("DaemonSet", "ztunnel", sp.NAMESPACE)["metadata"]["uid"]
    assert [(r["kind"], r["uid"]) for r in proxy["metadata"]["ownerReferences"]] == [("DaemonSet", ds_uid)]
    version = proxy["metadata"]["resourceVersion"]
    await kubelet.mirrors.sync()  # nothing changed: nothing written
    assert store.get("Pod", "ztunnel-node-1", sp.NAMESPACE)["metadata"]["resourceVersion"] == version
    # without its DaemonSet the mirror pod names its Node, as the kubelet does; a new DaemonSet takes it back
    store.delete("DaemonSet", "ztunnel", sp.NAMESPACE)
    await kubelet.mirrors.sync()
    node_uid = store.get("Node", "node-1")["metadata"]["uid"]
    owners = store.get("Pod", "ztunnel-node-1", sp.NAMESPACE)["metadata"]["ownerReferences"]
    assert [(r["kind"], r["uid"]) for r in owners] == [("Node", node_uid)]
    store.create(sp.daemonset(layout, sp.NODE_PROXY))
    await kubelet.mirrors.sync()
    new_uid = store.get("DaemonSet", "ztunnel", sp.NAMESPACE)["metadata"]["uid"]
    owners = store.get("Pod", "ztunnel-node-1", sp.NAMESPACE)["metadata"]["ownerReferences"]
    assert [(r["kind"], r["uid"]) for r in owners] == [("DaemonSet", new_uid)]
    status = proxy["status"]
    assert status["phase"] == "Running" and status["podIP"] == layout.node("node-1").ip
    cs = status["containerStatuses"][0]
    assert cs["restartCount"] == 3 and "running" in cs["state"]
    assert cs["lastState"]["terminated"]["exitCode"] == 137
    assert cs["ready"] is False  # the readiness probe cannot pass: no node netns in this test
    # the kubelet runs API pods only: mirror pods are not among them
    store.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": "default"},
                  "spec": {"nodeName": "node-1", "containers": [{"name": "c", "command": ["true"]}]}})
    assert [p["metadata"]["name"] for p in (await kubelet._my_pods()).values()] == ["app"]


async def test_a_deleted_or_stale_mirror_pod_is_published_again(world: tuple[Store, L.ClusterLayout, Kubelet]) -> None:
    store, _layout, kubelet = world
    assert kubelet.mirrors is not None
    await kubelet.mirrors.sync()
    first = store.get("Pod", "ztunnel-node-1", sp.NAMESPACE)
    store.delete("Pod", "ztunnel-node-1", sp.NAMESPACE)
    await kubelet.mirrors.sync()
    second = _pod(store, "ztunnel-node-1")
    assert second is not None and second["metadata"]["uid"] != first["metadata"]["uid"]
    store.patch("Pod", "ztunnel-node-1", sp.NAMESPACE, {"metadata": {"annotations": {sp.MIRROR_ANNOTATION: "x"}}})
    await kubelet.mirrors.sync()
    third = _pod(store, "ztunnel-node-1")
    assert third is not None and third["metadata"]["uid"] != second["metadata"]["uid"]
    assert third["metadata"]["annotations"][sp.MIRROR_ANNOTATION] == first["metadata"]["annotations"][
        sp.MIRROR_ANNOTATION]


async def test_unwanted_and_orphaned_mirror_pods_are_deleted(world: tuple[Store, L.ClusterLayout, Kubelet]) -> None:
    store, layout, kubelet = world
    assert kubelet.mirrors is not None
    await kubelet.mirrors.sync()
    processes.remove_spec(layout, "node-agent-node-1")  # stopped on purpose: its static pod is gone
    orphan: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": "stray", "namespace": "default",
                                            "annotations": {sp.MIRROR_ANNOTATION: "h"}},
                               "spec": {"nodeName": "node-1", "containers": [{"name": "c", "command": ["true"]}]}}
    store.create(orphan)
    elsewhere = {**orphan, "metadata": {**orphan["metadata"], "name": "stray-2"},
                 "spec": {**orphan["spec"], "nodeName": "node-2"}}
    store.create(elsewhere)
    await kubelet.mirrors.sync()
    assert _pod(store, "ambient-node-agent-node-1") is None
    assert _pod(store, "stray", "default") is None
    assert _pod(store, "stray-2", "default") is not None  # another node's kubelet decides about its pods
    assert _pod(store, "ztunnel-node-1") is not None
