"""Egress in a real local cluster ("egr1"): the outside world (hosts beyond the nodes, names under
example.test in the cluster DNS, HTTPS from a throw-away public CA) and ServiceEntries: a meshed pod calls
http://httpbin.example.test through a resolution-DNS entry (auto-allocated VIP answered by the node proxy's
DNS proxy, the access line names the entry), a STATIC entry routes its VIP to its endpoints, deleting the
entry makes the name resolve as before with nothing stale in the node proxy; the cluster stays hermetic and
`cluster delete` leaves nothing behind.

Traffic goes only to addresses inside the cluster's own network namespaces (pods, the outside hosts).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import is_ready, local_cluster, run_ambient, sleeper_pod
from cluster_helpers import leftovers, root_links_into

from ambient.api.client import ApiClient
from ambient.cluster import layout as L
from ambient.cluster import lifecycle, network, outside
from helpers import wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

CLUSTER = "egr1"
NS = "egress"

# Inside a pod: GET a URL (optionally with a CA file); prints {"status", "body"} or {"error"}.
FETCH = r"""
import json, ssl, sys, urllib.request
url, cafile, method = sys.argv[1], sys.argv[2] or None, sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile) if cafile else None
req = urllib.request.Request(url, data=b"x" if method == "POST" else None, method=method)
try:
    with urllib.request.urlopen(req, timeout=8, context=ctx) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode(errors="replace")}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode(errors="replace")}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__ + ": " + str(e)}))
"""

RESOLVE = r"""
import socket, sys
try:
    print(socket.gethostbyname(sys.argv[1]))
except OSError as e:
    print("ERR " + str(e))
"""


@dataclass
class Cluster:
    layout: L.ClusterLayout
    api: ApiClient
    state: Path
    client: dict[str, Any]

    def ambient(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_ambient(CLUSTER, self.state, *args, timeout=timeout)

    def in_pod(self, code: str, *args: str, timeout: float = 30) -> str:
        netns = L.pod_netns_name(CLUSTER, self.client["metadata"]["uid"])
        out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, *args],
                             capture_output=True, text=True, timeout=timeout, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip()

    def fetch(self, url: str, cafile: str = "", method: str = "GET") -> dict[str, Any]:
        return dict(json.loads(self.in_pod(FETCH, url, cafile, method)))

    def resolve(self, name: str) -> str:
        return self.in_pod(RESOLVE, name)

    def ztunnel_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted((self.state / "logs").glob("ztunnel*.log")))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with local_cluster(CLUSTER, tmp_path_factory.mktemp(CLUSTER), 2) as (layout, api, state):
        outside.create_outside_world(layout)
        api.create({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": NS, "labels": {"istio.io/dataplane-mode": "ambient"}}})
        api.create(sleeper_pod("client", NS, layout.nodes[0].name))
        pod = wait_for(lambda: (p := api.get("Pod", "client", NS)) and is_ready(p) and p, timeout=60,
                       what="client pod Ready")
        yield Cluster(layout, api, state, pod)


def _entry(name: str, host: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"hosts": [host], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}], **spec}}


def _outbound_lines(cluster: Cluster, needle: str) -> list[str]:
    return [ln for ln in cluster.ztunnel_logs().splitlines()
            if "connection complete" in ln and 'direction="outbound"' in ln and needle in ln]


def test_outside_hosts_answer_by_name_over_http_and_https_and_stay_hermetic(cluster: Cluster) -> None:
    host = outside.OUTSIDE_HOSTS[0]
    assert cluster.resolve("httpbin.example.test") == host.ip
    got = wait_for(lambda: (r := cluster.fetch("http://httpbin.example.test/get")).get("status") == 200 and r,
                   timeout=20, what="GET to the outside host")
    assert json.loads(got["body"])["headers"]["Host"] == "httpbin.example.test"
    ca = str(outside.outside_dir(cluster.state) / "ca.crt")
    tls = cluster.fetch("https://httpbin.example.test/headers", ca)
    assert tls.get("status") == 200, tls
    untrusted = cluster.fetch("https://httpbin.example.test/headers")
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.get("error", ""), untrusted
    # Without a ServiceEntry the outside is unknown to the mesh: passthrough, plain TCP.
    assert wait_for(lambda: _outbound_lines(cluster, f"dst.addr={host.ip}:80"), timeout=10, what="access line")
    assert root_links_into(CLUSTER) == []
    assert network.foreign_peers(CLUSTER) == []


def test_dns_service_entry_gets_a_vip_and_names_the_destination_service(cluster: Cluster) -> None:
    cluster.api.create(_entry("httpbin-ext", "httpbin.example.test", resolution="DNS"))
    vip = wait_for(lambda: (ip := cluster.resolve("httpbin.example.test")) != outside.OUTSIDE_HOSTS[0].ip
                   and not ip.startswith("ERR") and ip, timeout=15, what="the entry's VIP from the DNS proxy")
    assert ipaddress.ip_address(vip) in ipaddress.ip_network("240.240.0.0/16")
    got = cluster.fetch("http://httpbin.example.test/get")
    assert got.get("status") == 200, got
    lines = wait_for(lambda: _outbound_lines(cluster, 'dst.service="httpbin.example.test"')
                     or _outbound_lines(cluster, "dst.service=httpbin.example.test"), timeout=10,
                     what="access line naming the ServiceEntry")
    assert any("dst.addr=httpbin.example.test:80" in ln for ln in lines), lines
    services = cluster.ambient("zc", "services", "--node", cluster.layout.nodes[0].name)
    row = [ln.split() for ln in services.stdout.splitlines() if "httpbin-ext" in ln]
    assert services.returncode == 0 and row and row[0][:3] == [NS, "httpbin-ext", vip], services.stdout
    # The control plane writes the auto-allocated address back, as Istio does (status.addresses).
    entry = wait_for(lambda: (e := cluster.api.get("ServiceEntry", "httpbin-ext", NS)).get("status", {})
                     .get("addresses") and e, timeout=15, what="status.addresses written")
    assert entry["status"]["addresses"] == [{"host": "httpbin.example.test", "value": vip}], entry["status"]
    shown = cluster.ambient("get", "serviceentry", "httpbin-ext", "-n", NS, "-o", "yaml")
    assert shown.returncode == 0 and f"value: {vip}" in shown.stdout and "type: Accepted" in shown.stdout, shown


def test_static_service_entry_routes_its_address_to_its_endpoints(cluster: Cluster) -> None:
    api_host = outside.OUTSIDE_HOSTS[1]
    cluster.api.create(_entry("api-static", "api.example.test", resolution="STATIC", addresses=["240.0.0.50"],
                              endpoints=[{"address": api_host.ip}]))
    got = wait_for(lambda: (r := cluster.fetch("http://240.0.0.50/")).get("status") == 200 and r, timeout=15,
                   what="GET to the STATIC entry's address")
    assert json.loads(got["body"])["pod"] == "api.example.test"  # the outside host 2 answered
    assert wait_for(lambda: _outbound_lines(cluster, f"dst.addr={api_host.ip}:80"), timeout=10,
                    what="access line to the endpoint")


def test_egress_waypoint_applies_l7_policy_to_an_entry(cluster: Cluster) -> None:
    run = cluster.ambient("waypoint", "apply", "-n", NS, "--name", "egress-waypoint", "--wait", "--timeout", "60")
    assert run.returncode == 0, run.stderr
    api_host = outside.OUTSIDE_HOSTS[1]
    entry = _entry("api-egress", "api.example.test", resolution="STATIC", addresses=["240.0.0.60"],
                   endpoints=[{"address": api_host.ip}])
    entry["metadata"]["labels"] = {"istio.io/use-waypoint": "egress-waypoint"}
    cluster.api.create(entry)
    cluster.api.create({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "get-only", "namespace": NS},
        "spec": {"targetRefs": [{"kind": "ServiceEntry", "group": "networking.istio.io", "name": "api-egress"}],
                 "action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/get"]}}]}]},
    })
    got = wait_for(lambda: (r := cluster.fetch("http://240.0.0.60/get")).get("status") == 200 and r, timeout=20,
                   what="GET through the egress waypoint")
    assert json.loads(got["body"])["headers"]["Host"] == "240.0.0.60"
    post = cluster.fetch("http://240.0.0.60/get", method="POST")
    assert (post.get("status"), post.get("body", "").strip()) == (403, "RBAC: access denied"), post
    assert cluster.fetch("http://240.0.0.60/headers").get("status") == 403
    # The client's node proxy sent it to the waypoint (HBONE), not to the outside host.
    lines = wait_for(lambda: _outbound_lines(cluster, "dst.hbone_addr=240.0.0.60:80"), timeout=10,
                     what="access line via the waypoint")
    assert all('dst.identity="spiffe://cluster.local/ns/egress/sa/egress-waypoint"' in ln for ln in lines), lines
    cluster.api.delete("ServiceEntry", "api-egress", NS)


def test_deleting_the_entry_restores_the_cluster_dns_answer_and_leaves_nothing_stale(cluster: Cluster) -> None:
    cluster.api.delete("ServiceEntry", "httpbin-ext", NS)
    cluster.api.delete("ServiceEntry", "api-static", NS)
    assert wait_for(lambda: cluster.resolve("httpbin.example.test") == outside.OUTSIDE_HOSTS[0].ip, timeout=15,
                    what="the name resolving to the outside host again")

    def gone() -> bool:
        out = cluster.ambient("zc", "services", "--node", cluster.layout.nodes[0].name).stdout
        return "httpbin-ext" not in out and "api-static" not in out and "SERVICE VIP" in out

    assert wait_for(gone, timeout=10, what="entry services gone from the node proxy")
    assert cluster.fetch("http://httpbin.example.test/get").get("status") == 200


def test_egress_waypoint_resolves_a_dns_entry(cluster: Cluster) -> None:
    """Istio's ambient egress guide: a resolution-DNS ServiceEntry behind an egress waypoint, an L7 policy
    allowing only GET. The waypoint resolves the entry's host through the cluster DNS and dials it plain TCP."""
    run = cluster.ambient("waypoint", "apply", "-n", NS, "--name", "egress-waypoint", "--wait", "--timeout", "60")
    assert run.returncode == 0, run.stderr
    entry = _entry("httpbin-egress", "httpbin.example.test", resolution="DNS")
    entry["metadata"]["labels"] = {"istio.io/use-waypoint": "egress-waypoint"}
    cluster.api.create(entry)
    cluster.api.create({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "httpbin-get-only", "namespace": NS},
        "spec": {"targetRefs": [{"kind": "ServiceEntry", "group": "networking.istio.io", "name": "httpbin-egress"}],
                 "action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
    })
    try:
        got = wait_for(lambda: (r := cluster.fetch("http://httpbin.example.test/get")).get("status") == 200 and r,
                       timeout=30, what="GET through the egress waypoint to the DNS entry")
        assert json.loads(got["body"])["headers"]["Host"] == "httpbin.example.test"
        # (a transport error is retried: the client's body send can race the waypoint's early 403)
        post = wait_for(lambda: (r := cluster.fetch("http://httpbin.example.test/post", method="POST"))
                        .get("status") and r, timeout=20, what="an answer to POST")
        assert (post.get("status"), post.get("body", "").strip()) == (403, "RBAC: access denied"), post
        vip = cluster.resolve("httpbin.example.test")
        assert ipaddress.ip_address(vip) in ipaddress.ip_network("240.240.0.0/16")
        lines = wait_for(lambda: _outbound_lines(cluster, f"dst.hbone_addr={vip}:80"), timeout=10,
                         what="access line via the waypoint")
        assert all('dst.identity="spiffe://cluster.local/ns/egress/sa/egress-waypoint"' in ln for ln in lines), lines
    finally:
        cluster.api.delete("AuthorizationPolicy", "httpbin-get-only", NS)
        cluster.api.delete("ServiceEntry", "httpbin-egress", NS)


def test_egress_waypoint_originates_tls_for_a_destination_rule(cluster: Cluster) -> None:
    """Istio's egress TLS origination task: the client speaks plain HTTP to port 80 of the entry, whose
    targetPort is the outside host's HTTPS 443; a DestinationRule tls SIMPLE (caCertificates: the outside
    world's throw-away CA) makes the egress waypoint open TLS, verified against the host's name."""
    entry = _entry("httpbin-tls", "httpbin.example.test", resolution="DNS")
    entry["spec"]["ports"] = [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 443}]
    entry["metadata"]["labels"] = {"istio.io/use-waypoint": "egress-waypoint"}
    cluster.api.create(entry)
    try:
        wait_for(lambda: ipaddress.ip_address(cluster.resolve("httpbin.example.test")) in
                 ipaddress.ip_network("240.240.0.0/16"), timeout=15, what="the entry's VIP")
        plain = wait_for(lambda: (r := cluster.fetch("http://httpbin.example.test/get")).get("status") != 200
                         and r, timeout=10, what="plain HTTP to the TLS port failing")
        assert plain.get("status") != 200, plain
        ca = str(outside.outside_dir(cluster.state) / "ca.crt")
        cluster.api.create({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                            "metadata": {"name": "httpbin-tls", "namespace": NS},
                            "spec": {"host": "httpbin.example.test",
                                     "trafficPolicy": {"tls": {"mode": "SIMPLE", "caCertificates": ca}}}})
        got = wait_for(lambda: (r := cluster.fetch("http://httpbin.example.test/get")).get("status") == 200 and r,
                       timeout=30, what="GET originated as TLS by the waypoint")
        assert json.loads(got["body"])["headers"]["Host"] == "httpbin.example.test"

        def condition() -> dict[str, Any] | None:
            conds = (cluster.api.get("DestinationRule", "httpbin-tls", NS).get("status") or {}).get("conditions")
            return next((c for c in conds or () if c.get("type") == "WaypointAccepted"), None)

        cond = wait_for(condition, timeout=15, what="the DestinationRule's WaypointAccepted condition")
        assert (cond["status"], cond["reason"]) == ("True", "Accepted") and f"{NS}/egress-waypoint" in cond["message"]
    finally:
        cluster.api.delete("ServiceEntry", "httpbin-tls", NS)
        if cluster.api.list("DestinationRule", NS)[0]:
            cluster.api.delete("DestinationRule", "httpbin-tls", NS)


def test_cluster_delete_leaves_nothing_behind(cluster: Cluster) -> None:
    names = network.cluster_netns(CLUSTER)
    assert any("-outside-" in n for n in names), names
    lifecycle.delete_cluster(CLUSTER, cluster.state)
    assert leftovers(CLUSTER, cluster.state) == []
