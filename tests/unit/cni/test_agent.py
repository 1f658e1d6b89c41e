"""The node agent's orchestration, in-process and without root.

Real pieces: the agent, its pluginevent.sock HTTP server, the chained plugin's client (`notify_agent`), ZDS
over a real SOCK_SEQPACKET socket with the proxy-side `ZdsClient` as the stand-in proxy. Faked: the cluster API (in
memory, with watches) and the rule commands (recorded instead of run). The "netns" files are plain files:
the agent only opens them and passes the fds over ZDS, where the stand-in fstat()s them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import ambient.cni.agent as agent_mod
from ambient.api.client import WatchEvent
from ambient.api.errors import NotFoundError
from ambient.api.patch import merge_patch
from ambient.cni import agent_plan as P
from ambient.cni.agent import AgentSettings, NodeAgent
from ambient.cni.errors import RuleApplyError
from ambient.cni.plugin import CniPluginError, notify_agent
from ambient.cni.rules import RedirectConfig
from ambient.inpod.zds import Backoff, ZdsClient
from ambient.inpod.zds_codec import WorkloadInfo
from helpers import eventually

LABEL = "istio.io/dataplane-mode"


class FakeApi:
    """Pods and namespaces in memory; every change wakes every watch."""

    def __init__(self, events: list[str]) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, Any]] = {
            "mesh": {"metadata": {"name": "mesh", "labels": {LABEL: "ambient"}}},
            "plain": {"metadata": {"name": "plain"}},
        }
        self.events = events
        self._watchers: list[asyncio.Queue[str]] = []

    def changed(self) -> None:
        for q in self._watchers:
            q.put_nowait("MODIFIED")

    def add_pod(self, uid: str, name: str, ns: str = "mesh", ip: str = "10.0.0.5",
                annotations: dict[str, str] | None = None) -> None:
        self.pods[uid] = {"metadata": {"uid": uid, "name": name, "namespace": ns, "labels": {},
                                       "annotations": annotations or {}},
                          "spec": {"nodeName": "node-1", "serviceAccountName": "sa-" + name},
                          "status": {"phase": "Running", "podIP": ip}}
        self.changed()

    def _find(self, name: str, ns: str | None) -> dict[str, Any]:
        for p in self.pods.values():
            if p["metadata"]["name"] == name and p["metadata"]["namespace"] == ns:
                return p
        raise NotFoundError(f"pod {ns}/{name} not found")

    async def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return copy.deepcopy(self._find(name, namespace))

    async def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
                   field_selector: str | None = None) -> tuple[list[dict[str, Any]], str]:
        src = self.pods if kind == "Pod" else self.namespaces
        return [copy.deepcopy(o) for o in src.values()], "1"

    async def patch(self, kind: str, name: str, namespace: str | None, patch: dict[str, Any], *,
                    status: bool = False) -> dict[str, Any]:
        target = self._find(name, namespace) if kind == "Pod" else self.namespaces[name]
        value = (patch.get("metadata", {}).get("annotations") or {}).get(P.ANNOTATION_STATUS, "-")
        if kind == "Pod" and value != "-":
            self.events.append(f"annotate {name} {value}")
        target.update(merge_patch(target, patch))
        self.changed()
        return copy.deepcopy(target)

    async def watch(self, kind: str, namespace: str | None = None, resource_version: str | None = None,
                    label_selector: str | None = None, timeout: float | None = None,  # noqa: ASYNC109
                    field_selector: str | None = None) -> AsyncIterator[WatchEvent]:
        q: asyncio.Queue[str] = asyncio.Queue()
        self._watchers.append(q)
        try:
            while True:
                yield WatchEvent(await q.get(), {"metadata": {}})
        finally:
            self._watchers.remove(q)


class FakeRules:
    """Stands in for ambient.cni.apply: records each call (in order) instead of running commands."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.fail_apply = False
        self.verify_diffs: list[str] = []
        self.ipset: dict[str, str] = {}

    def install(self, mp: pytest.MonkeyPatch) -> None:
        def fd_name(netns: Any) -> str:
            return Path(os.readlink(f"/proc/self/fd/{netns}")).name if isinstance(netns, int) else str(netns)

        def apply(cfg: RedirectConfig, backend: str, *, netns: Any) -> str:
            if self.fail_apply:
                raise RuleApplyError("iptables-restore --noflush failed (exit 4): simulated")
            self.events.append(f"apply {fd_name(netns)} dns={cfg.dns_capture}")
            return ""

        def verify(cfg: RedirectConfig, backend: str, *, netns: Any) -> list[str]:
            self.events.append(f"verify {fd_name(netns)}")
            return list(self.verify_diffs)

        def remove(backend: Any, *, netns: Any) -> None:
            self.events.append(f"remove-rules {fd_name(netns)}")

        def ipset_add(ip: str, uid: str, family: int = 4, *, netns: Any = None) -> None:
            self.ipset[ip] = uid
            self.events.append(f"ipset-add {ip}")

        def ipset_remove(ip: str, uid: str, family: int = 4, *, netns: Any = None) -> bool:
            self.events.append(f"ipset-del {ip}")
            return self.ipset.pop(ip, None) is not None

        def prune(keep: dict[str, str], family: int = 4, *, netns: Any = None) -> list[str]:
            stale = [ip for ip, uid in self.ipset.items() if keep.get(ip) != uid]
            for ip in stale:
                del self.ipset[ip]
            return stale

        calls: dict[str, Callable[..., Any]] = {
            "apply_pod_redirection": apply, "verify_pod_redirection": verify, "remove_pod_redirection": remove,
            "probe_ipset_add": ipset_add, "probe_ipset_remove": ipset_remove, "probe_ipset_prune": prune,
            "probe_ipset_entries": lambda family=4, *, netns=None: dict(self.ipset),
            "apply_node_probe_snat": lambda family=4, *, netns=None: self.events.append("node-snat"),
        }
        for name, fn in calls.items():
            mp.setattr(agent_mod, name, fn)


class Harness:
    def __init__(self, tmp: Path, mp: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.events: list[str] = []
        self.api = FakeApi(self.events)
        self.rules = FakeRules(self.events)
        self.rules.install(mp)
        (tmp / "netns").mkdir()
        self.settings = AgentSettings(node="node-1", run_dir=tmp / "run", zds_socket=tmp / "run" / "ztunnel.sock",
                                      zds_wait=0.3, cni_add_proxy_wait=0.3, retry_interval=0.05, resync_interval=0.5)
        self.proxy_adds: list[tuple[str, WorkloadInfo, int]] = []
        self.proxy_dels: list[str] = []
        self.snapshots: list[frozenset[str]] = []

    def netns(self, uid: str) -> str:
        path = self.tmp / "netns" / uid
        path.touch()
        return str(path)

    def agent(self) -> NodeAgent:
        return NodeAgent(self.api, self.settings, lambda pod: str(self.tmp / "netns" / P.pod_uid(pod)))

    def proxy(self) -> ZdsClient:
        async def on_add(uid: str, info: WorkloadInfo, fd: int) -> None:
            self.proxy_adds.append((uid, info, os.fstat(fd).st_ino))
            self.events.append(f"proxy-add {uid}")

        async def on_del(uid: str) -> None:
            self.proxy_dels.append(uid)
            self.events.append(f"proxy-del {uid}")

        async def on_snapshot(keep: frozenset[str]) -> None:
            self.snapshots.append(keep)

        return ZdsClient(self.settings.zds_socket, on_add=on_add, on_del=on_del, on_snapshot_done=on_snapshot,
                         backoff=Backoff(0.01, 0.05))

    async def cmdadd(self, uid: str, name: str, ip: str = "10.0.0.5") -> None:
        payload = {"Netns": self.netns(uid), "PodName": name, "PodNamespace": "mesh", "PodUID": uid, "IPs": [ip]}
        await asyncio.to_thread(notify_agent, str(self.settings.run_dir), payload, 5.0)


@contextlib.asynccontextmanager
async def running(h: Harness, *, proxy: bool = True) -> AsyncIterator[tuple[NodeAgent, ZdsClient]]:
    agent = h.agent()
    client = h.proxy()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(agent.run())
        await asyncio.wait_for(agent.ready.wait(), 5)
        ptask = tg.create_task(client.run()) if proxy else None
        if proxy:
            await eventually(lambda: client.snapshots >= 1, what="first snapshot")
        try:
            yield agent, client
        finally:
            if ptask is not None:
                ptask.cancel()
            task.cancel()


@pytest.fixture
def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    return Harness(tmp_path, monkeypatch)


async def test_cmdadd_add_order_rules_then_proxy_then_ipset_then_annotation(h: Harness) -> None:
    h.api.add_pod("u1", "web")
    async with running(h) as (agent, _):
        await h.cmdadd("u1", "web")
        # 200 came back: rules, Add acked, ipset, annotation, in this order
        idx = [h.events.index(e) for e in ("apply u1 dns=True", "proxy-add u1", "ipset-add 10.0.0.5",
                                           "annotate web enabled")]
        assert idx == sorted(idx)
        assert h.proxy_adds[0][0] == "u1"
        assert h.proxy_adds[0][1] == WorkloadInfo("web", "mesh", "sa-web")
        assert h.proxy_adds[0][2] == os.stat(h.netns("u1")).st_ino
        assert agent.tracked["u1"].status == "enabled"
        assert h.api.pods["u1"]["metadata"]["annotations"][P.ANNOTATION_STATUS] == "enabled"
        # reconcile passes afterwards change nothing (no second apply, no second Add)
        n = agent.reconciles
        h.api.changed()
        await eventually(lambda: agent.reconciles > n + 1, what="two more reconciles")
        assert h.events.count("apply u1 dns=True") == 1 and h.events.count("proxy-add u1") == 1


async def test_cmdadd_fails_closed_when_rules_cannot_be_applied(h: Harness) -> None:
    h.api.add_pod("u1", "web")
    h.rules.fail_apply = True
    async with running(h) as (agent, _):
        with pytest.raises(CniPluginError) as err:
            await h.cmdadd("u1", "web")
        assert "HTTP 500" in err.value.message
        assert "redirection rules could not be applied" in err.value.details
        assert "u1" not in agent.tracked
        assert not h.proxy_adds
        assert P.ANNOTATION_STATUS not in h.api.pods["u1"]["metadata"]["annotations"]


async def test_cmdadd_bad_request_is_400(h: Harness) -> None:
    async with running(h, proxy=False):
        with pytest.raises(CniPluginError, match="HTTP 400"):
            await asyncio.to_thread(notify_agent, str(h.settings.run_dir), {"PodName": "x"}, 5.0)


async def test_proxy_absent_pending_then_enabled_when_it_connects(h: Harness) -> None:
    h.api.add_pod("u1", "web", annotations={"ambient.istio.io/dns-capture": "false"})
    async with running(h, proxy=False) as (agent, _):
        with pytest.raises(CniPluginError) as err:  # rules in place, but no proxy: the ADD fails (retried)
            await h.cmdadd("u1", "web")
        assert "HTTP 500" in err.value.message
        assert "node proxy has not acknowledged it" in err.value.details
        assert "node proxy not reachable" in err.value.details and agent.cni_add_unacked == 1
        assert "apply u1 dns=False" in h.events
        assert agent.tracked["u1"].status == "pending"
        assert h.api.pods["u1"]["metadata"]["annotations"][P.ANNOTATION_STATUS] == "pending"
        assert "ipset-add 10.0.0.5" not in h.events
        client = h.proxy()
        async with asyncio.TaskGroup() as tg:
            t = tg.create_task(client.run())
            await eventually(lambda: agent.tracked["u1"].status == "enabled", what="pod enabled")
            assert h.snapshots[0] == frozenset({"u1"})  # the pending pod was in the first snapshot
            assert h.rules.ipset == {"10.0.0.5": "u1"}
            await eventually(lambda: h.api.pods["u1"]["metadata"]["annotations"][P.ANNOTATION_STATUS] == "enabled",
                             what="annotation enabled")
            t.cancel()


async def test_label_enroll_and_unenroll_running_pod(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="ambient.cni.agent")
    h.api.add_pod("u2", "app", ns="plain", ip="10.0.0.7")
    h.netns("u2")
    async with running(h) as (agent, _):
        h.api.pods["u2"]["metadata"]["labels"][LABEL] = "ambient"
        h.api.changed()
        await eventually(lambda: "annotate app enabled" in h.events, what="enrolled by label")
        assert h.proxy_adds[-1][0] == "u2"
        h.events.clear()
        h.api.pods["u2"]["metadata"]["labels"][LABEL] = "none"
        h.api.changed()
        await eventually(lambda: "annotate app None" in h.events, what="un-enrolled")
        assert h.events == ["ipset-del 10.0.0.7", "remove-rules u2", "proxy-del u2", "annotate app None"]
        assert "u2" not in agent.tracked and h.rules.ipset == {}
        assert P.ANNOTATION_STATUS not in h.api.pods["u2"]["metadata"]["annotations"]
        # The log says what happened: the pod left the mesh (it was not deleted).
        assert "pod plain/app: removed from the mesh (pod label istio.io/dataplane-mode=none)" in caplog.text
        assert "deleted" not in caplog.text


async def test_pod_deleted_is_released(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="ambient.cni.agent")
    h.api.add_pod("u1", "web")
    async with running(h) as (agent, _):
        await h.cmdadd("u1", "web")
        del h.api.pods["u1"]
        h.api.changed()
        await eventually(lambda: "u1" in h.proxy_dels, what="Del")
        assert "u1" not in agent.tracked and not h.rules.ipset
        assert "pod mesh/web: deleted: releasing its capture" in caplog.text


async def test_restart_adopts_verifies_repairs_and_replays_snapshot(h: Harness) -> None:
    h.api.add_pod("u1", "web", annotations={P.ANNOTATION_STATUS: "enabled"})
    h.api.add_pod("u3", "old", ns="plain", ip="10.0.0.9", annotations={P.ANNOTATION_STATUS: "enabled"})
    h.netns("u1")
    h.netns("u3")
    h.rules.ipset = {"10.0.0.9": "u3", "10.0.0.66": "gone"}
    h.rules.verify_diffs = ["mangle/ISTIO_PRERT: chain missing"]
    async with running(h) as (agent, _):
        assert h.snapshots[0] == frozenset({"u1"})
        assert "verify u1" in h.events and "apply u1 dns=True" in h.events  # repaired
        assert "remove-rules u3" in h.events  # enrolled by a previous agent, no longer enrolled: cleaned up
        assert h.rules.ipset == {"10.0.0.5": "u1"}  # pruned and completed
        assert P.ANNOTATION_STATUS not in h.api.pods["u3"]["metadata"]["annotations"]
        assert agent.tracked["u1"].status == "enabled"
        assert [a[0] for a in h.proxy_adds] == ["u1"]
    # a second restart with the rules intact: verified only, never re-applied
    h.events.clear()
    h.rules.verify_diffs = []
    async with running(h):
        assert "verify u1" in h.events and not any(e.startswith("apply") for e in h.events)


async def test_proxy_reconnect_gets_a_fresh_snapshot(h: Harness) -> None:
    h.api.add_pod("u1", "web")
    async with running(h, proxy=False) as (agent, _):
        with pytest.raises(CniPluginError, match="HTTP 500"):  # pending: no proxy yet
            await h.cmdadd("u1", "web")
        for round_ in (1, 2):  # a proxy connects, goes away, a new one connects
            client = h.proxy()
            async with asyncio.TaskGroup() as tg:
                t = tg.create_task(client.run())
                await eventually(lambda c=client: c.snapshots >= 1, what=f"snapshot {round_}")  # type: ignore[misc]
                await eventually(lambda: agent.tracked["u1"].status == "enabled", what="pending pod promoted")
                t.cancel()
            assert h.snapshots[-1] == frozenset({"u1"})
            assert h.events.count("proxy-add u1") == round_


async def test_plugin_event_server_turns_a_bug_into_500(tmp_path: Path) -> None:
    from ambient.cni.agent_server import PluginEventServer

    async def broken(event: P.CmdAdd) -> dict[str, Any]:
        raise KeyError("oops")

    payload = {"Netns": "/x", "PodName": "n", "PodNamespace": "ns", "PodUID": "u", "IPs": []}
    async with PluginEventServer(tmp_path / "pluginevent.sock", broken) as server:
        with pytest.raises(CniPluginError) as err:
            await asyncio.to_thread(notify_agent, str(tmp_path), payload, 5.0)
        assert "HTTP 500" in err.value.message and "internal error: KeyError" in err.value.details
        assert server.requests == 1
    assert not (tmp_path / "pluginevent.sock").exists()
