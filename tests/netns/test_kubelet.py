"""The kubelet in a real 2-node cluster: pod lifecycle, restarts, bad commands, CNI failures, leaks, restart.

One cluster ("t8") for the module; every test cleans up the objects it made.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import (
    is_ready,
    long_tests,
    pod_manifest,
    pod_netns,
    pod_netns_list,
    two_node_cluster,
    wait_ready,
    whoami_pod,
)

from ambient.api.client import ApiClient
from ambient.api.errors import NotFoundError
from ambient.cluster import layout as L
from ambient.cluster import lifecycle, processes
from ambient.cluster import podruntime as rt
from ambient.cluster.cni import CniRuntime
from helpers import wait_for

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[L.ClusterLayout, ApiClient]]:
    with two_node_cluster(tmp_path_factory.mktemp("t8-kubelet")) as c:
        yield c


def delete_and_wait(api: ApiClient, names: list[str], ns: str = "default", timeout: float = 30) -> None:
    for name in names:
        try:
            api.delete("Pod", name, ns)
        except NotFoundError:
            pass
    wait_for(lambda: not api.list("Pod", ns)[0] or all(p["metadata"]["name"] not in names
                                                       for p in api.list("Pod", ns)[0]), timeout, "pods gone")


def allocated(layout: L.ClusterLayout) -> set[str]:
    return {ip for n in layout.nodes for ip in CniRuntime(layout, n).allocated_ips()}


def test_pods_on_both_nodes_get_ip_netns_and_status(cluster: tuple[L.ClusterLayout, ApiClient]) -> None:
    layout, api = cluster
    for i, node in enumerate(("node-1", "node-2")):
        api.create(pod_manifest(f"p{i}", ["sleep", "300"], node=node))
    pods = [wait_ready(api, f"p{i}") for i in range(2)]
    for pod, node in zip(pods, ("node-1", "node-2"), strict=True):
        st = pod["status"]
        assert st["phase"] == "Running" and st["hostIP"] == layout.node(node).ip
        assert st["podIP"].startswith(layout.node(node).pod_cidr.rsplit(".", 2)[0] + ".")
        assert st["podIPs"] == [{"ip": st["podIP"]}]
        assert st["containerStatuses"][0]["state"].get("running")
        netns = pod_netns(layout, pod)
        assert L.netns_path(netns).exists()
        assert "nameserver 10.96.0.10" in (L.ETC_NETNS_DIR / netns / "resolv.conf").read_text()
    delete_and_wait(api, ["p0", "p1"])
    wait_for(lambda: not pod_netns_list(), 20, "pod netns removed")
    assert not any((L.ETC_NETNS_DIR / pod_netns(layout, p)).exists() for p in pods)


def test_crash_looping_container_is_restarted(cluster: tuple[L.ClusterLayout, ApiClient]) -> None:
    layout, api = cluster
    api.create(pod_manifest("crash", ["sh", "-c", "echo boom-$$; exit 3"]))

    def restarted() -> dict[str, Any] | None:
        p = api.get("Pod", "crash", "default")
        cs = ((p.get("status") or {}).get("containerStatuses") or [{}])[0]
        return cs if cs.get("restartCount", 0) >= 2 else None

    cs = wait_for(restarted, 30, "restartCount >= 2")
    assert cs["lastState"]["terminated"]["exitCode"] == 3
    log = (layout.state_path / "logs" / "pods" / "default_crash_app.log").read_text()
    assert log.count("boom-") >= 2  # every run's output is kept in the container log
    delete_and_wait(api, ["crash"])


def test_missing_command_gives_clear_reason(cluster: tuple[L.ClusterLayout, ApiClient]) -> None:
    _, api = cluster
    api.create(pod_manifest("nocmd", ["xyz-does-not-exist", "--flag"]))

    def reason() -> dict[str, Any] | None:
        st = api.get("Pod", "nocmd", "default").get("status") or {}
        return st if st.get("reason") == "StartError" else None

    st = wait_for(reason, 20, "StartError reason")
    assert st["phase"] == "Pending"
    assert "executable not found: xyz-does-not-exist" in st["message"]
    waiting = st["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": "StartError", "message": "executable not found: xyz-does-not-exist"}
    delete_and_wait(api, ["nocmd"])


def test_port_in_use_shows_as_crashing_app_with_its_log(cluster: tuple[L.ClusterLayout, ApiClient]) -> None:
    layout, api = cluster
    serve = ["python3", "-m", "http.server", "8099"]
    api.create(pod_manifest("clash", [], containers=[{"name": "first", "command": serve},
                                                     {"name": "second", "command": ["sh", "-c", "sleep 1; exec "
                                                                                    + " ".join(serve)]}]))

    def second_restarted() -> bool:
        statuses = (api.get("Pod", "clash", "default").get("status") or {}).get("containerStatuses") or []
        return any(c["name"] == "second" and c["restartCount"] >= 1 for c in statuses)

    wait_for(second_restarted, 30, "second container restarted")
    log = (layout.state_path / "logs" / "pods" / "default_clash_second.log").read_text()
    assert "Address already in use" in log
    delete_and_wait(api, ["clash"])


def test_deployment_scale_up_and_down(cluster: tuple[L.ClusterLayout, ApiClient]) -> None:
    _, api = cluster
    api.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sl", "namespace": "default"},
                "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "sl"}},
                         "template": {"metadata": {"labels": {"app": "sl"}},
                                      "spec": {"containers": [{"name": "c", "command": ["sleep", "300"]}]}}}})

    def ready_pods(n: int) -> list[dict[str, Any]] | None:
        pods = api.list("Pod", "default", label_selector="app=sl")[0]
        return pods if len(pods) == n and all(is_ready(p) for p in pods) else None

    pods = wait_for(lambda: ready_pods(4), 40, "4 replicas Ready")
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["node-1", "node-1", "node-2", "node-2"]
    assert all(p["metadata"]["name"].startswith("sl-") and len(p["metadata"]["name"]) == 8 for p in pods)
    api.patch("Deployment", "sl", "default", {"spec": {"replicas": 1}})
    wait_for(lambda: ready_pods(1), 30, "scaled down to 1")
    wait_for(lambda: len(pod_netns_list()) == 1, 20, "netns of removed replicas deleted")
    api.patch("Deployment", "sl", "default", {"spec": {"replicas": 3}})
    wait_for(lambda: ready_pods(3), 30, "scaled up to 3")
    st = wait_for(lambda: (d := api.get("Deployment", "sl", "default")["status"]).get("readyReplicas") == 3
                  and d, 20, "deployment status")
    assert st["replicas"] == 3
    api.delete("Deployment", "sl", "default")
    wait_for(lambda: not api.list("Pod", "default", label_selector="app=sl")[0], 30, "pods collected")
    wait_for(lambda: not pod_netns_list(), 20, "netns removed")


def test_create_delete_cycles_leak_no_ip_or_netns(cluster: tuple[L.ClusterLayout, ApiClient]) -> None:
    layout, api = cluster
    cycles = 200  # ~25 s here; AMBIENT_LONG_TESTS=1 runs 1000
    if long_tests():
        cycles = 1000
    before = allocated(layout)
    t0 = time.monotonic()
    for i in range(cycles):
        name = f"cyc{i}"
        api.create(pod_manifest(name, ["sleep", "300"], node=f"node-{i % 2 + 1}"))
        wait_for(lambda n=name: api.get("Pod", n, "default").get("status", {}).get("podIP"), 20, "pod IP")
        api.delete("Pod", name, "default")
    wait_for(lambda: not pod_netns_list(), 30, "all cycle netns removed")
    wait_for(lambda: allocated(layout) == before, 30, "IP allocations released")
    elapsed = time.monotonic() - t0
    print(f"\n{cycles} pod create/delete cycles: {elapsed:.1f}s")
    assert not list((layout.state_path / "nodes" / "node-1" / "kubelet").glob("*.json"))


def test_fifty_pods_start(cluster: tuple[L.ClusterLayout, ApiClient]) -> None:
    _, api = cluster
    n = 50
    t0 = time.monotonic()
    api.apply_many([pod_manifest(f"fifty-{i}", ["sleep", "300"], labels={"batch": "fifty"}) for i in range(n)])
    pods = wait_for(lambda: (ps := api.list("Pod", "default", label_selector="batch=fifty")[0])
                    and sum(map(is_ready, ps)) == n and ps, 90, "50 pods Ready", interval=0.2)
    elapsed = time.monotonic() - t0
    print(f"\n{n} pods scheduled, networked and Ready in {elapsed:.1f}s")
    assert len({p["status"]["podIP"] for p in pods}) == n
    assert {p["spec"]["nodeName"] for p in pods} == {"node-1", "node-2"}
    for i in range(n):
        api.delete("Pod", f"fifty-{i}", "default")
    wait_for(lambda: not pod_netns_list(), 60, "50 pods torn down")


def test_cni_failure_keeps_pod_pending_then_recovers(cluster: tuple[L.ClusterLayout, ApiClient]) -> None:
    layout, api = cluster
    node = layout.node("node-2")
    conf = node.cni_conflist_path
    original = conf.read_text()
    broken = json.loads(original)
    broken["plugins"].append({"type": "no-such-plugin"})
    conf.write_text(json.dumps(broken))
    try:
        api.create(pod_manifest("nonet", ["sleep", "300"], node="node-2"))
        st = wait_for(lambda: (s := api.get("Pod", "nonet", "default").get("status") or {}).get("reason")
                      == "NetworkNotReady" and s, 20, "NetworkNotReady")
        assert st["phase"] == "Pending" and "no-such-plugin" in st["message"]
        assert not st.get("podIP")
        assert not (layout.state_path / "logs" / "pods" / "default_nonet_app.log").exists()  # never ran
    finally:
        conf.write_text(original)
    pod = wait_ready(api, "nonet", timeout=45)  # the retry back-off may have reached its 10 s cap
    assert pod["status"]["podIP"] and pod["status"].get("reason") is None
    delete_and_wait(api, ["nonet"])


def test_kubelet_restart_adopts_running_pods_and_cleans_deleted(cluster: tuple[L.ClusterLayout, ApiClient]) -> None:
    layout, api = cluster
    for name in ("keep", "gone"):
        api.create(pod_manifest(name, ["sleep", "300"], node="node-1"))
    keep, gone = wait_ready(api, "keep"), wait_ready(api, "gone")
    rec = json.loads((layout.state_path / "nodes" / "node-1" / "kubelet" / f"{keep['metadata']['uid']}.json")
                     .read_text())
    pid, start = rec["containers"]["app"]["pid"], rec["containers"]["app"]["starttime"]
    spec = next(s for s in lifecycle.COMPONENTS if s.name == "kubelet")

    def start_kubelet() -> None:
        if "kubelet-node-1" not in processes.running_components(layout):
            processes.start_component(layout, "kubelet-node-1", spec.argv(layout, layout.node("node-1")),
                                      netns=layout.node("node-1").netns,
                                      env={lifecycle.COMPONENT_MARKER_ENV: layout.state_dir})

    assert processes.stop_component(layout, "kubelet-node-1")
    try:
        api.delete("Pod", "gone", "default")
        wait_for(lambda: not any(p["metadata"]["name"] == "gone" for p in api.list("Pod", "default")[0]), 10,
                 "the pod gone from the API")  # only the stopped kubelet would tear its sandbox down
        assert L.netns_path(pod_netns(layout, gone)).exists()  # nobody tore it down while the kubelet was away
    finally:
        start_kubelet()  # also when the test fails: the next tests need this node
    wait_for(lambda: not L.netns_path(pod_netns(layout, gone)).exists(), 20, "deleted pod cleaned up")
    wait_for(lambda: gone["status"]["podIP"] not in allocated(layout), 10, "its IP released")
    # the restarted kubelet's passes (which cleaned up the deleted pod) saw "keep" too: adopted, not restarted
    after = api.get("Pod", "keep", "default")
    assert is_ready(after) and after["status"]["containerStatuses"][0]["restartCount"] == 0
    assert rt.process_alive(pid, start)  # the adopted container process is the same one
    delete_and_wait(api, ["keep"])
    wait_for(lambda: not pod_netns_list(), 20, "netns removed")
    wait_for(lambda: not rt.process_alive(pid, start), 10, "adopted process stopped on delete")


def test_readiness_probes(cluster: tuple[L.ClusterLayout, ApiClient], tmp_path: Path) -> None:
    _, api = cluster
    flag = tmp_path / "ready-flag"
    http = whoami_pod("probe-http")
    http["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"port": "http", "path": "/healthz"}}
    never = pod_manifest("probe-never", ["sleep", "300"])
    never["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 9}}
    by_exec = pod_manifest("probe-exec", ["sleep", "300"])
    by_exec["spec"]["containers"][0]["readinessProbe"] = {"exec": {"command": ["test", "-f", str(flag)]}}
    for p in (http, never, by_exec):
        api.create(p)
    wait_ready(api, "probe-http")
    time.sleep(2.0)
    for name in ("probe-never", "probe-exec"):
        pod = api.get("Pod", name, "default")
        assert pod["status"]["phase"] == "Running" and not is_ready(pod)
    flag.write_text("ok")
    wait_ready(api, "probe-exec", timeout=10)
    assert not is_ready(api.get("Pod", "probe-never", "default"))
    delete_and_wait(api, ["probe-http", "probe-never", "probe-exec"])


def test_logs_dir_layout(cluster: tuple[L.ClusterLayout, ApiClient]) -> None:
    layout, _ = cluster
    logs = {p.name for p in Path(layout.log_dir).iterdir()}
    assert {"kubelet-node-1.log", "kubelet-node-2.log", "controller-manager.log"} <= logs
