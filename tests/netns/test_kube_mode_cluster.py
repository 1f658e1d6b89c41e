"""The Kubernetes mode against a local cluster ("kc2"): the object source of a real cluster
(`ambient.kube.source.KubeSource`, kubernetes-asyncio) pointed at the kubeconfig `ambient cluster create`
writes lists and watches every kind the control plane reads, and the control plane's translation fed by it
produces exactly the xDS resources (workloads, services, policies) it produces from the local source.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_helpers import force_cleanup

from ambient.api.client import ApiClient, WatchEvent
from ambient.api.informer import inform
from ambient.cluster import layout as L
from ambient.cluster import lifecycle, processes
from ambient.controlplane.index import KINDS, MeshIndex
from ambient.controlplane.source import ApiObjectSource
from ambient.inpod.netns import run_in_netns
from ambient.kube.resources import RESOURCES
from ambient.kube.source import KubeSource
from helpers import wait_for

pytestmark = pytest.mark.root

CLUSTER = "kc2"
REPO = Path(__file__).resolve().parents[2]
DENY = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-curl", "namespace": "demo"},
        "spec": {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["client"]}}]}]}}
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
                for ns in ("demo", "client"):  # in the mesh (created, not applied: the demo's apply keeps the label)
                    api.create({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": ns, "labels": {"istio.io/dataplane-mode": "ambient"}}})
                api.apply_many(list(yaml.safe_load_all((REPO / "samples" / "demo.yaml").read_text())))
                api.apply(DENY)
                wait_for(lambda: len([p for p in api.list("Pod")[0]  # not the node components' mirror pods
                                      if p["metadata"].get("namespace") in ("demo", "client")
                                      and (p.get("status") or {}).get("podIP")]) >= 2, 60, "demo pods with IPs")
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


# ----------------------------------------------------------------------------- the node proxies' control plane

# The cluster's control plane, except that objects come from the Kubernetes object source (kubeconfig argv[2]);
# the CA, node tokens and status writes stay the local ones.
KUBE_CP = """
import asyncio, logging, sys
from ambient.controlplane.app import ControlPlane
from ambient.kube.source import KubeSource
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
async def main():
    async with await KubeSource.connect(sys.argv[2]) as source:
        await ControlPlane(sys.argv[1], sys.argv[3], source=source).run()
asyncio.run(main())
"""


def _forward_into(netns: str, port: int, target_port: int) -> socket.socket:
    """Listen on 127.0.0.1:`port` inside `netns` and carry each connection to 127.0.0.1:`target_port` of the
    machine (the API server's TLS listener): how a pod of a real cluster reaches its API server."""
    listener = run_in_netns(L.netns_path(netns), lambda: socket.create_server(("127.0.0.1", port)))

    def pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                inner, _ = listener.accept()
                outer = socket.create_connection(("127.0.0.1", target_port))
                threading.Thread(target=pipe, args=(inner, outer), daemon=True).start()
                threading.Thread(target=pipe, args=(outer, inner), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener


def _curl(layout: L.ClusterLayout, pod: dict[str, Any], url: str) -> subprocess.CompletedProcess[str]:
    netns = L.pod_netns_name(layout.name, pod["metadata"]["uid"])
    return subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", "-m", "3", url], capture_output=True,
                          text=True, timeout=20)


def test_kubernetes_mode_control_plane_serves_the_node_proxies(cluster: dict[str, Any]) -> None:
    """The cluster's control plane is replaced by one reading objects through the Kubernetes source; the node
    proxies reconnect to it and enforce the policy it translates: DENY removed -> traffic flows; DENY applied
    again -> refused (only this control plane can have told them)."""
    api: ApiClient = cluster["api"]
    layout = L.load_layout(cluster["state"])
    doc = yaml.safe_load((cluster["state"] / "kubeconfig").read_text())
    tls_port = int(doc["clusters"][0]["cluster"]["server"].rsplit(":", 1)[1])
    doc["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:16443"
    inner_kubeconfig = cluster["state"] / "kubeconfig-underlay"
    inner_kubeconfig.write_text(yaml.safe_dump(doc))
    listener = _forward_into(layout.underlay_netns, 16443, tls_port)
    try:
        processes.stop_component(layout, "controlplane")
        processes.start_component(
            layout, "controlplane-kube",
            [sys.executable, "-c", KUBE_CP, layout.state_dir, str(inner_kubeconfig),
             f"{L.CONTROLPLANE_IP}:{L.CONTROLPLANE_PORT}"],
            netns=layout.underlay_netns)
        log = processes.log_file(layout, "controlplane-kube")
        wait_for(lambda: log.exists() and log.read_text(errors="replace").count("xDS stream") >= 2, 30,
                 "both node proxies connected to the Kubernetes-mode control plane")
        curl_pod = next(p for p in api.list("Pod", "client")[0] if (p.get("status") or {}).get("podIP"))
        api.delete("AuthorizationPolicy", "deny-curl", "demo")
        wait_for(lambda: _curl(layout, curl_pod, "http://httpbin.demo:8000/ip").returncode == 0, 60,
                 "traffic allowed once the DENY policy is gone")
        api.apply(DENY)
        wait_for(lambda: _curl(layout, curl_pod, "http://httpbin.demo:8000/ip").returncode != 0, 60,
                 "traffic refused by the DENY policy the Kubernetes-mode control plane delivered")
    finally:
        processes.stop_component(layout, "controlplane-kube")
        listener.close()
