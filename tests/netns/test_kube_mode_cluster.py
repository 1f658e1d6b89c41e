"""The Kubernetes mode against a local cluster ("kc2"): the object source of a real cluster
(`ambient.kube.source.KubeSource`, kubernetes-asyncio) pointed at the kubeconfig `ambient cluster create`
writes lists and watches every kind the control plane reads, and the control plane's translation fed by it
produces exactly the xDS resources (workloads, services, policies) it produces from the local source.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_helpers import force_cleanup

from ambient.api.client import ApiClient, WatchEvent
from ambient.api.informer import inform
from ambient.cluster import lifecycle
from ambient.controlplane.index import KINDS, MeshIndex
from ambient.controlplane.source import ApiObjectSource
from ambient.kube.resources import RESOURCES
from ambient.kube.source import KubeSource
from helpers import wait_for

pytestmark = pytest.mark.root

CLUSTER = "kc2"
REPO = Path(__file__).resolve().parents[2]
DENY = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-curl", "namespace": "demo"},
        "spec": {"action": "DENY", "selector": {"matchLabels": {"app": "httpbin"}},
                 "rules": [{"from": [{"source": {"namespaces": ["client"]}}],
                            "to": [{"operation": {"ports": ["8080"]}}]}]}}
# The local cluster serves Endpoints, not EndpointSlices (which only the node agent's Kubernetes mode reads).
NOT_SERVED = {"EndpointSlice"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("kc2")
    state = tmp / "state"
    force_cleanup(CLUSTER)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMBIENT_REGISTRY_DIR", str(tmp / "registry"))
        try:
            result = lifecycle.create_cluster(CLUSTER, 2, state)
            with ApiClient(result.layout.api_socket) as api:
                api.apply_many(list(yaml.safe_load_all((REPO / "samples" / "demo.yaml").read_text())))
                api.apply(DENY)
                wait_for(lambda: len([p for p in api.list("Pod")[0]
                                      if (p.get("status") or {}).get("podIP")]) >= 2, 60, "demo pods with IPs")
                yield {"state": state, "kubeconfig": str(state / "kubeconfig"), "api": api}
        finally:
            with contextlib.suppress(Exception):
                shutil.copytree(state / "logs", tmp / "logs", dirs_exist_ok=True, ignore_dangling_symlinks=True)
            lifecycle.delete_cluster(CLUSTER, state)
            force_cleanup(CLUSTER)


def _names(items: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {((i["metadata"].get("namespace") or ""), i["metadata"]["name"]) for i in items}


async def _next(it: AsyncIterator[WatchEvent], want: str, name: str) -> WatchEvent:
    async def find() -> WatchEvent:
        async for ev in it:
            if ev.type == want and (ev.object.get("metadata") or {}).get("name") == name:
                return ev
        raise AssertionError(f"watch ended before {want} {name}")

    return await asyncio.wait_for(find(), 20)


def test_kubernetes_asyncio_lists_and_watches_every_kind(cluster: dict[str, Any]) -> None:
    api: ApiClient = cluster["api"]

    async def main() -> None:
        async with await KubeSource.connect(cluster["kubeconfig"]) as src:
            for kind in sorted(set(RESOURCES) - NOT_SERVED):
                items, rv = await src.list(kind)
                assert int(rv) > 0
                assert _names(items) == _names(api.list(kind)[0]), kind
                assert all(i["kind"] == kind and i["apiVersion"] == RESOURCES[kind].api_version for i in items)
            _, rv = await src.list("AuthorizationPolicy")
            async with aclosing(src.watch("AuthorizationPolicy", rv, timeout=30)) as policies:
                created = {**DENY, "metadata": {"name": "second", "namespace": "demo"}}
                await asyncio.to_thread(api.apply, created)
                ev = await _next(policies, "ADDED", "second")
                assert ev.object["spec"]["action"] == "DENY"
                await asyncio.to_thread(api.delete, "AuthorizationPolicy", "second", "demo")
                await _next(policies, "DELETED", "second")
            pods, rv = await src.list("Pod", namespace="demo")
            name = pods[0]["metadata"]["name"]
            async with aclosing(src.watch("Pod", rv, namespace="demo", timeout=30)) as watch:
                await asyncio.to_thread(api.patch, "Pod", name, "demo", {"metadata": {"labels": {"seen": "yes"}}})
                ev = await _next(watch, "MODIFIED", name)
                assert ev.object["metadata"]["labels"]["seen"] == "yes"

    asyncio.run(main())


async def _translate(source: Any) -> dict[str, dict[str, bytes]]:
    """The xDS resources the control plane's index makes from `source` once every kind is synced."""
    index = MeshIndex("istio-system")
    async with asyncio.TaskGroup() as tg:
        events, tasks = [], []
        for kind in KINDS:
            ev = asyncio.Event()
            events.append(ev)
            tasks.append(tg.create_task(inform(source, kind, lambda k, items: index.replace(k, items),
                                  lambda k, e: (index.delete if e.type == "DELETED" else index.upsert)(k, e.object),
                                  synced=ev)))
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 30)
        delta = index.flush()
        for task in tasks:  # stop the informers: one snapshot is all we need
            task.cancel()
    return {
        "addresses": {n: m.SerializeToString(deterministic=True) for n, m in delta.addresses.items() if m},
        "authorizations": {n: m.SerializeToString(deterministic=True) for n, m in delta.authorizations.items() if m},
    }


def test_kubernetes_source_translates_to_the_same_xds_as_the_local_source(cluster: dict[str, Any]) -> None:
    async def both() -> tuple[dict[str, dict[str, bytes]], dict[str, dict[str, bytes]]]:
        local = ApiObjectSource(cluster["state"] / "apiserver.sock")
        try:
            from_local = await _translate(local)
        finally:
            await local.aclose()
        async with await KubeSource.connect(cluster["kubeconfig"]) as kube:
            from_kube = await _translate(kube)
        return from_local, from_kube

    def same() -> Any:
        local, kube = asyncio.run(both())
        return (local, kube) if local == kube else None

    local, _ = wait_for(same, 60, "the same translation from both sources")
    assert any("demo/httpbin" in n or "httpbin" in n for n in local["addresses"]), sorted(local["addresses"])
    assert any("deny-curl" in n for n in local["authorizations"]), sorted(local["authorizations"])
