"""Root tests: two nodes, a client pod and a server pod, the node agent's in-pod rules, the node proxy
(`ambient ztunnel` in in-pod mode, fed by a ZDS server and a static config + local CA) on each node.

Checks: bytes end to end with half-close (64 MB; 1 GB with AMBIENT_LONG_TESTS=1), the app sees the client
pod IP, only TLS to 15008 on the wire between the nodes, access logs and metrics of both proxies, the
three listeners inside the pod, a Service VIP, the CONNECT validation matrix and an L4 DENY; every check
with node proxies of one process and again of two (AMBIENT_ZTUNNEL_WORKERS=2).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ambient.bench.testbed import ProxyProcess, Testbed, echo_transfer, pod_socket, sh, start_echo
from ambient.identity.ca import LocalCA
from ambient.runtime.accesslog import parse_fields
from ambient.tls.contexts import client_context

pytestmark = pytest.mark.root

LONG = os.environ.get("AMBIENT_LONG_TESTS") == "1"
VIP = "10.96.250.10"
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/shop/sa/server"


class Mesh:
    def __init__(self, bed: Testbed, p1: ProxyProcess, p2: ProxyProcess, peers: Path) -> None:
        self.bed, self.p1, self.p2, self.peers = bed, p1, p2, peers
        self.client = bed.pod("client")
        self.server = bed.pod("server")
        self.ghost = bed.pod("stranger-ghost")
        self.visitor = bed.pod("visitor-plain")  # outside the mesh: plaintext, lands on the server's 15006


@pytest.fixture(scope="module", params=[1, 2], ids=["1-process", "2-workers"])
def mesh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Each test runs against node proxies of one process, then of two (AMBIENT_ZTUNNEL_WORKERS=2: the
    pods' connections spread over both, metrics and the config dump added up by the primary)."""
    env = {"AMBIENT_ZTUNNEL_WORKERS": str(request.param)}
    bed = Testbed(f"inf1-{os.getpid()}", tmp_path_factory.mktemp("ztmesh"), namespace="shop")
    try:
        bed.create({1: [("client", "client"), ("visitor-plain", "default")],
                    2: [("server", "server"), ("stranger-ghost", "ghost")]})
        bed.services = [{
            "name": "server", "namespace": "shop", "hostname": "server.shop.svc.cluster.local",
            "vips": [VIP], "ports": {80: 8080}, "_backends": ["server"],
        }]
        bed.policies = [{
            "name": "deny-9090", "namespace": "shop", "scope": "Namespace", "action": "Deny",
            "rules": [[[{"destinationPorts": [9090]}]]],
        }]
        peers = start_echo(bed, bed.pod("server"), [8080, 9090])
        p1 = bed.start_proxy(1, env=env)
        p2 = bed.start_proxy(2, env=env)
        yield Mesh(bed, p1, p2, peers)
    finally:
        bed.destroy()


def _wait_lines(pp: ProxyProcess, pred, timeout: float = 10.0) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        found = [parse_fields(ln) for ln in pp.access_lines() if pred(ln)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _metrics(bed: Testbed, node: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = sh("ip", "netns", "exec", bed.node_ns(node), "curl", "-sf", "http://127.0.0.1:15020/metrics").stdout
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("istio_tcp_") and s.name.endswith("_total"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _sum(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in metrics.items() if n == name and all((k, val) in ls for k, val in labels.items()))


def test_bytes_end_to_end_identities_logs_metrics(mesh: Mesh) -> None:
    size = (1 << 30) if LONG else (64 << 20)
    data = os.urandom(size)
    started = time.monotonic()
    echoed = echo_transfer(mesh.client, mesh.server.ip, 8080, data, timeout=300)
    elapsed = time.monotonic() - started
    print(f"\n{size >> 20} MB echoed through the mesh in {elapsed:.2f}s ({size * 8 / elapsed / 1e9:.2f} Gb/s each way)")
    assert len(echoed) == size and hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
    # the app saw the client pod's own address (transparent delivery)
    assert mesh.peers.read_text().splitlines()[-1].split(":")[0] == mesh.client.ip
    # both proxies logged the connection with identities and byte counts
    size_s = str(size)
    out = _wait_lines(mesh.p1, lambda ln: "direction=\"outbound\"" in ln and f"bytes_sent={size_s} " in ln)
    inn = _wait_lines(mesh.p2, lambda ln: "direction=\"inbound\"" in ln and f"bytes_sent={size_s} " in ln)
    assert out and inn, (mesh.p1.access_lines()[-3:], mesh.p2.access_lines()[-3:])
    o, i = out[-1], inn[-1]
    assert o["src.identity"] == CLIENT_ID and o["dst.identity"] == SERVER_ID
    assert o["dst.addr"] == f"{mesh.server.ip}:15008" and o["dst.hbone_addr"] == f"{mesh.server.ip}:8080"
    assert o["src.workload"] == "client" and o["dst.workload"] == "server"
    assert o["bytes_sent"] == o["bytes_recv"] == size_s
    assert i["src.identity"] == CLIENT_ID and i["dst.identity"] == SERVER_ID
    assert i["src.addr"].split(":")[0] == mesh.client.ip
    assert i["bytes_sent"] == i["bytes_recv"] == size_s
    # metrics agree with the access logs of each proxy. As in ztunnel: both reporters count the response
    # (server -> client) in istio_tcp_sent_bytes_total; the log's bytes_sent is the reporter's own side
    # (the client's for "outbound", the server's for "inbound").
    for pp, node, reporter in ((mesh.p1, 1, "source"), (mesh.p2, 2, "destination")):
        lines = [parse_fields(ln) for ln in pp.access_lines() if "connection complete" in ln]
        m = _metrics(mesh.bed, node)
        response, request = ("bytes_recv", "bytes_sent") if reporter == "source" else ("bytes_sent", "bytes_recv")
        assert _sum(m, "istio_tcp_connections_opened_total", reporter=reporter) == len(lines)
        assert _sum(m, "istio_tcp_connections_closed_total", reporter=reporter) == len(lines)
        assert _sum(m, "istio_tcp_sent_bytes_total", reporter=reporter) == sum(int(x[response]) for x in lines)
        assert _sum(m, "istio_tcp_received_bytes_total", reporter=reporter) == sum(
            int(x[request]) for x in lines)
        assert _sum(m, "istio_tcp_sent_bytes_total", reporter=reporter, source_principal=CLIENT_ID,
                    destination_principal=SERVER_ID, connection_security_policy="mutual_tls") >= size


def test_wire_between_nodes_carries_only_tls_to_15008(mesh: Mesh) -> None:
    marker = b"PLAINTEXT-MARKER-" + os.urandom(4).hex().encode()
    pcap = mesh.bed.workdir / "wire.pcap"
    dump = mesh.bed.spawn(mesh.bed.node_ns(1), ["tcpdump", "-i", mesh.bed.node_link(1), "-s", "0", "-U", "-w",
                                                 str(pcap), "tcp"], stderr=subprocess.PIPE)
    assert dump.stderr is not None
    assert b"listening on" in dump.stderr.readline()
    payload = marker * 20000
    assert echo_transfer(mesh.client, mesh.server.ip, 8080, payload) == payload
    time.sleep(0.3)
    dump.terminate()
    dump.wait(10)
    raw = pcap.read_bytes()
    assert len(raw) > len(payload), "the capture saw the transfer"
    assert marker not in raw, "payload visible in plaintext between the nodes"
    others = sh("tcpdump", "-nn", "-r", str(pcap), "tcp and not port 15008").stdout
    assert others.strip() == "", f"non-HBONE TCP between the nodes:\n{others[:2000]}"


def test_pod_shows_the_three_listeners(mesh: Mesh) -> None:
    for pod in (mesh.client, mesh.server):
        out = sh("ip", "netns", "exec", pod.netns, "ss", "-ntlp").stdout
        for port in (15001, 15006, 15008):
            assert f"0.0.0.0:{port}" in out, out


def test_service_vip_reaches_an_endpoint(mesh: Mesh) -> None:
    data = os.urandom(100_000)
    assert echo_transfer(mesh.client, VIP, 80, data) == data
    lines = _wait_lines(mesh.p1, lambda ln: 'dst.service="server.shop.svc.cluster.local"' in ln)
    assert lines and lines[-1]["dst.hbone_addr"] == f"{mesh.server.ip}:8080"


def test_l4_deny_resets_client_and_logs_policy(mesh: Mesh) -> None:
    with pytest.raises((ConnectionResetError, ConnectionAbortedError, BrokenPipeError, TimeoutError)) as err:
        got = echo_transfer(mesh.client, mesh.server.ip, 9090, b"x" * 1000, timeout=15)
        if not got:
            raise ConnectionResetError("closed without data")
    assert not isinstance(err.value, TimeoutError), "the client must see a reset, not a hang"
    lines = _wait_lines(mesh.p2, lambda ln: "policy rejection" in ln)
    assert lines and lines[-1]["error"] == (
        "connection closed due to policy rejection: denied by policy shop/deny-9090")
    assert lines[-1]["src.identity"] == CLIENT_ID
    m = _metrics(mesh.bed, 2)
    assert _sum(m, "istio_tcp_connections_opened_total", reporter="destination", response_flags="DENY") >= 1


def test_plaintext_client_outside_the_mesh_lands_on_15006(mesh: Mesh) -> None:
    data = os.urandom(200_000)
    assert echo_transfer(mesh.visitor, mesh.server.ip, 8080, data) == data
    assert mesh.peers.read_text().splitlines()[-1].split(":")[0] == mesh.visitor.ip
    lines = _wait_lines(mesh.p2, lambda ln: f"src.addr={mesh.visitor.ip}:" in ln and "connection complete" in ln)
    assert lines, mesh.p2.access_lines()[-3:]
    last = lines[-1]
    assert "src.identity" not in last and "dst.identity" not in last  # ztunnel: identities of mTLS only
    assert last["dst.workload"] == "server"
    assert last["direction"] == "inbound" and last["bytes_sent"] == str(len(data))
    # L4 policy applies without identity too
    with pytest.raises(OSError):
        if not echo_transfer(mesh.visitor, mesh.server.ip, 9090, b"x" * 100, timeout=10):
            raise ConnectionResetError("closed")


def test_unknown_source_is_reset_after_a_short_wait(mesh: Mesh) -> None:
    started = time.monotonic()
    with pytest.raises(OSError):
        if not echo_transfer(mesh.ghost, mesh.server.ip, 8080, b"hello", timeout=15):
            raise ConnectionResetError("closed")
    assert time.monotonic() - started < 5  # the testbed's proxies wait 1 s for config, then fail closed
    lines = _wait_lines(mesh.p2, lambda ln: "connection failed" in ln and "unknown source" in ln)
    assert lines and lines[-1]["direction"] == "outbound"


# -- CONNECT matrix: a raw HTTP/2 client with a valid mesh certificate, from the client pod ----------------


def _h2_status(mesh: Mesh, dial_ip: str, headers: list[tuple[str, str]]) -> int:
    ca = LocalCA.load_or_create(mesh.bed.ca_dir)
    bundle = ca.issue(CLIENT_ID)
    ctx: ssl.SSLContext = client_context(bundle)
    raw = pod_socket(mesh.client, mark=0x539)  # marked: not redirected to the client's own proxy
    raw.settimeout(15)
    raw.connect((dial_ip, 15008))
    tls = ctx.wrap_socket(raw, server_hostname=None)
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers)
        tls.sendall(conn.data_to_send())
        while True:
            data = tls.recv(65536)
            if not data:
                return -1
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    return int(dict(ev.headers)[":status"])
                if isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    return -2
            out = conn.data_to_send()
            if out:
                tls.sendall(out)
    finally:
        tls.close()


def _connect(authority: str) -> list[tuple[str, str]]:
    return [(":method", "CONNECT"), (":authority", authority)]


def test_connect_matrix(mesh: Mesh) -> None:
    srv, ghost = mesh.server.ip, mesh.ghost.ip
    cases: list[tuple[str, str, list[tuple[str, str]], int]] = [
        ("valid CONNECT", srv, _connect(f"{srv}:8080"), 200),
        ("not CONNECT", srv, [(":method", "GET"), (":authority", f"{srv}:8080"), (":scheme", "https"),
                              (":path", "/")], 400),
        ("authority IP != dialled IP", srv, _connect(f"{mesh.client.ip}:8080"), 400),
        ("loopback target", srv, _connect("127.0.0.1:8080"), 400),
        ("unknown local workload", ghost, _connect(f"{ghost}:8080"), 503),
        ("L4 deny", srv, _connect(f"{srv}:9090"), 401),
        ("IPv4-mapped authority", srv, _connect(f"[::ffff:{srv}]:8080"), 400),  # as ztunnel: not the dialled IP
        # a Service hostname is resolved as ztunnel does: the dialled address, on the port the Service maps to
        ("Service hostname", srv, _connect("server.shop.svc.cluster.local:80"), 200),
        ("unknown Service hostname", srv, _connect("nosuch.shop.svc.cluster.local:80"), 503),
        ("authority without port", srv, _connect("server.shop.svc.cluster.local"), 400),
    ]
    # a self-call answers 503, as ztunnel does
    cases += [(f"proxy port {p}", srv, _connect(f"{srv}:{p}"), 503) for p in (15001, 15006, 15008, 15000, 15020, 15021)]
    results = {name: _h2_status(mesh, ip, hdrs) for name, ip, hdrs, _ in cases}
    expected = {name: want for name, _, _, want in cases}
    assert results == expected


def test_config_dump_and_zc(mesh: Mesh) -> None:
    import httpx

    with httpx.Client(transport=httpx.HTTPTransport(uds=str(mesh.p2.admin_socket)), timeout=10) as c:
        dump = c.get("http://ztunnel/config_dump").json()
    assert set(dump) >= {"workloads", "services", "policies", "certificates", "workloadState"}
    assert "uid-server" in dump["workloadState"] and dump["workloadState"]["uid-server"]["state"] == "Up"
    assert any(c["identity"] == SERVER_ID for c in dump["certificates"])
    py = [sys.executable, "-m", "ambient"]
    out = sh(*py, "zc", "workloads", "--admin-socket", str(mesh.p2.admin_socket)).stdout
    assert out.splitlines()[0].split() == ["NAMESPACE", "POD", "NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"]
    assert any(ln.split()[:3] == ["shop", "server", mesh.server.ip] and ln.split()[-1] == "HBONE"
               for ln in out.splitlines())
    pol = json.loads(sh(*py, "zc", "policies", "-o", "json", "--admin-socket", str(mesh.p2.admin_socket)).stdout)
    assert [p["name"] for p in pol] == ["deny-9090"]
    certs = sh(*py, "zc", "certificates", "--admin-socket", str(mesh.p2.admin_socket)).stdout
    assert SERVER_ID in certs and "Leaf" in certs and "Root" in certs


def test_long_connection_visible_in_zc_connections(mesh: Mesh) -> None:
    sock: socket.socket = pod_socket(mesh.client)
    sock.settimeout(10)
    try:
        sock.connect((mesh.server.ip, 8080))
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        py = [sys.executable, "-m", "ambient"]
        out = sh(*py, "zc", "connections", "--admin-socket", str(mesh.p1.admin_socket)).stdout
        rows = [ln.split() for ln in out.splitlines()[1:]]
        assert any(r[0] == "shop/client" and r[1] == "outbound" and r[-1] == "HBONE" and
                   r[-2] == f"{mesh.server.ip}:8080" for r in rows), out
    finally:
        sock.close()


def test_live_revocation_closes_a_denied_connection(mesh: Mesh) -> None:
    """Runs last in this module: it changes the shared policies."""
    sock: socket.socket = pod_socket(mesh.client)
    sock.settimeout(10)
    try:
        sock.connect((mesh.server.ip, 8080))
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        mesh.bed.policies.append({
            "name": "deny-8080", "namespace": "shop", "scope": "Namespace", "action": "Deny",
            "rules": [[[{"destinationPorts": [8080]}]]],
        })
        t0 = time.monotonic()
        mesh.bed.write_state()  # the proxies reload the static file within ~1 s
        with pytest.raises(OSError):
            while True:
                sock.sendall(b"x")
                if not sock.recv(1):
                    raise ConnectionResetError("closed")
                time.sleep(0.05)
        assert time.monotonic() - t0 < 5
    finally:
        sock.close()
    lines = _wait_lines(mesh.p2, lambda ln: "denied by policy shop/deny-8080" in ln)
    assert lines and lines[-1]["src.identity"] == CLIENT_ID
