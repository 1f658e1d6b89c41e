"""The node agent in Kubernetes mode against the scripted API server: what it watches (its node's pods by field
selector, every namespace), how it writes the redirection annotation, and how it finds pod network namespaces
on a real node (the CNI ADD record, else /proc by cgroup) - without touching any real netns or rule."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
from kube_fakeapi import FakeKubeApi, event, recorded

from ambient.cni import agent_plan as P
from ambient.cni.agent import AgentSettings, NodeAgent, watch_specs
from ambient.cni.agent_plan import CmdAdd
from ambient.kube.nodeagent import KubeAgentApi, PodNetnsResolver, pod_uid_from_cgroup
from ambient.kube.source import KubeSource
from helpers import eventually

pytestmark = pytest.mark.timeout(30)

NODE = "kind-worker"
WEB_UID = "a3b4c5d6-e7f8-4a09-8b1c-2d3e4f506172"
CLIENT_UID = "b1c2d3e4-f506-4a17-8829-3a4b5c6d7e81"


def settings(tmp_path: Path) -> AgentSettings:
    return AgentSettings(node=NODE, run_dir=tmp_path / "run", zds_socket=tmp_path / "run" / "ztunnel.sock",
                         exclude_namespaces=("kube-system", "ambient-system"))


async def test_watches_its_nodes_pods_by_field_selector_and_all_namespaces(
    fake_api: FakeKubeApi, source: KubeSource, tmp_path: Path
) -> None:
    pods = recorded("pods")
    fake_api.lists["/api/v1/pods"] = [pods]
    fake_api.lists["/api/v1/namespaces"] = [recorded("namespaces")]
    web = pods["items"][0]
    # two watches for the agent (it resumes when the server ends one; the third stays open)
    fake_api.watches["/api/v1/pods"] = [[event("MODIFIED", web)], [event("MODIFIED", web)]]
    agent = NodeAgent(KubeAgentApi(source), settings(tmp_path))
    assert watch_specs(NODE) == [("Pod", {"field_selector": f"spec.nodeName={NODE}"}), ("Namespace", {})]
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(agent._watch(kind, **sel)) for kind, sel in watch_specs(NODE)]
        await eventually(lambda: len(fake_api.requests("/api/v1/pods", watch=True)) >= 1
                    and fake_api.requests("/api/v1/namespaces", watch=True))
        await eventually(lambda: len(fake_api.requests("/api/v1/pods", watch=True)) >= 2)  # the first one ended
        for t in tasks:
            t.cancel()
    pod_watch = fake_api.requests("/api/v1/pods", watch=True)[0]
    assert pod_watch.query["fieldSelector"] == f"spec.nodeName={NODE}"
    assert pod_watch.query["allowWatchBookmarks"].lower() == "true"
    assert "fieldSelector" not in fake_api.requests("/api/v1/namespaces", watch=True)[0].query
    # the adapter delivers the API's events to the agent (each one triggers a reconcile)
    fake_api.watches["/api/v1/pods"] = [[event("DELETED", web)]]
    stream = KubeAgentApi(source).watch("Pod", field_selector=f"spec.nodeName={NODE}")
    async with contextlib.aclosing(stream):
        first = await anext(stream)
    assert first.type == "DELETED" and first.object["metadata"]["uid"] == WEB_UID

    # the level-triggered reconcile lists the same way
    by_uid, namespaces = await agent._list_state()
    for pod_list in fake_api.requests("/api/v1/pods", watch=False):  # the informer's list and this one
        assert pod_list.query["fieldSelector"] == f"spec.nodeName={NODE}"
    assert WEB_UID in by_uid and "demo" in namespaces


async def test_redirection_annotation_is_a_merge_patch(fake_api: FakeKubeApi, source: KubeSource) -> None:
    path = "/api/v1/namespaces/demo/pods/web-7d9c6b5f4-x2lqp"
    fake_api.objects[path] = recorded("pods")["items"][0]
    api = KubeAgentApi(source)
    answer = await api.patch("Pod", "web-7d9c6b5f4-x2lqp", "demo",
                             {"metadata": {"annotations": {P.ANNOTATION_STATUS: P.STATUS_ENABLED}}})
    assert answer["metadata"]["annotations"][P.ANNOTATION_STATUS] == "enabled"
    (req,) = fake_api.requests(path)
    assert req.method == "PATCH" and req.headers["Content-Type"].startswith("application/merge-patch+json")
    assert (await api.get("Pod", "web-7d9c6b5f4-x2lqp", "demo"))["metadata"]["uid"] == WEB_UID


# ------------------------------------------------------------------ netns resolution
def fake_proc(root: Path) -> Path:
    """/proc with: our own netns (self), a cgroupfs pod process, a systemd-driver pod process, a host-network
    pod process sharing our netns, and a process of no pod."""
    proc = root / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    (proc / "self" / "ns" / "net").write_text("host")

    def process(pid: int, cgroup: str, netns: Path | None = None) -> None:
        (proc / str(pid) / "ns").mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(cgroup)
        target = proc / str(pid) / "ns" / "net"
        if netns is None:
            target.write_text(f"netns of {pid}")
        else:
            os.link(netns, target)  # same inode: the same network namespace

    process(100, f"0::/kubepods/besteffort/pod{WEB_UID}/0123abcd\n")
    process(200, "0::/kubepods.slice/kubepods-burstable.slice/"
                 f"kubepods-burstable-pod{CLIENT_UID.replace('-', '_')}.slice/cri-containerd-99.scope\n")
    process(300, "0::/kubepods/besteffort/pod11111111-2222-4333-8444-555555555555/ff\n", proc / "self" / "ns" / "net")
    process(400, "0::/system.slice/containerd.service\n")
    return proc


def pod(uid: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": "p", "namespace": "demo"}}


def test_cgroup_paths_name_pods() -> None:
    assert pod_uid_from_cgroup(f"12:pids:/kubepods/pod{WEB_UID}/abc\n") == WEB_UID
    systemd = f"0::/kubepods.slice/kubepods-pod{CLIENT_UID.replace('-', '_')}.slice/crio-1.scope"
    assert pod_uid_from_cgroup(systemd) == CLIENT_UID
    assert pod_uid_from_cgroup("0::/user.slice/user-0.slice/session-1.scope") is None
    assert pod_uid_from_cgroup("0::/podman-pod.slice") is None


def test_resolver_prefers_the_cni_record_then_proc(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    resolver = PodNetnsResolver(tmp_path / "run", proc_root=proc, scan_ttl=0)
    assert resolver.scan_proc() == {WEB_UID: str(proc / "100" / "ns" / "net"),
                                    CLIENT_UID: str(proc / "200" / "ns" / "net")}  # never the host-network pod
    assert resolver(pod(WEB_UID)) == str(proc / "100" / "ns" / "net")
    assert resolver(pod("11111111-2222-4333-8444-555555555555")) is None
    cni_netns = tmp_path / "var-run-netns" / "cni-1234"
    cni_netns.parent.mkdir()
    cni_netns.write_text("")
    resolver.record(WEB_UID, str(cni_netns))
    assert resolver(pod(WEB_UID)) == str(cni_netns)
    # a restarted agent reads the same record (the run dir is a hostPath)
    assert PodNetnsResolver(tmp_path / "run", proc_root=proc)(pod(WEB_UID)) == str(cni_netns)
    cni_netns.unlink()  # sandbox gone: a stale record falls back to /proc
    assert resolver(pod(WEB_UID)) == str(proc / "100" / "ns" / "net")
    resolver.forget(WEB_UID)
    assert resolver.recorded(WEB_UID) is None
    resolver.record(WEB_UID, str(cni_netns))
    resolver.record(CLIENT_UID, "/var/run/netns/cni-2")
    assert resolver.prune({CLIENT_UID}) == [WEB_UID]  # deleted while no agent ran
    assert resolver.recorded(WEB_UID) is None and resolver.recorded(CLIENT_UID) == "/var/run/netns/cni-2"
    resolver.record("../../etc/passwd", "/x")  # never a path outside the records dir
    assert not (tmp_path / "etc").exists() and resolver(pod("../../etc/passwd")) is None


async def test_cmdadd_records_the_netns_the_plugin_gave(
    fake_api: FakeKubeApi, source: KubeSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_api.objects["/api/v1/namespaces/demo/pods/web-7d9c6b5f4-x2lqp"] = recorded("pods")["items"][0]
    resolver = PodNetnsResolver(tmp_path / "run", proc_root=tmp_path / "no-proc")
    agent = NodeAgent(KubeAgentApi(source), settings(tmp_path), resolver, resolver)
    captured: list[tuple[str, str]] = []

    async def capture(uid: str, name: str, namespace: str, netns: str, ip: str, pod: Any, **_: Any) -> Any:
        # stands in for the rules + ZDS hand-over (needs root and a real netns); gets the API's pod
        assert pod is not None and pod["metadata"]["uid"] == uid
        captured.append((uid, netns))
        return type("T", (), {"status": P.STATUS_ENABLED})()

    monkeypatch.setattr(agent, "_capture", capture)
    netns = "/var/run/netns/cni-5c1e"
    answer = await agent.cmdadd(CmdAdd(netns=netns, pod_name="web-7d9c6b5f4-x2lqp", pod_namespace="demo",
                                       pod_uid=WEB_UID, ips=("10.244.1.7",)))
    assert answer == {"uid": WEB_UID, "redirection": "enabled"}
    assert captured == [(WEB_UID, netns)]
    assert resolver.recorded(WEB_UID) == netns
