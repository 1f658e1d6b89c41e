"""`create` / `delete` / `list` of a whole local cluster, in real namespaces with real components."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import force_cleanup, leftovers

from ambient.cluster import layout as L
from ambient.cluster import lifecycle, network, processes
from ambient.cluster.cni import CniRuntime
from ambient.cluster.errors import ClusterExistsError, NotRootError
from ambient.protocol import dnswire as W

pytestmark = pytest.mark.root

DNS_PROBE = r"""
import socket, sys
from ambient.protocol import dnswire as W
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
for name in sys.argv[2:]:
    s.sendto(W.build_query(name), (sys.argv[1], 53))
    r = W.parse_response(s.recv(4096))
    print(name, r.rcode, ",".join(r.addresses))
"""


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    reg = tmp_path / "registry"
    monkeypatch.setenv("AMBIENT_REGISTRY_DIR", str(reg))
    return reg


def _cleanup(name: str, state: Path) -> None:
    lifecycle.delete_cluster(name, state)
    force_cleanup(name)


@pytest.fixture
def cluster_b(tmp_path: Path, registry: Path) -> Iterator[tuple[str, Path]]:
    name, state = "t3b", tmp_path / "state-b"
    _cleanup(name, state)
    try:
        yield name, state
    finally:
        _cleanup(name, state)


def dns_from(netns: str, server: str, *names: str) -> dict[str, tuple[int, str]]:
    out = subprocess.run(["nsenter", f"--net={L.netns_path(netns)}", "--", sys.executable, "-c", DNS_PROBE,
                          server, *names], capture_output=True, text=True, timeout=30, check=True).stdout
    result = {}
    for line in out.splitlines():
        name, rcode, addrs = [*line.split(" "), ""][:3]
        result[name] = (int(rcode), addrs)
    return result


def test_create_list_dns_delete_leaves_nothing(cluster_b: tuple[str, Path], registry: Path) -> None:
    name, state = cluster_b
    t = time.monotonic()
    result = lifecycle.create_cluster(name, 2, state)
    elapsed = time.monotonic() - t
    print(f"\ncreate 2-node cluster: {elapsed:.2f}s, timings {result.timings}, skipped {result.skipped}")
    layout = result.layout
    assert L.load_layout(state) == layout and L.load_layout(name) == layout  # registered
    assert {"dns"} <= set(result.components)
    assert set(processes.running_components(layout)) == set(result.components)
    assert sorted(network.cluster_netns(name)) == sorted([layout.underlay_netns, *(n.netns for n in layout.nodes)])
    info = lifecycle.find_cluster(name)
    assert (info.nodes, info.status, info.state_dir) == (2, "running", str(state))

    # A second cluster with the same name is refused with a clear message.
    with pytest.raises(ClusterExistsError, match="already exists") as exc:
        lifecycle.create_cluster(name, 2, state)
    assert exc.value.hint and "cluster delete" in exc.value.hint

    # The DNS server answers from a pod netns (made with the real CNI plugins) at 172.18.0.2.
    uid = str(uuid.uuid4())
    pod_ns = L.pod_netns_name(name, uid)
    subprocess.run(["ip", "netns", "add", pod_ns], check=True)
    # kube-system is excluded from the mesh, so the chained plugin does not look this bare pod up in the API.
    CniRuntime(layout, "node-2").add(uid, "dnsclient", "kube-system", L.netns_path(pod_ns))
    names = ["nope.default.svc.cluster.local", "example.com"]
    if "apiserver" in result.components:
        from ambient.api.client import ApiClient

        with ApiClient(layout.api_socket) as api:
            nodes, _ = api.list("Node")
            assert sorted(n["metadata"]["name"] for n in nodes) == ["node-1", "node-2"]
            api.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                       "spec": {"clusterIP": "10.96.0.77", "selector": {"app": "web"}, "ports": [{"port": 80}]}})
        names.append("web.default.svc.cluster.local")
    answers: dict[str, tuple[int, str]] = {}
    for _ in range(50):  # the DNS syncs from the API asynchronously
        answers = dns_from(pod_ns, L.DNS_SERVER_IP, *names)
        if answers.get("web.default.svc.cluster.local", (0, "10.96.0.77"))[1] == "10.96.0.77":
            break
        time.sleep(0.1)
    assert answers["nope.default.svc.cluster.local"][0] == W.RCODE_NXDOMAIN
    assert answers["example.com"][0] == W.RCODE_REFUSED
    if "apiserver" in result.components:
        assert answers["web.default.svc.cluster.local"] == (W.RCODE_NOERROR, "10.96.0.77")
    if "kubelet-node-2" in result.components:
        # Through the DNS VIP: the node's kube-proxy rules DNAT 10.96.0.10:53 to the server (installed
        # asynchronously by the kubelet, hence the retries).
        via_vip: dict[str, tuple[int, str]] = {}
        for _ in range(15):
            try:
                via_vip = dns_from(pod_ns, L.DNS_SERVICE_IP, "nope.default.svc.cluster.local")
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        assert via_vip["nope.default.svc.cluster.local"][0] == W.RCODE_NXDOMAIN

    # A process started inside the pod netns (like a container) must be found and killed by delete.
    sleeper = subprocess.Popen(["ip", "netns", "exec", pod_ns, "sleep", "300"])
    try:
        t = time.monotonic()
        assert lifecycle.delete_cluster(name, state, progress=lambda m: print(round(time.monotonic() - t, 2), m))
        print(f"delete: {time.monotonic() - t:.2f}s")
        assert sleeper.wait(timeout=10) != 0
    finally:
        sleeper.kill()
    assert leftovers(name, state) == []
    assert list(registry.iterdir()) == []  # registry entry and creation lock gone too
    assert name not in [c.name for c in lifecycle.list_clusters()]
    assert lifecycle.delete_cluster(name, state) is False  # idempotent, nothing left to do


def test_not_root_is_a_clear_error(tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NotRootError, match="needs root") as exc:
        lifecycle.check_root(lambda: 1000)
    assert exc.value.hint and "sudo" in exc.value.hint
    lifecycle.check_root(lambda: 0)
    monkeypatch.setattr(lifecycle.os, "geteuid", lambda: 1000)
    with pytest.raises(NotRootError):
        lifecycle.create_cluster("t3e", 2, tmp_path / "state-e")
    assert network.cluster_netns("t3e") == [] and not (tmp_path / "state-e").exists()


def test_delete_after_sigkill_mid_creation(tmp_path: Path, registry: Path) -> None:
    name, state = "t3d", tmp_path / "state-d"
    _cleanup(name, state)
    code = ("import sys; from ambient.cluster.lifecycle import create_cluster; "
            "create_cluster(sys.argv[1], 2, sys.argv[2])")
    creator = subprocess.Popen([sys.executable, "-c", code, name, str(state)], env=dict(os.environ))
    try:
        apiserver_pid = state / "pids" / "apiserver.pid"
        deadline = time.monotonic() + 60
        while not apiserver_pid.exists() and creator.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert apiserver_pid.exists(), "creation never reached the API server step"
        # kill -9 the creator mid-way, and the component it had started
        creator.send_signal(signal.SIGKILL)
        creator.wait()
        for comp, pid in processes.running_components(L.load_layout(state)).items():
            os.kill(pid, signal.SIGKILL)
            print(f"killed {comp} ({pid})")
        assert network.cluster_netns(name), "the network should be (partly) built at this point"
        assert lifecycle.delete_cluster(name, state) is True
        assert leftovers(name, state) == []
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()
        _cleanup(name, state)


def test_delete_of_a_network_only_half_built(tmp_path: Path, registry: Path) -> None:
    """A crash right after the first namespaces existed: delete must still find and remove everything."""
    name, state = "t3f", tmp_path / "state-f"
    _cleanup(name, state)
    try:
        subprocess.run(["ip", "netns", "add", f"amb-{name}-underlay"], check=True)
        subprocess.run(["ip", "netns", "add", f"amb-{name}-node-1"], check=True)
        (L.ETC_NETNS_DIR / f"amb-{name}-pod-abc").mkdir(parents=True, exist_ok=True)
        # no cluster.json, no registry entry: only the namespace names tell us
        assert name in [c.name for c in lifecycle.list_clusters()]
        assert lifecycle.delete_cluster(name, state) is True
        assert leftovers(name, state) == []
    finally:
        _cleanup(name, state)
