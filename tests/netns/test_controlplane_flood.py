"""A pod floods the control plane's gRPC port (172.18.0.3:15012) with silent connections in a real local
cluster ("cpl1", one node): the control plane admits only its per-source cap from the pod's IP, resets
the rest at once, closes the admitted ones after the handshake timeout, counts the refusals in
/proxy-status, and a CA request from the node (the node proxy's address and token) succeeds meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import pod_manifest, pod_netns, wait_ready

from ambient.api.client import ApiClient
from ambient.cluster import layout as L
from ambient.cluster import lifecycle, network, processes
from ambient.controlplane import proxy_status
from ambient.controlplane.admission import ServingLimits
from helpers import wait_for

pytestmark = pytest.mark.root

CLUSTER = "cpl1"
FLOOD = 2_000

# Opens argv[3] silent connections to argv[1]:argv[2], prints {"opened": n} once all are open, then
# {"closed_within": [seconds since open, ...]} when the server closed every one (or argv[4] s passed).
FLOODER = r"""
import json, resource, selectors, socket, sys, time
host, port, n, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 256, max(n + 256, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
sel = selectors.DefaultSelector()
opened = {}
for _ in range(n):
    s = socket.socket()
    s.connect((host, port))
    opened[s] = time.monotonic()
    sel.register(s, selectors.EVENT_READ)
print(json.dumps({"opened": len(opened)}), flush=True)
closed = []
deadline = time.monotonic() + limit
while opened and time.monotonic() < deadline:
    for key, _ in sel.select(timeout=0.5):
        s = key.fileobj
        try:
            data = s.recv(1)
        except ConnectionResetError:
            data = b""
        if data:
            raise SystemExit(f"server sent {data!r}")
        closed.append(time.monotonic() - opened.pop(s))
        sel.unregister(s)
        s.close()
print(json.dumps({"closed_within": sorted(closed), "still_open": len(opened)}), flush=True)
"""

# A CA request as the node proxy: its token file, the cluster root, from the node's network namespace.
CA_REQUEST = r"""
import asyncio, sys
from pathlib import Path
from ambient.identity.ca_client import CaClient
async def main():
    async with CaClient(sys.argv[1], token=Path(sys.argv[2]).read_text(), root_cert=Path(sys.argv[3]).read_bytes(),
                        timeout=20) as c:
        b = await c.fetch("spiffe://cluster.local/ns/istio-system/sa/ztunnel", impersonate=False)
    print(b.identity.uri)
asyncio.run(main())
"""


def _force_cleanup() -> None:
    processes.kill_netns_processes(network.cluster_netns(CLUSTER))
    network.destroy_network(CLUSTER)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[L.ClusterLayout, ApiClient, Path]]:
    tmp = tmp_path_factory.mktemp("cpl1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMBIENT_REGISTRY_DIR", str(tmp / "registry"))
        state = tmp / "state"
        _force_cleanup()
        try:
            result = lifecycle.create_cluster(CLUSTER, 1, state)
            assert "controlplane" in result.components, result.components
            with ApiClient(result.layout.api_socket) as api:
                yield result.layout, api, state
        finally:
            with contextlib.suppress(Exception):  # keep the logs for post-mortems
                shutil.copytree(state / "logs", tmp / "logs", dirs_exist_ok=True, ignore_dangling_symlinks=True)
            with contextlib.suppress(Exception):
                lifecycle.delete_cluster(CLUSTER, state)
            _force_cleanup()


def test_a_flooding_pod_is_capped_and_the_ca_keeps_serving_the_node(
    cluster: tuple[L.ClusterLayout, ApiClient, Path],
) -> None:
    layout, api, state = cluster
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flood"}})
    api.create(pod_manifest("attacker", ["sleep", "infinity"], node="node-1", ns="flood"))
    pod = wait_ready(api, "attacker", "flood", timeout=60)
    pod_ip = pod["status"]["podIP"]
    limits = ServingLimits()  # the cluster runs with the defaults
    # The node proxy's xDS stream came through the front; proxy-status shows its real address.
    node_ip = layout.node("node-1").ip
    wait_for(lambda: [p for p in proxy_status.fetch(state)["proxies"] if p["peer"].startswith(f"{node_ip}:")],
             30, "the node proxy's xDS stream, with its own address as peer")
    before: dict[str, Any] = proxy_status.fetch(state)["connections"]

    flooder = subprocess.Popen(
        ["nsenter", f"--net={L.netns_path(pod_netns(layout, pod))}", "--", sys.executable, "-c", FLOODER,
         L.CONTROLPLANE_IP, str(L.CONTROLPLANE_PORT), str(FLOOD), "40"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert flooder.stdout is not None
        first = flooder.stdout.readline()
        assert json.loads(first or "{}").get("opened") == FLOOD, first + (flooder.stderr.read() if flooder.stderr
                                                                         else "")
        # While the pod holds its share: the refusals are counted, by reason, and the node gets a certificate.
        refused = FLOOD - limits.max_connections_per_source
        stats = wait_for(lambda: (s := proxy_status.fetch(state)["connections"])["refused"].get(
            "max_connections_per_source", 0) - before["refused"].get("max_connections_per_source", 0)
            >= refused and s, 20, "refusals counted")
        assert stats["open"] >= limits.max_connections_per_source, stats
        node = layout.node("node-1")
        ca = subprocess.run(
            ["nsenter", f"--net={L.netns_path(node.netns)}", "--", sys.executable, "-c", CA_REQUEST,
             f"{L.CONTROLPLANE_IP}:{L.CONTROLPLANE_PORT}", str(state / "nodes" / "node-1" / "run" / "token"),
             str(state / "ca" / "root-cert.pem")],
            capture_output=True, text=True, timeout=60,
        )
        assert ca.stdout.strip() == "spiffe://cluster.local/ns/istio-system/sa/ztunnel", ca.stderr
        out, err = flooder.communicate(timeout=90)
        assert flooder.returncode == 0, err
    finally:
        if flooder.poll() is None:
            flooder.kill()
            flooder.wait()
    report = json.loads(out.strip().splitlines()[-1])
    closes = report["closed_within"]
    assert report["still_open"] == 0 and len(closes) == FLOOD, report["still_open"]
    admitted = closes[refused:]
    assert closes[refused - 1] < 5.0, "the excess must be refused at once, not timed out"
    assert all(5.0 <= t <= 20.0 for t in admitted), admitted[:3] + admitted[-3:]
    log = state / "logs" / "controlplane.log"
    line = wait_for(lambda: next((ln for ln in log.read_text(errors="replace").splitlines()
                                  if "connections to the gRPC port" in ln and pod_ip in ln), None),
                    15, "the refusal log line naming the source")
    assert "max_connections_per_source=" in line
    print(f"\nflood from {pod_ip}: {refused} refused within {closes[refused - 1]:.2f}s, "
          f"{len(admitted)} closed after {admitted[0]:.1f}..{admitted[-1]:.1f}s; CA ok during the flood")
