"""The node components through the real kubectl ("mir1"): what users type against a Kubernetes install works on
the local cluster, where the node proxy and node agent are supervised processes published as mirror pods of
the DaemonSets `ztunnel` and `ambient-node-agent` (`cluster.staticpods`).

Covered: `get pods -l app=ztunnel -o wide` (one Running pod per node at the node's IP), `get ds` /
`rollout status ds/ztunnel`, `logs ds/ztunnel` (the node proxy's own lines), `logs --since-time`,
`--timestamps` and `--previous`, the restart count after a crash, `port-forward ds/ztunnel` to 15020
(metrics) and 15000 (admin, bound to 127.0.0.1 in the node netns only), `exec` (the node's netns),
`ambient logs` / `ambient exec` / `ambient port-forward` of a mirror pod, and `delete pod` of a mirror pod
(published again; the process keeps running). Traffic goes only to loopback and into the cluster's own namespaces.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import local_cluster, run_ambient

from ambient.cluster import layout as L
from ambient.cluster import lifecycle, processes
from helpers import KUBECTL, needs_kubectl, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(300), needs_kubectl]

CLUSTER = "mir1"
NS = "ambient-system"


@dataclass
class Env:
    layout: L.ClusterLayout
    api: Any
    state: Path
    vars: dict[str, str]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp(CLUSTER)
    with local_cluster(CLUSTER, tmp, 2) as (layout, api, state):
        run = run_ambient(CLUSTER, state, "cluster", "kubeconfig")
        assert run.returncode == 0, run.stderr
        yield Env(layout, api, state, dict(os.environ, KUBECONFIG=run.stdout.strip(), HOME=str(tmp)))


def kubectl(env: Env, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    proc = subprocess.run([KUBECTL, *args], env=env.vars, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    return proc


def _rows(env: Env, *args: str) -> list[list[str]]:
    out = kubectl(env, "-n", NS, "get", *args, check=False)
    return [line.split() for line in out.stdout.splitlines()[1:]] if out.returncode == 0 else []


def _all_ready(env: Env) -> list[list[str]] | None:
    rows = _rows(env, "pods", "-l", "app=ztunnel", "-o", "wide")
    return rows if len(rows) == 2 and all(r[1] == "1/1" and r[2] == "Running" for r in rows) else None


def test_get_pods_shows_one_running_node_proxy_per_node_at_the_node_ip(env: Env) -> None:
    rows = wait_for(lambda: _all_ready(env), 60, "both node proxy mirror pods Running and Ready")
    # NAME READY STATUS RESTARTS AGE IP NODE ...
    assert {(r[0], r[5], r[6]) for r in rows} == {(f"ztunnel-{n.name}", n.ip, n.name) for n in env.layout.nodes}
    pod = json.loads(kubectl(env, "-n", NS, "get", "pod", "ztunnel-node-1", "-o", "json").stdout)
    assert pod["metadata"]["annotations"]["kubernetes.io/config.mirror"]
    assert [(r["kind"], r["name"]) for r in pod["metadata"]["ownerReferences"]] == [("DaemonSet", "ztunnel")]
    assert pod["spec"]["hostNetwork"] is True and pod["status"]["hostIP"] == pod["status"]["podIP"]
    agents = wait_for(lambda: (r := _rows(env, "pods", "-l", "app=ambient-node-agent")) and len(r) == 2
                      and all(x[1] == "1/1" for x in r) and r, 60, "both node agent mirror pods Ready")
    assert sorted(r[0] for r in agents) == ["ambient-node-agent-node-1", "ambient-node-agent-node-2"]
    # the DaemonSets count them; kubectl rollout status reads those counts
    ds = wait_for(lambda: (r := _rows(env, "ds")) and all(x[1:4] == ["2", "2", "2"] for x in r) and r, 30,
                  "DaemonSets DESIRED/CURRENT/READY 2/2/2")
    assert sorted(r[0] for r in ds) == ["ambient-node-agent", "ztunnel"]
    assert "successfully rolled out" in kubectl(env, "-n", NS, "rollout", "status", "ds/ztunnel",
                                                "--timeout=30s").stdout
    # describe counts the pods whose controller reference is the DaemonSet
    assert "Pods Status:  2 Running / 0 Waiting" in kubectl(env, "-n", NS, "describe", "ds", "ztunnel").stdout


def test_logs_of_the_daemonset_are_the_node_proxys_log(env: Env) -> None:
    wait_for(lambda: _all_ready(env), 60, "node proxies Ready")
    out = kubectl(env, "-n", NS, "logs", "ds/ztunnel")
    assert re.search(r"node proxy ready: mode=inpod node=node-\d", out.stdout), out.stdout[-2000:]
    assert "Found 2 pods, using pod/ztunnel-node-" in out.stderr  # kubectl picked one by the selector
    two = kubectl(env, "-n", NS, "logs", "ztunnel-node-2", "--tail=1000").stdout
    assert "node proxy ready: mode=inpod node=node-2" in two
    agent = kubectl(env, "-n", NS, "logs", "ds/ambient-node-agent").stdout
    assert "node agent for node-" in agent
    stamped = kubectl(env, "-n", NS, "logs", "ztunnel-node-2", "--timestamps", "--tail=5").stdout.splitlines()
    assert len(stamped) == 5 and all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z ", x) for x in stamped), stamped


def test_logs_since_a_crash_show_only_the_new_run_and_the_restart_is_counted(env: Env) -> None:
    wait_for(lambda: _all_ready(env), 60, "node proxies Ready")
    name = "ztunnel-node-1"
    log = processes.log_file(env.layout, name)
    wait_for(lambda: "node proxy ready" in log.read_text(), 30, "the first run's ready line")
    since = int(time.time()) + 1  # a whole second after every line of the first run
    wait_for(lambda: time.time() > since + 0.05, 3, "the next second")
    before = int(_rows(env, "pods", name)[0][3])
    lifecycle.restart_component(env.layout, name, kill=True)
    wait_for(lambda: log.read_text().count("node proxy ready") >= 2, 30, "the second run's ready line")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
    recent = kubectl(env, "-n", NS, "logs", name, f"--since-time={stamp}").stdout
    assert "supervisor: restarting ztunnel-node-1" in recent, recent
    assert recent.count("node proxy ready") == 1, recent
    assert "supervisor: starting ztunnel-node-1" not in recent  # the first run's marker is older
    everything = kubectl(env, "-n", NS, "logs", name, "--since=1h").stdout
    assert everything.count("node proxy ready") >= 2
    assert "supervisor: starting ztunnel-node-1" in everything
    row = wait_for(lambda: (r := _rows(env, "pods", name)) and int(r[0][3]) > before and r[0][1] == "1/1" and r[0],
                   60, "the restart counted and the pod Ready again")
    assert row[2] == "Running"
    # --previous: the run that was killed, from its start marker to the restart's
    previous = kubectl(env, "-n", NS, "logs", name, "--previous").stdout
    assert previous.startswith("==== ") and "supervisor: starting ztunnel-node-1" in previous.splitlines()[0]
    assert previous.count("node proxy ready") == 1 and "supervisor: restarting" not in previous
    never = kubectl(env, "-n", NS, "logs", "ztunnel-node-2", "--previous", check=False)
    assert never.returncode != 0
    assert 'previous terminated container "ztunnel" in pod "ztunnel-node-2" not found' in never.stderr


def _forward(env: Env, remote: int) -> tuple[subprocess.Popen[str], int]:
    assert KUBECTL is not None
    proc = subprocess.Popen([KUBECTL, "-n", NS, "port-forward", "--address", "127.0.0.1", "ds/ztunnel", f":{remote}"],
                            env=env.vars, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"Forwarding from 127\.0\.0\.1:(\d+) -> " + str(remote), line)
    assert m, line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
    return proc, int(m.group(1))


def _get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.status, resp.read().decode()


def test_port_forward_reaches_metrics_and_the_loopback_only_admin_port(env: Env) -> None:
    wait_for(lambda: _all_ready(env), 60, "node proxies Ready")
    proc, port = _forward(env, 15020)
    try:
        status, body = _get(port, "/stats/prometheus")
        assert status == 200 and "# TYPE" in body, body[:500]
    finally:
        proc.terminate()
        proc.wait(10)
    proc, port = _forward(env, 15000)  # bound to 127.0.0.1 only: reached because the forward dials localhost
    try:
        status, body = _get(port, "/config_dump")
        assert status == 200
        assert isinstance(json.loads(body), dict)
    finally:
        proc.terminate()
        proc.wait(10)


def test_exec_runs_in_the_nodes_network_namespace(env: Env) -> None:
    wait_for(lambda: _all_ready(env), 60, "node proxies Ready")
    out = kubectl(env, "-n", NS, "exec", "ztunnel-node-2", "--", "ip", "-4", "-o", "addr", "show").stdout
    assert f"{env.layout.node('node-2').ip}/" in out, out


def test_the_ambient_cli_reaches_the_same_component_through_its_mirror_pod(env: Env) -> None:
    wait_for(lambda: _all_ready(env), 60, "node proxies Ready")
    logs = run_ambient(CLUSTER, env.state, "logs", "-n", NS, "pod/ztunnel-node-1", "--tail", "1000")
    assert logs.returncode == 0 and "node proxy ready: mode=inpod node=node-1" in logs.stdout, logs.stderr
    ip = run_ambient(CLUSTER, env.state, "exec", "-n", NS, "ztunnel-node-1", "--", "ip", "-4", "-o", "addr")
    assert ip.returncode == 0 and f"{env.layout.node('node-1').ip}/" in ip.stdout, ip.stderr
    proc = subprocess.Popen([sys.executable, "-m", "ambient", "-c", CLUSTER, "--state-dir", str(env.state),
                             "port-forward", "-n", NS, "pod/ztunnel-node-1", "0:15000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
        assert m, line
        status, body = _get(int(m.group(1)), "/config_dump")  # the admin port, 127.0.0.1 of node-1's netns
        assert status == 200 and isinstance(json.loads(body), dict)
    finally:
        proc.terminate()
        proc.wait(10)


def test_deleting_a_mirror_pod_publishes_it_again_and_leaves_the_process_running(env: Env) -> None:
    wait_for(lambda: _all_ready(env), 60, "node proxies Ready")
    name = "ztunnel-node-2"
    pid = processes.running_components(env.layout)[name]
    uid = json.loads(kubectl(env, "-n", NS, "get", "pod", name, "-o", "json").stdout)["metadata"]["uid"]
    kubectl(env, "-n", NS, "delete", "pod", name, "--wait=false")

    def again() -> dict[str, Any] | None:
        out = kubectl(env, "-n", NS, "get", "pod", name, "-o", "json", check=False)
        if out.returncode != 0:
            return None
        pod = json.loads(out.stdout)
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))
        return pod if pod["metadata"]["uid"] != uid and ready else None

    wait_for(again, 30, "the mirror pod published again and Ready")
    assert processes.running_components(env.layout)[name] == pid  # the static pod's process was not touched
