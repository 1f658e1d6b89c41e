"""The waypoint on every core, in a real local cluster ("wpw1") started with AMBIENT_WAYPOINT_WORKERS=2: the
controller-manager passes the setting to the waypoint pod, whose primary process starts a worker; both bind
15008 in the pod's netns with SO_REUSEPORT, so the kernel spreads the HBONE connections over them.

A client node proxy pools one HBONE connection per client pod (its pool key holds the pod's identity and
IP), so the requests come from several client pods: each pod's connection lands on one process or the
other. Pods are added until both processes served some (each new pod: one chance in two to reach the one
still idle). Checked in each process's own metrics (read through its private admin socket) and on the
pod's 15020, the one Prometheus scrapes: every request answered through the waypoint (the server sees
the waypoint's address), both processes served some, and 15020 adds them up to exactly the requests sent.
A worker killed with SIGKILL is restarted by the primary and serves again; 15020 keeps what it had counted.
Deleting the pod (the kubelet SIGTERMs the container's process group) drains both processes once each: the
primary stops its worker, waits for it, and removes its private socket directory.

Traffic goes only to addresses inside the cluster's own network namespaces. The cluster is always deleted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import (
    FETCH_MANY,
    in_pod,
    is_ready,
    local_cluster,
    pod_manifest,
    run_ambient,
    wait_ready,
    whoami_pod,
)
from prometheus_client.parser import text_string_to_metric_families

from ambient.api.client import ApiClient
from ambient.bench.nsenv import process_environ
from ambient.cluster import layout as L
from helpers import wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(420)]

CLUSTER = "wpw1"
NS = "wpw"
PER_CLIENT = 10
FIRST_CLIENTS = 4
MORE_CLIENTS = 10  # bound on the pods added while one process has served nothing (2**-10 it still has none)
GW_LABEL = "gateway.networking.k8s.io/gateway-name"

METRICS = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15020/metrics').read().decode())"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _requests(text: str) -> float:
    """istio_requests_total to Service `web`, any response code."""
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "istio_requests_total" and s.labels.get("destination_service_name") == "web")


@dataclass
class Mesh:
    layout: L.ClusterLayout
    api: ApiClient
    state: Path
    url: str
    clients: list[dict[str, Any]] = field(default_factory=list)

    def waypoint_pod(self) -> dict[str, Any]:
        pods = [p for p in self.api.list("Pod", NS, label_selector=f"{GW_LABEL}=waypoint")[0] if is_ready(p)]
        assert len(pods) == 1, pods
        return pods[0]

    def processes(self) -> tuple[int, dict[int, tuple[int, str]]]:
        """The waypoint pod's primary pid and {worker index: (pid, admin socket)}."""
        netns = L.pod_netns_name(CLUSTER, self.waypoint_pod()["metadata"]["uid"])
        out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=10, check=True)
        primary, workers = 0, {}
        for pid in map(int, out.stdout.split()):
            if "ambient.waypoint" not in _cmdline(pid):
                continue
            env = process_environ(pid)
            if "AMBIENT_WORKER_INDEX" in env:
                workers[int(env["AMBIENT_WORKER_INDEX"])] = (pid, env["AMBIENT_WAYPOINT_WORKER_ADMIN"])
            else:
                primary = pid
        return primary, workers

    def admin(self, sock: str, target: str) -> str:
        out = subprocess.run(["curl", "-s", "-m", "5", "--unix-socket", sock, f"http://waypoint{target}"],
                             capture_output=True, text=True, timeout=10, check=False)
        return out.stdout if out.returncode == 0 else ""

    def worker_listening(self, index: int = 1) -> tuple[int, str] | None:
        """(pid, admin socket) of worker `index` once it has bound 15008."""
        found = self.processes()[1].get(index)
        if found is None:
            return None
        dump = json.loads(self.admin(found[1], "/config_dump") or "{}")
        return found if dump.get("process", {}).get("listen") else None

    def own(self) -> dict[int, float]:
        """Each process's own request count, from its private admin socket (0: the primary's)."""
        worker = self.worker_listening()
        assert worker is not None
        sockets = {0: str(Path(worker[1]).parent / "0.sock"), 1: worker[1]}
        texts = {i: self.admin(s, "/metrics") for i, s in sockets.items()}
        assert all(texts.values()), texts
        return {i: _requests(t) for i, t in texts.items()}

    def merged(self) -> float:
        netns = L.pod_netns_name(CLUSTER, self.waypoint_pod()["metadata"]["uid"])
        out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", METRICS], capture_output=True,
                             text=True, timeout=20, check=True)
        return _requests(out.stdout)

    def add_client(self) -> dict[str, Any]:
        name = f"client-{len(self.clients)}"
        self.api.create(pod_manifest(name, [sys.executable, "-c", "import time; time.sleep(1e6)"], ns=NS,
                                     labels={"app": "client"}))
        pod = wait_ready(self.api, name, NS, 60)
        self.clients.append(pod)
        return pod

    def fetch(self, client: dict[str, Any], n: int = PER_CLIENT) -> list[str]:
        out = in_pod(self.layout, client, [sys.executable, "-c", FETCH_MANY, self.url, str(n)], timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return list(json.loads(out.stdout))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMBIENT_WAYPOINT_WORKERS", "2")  # before the cluster: its components inherit it
        tmp = tmp_path_factory.mktemp(CLUSTER)
        with local_cluster(CLUSTER, tmp, 2, require=("apiserver", "controller-manager", "controlplane")) as (
                layout, api, state):
            api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": NS, "labels": {"istio.io/dataplane-mode": "ambient"}}})
            run = run_ambient(CLUSTER, state, "waypoint", "apply", "-n", NS, "--enroll-namespace", "--wait",
                              "--timeout", "90", timeout=120)
            assert run.returncode == 0, run.stderr
            server = whoami_pod("server", labels={"app": "server"})
            server["metadata"]["namespace"] = NS
            api.create(server)
            api.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
                        "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]}})
            wait_ready(api, "server", NS, 60)
            vip = wait_for(lambda: api.get("Service", "web", NS)["spec"].get("clusterIP"), timeout=30, what="VIP")
            yield Mesh(layout, api, state, f"http://{vip}/")


def _through_waypoint(mesh: Mesh) -> str:
    return f"server {mesh.waypoint_pod()['status']['podIP']}"  # what the server sees: the waypoint's hop


def test_the_setting_reaches_the_waypoint_pod(mesh: Mesh) -> None:
    env = mesh.waypoint_pod()["spec"]["containers"][0]["env"]
    assert {"name": "AMBIENT_WAYPOINT_WORKERS", "value": "2"} in env
    primary, workers = mesh.processes()
    assert primary and set(workers) == {1}, (primary, workers)
    wait_for(mesh.worker_listening, timeout=60, what="the waypoint worker listening on 15008")


def test_requests_spread_over_both_processes_and_15020_adds_them_up(mesh: Mesh) -> None:
    wait_for(mesh.worker_listening, timeout=60, what="the waypoint worker listening on 15008")
    first = mesh.add_client()
    expected = _through_waypoint(mesh)
    wait_for(lambda: mesh.fetch(first, 1) == [expected], timeout=60, what="a request through the waypoint")
    own0, merged0 = mesh.own(), mesh.merged()
    assert merged0 == sum(own0.values())
    sent = 0
    for i in range(FIRST_CLIENTS + MORE_CLIENTS):
        client = mesh.clients[i] if i < len(mesh.clients) else mesh.add_client()
        bodies = mesh.fetch(client)
        assert bodies == [expected] * PER_CLIENT, bodies
        sent += PER_CLIENT
        own = mesh.own()
        if i + 1 >= FIRST_CLIENTS and all(own[p] > own0[p] for p in own):
            break
    # a request is counted as its exchange ends, which may trail the client's read by a moment
    own = wait_for(lambda: (o := mesh.own()) and sum(o[p] - own0[p] for p in o) >= sent and o, timeout=15,
                   what=f"{sent} requests counted by the two processes")
    served = {p: own[p] - own0[p] for p in own}
    assert all(n > 0 for n in served.values()), served
    assert sum(served.values()) == sent, (served, sent)
    assert mesh.merged() - merged0 == sent  # what Prometheus scrapes: one waypoint, every request once


def test_a_killed_worker_is_restarted_and_serves_again(mesh: Mesh) -> None:
    old = wait_for(mesh.worker_listening, timeout=60, what="the waypoint worker listening")
    before = mesh.merged()  # (this read is also the primary's last look at the worker's counters)
    os.kill(old[0], signal.SIGKILL)
    new = wait_for(lambda: (w := mesh.worker_listening()) and w[0] != old[0] and w, timeout=60,
                   what="the worker restarted by the primary and listening again")
    assert mesh.merged() == before  # what the killed worker served stays counted: no reset for Prometheus
    expected = _through_waypoint(mesh)
    clients = list(mesh.clients)
    for i in range(len(clients) + MORE_CLIENTS):
        # a client whose pooled connection was on the killed worker dials again; new pods dial afresh
        client = clients[i] if i < len(clients) else mesh.add_client()
        bodies = wait_for(lambda c=client: (b := mesh.fetch(c, 5)) and b == [expected] * 5 and b, timeout=30,
                          what="requests answered after the worker's restart")
        assert len(bodies) == 5
        if mesh.own()[1] > 0:  # a fresh process: anything it counted, it served after the restart
            break
    assert mesh.own()[1] > 0
    primary, workers = mesh.processes()
    assert workers[1][0] == new[0] and primary


def test_deleting_the_pod_drains_both_processes(mesh: Mesh) -> None:
    pod = mesh.waypoint_pod()
    _pid, admin = wait_for(mesh.worker_listening, timeout=60, what="the waypoint worker listening")
    folder = Path(admin).parent
    log = mesh.state / "logs" / "pods" / f"{NS}_{pod['metadata']['name']}_istio-proxy.log"
    mesh.api.delete("Pod", pod["metadata"]["name"], NS)
    try:
        text = wait_for(lambda: (t := log.read_text(errors="replace")) and t.count("waypoint: draining") >= 2
                        and not folder.exists() and t, timeout=60,
                        what="both processes drained and the private directory removed")
    except AssertionError as exc:  # say which half is missing, with the processes' own account
        raise AssertionError(f"{exc}; directory still there: {folder.exists()}; the pod's log ends with:\n"
                             f"{log.read_text(errors='replace')[-3000:]}") from None
    assert text.count("waypoint: draining") == 2, text[-3000:]  # once each: one SIGTERM per process
    assert "did not stop within" not in text and "exited (" not in text.split("waypoint: draining", 1)[1]
