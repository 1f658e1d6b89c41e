"""The node proxy on every core, in a real local cluster ("zw1") whose node proxies run 2 processes each
(AMBIENT_ZTUNNEL_WORKERS=2): the primary takes pods from the node agent over ZDS and relays them to its
worker; both open SO_REUSEPORT listeners in each pod, so the kernel spreads a pod's connections over them.

Checked on the wire and in each process's own metrics: every request is answered with the client's IP
preserved, both processes of the client's node carry some of them, and each node's `/metrics` (15020) adds
them up to exactly what was sent. A worker killed with SIGKILL is restarted and gets the live pods from the
primary (its own config dump lists them) while the node's counters keep what it counted; a deleted pod leaves
the worker too; a primary killed with SIGKILL takes its workers with it (PR_SET_PDEATHSIG), and the restarted
node proxy serves again.

Traffic goes only to addresses inside the cluster's own network namespaces. The cluster is always deleted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import FETCH_MANY, in_pod, local_cluster, pod_manifest, wait_ready, whoami_pod
from prometheus_client.parser import text_string_to_metric_families

from ambient.api.client import ApiClient
from ambient.bench.nsenv import process_gone
from ambient.cluster import layout as L
from helpers import wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

CLUSTER = "zw1"
NS = "zw"
REQUESTS = 40


@dataclass
class Mesh:
    layout: L.ClusterLayout
    api: ApiClient
    client: dict[str, Any]
    server: dict[str, Any]

    def run_dir(self, node: int) -> Path:
        return Path(self.layout.nodes[node - 1].run_dir)

    def admin(self, sock: Path | str, target: str) -> str:
        out = subprocess.run(["curl", "-s", "-m", "5", "--unix-socket", str(sock), f"http://proxy{target}"],
                             capture_output=True, text=True, timeout=10, check=False)
        return out.stdout if out.returncode == 0 else ""

    def dump(self, node: int) -> dict[str, Any]:
        text = self.admin(self.run_dir(node) / "ztunnel-admin.sock", "/config_dump")
        return json.loads(text) if text else {}

    def worker_socket(self, node: int, dump: dict[str, Any]) -> Path:
        primary = dump["workers"]["pids"]["0"]
        return self.run_dir(node) / f"zw{primary}-1.adm"

    def node_metrics(self, node: int) -> str:
        code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15020/metrics').read().decode())"
        out = subprocess.run(["ip", "netns", "exec", L.node_netns_name(CLUSTER, node), sys.executable, "-c", code],
                             capture_output=True, text=True, timeout=20, check=True)
        return out.stdout

    def fetch(self, n: int = REQUESTS) -> list[str]:
        url = f"http://{self.server['status']['podIP']}:8080/"
        out = in_pod(self.layout, self.client, [sys.executable, "-c", FETCH_MANY, url, str(n)], timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return list(json.loads(out.stdout))


def _opened(text: str, reporter: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "istio_tcp_connections_opened_total" and s.labels.get("reporter") == reporter
               and s.labels.get("source_workload") == "client")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMBIENT_ZTUNNEL_WORKERS", "2")
        with local_cluster(CLUSTER, tmp_path_factory.mktemp(CLUSTER), 2,
                           require=("apiserver", "controller-manager", "controlplane")) as (layout, api, _state):
            api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": NS, "labels": {"istio.io/dataplane-mode": "ambient"}}})
            nodes = [n.name for n in layout.nodes]
            server = whoami_pod("server", node=nodes[1], labels={"app": "server"})
            server["metadata"]["namespace"] = NS
            api.create(server)
            api.create(pod_manifest("client", [sys.executable, "-c", "import time; time.sleep(1e6)"],
                                    node=nodes[0], ns=NS, labels={"app": "client"}))
            yield Mesh(layout, api, wait_ready(api, "client", NS, 60), wait_ready(api, "server", NS, 60))


def test_both_processes_serve_and_the_node_metrics_add_up(mesh: Mesh) -> None:
    client_ip = mesh.client["status"]["podIP"]
    bodies = wait_for(lambda: (b := mesh.fetch()) and all(x == f"server {client_ip}" for x in b) and b,
                      timeout=60, what=f"{REQUESTS} answers with the client IP preserved")
    assert len(bodies) == REQUESTS
    # The client's node: its redirected connections are spread by the kernel over both processes' 15001
    # listeners (40 on one alone: 2**-39). The server's node sees them inside the HBONE connections each
    # source process pooled, so only their sum is fixed there.
    dump = mesh.dump(1)
    assert dump["workers"]["count"] == 2, dump.get("workers")
    worker = _opened(mesh.admin(mesh.worker_socket(1, dump), "/metrics"), "source")
    for node, reporter in ((1, "source"), (2, "destination")):
        total = wait_for(lambda n=node, r=reporter: (t := _opened(mesh.node_metrics(n), r)) >= REQUESTS and t,
                         timeout=15, what=f"node {node}'s merged connection count")
        assert total == REQUESTS, (reporter, total)  # each connection counted once, by the process serving it
    assert 0 < worker < REQUESTS, worker


def test_a_killed_worker_comes_back_with_the_live_pods_and_counts_never_drop(mesh: Mesh) -> None:
    # the client's node: its worker carried some of the connections above (first test)
    before = _opened(mesh.node_metrics(1), "source")
    dump = mesh.dump(1)
    old = dump["workers"]["pids"]["1"]
    os.kill(old, signal.SIGKILL)
    fresh = wait_for(lambda: (d := mesh.dump(1)) and d["workers"]["pids"].get("1") not in (None, old) and d,
                     timeout=30, what="the worker restarted")
    assert fresh["workers"]["restarts"]["1"] >= 1
    uid = mesh.client["metadata"]["uid"]
    # its reconnection snapshot from the primary carries the client pod
    wait_for(lambda: uid in json.loads(mesh.admin(mesh.worker_socket(1, fresh), "/config_dump") or "{}")
             .get("workloadState", {}), timeout=30, what="the restarted worker serves the pod")
    # the departed process's counts stay in the node's sum (Prometheus never sees a counter reset)
    assert _opened(mesh.node_metrics(1), "source") == before
    client_ip = mesh.client["status"]["podIP"]
    assert mesh.fetch() == [f"server {client_ip}"] * REQUESTS
    after = wait_for(lambda: (t := _opened(mesh.node_metrics(1), "source")) >= before + REQUESTS and t,
                     timeout=15, what="the new connections counted")
    assert after == before + REQUESTS


def test_a_deleted_pod_leaves_every_process(mesh: Mesh) -> None:
    api = mesh.api
    api.create(pod_manifest("brief", [sys.executable, "-c", "import time; time.sleep(1e6)"],
                            node=mesh.layout.nodes[0].name, ns=NS))
    uid = wait_ready(api, "brief", NS, 60)["metadata"]["uid"]
    dump = mesh.dump(1)
    worker = mesh.worker_socket(1, dump)

    def served() -> dict[str, Any]:
        return dict(json.loads(mesh.admin(worker, "/config_dump") or "{}").get("workloadState", {}))

    wait_for(lambda: uid in served(), timeout=30, what="the worker serves the new pod")
    api.delete("Pod", "brief", NS)
    wait_for(lambda: (s := served()) and uid not in s, timeout=60, what="the worker dropped the deleted pod")


def test_workers_die_with_a_killed_primary_and_the_node_proxy_recovers(mesh: Mesh) -> None:
    dump = mesh.dump(2)
    primary, worker = dump["workers"]["pids"]["0"], dump["workers"]["pids"]["1"]
    os.kill(primary, signal.SIGKILL)
    wait_for(lambda: process_gone(worker), timeout=30, what="the worker exited with its primary")
    wait_for(lambda: (d := mesh.dump(2)) and d.get("workers", {}).get("pids", {}).get("0") not in (None, primary),
             timeout=60, what="the node proxy restarted")
    client_ip = mesh.client["status"]["podIP"]
    wait_for(lambda: mesh.fetch(5) == [f"server {client_ip}"] * 5, timeout=60, what="traffic served again")

