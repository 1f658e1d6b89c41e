"""Root tests: in-pod redirection rules applied in real network namespaces, checked by dumps and traffic.

Topology per test: a "node" netns and a "pod" netns joined by a veth (10.99.X.1 <-> 10.99.X.2). All traffic
stays inside these namespaces. Both backends (iptables, nftables) run the same assertions.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ambient.cni.apply import (
    BACKENDS,
    Backend,
    apply_node_probe_snat,
    apply_pod_redirection,
    dump_rules,
    probe_ipset_add,
    remove_node_probe_snat,
    remove_pod_redirection,
    verify_node_probe_snat,
    verify_pod_redirection,
)
from ambient.cni.rules import RedirectConfig, normalize_iptables_save
from ambient.inpod.netns import run_in_netns

pytestmark = pytest.mark.root

SO_ORIGINAL_DST = 80
SO_MARK = getattr(socket, "SO_MARK", 36)
_counter = itertools.count()
TIMEOUT = 5.0


@dataclass
class Pair:
    node: str  # netns paths
    pod: str
    node_ip: str
    pod_ip: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _sh(ns: str, *args: str) -> None:
    run_in_netns(ns, lambda: subprocess.run(list(args), check=True, capture_output=True, timeout=10))


@pytest.fixture
def pair() -> Iterator[Pair]:
    n = next(_counter)
    base = f"h6-{os.getpid()}-{n}"
    node, pod = f"{base}-node", f"{base}-pod"
    subnet = f"10.99.{(os.getpid() + n) % 200 + 20}"
    try:
        _ip("netns", "add", node)
        _ip("netns", "add", pod)
        _ip("link", "add", "vpod", "netns", node, "type", "veth", "peer", "name", "eth0", "netns", pod)
        for ns, dev, addr in ((node, "vpod", f"{subnet}.1/24"), (pod, "eth0", f"{subnet}.2/24")):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", pod, "route", "add", "default", "via", f"{subnet}.1")
        yield Pair(f"/var/run/netns/{node}", f"/var/run/netns/{pod}", f"{subnet}.1", f"{subnet}.2")
    finally:
        for ns in (pod, node):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def listen(ns: str, port: int, addr: str = "0.0.0.0", kind: int = socket.SOCK_STREAM) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        if kind == socket.SOCK_STREAM:
            s.listen(8)
        return s

    s = run_in_netns(ns, make)
    s.settimeout(TIMEOUT)
    return s


def connect(ns: str, dst: str, port: int, *, mark: int | None = None) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if mark is not None:
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        return s

    s = run_in_netns(ns, make)
    s.settimeout(TIMEOUT)
    s.connect((dst, port))
    return s


def original_dst(conn: socket.socket) -> tuple[str, int]:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)  # struct sockaddr_in
    port = struct.unpack("!H", raw[2:4])[0]
    return socket.inet_ntoa(raw[4:8]), port


def assert_idle(listener: socket.socket) -> None:
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()


def echo_through(client: socket.socket, listener: socket.socket) -> socket.socket:
    conn, _ = listener.accept()
    client.sendall(b"ping")
    assert conn.recv(4) == b"ping"
    return conn


def seed_foreign_rules(ns: str) -> None:
    """Rules a pod may already have: they must survive apply/remove untouched."""
    for table in ("mangle", "nat", "raw"):
        for chain in ("PREROUTING", "OUTPUT"):
            _sh(ns, "iptables", "-t", table, "-A", chain, "-p", "udp", "--dport", "9", "-j", "RETURN")
    _sh(ns, "ip6tables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "RETURN")
    _sh(ns, "nft", "add table inet other; add chain inet other c { type filter hook output priority 0; }")


CFG = RedirectConfig(ipv6=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_rules_idempotent_and_removal_restores_dump(pair: Pair, backend: Backend) -> None:
    seed_foreign_rules(pair.pod)
    before = dump_rules(pair.pod)
    apply_pod_redirection(CFG, backend, netns=pair.pod)
    once = dump_rules(pair.pod)
    assert verify_pod_redirection(CFG, backend, netns=pair.pod) == []
    apply_pod_redirection(CFG, backend, netns=pair.pod)
    twice = dump_rules(pair.pod)
    assert verify_pod_redirection(CFG, backend, netns=pair.pod) == []
    assert normalize_iptables_save(twice["iptables"]) == normalize_iptables_save(once["iptables"])
    assert twice["nft"] == once["nft"]
    assert twice["rules"].count("fwmark 0x111/0xfff lookup 100") == 1
    assert "local default dev lo" in twice["routes"]
    remove_pod_redirection(netns=pair.pod)
    after = dump_rules(pair.pod)
    assert normalize_iptables_save(after["iptables"]) == normalize_iptables_save(before["iptables"])
    assert normalize_iptables_save(after["ip6tables"]) == normalize_iptables_save(before["ip6tables"])
    assert after["nft"] == before["nft"]
    assert after["rules"] == before["rules"] and after["routes"] == before["routes"]
    assert "RETURN" in after["iptables"] and "table inet other" in after["nft"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_verify_detects_tampering_and_reapply_repairs(pair: Pair, backend: Backend) -> None:
    apply_pod_redirection(CFG, backend, netns=pair.pod)
    if backend == "iptables":
        _sh(pair.pod, "iptables", "-t", "nat", "-D", "ISTIO_OUTPUT", "1")
    else:
        _sh(pair.pod, "nft", "flush chain inet istio-ambient-nat istio-output")
    _sh(pair.pod, "ip", "rule", "del", "pref", "32764")
    diffs = verify_pod_redirection(CFG, backend, netns=pair.pod)
    assert any("istio-output" in d.lower().replace("_", "-") for d in diffs), diffs
    assert any("rule pref 32764" in d for d in diffs), diffs
    apply_pod_redirection(CFG, backend, netns=pair.pod)
    assert verify_pod_redirection(CFG, backend, netns=pair.pod) == []


def test_ipv6_rules_verified_exactly(pair: Pair) -> None:
    cfg = RedirectConfig(ipv6=True)
    for backend in BACKENDS:
        apply_pod_redirection(cfg, backend, netns=pair.pod)
        assert verify_pod_redirection(cfg, backend, netns=pair.pod) == []
    remove_pod_redirection(netns=pair.pod)
    assert "ISTIO" not in dump_rules(pair.pod)["ip6tables"]


def test_backend_switch_leaves_a_single_backend(pair: Pair) -> None:
    apply_pod_redirection(CFG, "iptables", netns=pair.pod)
    apply_pod_redirection(CFG, "nftables", netns=pair.pod)
    assert verify_pod_redirection(CFG, "nftables", netns=pair.pod) == []
    assert "ISTIO_" not in dump_rules(pair.pod)["iptables"]
    apply_pod_redirection(CFG, "iptables", netns=pair.pod)
    assert verify_pod_redirection(CFG, "iptables", netns=pair.pod) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_outbound_redirected_to_15001_with_original_destination(pair: Pair, backend: Backend) -> None:
    apply_pod_redirection(CFG, backend, netns=pair.pod)
    outbound = listen(pair.pod, 15001)
    target = listen(pair.node, 8080)
    with outbound, target, connect(pair.pod, pair.node_ip, 8080) as client:
        conn = echo_through(client, outbound)
        assert original_dst(conn) == (pair.node_ip, 8080)
        conn.close()
        assert_idle(target)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inbound_plaintext_lands_on_15006_and_hbone_port_is_not_redirected(pair: Pair, backend: Backend) -> None:
    apply_pod_redirection(CFG, backend, netns=pair.pod)
    inbound, hbone = listen(pair.pod, 15006), listen(pair.pod, 15008)
    with inbound, hbone:
        with connect(pair.node, pair.pod_ip, 8080) as client:
            conn = echo_through(client, inbound)
            assert original_dst(conn) == (pair.pod_ip, 8080)
            conn.close()
        with connect(pair.node, pair.pod_ip, 15008) as client:
            echo_through(client, hbone).close()
        assert_idle(inbound)


@pytest.mark.parametrize("backend", BACKENDS)
def test_proxy_marked_socket_is_not_redirected(pair: Pair, backend: Backend) -> None:
    apply_pod_redirection(CFG, backend, netns=pair.pod)
    outbound, target = listen(pair.pod, 15001), listen(pair.node, 8080)
    with outbound, target, connect(pair.pod, pair.node_ip, 8080, mark=1337) as client:
        echo_through(client, target).close()
        assert_idle(outbound)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kubelet_probe_snat_is_not_captured(pair: Pair, backend: Backend) -> None:
    apply_pod_redirection(CFG, backend, netns=pair.pod)
    apply_node_probe_snat(netns=pair.node)
    apply_node_probe_snat(netns=pair.node)  # idempotent
    assert verify_node_probe_snat(netns=pair.node) == []
    inbound, app = listen(pair.pod, 15006), listen(pair.pod, 8080)
    with inbound, app:
        # not yet in the ipset: a node-local connection is captured like any other inbound traffic
        with connect(pair.node, pair.pod_ip, 8080) as client:
            echo_through(client, inbound).close()
        probe_ipset_add(pair.pod_ip, "uid-1", netns=pair.node)
        with connect(pair.node, pair.pod_ip, 8080) as client:
            conn, peer = app.accept()
            assert peer[0] == "169.254.7.127"
            client.sendall(b"ok")
            assert conn.recv(2) == b"ok"
            conn.close()
        assert_idle(inbound)
    remove_node_probe_snat(netns=pair.node)
    assert len(verify_node_probe_snat(netns=pair.node)) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_dns_udp_redirected_to_15053(pair: Pair, backend: Backend) -> None:
    apply_pod_redirection(CFG, backend, netns=pair.pod)
    dns = listen(pair.pod, 15053, "127.0.0.1", socket.SOCK_DGRAM)
    client = run_in_netns(pair.pod, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with dns, client:
        client.sendto(b"query", (pair.node_ip, 53))
        data, _ = dns.recvfrom(64)
        assert data == b"query"


IP_TRANSPARENT = 19


@pytest.mark.parametrize("backend", BACKENDS)
def test_proxy_delivery_with_client_ip_gets_replies_back_through_table_100(pair: Pair, backend: Backend) -> None:
    """The proxy delivers inbound traffic from a transparent socket bound to the *client's* IP: the app's
    replies must come back to the proxy (connmark 0x111 -> ip rule -> table 100 local), not leave via eth0."""
    apply_pod_redirection(CFG, backend, netns=pair.pod)
    app = listen(pair.pod, 8080)

    def proxy_socket() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, SO_MARK, 1337)
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s.bind((pair.node_ip, 0))  # not a local address of the pod: spoofing the original client
        return s

    with app, run_in_netns(pair.pod, proxy_socket) as proxy:
        proxy.settimeout(TIMEOUT)
        proxy.connect((pair.pod_ip, 8080))
        conn, peer = app.accept()
        with conn:
            assert peer[0] == pair.node_ip  # the app sees the real client address
            conn.sendall(b"reply")
            assert proxy.recv(5) == b"reply"
