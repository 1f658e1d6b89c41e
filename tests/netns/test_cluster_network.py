"""The cluster network in real namespaces: 2 nodes, pods via the real CNI plugins, pod-to-pod, hermeticity."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import force_cleanup, link_stats, probe, root_links_into, tcp_echo

from ambient.cluster import layout as L
from ambient.cluster import network
from ambient.cluster.cni import CniRuntime, prepare_node
from ambient.cluster.errors import CniError, NetworkSetupError

pytestmark = pytest.mark.root
CLUSTER = "t3a"
OUTSIDE = ["192.0.2.1", "198.51.100.1"]  # TEST-NET-1/2: documentation addresses, never routed


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[L.ClusterLayout]:
    force_cleanup(CLUSTER)  # a previous crashed run must not make this one fail
    layout = L.build_layout(CLUSTER, 2, tmp_path / "state")
    try:
        network.build_network(layout)
        for node in layout.nodes:
            prepare_node(node)
        yield layout
    finally:
        force_cleanup(CLUSTER)
    assert network.cluster_netns(CLUSTER) == []


class Pod:
    def __init__(self, layout: L.ClusterLayout, node: str, name: str) -> None:
        self.uid = str(uuid.uuid4())
        self.name = name
        self.netns = L.pod_netns_name(layout.name, self.uid)
        self.cni = CniRuntime(layout, node)
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self.ip = self.cni.add(self.uid, name, "default", L.netns_path(self.netns)).ip

    def delete(self) -> None:
        self.cni.delete(self.uid, self.name, "default", L.netns_path(self.netns))
        network.delete_netns(self.netns)


def test_pod_to_pod_across_nodes_sees_real_client_ip(cluster: L.ClusterLayout) -> None:
    a = Pod(cluster, "node-1", "client")
    b = Pod(cluster, "node-2", "server")
    assert a.ip.startswith("10.244.1.") and b.ip.startswith("10.244.2.")
    out = tcp_echo(b.netns, b.ip, a.netns, "hello across nodes")
    peer, data = out.split("|", 1)
    assert data == "hello across nodes\n"
    assert peer == a.ip  # no masquerading anywhere on the path
    # and the other way round, node-2 -> node-1
    out = tcp_echo(a.netns, a.ip, b.netns, "and back")
    assert out == f"{b.ip}|and back\n"


def test_pod_lo_is_up_and_gateway_is_node_bridge(cluster: L.ClusterLayout) -> None:
    a = Pod(cluster, "node-1", "lo-check")
    out = subprocess.run(["ip", "-n", a.netns, "-j", "addr", "show", "lo"], capture_output=True, text=True,
                         check=True).stdout
    assert "127.0.0.1" in out and "LOWER_UP" in out
    routes = subprocess.run(["ip", "-n", a.netns, "route"], capture_output=True, text=True, check=True).stdout
    assert "default via 10.244.1.1" in routes
    # pod -> its own node over the bridge, and to another node's underlay address
    assert tcp_echo(cluster.nodes[0].netns, "10.244.1.1", a.netns, "x") == f"{a.ip}|x\n"


def test_hermetic_nothing_leaves_the_cluster(cluster: L.ClusterLayout) -> None:
    pod = Pod(cluster, "node-1", "escaper")
    node1 = cluster.nodes[0]
    blocked_before = network.blocked_packets(node1.netns)
    eth0_before = link_stats(node1.netns, "eth0")
    for target in OUTSIDE:
        # from a pod: rejected by the node's firewall (immediately, no timeout needed)
        r = probe(pod.netns, target, 80, timeout=3)
        assert r["ok"] is False and "timed out" not in str(r["error"]), r
        # from a node and from the underlay: no route at all
        for ns in (node1.netns, cluster.underlay_netns):
            r = probe(ns, target, 80, timeout=3)
            assert r["ok"] is False and "no route" in str(r["error"]).lower(), r
    assert network.blocked_packets(node1.netns) > blocked_before  # the pod's SYNs were stopped at node-1
    assert link_stats(node1.netns, "eth0")["tx"] == eth0_before["tx"]  # ... and never went out to the underlay
    # Structural proof: no link of any cluster netns has a peer outside the cluster, and the root netns
    # holds no link into the cluster.
    assert network.foreign_peers(CLUSTER) == []
    assert root_links_into(CLUSTER) == []
    for ns in network.cluster_netns(CLUSTER):
        routes = subprocess.run(["ip", "-n", ns, "route", "show", "default"], capture_output=True, text=True,
                                check=True).stdout
        assert routes == "" or routes.startswith("unreachable default") or "via 10.244." in routes, (ns, routes)


def test_cni_delete_releases_ip_and_readd_works(cluster: L.ClusterLayout) -> None:
    pods = [Pod(cluster, "node-2", f"p{i}") for i in range(3)]
    cni = pods[0].cni
    assert sorted(cni.allocated_ips()) == sorted(p.ip for p in pods)
    for p in pods:
        p.delete()
    assert cni.allocated_ips() == []
    # node-2's bridge has no ports left: the host-side veths went with DEL
    out = subprocess.run(["ip", "-n", cluster.nodes[1].netns, "-o", "link", "show", "master", "cni0"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
    again = Pod(cluster, "node-2", "again")
    assert again.ip.startswith("10.244.2.")
    # DEL twice is fine (idempotent), even without the netns
    again.delete()
    again.cni.delete(again.uid, again.name, "default", L.netns_path(again.netns))


def test_cni_failure_is_a_clear_error_and_leaks_nothing(cluster: L.ClusterLayout) -> None:
    node = cluster.nodes[0]
    cni = CniRuntime(cluster, node)
    with pytest.raises(CniError, match="bridge ADD failed on node node-1"):
        cni.add("0123456789abcdef", "ghost", "default", "/run/netns/amb-t3a-pod-doesnotexist")
    assert cni.allocated_ips() == []


def test_build_refuses_leftovers(cluster: L.ClusterLayout) -> None:
    with pytest.raises(NetworkSetupError, match="already exist"):
        network.build_network(cluster)


def test_cni_churn_leaks_no_ip_and_no_veth(cluster: L.ClusterLayout) -> None:
    """Repeated ADD/DEL of pods (fresh uid each time) on one node: allocations and links return to zero."""
    import time

    node = cluster.nodes[0]
    cni = CniRuntime(cluster, node)
    t = time.monotonic()
    cycles = 25
    seen: set[str] = set()
    for i in range(cycles):
        pod = Pod(cluster, node.name, f"churn{i}")
        seen.add(pod.ip)
        pod.delete()
    per_cycle = (time.monotonic() - t) / cycles
    print(f"\nCNI add+del cycle: {per_cycle * 1000:.0f} ms")
    assert cni.allocated_ips() == []
    links = subprocess.run(["ip", "-n", node.netns, "-o", "link", "show", "type", "veth"], capture_output=True,
                           text=True, check=True).stdout.strip().splitlines()
    assert [line.split(":")[1].strip().split("@")[0] for line in links] == ["eth0"]  # only the uplink left
    assert all(ip.startswith("10.244.1.") for ip in seen)
    assert not [n for n in network.cluster_netns(CLUSTER) if "-pod-" in n]


def test_underlay_bridge_address_does_not_follow_new_ports(cluster: L.ClusterLayout) -> None:
    """A bridge without an address of its own takes its ports' lowest MAC: adding a port (an outside host)
    would change the address behind 172.18.0.1-3 under the nodes' ARP caches (DNS and xDS cut for seconds)."""
    def br0_mac() -> str:
        out = subprocess.run(["ip", "-n", cluster.underlay_netns, "-br", "link", "show", "br0"], check=True,
                             capture_output=True, text=True).stdout
        return out.split()[2]

    assert br0_mac() == network.UNDERLAY_BRIDGE_MAC
    under = ["ip", "-n", cluster.underlay_netns]
    subprocess.run([*under, "link", "add", "veth-lowmac", "address", "00:00:00:00:00:01", "type", "veth", "peer",
                    "name", "veth-lowpeer"], check=True)
    try:
        subprocess.run([*under, "link", "set", "veth-lowmac", "master", "br0", "up"], check=True)
        assert br0_mac() == network.UNDERLAY_BRIDGE_MAC
    finally:
        subprocess.run([*under, "link", "del", "veth-lowmac"], check=True)


def test_pinning_keeps_a_bridge_address_that_was_not_set(cluster: L.ClusterLayout) -> None:
    """A cluster made before the fixed address: pinning keeps its current MAC and makes it stick."""
    under = ["ip", "-n", cluster.underlay_netns]
    subprocess.run([*under, "link", "add", "brx", "type", "bridge"], check=True)
    try:
        before = subprocess.run([*under, "-br", "link", "show", "brx"], check=True, capture_output=True,
                                text=True).stdout.split()[2]
        network.pin_bridge_address(cluster.underlay_netns, "brx")
        subprocess.run([*under, "link", "add", "veth-lowmac", "address", "00:00:00:00:00:01", "type", "veth",
                        "peer", "name", "veth-lowpeer"], check=True)
        subprocess.run([*under, "link", "set", "veth-lowmac", "master", "brx", "up"], check=True)
        after = subprocess.run([*under, "-br", "link", "show", "brx"], check=True, capture_output=True,
                               text=True).stdout.split()[2]
        assert after == before
    finally:
        subprocess.run([*under, "link", "del", "veth-lowmac"], check=False)
        subprocess.run([*under, "link", "del", "brx"], check=True)
