"""Cluster fixtures for the netns tests: a real local cluster (any name; "t8" for `two_node_cluster`), the
`ambient` CLI against it, and small pod utilities.

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
            # Keep the component and pod logs for post-mortems (pytest keeps the last few tmp dirs).
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


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


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
