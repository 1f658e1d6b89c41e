"""The node components as DaemonSets and mirror pods (`cluster.staticpods`), pure: objects from a layout, status
from supervisor records, and which component a pod stands for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ambient.api.validation import validate_object
from ambient.cluster import layout as L
from ambient.cluster import lifecycle
from ambient.cluster import staticpods as sp
from ambient.cluster.portforward import pod_netns

ROOT = Path(__file__).resolve().parents[3]
LAYOUT = L.build_layout("sp1", 2, "/tmp/sp1-state")
NOW = 1_800_000_000.0
OWNER = sp.node_owner("node-1", "u")


def _deploy(path: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "deploy/kubernetes" / path).read_text()))


@pytest.mark.parametrize(("comp", "manifest"), [(sp.NODE_PROXY, "ztunnel/daemonset.yaml"),
                                                (sp.NODE_AGENT, "node-agent/daemonset.yaml")])
def test_the_daemonsets_name_select_and_label_as_the_kubernetes_install(comp: sp.StaticComponent,
                                                                      manifest: str) -> None:
    real, ours = _deploy(manifest), sp.daemonset(LAYOUT, comp)
    assert ours["metadata"]["name"] == real["metadata"]["name"]
    assert ours["metadata"]["namespace"] == real["metadata"]["namespace"] == sp.NAMESPACE
    assert ours["spec"]["selector"] == real["spec"]["selector"]
    assert ours["spec"]["template"]["metadata"]["labels"] == real["spec"]["template"]["metadata"]["labels"]
    assert ours["spec"]["updateStrategy"] == real["spec"]["updateStrategy"]
    real_c, our_c = real["spec"]["template"]["spec"]["containers"][0], ours["spec"]["template"]["spec"]["containers"][0]
    assert our_c["name"] == real_c["name"]
    # a host-network pod's ports carry hostPort = containerPort (the API server's default)
    assert [{k: v for k, v in p.items() if k != "hostPort"} for p in our_c.get("ports") or []] == \
        (real_c.get("ports") or [])
    assert all(p["hostPort"] == p["containerPort"] for p in our_c.get("ports") or [])
    if "httpGet" in real_c["readinessProbe"]:
        assert our_c["readinessProbe"] == real_c["readinessProbe"]
    assert ours["spec"]["template"]["spec"]["hostNetwork"] is True  # what runs: a process in the node netns
    validate_object(ours)  # the API server accepts it


def test_the_mirror_pod_runs_what_the_supervisor_runs_and_names_its_node_as_owner() -> None:
    ds = {**sp.daemonset(LAYOUT, sp.NODE_PROXY)}
    ds["metadata"] = {**ds["metadata"], "uid": "uid-ds"}
    pod = sp.static_pod(LAYOUT, sp.NODE_PROXY, "node-2", sp.daemonset_owner(ds))
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "ztunnel-node-2" and meta["namespace"] == "ambient-system"
    assert meta["labels"]["app"] == "ztunnel"
    assert meta["annotations"][sp.MIRROR_ANNOTATION] == meta["annotations"][sp.HASH_ANNOTATION]
    assert meta["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ztunnel",
                                        "uid": "uid-ds", "controller": True, "blockOwnerDeletion": True}]
    assert sp.node_owner("node-2", "uid-n2") == {"apiVersion": "v1", "kind": "Node", "name": "node-2",
                                                 "uid": "uid-n2", "controller": True}
    assert spec["nodeName"] == "node-2" and spec["hostNetwork"] is True
    container = spec["containers"][0]
    comp = next(c for c in lifecycle.COMPONENTS if c.name == "ztunnel")
    assert container["command"] + container["args"] == comp.argv(LAYOUT, LAYOUT.node("node-2"))
    agent = sp.static_pod(LAYOUT, sp.NODE_AGENT, "node-1", sp.node_owner("node-1", "uid-n1"))
    probe = agent["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    assert probe == ["test", "-S", str(Path(LAYOUT.node("node-1").run_dir) / "pluginevent.sock")]
    validate_object(pod)
    validate_object(agent)
    # the hash follows the manifest: another node, another hash
    other = sp.static_pod(LAYOUT, sp.NODE_PROXY, "node-1", sp.daemonset_owner(ds))
    assert other["metadata"]["annotations"][sp.MIRROR_ANNOTATION] != meta["annotations"][sp.MIRROR_ANNOTATION]


def test_which_component_a_pod_stands_for() -> None:
    pod = sp.static_pod(LAYOUT, sp.NODE_AGENT, "node-1", OWNER)
    pod["metadata"]["uid"] = "abcdef0123456789"
    comp, node = sp.static_component(LAYOUT, pod) or (None, None)
    assert comp is sp.NODE_AGENT and node is not None and node.name == "node-1"
    assert pod_netns(LAYOUT, pod) == LAYOUT.node("node-1").netns
    ordinary = {"metadata": {"name": "ztunnel-node-1", "namespace": "ambient-system", "uid": "abcdef0123456789"},
                "spec": {"nodeName": "node-1"}}
    assert sp.static_component(LAYOUT, ordinary) is None  # no mirror annotation: an API pod like any other
    assert pod_netns(LAYOUT, ordinary) == L.pod_netns_name("sp1", "abcdef0123456789")
    for change in ({"namespace": "default"}, {"name": "ztunnel-node-9"}):
        forged = {**pod, "metadata": {**pod["metadata"], **change}}
        assert sp.static_component(LAYOUT, forged) is None
    assert sp.static_component(LAYOUT, {**pod, "spec": {**pod["spec"], "nodeName": "node-9"}}) is None


CONTAINER = sp.static_pod(LAYOUT, sp.NODE_PROXY, "node-1", OWNER)["spec"]["containers"][0]


@pytest.mark.parametrize(("record", "pid", "ready", "want"), [
    # running, ready, restarted twice after a SIGKILL
    ({"pid": 42, "started_at": NOW - 60, "restarts": 2,
      "last_exit": {"reason": "signal 9 (SIGKILL)", "code": None, "signal": 9, "at": NOW - 61, "ran_for": 5.0}},
     42, True,
     {"phase": "Running", "ready": True, "restarts": 2, "state": "running", "last": (137, "Error"),
      "started": "2027-01-15T07:59:00Z"}),
    # running, readiness not (yet) passing
    ({"pid": 42, "started_at": NOW - 1, "restarts": 0}, 42, False,
     {"phase": "Running", "ready": False, "restarts": 0, "state": "running", "last": None}),
    # crash-looping: waiting for its back-off
    ({"pid": None, "restarts": 5, "restart_at": NOW + 40,
      "last_exit": {"reason": "exit code 1", "code": 1, "signal": None, "at": NOW - 1, "ran_for": 0.2}},
     None, False,
     {"phase": "Running", "ready": False, "restarts": 5, "state": "waiting", "reason": "CrashLoopBackOff",
      "last": (1, "Error")}),
    # never started yet
    (None, None, False, {"phase": "Pending", "ready": False, "restarts": 0, "state": "waiting",
                         "reason": "ContainerCreating", "last": None}),
])
def test_mirror_status_follows_the_supervisor(record: dict[str, Any] | None, pid: int | None, ready: bool,
                                              want: dict[str, Any]) -> None:
    pod = sp.static_pod(LAYOUT, sp.NODE_PROXY, "node-1", OWNER)
    state = sp.container_state(CONTAINER, record, pid, NOW, ready)
    status = sp.mirror_status(pod, state, "172.18.0.11", "2027-01-15T08:00:00Z")
    assert status["phase"] == want["phase"]
    assert status["podIP"] == status["hostIP"] == "172.18.0.11"
    cs = status["containerStatuses"][0]
    assert cs["ready"] is want["ready"] and cs["restartCount"] == want["restarts"]
    assert want["state"] in cs["state"]
    if "reason" in want:
        assert cs["state"]["waiting"]["reason"] == want["reason"]
    if want.get("reason") == "CrashLoopBackOff":
        assert cs["state"]["waiting"]["message"] == "back-off 41s restarting failed container=ztunnel"
    if "started" in want:
        assert cs["state"]["running"]["startedAt"] == want["started"]
    last = (cs.get("lastState") or {}).get("terminated")
    assert (None if last is None else (last["exitCode"], last["reason"])) == want["last"]
    ready_cond = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready_cond["status"] == ("True" if want["ready"] else "False")


def _pod(name: str, node: str, ready: bool, ns: str = "ambient-system", app: str = "ztunnel") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": {"app": app}}, "spec": {"nodeName": node},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_daemonset_status_counts_its_pods_per_node() -> None:
    ds = sp.daemonset(LAYOUT, sp.NODE_PROXY)
    ds["metadata"]["generation"] = 3
    nodes = [{"metadata": {"name": "node-1"}}, {"metadata": {"name": "node-2"}}]
    pods = [_pod("ztunnel-node-1", "node-1", True), _pod("ztunnel-node-2", "node-2", False),
            _pod("other", "node-2", True, app="web"), _pod("ztunnel-x", "node-2", True, ns="default")]
    status = sp.daemonset_status(ds, pods, nodes)
    assert (status["desiredNumberScheduled"], status["currentNumberScheduled"], status["numberReady"],
            status["numberAvailable"], status["numberUnavailable"], status["observedGeneration"]) == (2, 2, 1, 1, 1, 3)


def test_previous_run_is_the_part_between_the_last_two_start_markers() -> None:
    first = b"==== 2026-12-06T06:00:00Z supervisor: starting ztunnel-node-1 ====\nrun 1\n"
    second = (b"==== 2026-12-06T06:01:00Z supervisor: restarting ztunnel-node-1 (restart 1; last exit: signal 9 "
              b"(SIGKILL) after 60.0s) ====\nrun 2\n")
    third = b"==== 2026-12-06T06:02:00Z supervisor: restarting ztunnel-node-1 (restart 2; ...) ====\nrun 3\n"
    assert sp.previous_run(first, "ztunnel-node-1") is None
    assert sp.previous_run(first + second, "ztunnel-node-1") == first
    assert sp.previous_run(first + second + third, "ztunnel-node-1") == second
    # another component's markers (a prefix of this one's name included) do not split it
    other = b"==== 2026-12-06T06:03:00Z supervisor: restarting ztunnel-node-10 (restart 1) ====\n"
    assert sp.previous_run(first + other + second, "ztunnel-node-1") == first + other
    assert sp.previous_run(b"run 2 said ==== x supervisor: starting ztunnel-node-1 ====\n" + first,
                           "ztunnel-node-1") is None  # a marker only counts at a line start
