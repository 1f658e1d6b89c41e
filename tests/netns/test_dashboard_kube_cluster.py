"""`ambient dashboard --kubeconfig` against a real local cluster ("dsk1") reached only through its Kubernetes
API (TLS on loopback, the kubeconfig of `ambient cluster kubeconfig`) and the real kubectl: pods found by
label, access lines read with `kubectl logs -f`, metrics through `kubectl port-forward` on loopback,
policies with `kubectl get`. The test reads the dashboard's JSON and its server-sent events, not a browser.

The local cluster runs its node proxies as supervised processes in the node network namespaces and its
kubelets publish them as the mirror pods `ztunnel-<node>` of the DaemonSet `ztunnel` in `ambient-system`
(label `app=ztunnel`), as on a Kubernetes install: `pods/log` of such a pod is the node proxy's own log, and
`pods/portforward` reaches its :15020 in the node netns. Waypoints are ordinary pods of the API.

Traffic goes only to loopback and to addresses inside the cluster's own network namespaces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import create_client_and_web, is_ready, local_cluster, run_ambient

from ambient.api.errors import NotFoundError
from ambient.cluster import layout as L
from ambient.runtime.trace import parse_lines
from helpers import wait_for

KUBECTL = shutil.which("kubectl")
pytestmark = [pytest.mark.root, pytest.mark.timeout(300),
              pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (scripts/bootstrap.sh installs it)")]

CLUSTER = "dsk1"
NS = "dsk"


@dataclass
class Env:
    layout: L.ClusterLayout
    api: Any
    state: Path
    kubeconfig: Path
    client: dict[str, Any]
    vip: str
    url: str
    dash: subprocess.Popen[str]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    dash: subprocess.Popen[str] | None = None
    with local_cluster(CLUSTER, tmp_path_factory.mktemp(CLUSTER), 2) as (layout, api, state):
        try:
            nodes = [n.name for n in layout.nodes]
            client = create_client_and_web(api, layout, NS)
            for node in nodes:
                wait_for(lambda n=node: _mirror_ready(api, f"ztunnel-{n}"), 60,
                         f"the mirror pod of {node}'s node proxy Ready")
            vip = wait_for(lambda: api.get("Service", "web", NS)["spec"].get("clusterIP"), 30, "web VIP")
            run = run_ambient(CLUSTER, state, "cluster", "kubeconfig")
            assert run.returncode == 0, run.stderr
            kubeconfig = Path(run.stdout.strip())
            # Kubernetes mode needs no local cluster: no -c / --state-dir, only the kubeconfig
            env_vars = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "AMBIENT_CLUSTER")}
            dash = subprocess.Popen([sys.executable, "-m", "ambient", "dashboard", "--kubeconfig", str(kubeconfig),
                                     "--port", "0", "--no-open", "--refresh", "1", "--window", "600"],
                                    stdout=subprocess.PIPE, text=True, env=env_vars, start_new_session=True)
            assert dash.stdout is not None
            line = dash.stdout.readline()
            m = re.search(r"http://127\.0\.0\.1:\d+/", line)
            assert m, line
            yield Env(layout, api, state, kubeconfig, client, vip, m.group(0), dash)
        finally:
            if dash is not None:
                dash.terminate()
                try:
                    dash.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(dash.pid, signal.SIGKILL)
                    dash.wait(10)


def _mirror_ready(api: Any, name: str) -> bool:
    try:
        return is_ready(api.get("Pod", name, "ambient-system"))
    except NotFoundError:  # not published yet
        return False


def _curl(env: Env, path: str = "/") -> str:
    netns = L.pod_netns_name(CLUSTER, env.client["metadata"]["uid"])
    out = subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", "-m", "5", f"http://{env.vip}{path}"],
                         capture_output=True, text=True, timeout=30, check=False)
    return out.stdout


def _snapshot(env: Env) -> dict[str, Any]:
    return dict(json.loads(urllib.request.urlopen(f"{env.url}api/snapshot", timeout=10).read()))


def _edge(snap: dict[str, Any], src: str, dst: str) -> dict[str, Any] | None:
    return next((e for e in snap["edges"] if e["src"] == src and e["dst"] == dst), None)


def _row(snap: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    return next((r for r in snap["sources"] if r["source"].startswith(prefix)), None)


def _sse_snapshot(env: Env) -> dict[str, Any]:
    """The first `snapshot` event of the dashboard's event stream."""
    with urllib.request.urlopen(f"{env.url}events", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        event = ""
        while True:
            line = resp.readline().decode()
            if line.startswith("event: "):
                event = line[len("event: "):].strip()
            elif line.startswith("data: ") and event == "snapshot":
                return dict(json.loads(line[len("data: "):]))


def test_an_edge_its_trace_policies_and_metrics_come_through_the_kubernetes_api(env: Env) -> None:
    snap = wait_for(lambda: (s := _snapshot(env)) and _row(s, "ztunnel-node-2") and s, 30,
                    "both node proxy pods followed")
    rows = {r["source"]: r for r in snap["sources"]}
    assert sorted(rows) == ["ztunnel-node-1 (ambient-system/ztunnel-node-1)",
                            "ztunnel-node-2 (ambient-system/ztunnel-node-2)"], rows
    assert [p["name"] for p in snap["policies"]] == ["web-allow"], snap["policies"]
    wait_for(lambda: _curl(env) == "hi", 60, "the mesh serves client -> web")
    for _ in range(2):
        assert _curl(env) == "hi"
    sent = time.monotonic()

    def edge() -> dict[str, Any] | None:
        e = _edge(_snapshot(env), f"{NS}/client", f"{NS}/web")
        return e if e and e["count"] >= 3 and e["bytes_recv"] > 0 else None

    e = wait_for(edge, 20, "the client -> web edge from kubectl logs of the node proxy pods")
    lag = time.monotonic() - sent
    print(f"the edge showed {lag:.2f}s after the last request")
    assert lag < 10, f"the dashboard took {lag:.1f}s to show the edge (kubectl logs -f should take about 1 s)"
    assert e["identities"] == [f"spiffe://cluster.local/ns/{NS}/sa/default"], e
    # the same view on the event stream the page reads
    sse = _sse_snapshot(env)
    assert (sse_edge := _edge(sse, f"{NS}/client", f"{NS}/web")) and sse_edge["count"] >= 3, sse["edges"]
    # the trace joins the lines of both node proxy pods' streams
    conn = next(c for c in _snapshot(env)["connections"] if c["dst"] == f"{NS}/web" and c["trace_id"])
    trace = wait_for(lambda: (t := _get_json(f"{env.url}api/trace/{conn['trace_id']}"))
                     and any(h["kind"] == "destination-proxy" for h in t["hops"]) and t, 10,
                     "the destination node proxy's hop of the trace")
    assert [(h["kind"], h["component"]) for h in trace["hops"] if h["kind"] != "app"] == [
        ("source-proxy", "ztunnel-node-1"), ("destination-proxy", "ztunnel-node-2")], trace
    assert trace["outcome"] == "completed"
    assert "allowed by policy dsk/web-allow" in json.dumps(trace), trace
    # metrics through kubectl port-forward (loopback) of each node proxy pod: the connections counted

    def metrics() -> dict[str, Any] | None:
        row = _row(_snapshot(env), "ztunnel-node-1")
        return row if row and row["metrics_state"] == "up" and row["metrics"]["connections_opened"] >= 3 else None

    row = wait_for(metrics, 30, "node-1's proxy metrics through kubectl port-forward")
    assert re.fullmatch(r"via 127\.0\.0\.1:\d+", row["metrics_detail"]), row
    assert row["metrics"]["bytes"] > 0, row


def _get_json(url: str) -> Any:
    try:
        return json.loads(urllib.request.urlopen(url, timeout=10).read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _kubectl_logs_child(env: Env, pod: str) -> int:
    """The pid of the dashboard's `kubectl logs -f` of `pod` (a child of the process this test started)."""
    out = subprocess.run(["ps", "--ppid", str(env.dash.pid), "-o", "pid="], capture_output=True, text=True,
                         check=False).stdout
    pids = []
    for pid in (int(p) for p in out.split()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"logs" in argv and pod.encode() in argv:
            pids.append(pid)
    assert len(pids) == 1, out
    return pids[0]


def test_a_restarted_log_stream_counts_each_connection_once(env: Env) -> None:
    """kubectl logs ends (here: killed); the dashboard starts it again with --since-time of its last line and
    skips what it replays (the lines of that second come again). The truth: the node proxy's log file."""
    wait_for(lambda: _curl(env) == "hi", 60, "the mesh serves client -> web")

    def counted() -> int:
        e = _edge(_snapshot(env), f"{NS}/client", f"{NS}/web")
        return int(e["count"]) if e else 0

    def logged() -> int:  # client -> web lines the source node proxy wrote (a 600 s window: none expires)
        log = env.layout.log_dir / f"ztunnel-{env.layout.nodes[0].name}.log"
        return sum(1 for e in parse_lines("ztunnel", log.read_text().splitlines())
                   if e.direction == "outbound" and e.fields.get("src.workload") == "client"
                   and e.fields.get("dst.workload") == "web")

    before = wait_for(lambda: (n := logged()) and counted() >= n and n, 20, "the dashboard caught up with the log")
    restarts = (_row(_snapshot(env), "ztunnel-node-1") or {}).get("restarts", 0)
    os.kill(_kubectl_logs_child(env, "ztunnel-node-1"), signal.SIGTERM)
    wait_for(lambda: (r := _row(_snapshot(env), "ztunnel-node-1")) and r["restarts"] > restarts
             and r["state"] == "streaming" and r, 30, "the log stream of ztunnel-node-1 started again")
    assert _curl(env) == "hi"
    now = wait_for(lambda: (n := logged()) > before and n, 20, "the new connection logged")
    wait_for(lambda: counted() >= now, 20, "the new connection counted")
    assert counted() == now, "the replayed lines were counted again"


def test_a_waypoint_pod_is_found_and_its_upstream_edge_runs_as_the_waypoint(env: Env) -> None:
    run = run_ambient(CLUSTER, env.state, "waypoint", "apply", "-n", NS, "--wait", "--timeout", "60")
    assert run.returncode == 0, run.stderr
    env.api.patch("Service", "web", NS, {"metadata": {"labels": {"istio.io/use-waypoint": "waypoint"}}})

    def edge() -> dict[str, Any] | None:
        if _curl(env) != "hi":  # the switch to the waypoint may take a moment to reach the client's proxy
            return None
        e = _edge(_snapshot(env), f"{NS}/waypoint", f"{NS}/web")
        return e if e and e["bytes_recv"] > 0 else None

    up = wait_for(edge, 60, "a waypoint -> web edge from the waypoint pod's kubectl logs")
    assert up["identities"] == [f"spiffe://cluster.local/ns/{NS}/sa/waypoint"], up
    snap = _snapshot(env)
    assert [n["id"] for n in snap["nodes"] if n["kind"] == "waypoint"] == [f"{NS}/waypoint"], snap["nodes"]
    row = wait_for(lambda: (r := _row(_snapshot(env), f"waypoint {NS}/waypoint")) and r["metrics_state"] == "up"
                   and r["metrics"]["requests"] >= 1 and r, 30, "the waypoint's metrics through kubectl port-forward")
    assert row["kind"] == "waypoint" and row["state"] == "streaming", row
    # the waypoint pod is replaced (its Deployment makes a new one): the old stream goes, the new one is followed
    old_pod = row["source"].rsplit("/", 1)[1].rstrip(")")
    env.api.delete("Pod", old_pod, NS)

    def replaced() -> dict[str, Any] | None:
        rows = [r for r in _snapshot(env)["sources"] if r["source"].startswith(f"waypoint {NS}/waypoint")]
        return rows[0] if len(rows) == 1 and f"/{old_pod})" not in rows[0]["source"] and \
            rows[0]["state"] == "streaming" else None

    new = wait_for(replaced, 60, "the new waypoint pod followed instead of the old one")
    wait_for(lambda: _curl(env) == "hi", 30, "the mesh serves client -> web through the new waypoint pod")
    wait_for(lambda: (r := _row(_snapshot(env), new["source"])) and r["lines"] >= 1, 20,
             "the new waypoint pod's access line read")


def test_refused_credentials_stop_the_command_with_kubectls_reason(env: Env, tmp_path: Path) -> None:
    doc = json.loads(env.kubeconfig.read_text())
    for user in doc["users"]:
        user["user"] = {"token": "0" * 64}
    bad = tmp_path / "kubeconfig"
    bad.write_text(json.dumps(doc))
    run = subprocess.run([sys.executable, "-m", "ambient", "dashboard", "--kubeconfig", str(bad), "--port", "0",
                          "--no-open"], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1, run
    assert "Unauthorized" in run.stderr and "credentials were refused" in run.stderr, run.stderr
    assert "dashboard on" not in run.stdout


def test_stopping_the_dashboard_stops_its_kubectl_processes(env: Env) -> None:
    """Runs last: SIGTERM (as Ctrl-C) ends every `kubectl logs -f` and `kubectl port-forward` it started."""
    out = subprocess.run(["ps", "--ppid", str(env.dash.pid), "-o", "pid="], capture_output=True, text=True,
                         check=False).stdout
    children = {int(p): _argv(int(p)) for p in out.split()}
    verbs = {argv[3] for argv in children.values() if len(argv) > 3}  # kubectl --kubeconfig PATH <verb>
    assert {b"logs", b"port-forward"} <= verbs, children
    env.dash.terminate()
    assert env.dash.wait(15) == 0
    wait_for(lambda: not any(_argv(p) == argv for p, argv in children.items()), 10,
             "the dashboard's kubectl processes gone")


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []
