"""Cluster fixtures for the netns tests: a real local cluster (any name; "t8" for `two_node_cluster`), the
`ambient` CLI against it (`ClusterEnv`: what a module's tests hold of their cluster), the workloads several
modules set up alike (a sleeping client pod, a `web` Deployment and Service, a client and web behind an ALLOW
policy), and small pod utilities.

The cluster is built with `ambient.cluster.lifecycle` (network, apiserver, dns, controller-manager, kubelets,
control plane) in a temporary state dir with a private registry, and always deleted (plus a forced netns sweep);
the component and pod logs are copied to the tmp dir first for post-mortems.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ambient.api.client import ApiClient
from ambient.cluster import layout as L
from ambient.cluster import lifecycle, network, processes
from helpers import wait_for

CLUSTER = "t8"

# An HTTP server that answers "<pod name> <client ip>" (what the server saw) on the port in argv[1].
WHOAMI = r"""
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (os.environ.get("HOSTNAME", "?") + " " + self.client_address[0]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""

# In a pod: argv[2] GETs of argv[1], each on a new connection; prints one JSON list of the bodies (or errors).
FETCH_MANY = r"""
import json, sys, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
out = []
for _ in range(n):
    try:
        out.append(urllib.request.urlopen(url, timeout=10).read().decode())
    except Exception as exc:
        out.append(f"error: {exc}")
print(json.dumps(out))
"""

# An HTTP server answering "hi" on 8080.
SERVE_HI = r"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"hi")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


def force_cleanup(cluster: str = CLUSTER) -> None:
    processes.kill_netns_processes(network.cluster_netns(cluster))
    network.destroy_network(cluster)


@contextlib.contextmanager
def local_cluster(name: str, tmp: Path, nodes: int = 2,
                  require: tuple[str, ...] = ()) -> Iterator[tuple[L.ClusterLayout, ApiClient, Path]]:
    """A fresh cluster `name` (a leftover of a crashed run is removed first): (layout, api client, state dir).
    `require`: components that must have started (a missing module would otherwise be skipped silently)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMBIENT_REGISTRY_DIR", str(tmp / "registry"))
        state = tmp / "state"
        lifecycle.delete_cluster(name, state)
        force_cleanup(name)
        try:
            result = lifecycle.create_cluster(name, nodes, state)
            missing = [c for c in require if c in result.skipped]
            assert not missing, f"cluster components missing: {missing}"
            with ApiClient(result.layout.api_socket) as api:
                yield result.layout, api, state
        finally:
            # Keep the component and pod logs for post-mortems (pytest keeps the last few tmp dirs); a cluster
            # that failed before writing any must still be deleted.
            if (state / "logs").exists():
                shutil.copytree(state / "logs", tmp / "logs", dirs_exist_ok=True, ignore_dangling_symlinks=True)
            lifecycle.delete_cluster(name, state)
            force_cleanup(name)


@contextlib.contextmanager
def two_node_cluster(tmp: Path) -> Iterator[tuple[L.ClusterLayout, ApiClient]]:
    with local_cluster(CLUSTER, tmp, 2, require=("apiserver", "controller-manager")) as (layout, api, _):
        yield layout, api


def run_ambient(cluster: str, state: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`ambient -c CLUSTER --state-dir STATE ARGS...` as a user runs it (output captured, never raises)."""
    return subprocess.run([sys.executable, "-m", "ambient", "-c", cluster, "--state-dir", str(state), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


@dataclass
class ClusterEnv:
    """A module's cluster as its tests use it: the layout, an API client, the state dir and the CLI against it.
    Modules subclass it for their own helpers (and extra fields, with defaults)."""

    layout: L.ClusterLayout
    api: ApiClient
    state: Path

    def ambient(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return run_ambient(self.layout.name, self.state, *args, timeout=timeout)


def pod_manifest(name: str, command: list[str], *, node: str | None = None, ns: str = "default",
                 labels: dict[str, str] | None = None, ports: list[dict[str, Any]] | None = None,
                 restart: str | None = None, containers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": containers or [{"name": "app", "command": command,
                                                          "ports": ports or []}]}
    if node:
        spec["nodeName"] = node
    if restart:
        spec["restartPolicy"] = restart
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns,
                                                             "labels": labels or {}}, "spec": spec}


def whoami_pod(name: str, node: str | None = None, labels: dict[str, str] | None = None,
               port: int = 8080) -> dict[str, Any]:
    return pod_manifest(name, ["python3", "-c", WHOAMI, str(port)], node=node, labels=labels,
                        ports=[{"name": "http", "containerPort": port}])


def sleeper_pod(name: str, ns: str, node: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A Pod `ns/name` on `node` that only sleeps: a client whose netns the tests run their commands in."""
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if labels is not None:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "containers": [
                {"name": "app", "command": [sys.executable, "-c", "import time; time.sleep(1e6)"]}]}}


def create_web_deployment(api: ApiClient, ns: str, node: str, program: str) -> None:
    """The Deployment `ns/web` (one replica on `node`, label app=web, the Python `program` serving port 8080
    named http) and its Service `web` (port 80 named http -> 8080)."""
    api.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}},
                                      "spec": {"nodeName": node, "containers": [
                                          {"name": "app", "command": [sys.executable, "-c", program],
                                           "ports": [{"name": "http", "containerPort": 8080}]}]}}}})
    api.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
                "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})


def create_client_and_web(api: ApiClient, layout: L.ClusterLayout, ns: str) -> dict[str, Any]:
    """An enrolled namespace `ns` with a pod `client` on the first node, a pod `web` answering "hi" on 8080 on
    the last node behind the Service `web` (port 80), and an ALLOW policy at web for `ns`'s own workloads.
    Returns the client pod once both pods are Ready."""
    api.create({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"istio.io/dataplane-mode": "ambient"}}})
    nodes = [n.name for n in layout.nodes]
    api.create(sleeper_pod("client", ns, nodes[0]))
    api.create({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web", "namespace": ns, "labels": {"app": "web"}},
                "spec": {"nodeName": nodes[-1], "containers": [
                    {"name": "app", "command": [sys.executable, "-c", SERVE_HI],
                     "ports": [{"containerPort": 8080}]}]}})
    api.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    api.create({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "web-allow", "namespace": ns},
                "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW",
                         "rules": [{"from": [{"source": {"namespaces": [ns]}}]}]}})

    def ready_client() -> dict[str, Any] | None:
        pod = api.get("Pod", "client", ns)
        return pod if is_ready(pod) else None

    client = wait_for(ready_client, 60, "client")
    wait_for(lambda: is_ready(api.get("Pod", "web", ns)), 60, "web Ready")
    return client


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def ready_pod(api: ApiClient, ns: str, selector: str) -> dict[str, Any] | None:
    """The first pod of `ns` matching the label `selector` when it is Ready (else None: for `wait_for`)."""
    pods = api.list("Pod", ns, label_selector=selector)[0]
    return pods[0] if pods and is_ready(pods[0]) else None


def wait_ready(api: ApiClient, name: str, ns: str = "default", timeout: float = 30) -> dict[str, Any]:
    return wait_for(lambda: (p := api.get("Pod", name, ns)) and is_ready(p) and p, timeout,
                    f"pod {ns}/{name} Ready")


def pod_netns(layout: L.ClusterLayout, pod: dict[str, Any]) -> str:
    return L.pod_netns_name(layout.name, pod["metadata"]["uid"])


def in_pod(layout: L.ClusterLayout, pod: dict[str, Any], argv: list[str], timeout: float = 30,
           check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run argv in the pod's netns with its resolv.conf (what `ambient exec` does)."""
    return subprocess.run(["ip", "netns", "exec", pod_netns(layout, pod), *argv], capture_output=True, text=True,
                          timeout=timeout, check=check)


def curl(layout: L.ClusterLayout, pod: dict[str, Any], url: str, max_time: float = 5) -> str:
    out = in_pod(layout, pod, ["curl", "-s", "-m", str(max_time), url])
    return out.stdout if out.returncode == 0 else f"curl exit {out.returncode}"


def pod_netns_list(cluster: str = CLUSTER) -> set[str]:
    return {n for n in network.cluster_netns(cluster) if "-pod-" in n}


def long_tests() -> bool:
    return os.environ.get("AMBIENT_LONG_TESTS") == "1"
