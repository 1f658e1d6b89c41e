"""`ambient exec`, `ambient logs`, `ambient port-forward` against a real cluster, through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import is_ready, pod_manifest, two_node_cluster, wait_ready, whoami_pod

from helpers import wait_for

pytestmark = pytest.mark.root

AMBIENT = [sys.executable, "-m", "ambient"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with two_node_cluster(tmp_path_factory.mktemp("t8-exec")) as (layout, api):
        api.create(whoami_pod("web", node="node-2", labels={"app": "web"}))
        api.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                    "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}})
        api.create(pod_manifest("shell", ["sh", "-c", "echo hello-from-shell; exec sleep 600"], node="node-1"))
        api.create(pod_manifest("broken", ["xyz-not-here"]))
        api.create(pod_manifest("duo", [], containers=[
            {"name": "main", "command": ["sh", "-c", "echo main-log; exec sleep 600"]},
            {"name": "side", "command": ["sh", "-c", "echo side-log; exec sleep 600"]}]))
        api.create({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "sleeper", "namespace": "default"},
                    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "sleeper"}},
                             "template": {"metadata": {"labels": {"app": "sleeper"}},
                                          "spec": {"containers": [{"name": "app", "command": [
                                              "sh", "-c", "echo hello-from-deploy; exec sleep 600"]}]}}}})
        pods = {n: wait_ready(api, n) for n in ("web", "shell", "duo")}
        wait_for(lambda: [p for p in api.list("Pod", "default", label_selector="app=sleeper")[0] if is_ready(p)],
                 30, "the sleeper deployment's pod Ready")
        wait_for(lambda: (api.get("Endpoints", "web", "default").get("subsets") or [{}])[0].get("addresses"),
                 20, "web endpoints")
        env = dict(os.environ, AMBIENT_STATE_DIR=layout.state_dir, AMBIENT_CLUSTER=layout.name)
        yield {"layout": layout, "api": api, "pods": pods, "env": env}


def cli(world: dict[str, Any], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AMBIENT, *args], input=stdin, capture_output=True, text=True, env=world["env"],
                          timeout=60)


def test_exec_runs_in_pod_netns_with_exit_code_and_stdin(world: dict[str, Any]) -> None:
    ip = world["pods"]["shell"]["status"]["podIP"]
    res = cli(world, "exec", "shell", "--", "sh", "-c", "ip -4 -o addr show eth0; cat /etc/resolv.conf; "
              "cat; exit 7", stdin="piped-stdin\n")
    assert res.returncode == 7, res.stderr
    assert f"inet {ip}/24" in res.stdout
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in res.stdout
    assert res.stdout.endswith("piped-stdin\n")
    res = cli(world, "exec", "-it", "shell", "--", "sh", "-c", "exit 4")  # kubectl habits work too
    assert res.returncode == 4, res.stderr


def test_exec_reaches_service_by_name(world: dict[str, Any]) -> None:
    res = cli(world, "exec", "shell", "--", "curl", "-s", "-m", "5", "http://web/")
    assert res.returncode == 0 and res.stdout == f"web {world['pods']['shell']['status']['podIP']}"


def test_exec_errors(world: dict[str, Any]) -> None:
    res = cli(world, "exec", "shell", "--", "no-such-binary-xyz")
    assert res.returncode == 127 and "executable not found: no-such-binary-xyz" in res.stderr
    res = cli(world, "exec", "broken", "--", "true")
    assert res.returncode == 1 and "is not running" in res.stderr and "executable not found" in res.stderr
    res = cli(world, "exec", "nosuchpod", "--", "true")
    assert res.returncode != 0 and "not found" in res.stderr


def test_exec_and_logs_take_kubectl_targets_and_flag_order(world: dict[str, Any]) -> None:
    # deploy/NAME and svc/NAME resolve to a pod of the workload, as kubectl does
    res = cli(world, "exec", "deploy/sleeper", "--", "sh", "-c", "echo via-deploy; exit 3")
    assert res.returncode == 3 and res.stdout == "via-deploy\n", res.stderr
    res = cli(world, "exec", "svc/web", "--", "true")
    assert res.returncode == 0, res.stderr
    res = cli(world, "exec", "pod/shell", "--", "true")
    assert res.returncode == 0, res.stderr
    res = cli(world, "logs", "deploy/sleeper")
    assert res.returncode == 0 and res.stdout == "hello-from-deploy\n", res.stderr
    # flags after the pod name (kubectl's usual order) are flags, not part of the command
    res = cli(world, "exec", "duo", "-c", "side", "--", "sh", "-c", "echo $HOSTNAME-side")
    assert res.returncode == 0 and res.stdout.endswith("-side\n") and "Defaulted" not in res.stderr, res.stderr
    res = cli(world, "logs", "duo", "-c", "side")
    assert res.returncode == 0 and res.stdout == "side-log\n", res.stderr
    # several containers and no -c: the first one, with kubectl's note on stderr
    res = cli(world, "exec", "duo", "--", "true")
    assert res.returncode == 0 and 'Defaulted container "main" out of: main, side' in res.stderr
    res = cli(world, "logs", "duo")
    assert res.returncode == 0 and res.stdout == "main-log\n"
    assert 'Defaulted container "main" out of: main, side' in res.stderr
    res = cli(world, "exec", "deploy/nosuch", "--", "true")
    assert res.returncode != 0 and "not found" in res.stderr


def test_logs_of_pod_and_component(world: dict[str, Any]) -> None:
    res = cli(world, "logs", "shell")
    assert res.returncode == 0 and res.stdout == "hello-from-shell\n"
    res = cli(world, "logs", "kubelet", "--node", "node-1")
    assert res.returncode == 0 and "kubelet node-1 started" in res.stdout
    res = cli(world, "logs", "controller-manager", "--tail", "1")
    assert res.returncode == 0 and len(res.stdout.splitlines()) <= 1
    res = cli(world, "logs", "kubelet")
    assert res.returncode == 2 and "--node" in res.stderr
    res = cli(world, "logs", "broken")
    assert res.returncode == 1 and "has not started yet" in res.stderr


def _port_forward(world: dict[str, Any], target: str, remote: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([*AMBIENT, "port-forward", target, f"0:{remote}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=world["env"])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("Forwarding from 127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
    return proc, int(line.split("127.0.0.1:")[1].split()[0])


@pytest.mark.parametrize(("target", "remote"), [("svc/web", 80), ("pod/web", 8080)])
def test_port_forward_from_machine_loopback(world: dict[str, Any], target: str, remote: int) -> None:
    proc, port = _port_forward(world, target, remote)
    try:
        for _ in range(3):  # several connections through one listener
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
                body = resp.read().decode()
            # The server saw a connection from inside its own netns to localhost, where the container
            # runtime dials a kubelet's port-forward (containerd: tcp4 localhost:<port> in the sandbox netns).
            assert body == "web 127.0.0.1"
        listening = Path("/proc/net/tcp").read_text()
        assert f"0100007F:{port:04X}" in listening  # bound to 127.0.0.1 only
        assert f"00000000:{port:04X}" not in listening
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_port_forward_errors(world: dict[str, Any]) -> None:
    res = cli(world, "port-forward", "svc/web", "0:81")
    assert res.returncode == 1 and "has no port 81" in res.stderr
    res = cli(world, "port-forward", "pod/broken", "0:80")
    assert res.returncode == 1 and "is not running" in res.stderr
    res = cli(world, "port-forward", "deploy/x", "0:80")
    assert res.returncode == 1 and 'deployments "x" in namespace "default" not found' in res.stderr
    res = cli(world, "port-forward", "cm/x", "0:80")
    assert res.returncode == 2 and "deploy/NAME or svc/NAME" in res.stderr


def test_get_nodes(world: dict[str, Any]) -> None:
    res = cli(world, "get", "nodes")
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert lines[0].split()[0] == "NAME" and [line.split()[0] for line in lines[1:]] == ["node-1", "node-2"]
    assert all("Ready" in line for line in lines[1:])
