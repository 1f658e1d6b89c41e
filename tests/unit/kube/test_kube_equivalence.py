"""The Kubernetes source and the local cluster API give the control plane the same workload model for the same
objects: the recorded Kubernetes objects are served by the scripted API server, and also applied to a real
local API server (in-process, on a Unix socket in the test's temp dir); both feed `inform` -> `MeshIndex`, and
the resulting xDS resources (Workload, Service, Authorization) must be identical, except for the pod uids,
which each API server assigns itself."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kube_fakeapi import FakeKubeApi, recorded

from ambient.api.client import AsyncApiClient, WatchEvent
from ambient.api.informer import inform
from ambient.api.server import ApiServer
from ambient.controlplane.index import KINDS, MeshIndex
from ambient.controlplane.source import ApiObjectSource, ObjectSource
from ambient.kube.resources import RESOURCES
from ambient.kube.source import KubeSource

RECORDINGS = {
    "Namespace": "namespaces",
    "Pod": "pods",
    "Service": "services",
    "AuthorizationPolicy": "authorizationpolicies",
    "PeerAuthentication": "peerauthentications",
    "Gateway": "gateways",
}
SERVER_OWNED = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "generateName")


def path_of(kind: str) -> str:
    res = RESOURCES[kind]
    base = "/api/v1" if not res.group else f"/apis/{res.group}/{res.version}"
    return f"{base}/{res.plural}"


def manifest(kind: str, item: dict[str, Any]) -> dict[str, Any]:
    """The recorded object as a user would apply it (no server-owned fields, no status)."""
    obj = {"apiVersion": RESOURCES[kind].api_version, "kind": kind, **copy.deepcopy(item)}
    for key in SERVER_OWNED:
        obj["metadata"].pop(key, None)
    obj.pop("status", None)
    return obj


@pytest.fixture
async def local_api(tmp_path: Path) -> AsyncIterator[ApiServer]:
    server = ApiServer(tmp_path / "state")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def build_index(source: ObjectSource) -> MeshIndex:
    index = MeshIndex()

    def on_event(kind: str, ev: WatchEvent) -> None:
        if ev.type == "DELETED":
            index.delete(kind, ev.object)
        else:
            index.upsert(kind, ev.object)

    synced = {kind: asyncio.Event() for kind in KINDS}
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(inform(source, k, index.replace, on_event, synced=synced[k])) for k in KINDS]
        async with asyncio.timeout(20):
            for ev in synced.values():
                await ev.wait()
        for t in tasks:
            t.cancel()
    index.flush()
    return index


def resources(index: MeshIndex, uid_map: dict[str, str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, addr in index.addresses.items():
        addr = copy.deepcopy(addr)
        if addr.HasField("workload"):
            addr.workload.uid = uid_map.get(addr.workload.uid, addr.workload.uid)
        out[uid_map.get(name, name)] = addr.SerializeToString(deterministic=True)
    for name, auth in index.authorizations.items():
        out[f"auth:{name}"] = auth.SerializeToString(deterministic=True)
    return out


async def test_same_workload_model_from_kubernetes_and_local_source(
    fake_api: FakeKubeApi, source: KubeSource, local_api: ApiServer
) -> None:
    # Kubernetes side: recorded lists; watches stay open and silent.
    for kind, name in RECORDINGS.items():
        fake_api.lists[path_of(kind)] = [recorded(name)]
    # Local side: the same objects applied, pod status written like the kubelet does.
    async with AsyncApiClient(local_api.socket_path) as api:
        for kind, name in RECORDINGS.items():
            for item in recorded(name)["items"]:
                obj, _ = await api.apply(manifest(kind, item))
                if kind == "Pod":
                    obj["status"] = copy.deepcopy(item["status"])
                    await api.update_status(obj)
        local_pods, _ = await api.list("Pod")
    kube_uid = {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p["metadata"]["uid"] for p in recorded("pods")["items"]
    }
    uid_map = {p["metadata"]["uid"]: kube_uid[(p["metadata"]["namespace"], p["metadata"]["name"])] for p in local_pods}

    kube_index = await build_index(source)
    local_source = ApiObjectSource(local_api.socket_path)
    try:
        local_index = await build_index(local_source)
    finally:
        await local_source.aclose()

    kube = resources(kube_index, {})
    local = resources(local_index, uid_map)
    assert kube == local
    # and the model is the expected one, not two equally empty results
    web_uid = kube_uid[("demo", "web-7d9c6b5f4-x2lqp")]
    web = kube_index.addresses[web_uid].workload
    assert (web.namespace, web.service_account, web.node) == ("demo", "web", "kind-worker")
    assert bytes(web.addresses[0]) == bytes([10, 244, 1, 5])
    assert "demo/web.demo.svc.cluster.local" in web.services
    assert web.tunnel_protocol == 1  # HBONE: namespace labelled ambient
    coredns = kube_index.addresses[kube_uid[("kube-system", "coredns-6f6b679f8f-7xk2m")]].workload
    assert coredns.tunnel_protocol == 0
    assert "demo/web-allow-client" in kube_index.authorizations
    assert kube_index.node_service_accounts("kind-worker") == {("demo", "web")}
