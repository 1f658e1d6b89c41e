"""`ambient trace` shows the DNS proxy's answer and who closed first, in a real local cluster ("trd1"): a client
on node 1, two Services on node 2 in an enrolled namespace: `web` (HTTP/1.1 keep-alive: curl closes first) and
`closer` (answers with a close-delimited body: the server closes first).

- a request by name goes through the node proxy's DNS proxy: the trace has a DNS hop of the source node proxy
  naming the query, the Service VIP it answered and the Service it came from, before the source proxy hop;
- the end hop says who closed: the client for `web`, the server for `closer` (and each proxy's `closed_by`);
- a request to the VIP itself has no DNS hop.

Traffic goes only to addresses inside the cluster's own network namespaces. The cluster is always deleted.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cluster_fixtures import ClusterEnv, is_ready, local_cluster, sleeper_pod

from helpers import wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

CLUSTER = "trd1"
NS = "trd"

KEEPALIVE = r"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"hello"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""
# no Content-Length: the body ends when the server closes, so the server always ends its side first
CLOSER = r"""
import socket
srv = socket.create_server(("0.0.0.0", 8080))
while True:
    conn, _ = srv.accept()
    with conn:
        got = b""
        while b"\r\n\r\n" not in got:
            data = conn.recv(4096)
            if not data:
                break
            got += data
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbye\n")
"""


class Cluster(ClusterEnv):
    """This module's cluster; `trace` traces one request of the client pod."""

    def trace(self, url: str) -> dict[str, Any] | None:
        """The last connection of `curl URL` run in the client pod, when it completed."""
        run = self.ambient("trace", "-n", NS, "client", "-o", "json", "--", "curl", "-s", "-m", "5", url)
        assert run.returncode == 0, run.stderr[-3000:]
        traces = json.loads(run.stdout)
        return traces[-1] if traces and traces[-1]["outcome"] == "completed" else None


@dataclass
class App:
    client: dict[str, Any]
    vips: dict[str, str]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with local_cluster(CLUSTER, tmp_path_factory.mktemp(CLUSTER), 2,
                       require=("apiserver", "controller-manager", "controlplane")) as (layout, api, state):
        yield Cluster(layout, api, state)


@pytest.fixture(scope="module")
def app(cluster: Cluster) -> App:
    api = cluster.api
    api.create({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": NS, "labels": {"istio.io/dataplane-mode": "ambient"}}})
    nodes = [n.name for n in cluster.layout.nodes]
    py = sys.executable
    api.create(sleeper_pod("client", NS, nodes[0], {"app": "client"}))
    for name, program in (("web", KEEPALIVE), ("closer", CLOSER)):
        api.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS,
                                                                   "labels": {"app": name}},
                    "spec": {"nodeName": nodes[-1], "containers": [
                        {"name": "app", "command": [py, "-c", program],
                         "ports": [{"name": "http", "containerPort": 8080}]}]}})
        api.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
                    "spec": {"selector": {"app": name},
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})

    def ready(name: str) -> dict[str, Any] | None:
        pod = api.get("Pod", name, NS)
        return pod if is_ready(pod) else None

    client = wait_for(functools.partial(ready, "client"), timeout=60, what="client Ready")
    for name in ("web", "closer"):
        wait_for(functools.partial(ready, name), timeout=60, what=f"{name} Ready")
    vips = {name: wait_for(lambda n=name: api.get("Service", n, NS)["spec"].get("clusterIP"), timeout=30,
                           what=f"{name} VIP") for name in ("web", "closer")}
    return App(client, vips)


def _hop(trace: dict[str, Any], kind: str) -> dict[str, str]:
    hops = [h for h in trace["hops"] if h["kind"] == kind]
    assert hops, (kind, trace)
    return dict(hops[0]["facts"])


def _traced_by_name(cluster: Cluster, name: str) -> dict[str, Any]:
    """A completed trace of a request by name that has its DNS hop (the first requests may run before the
    client's node proxy knows the Service: then the name is answered by the upstream, or the path fails)."""
    def traced() -> dict[str, Any] | None:
        t = cluster.trace(f"http://{name}.{NS}/")
        dns = [h for h in t["hops"] if h["kind"] == "dns"] if t else []
        return t if dns and dns[0]["facts"].get("answered by", "").startswith("Service ") else None

    return wait_for(traced, timeout=90, what=f"a completed traced request to {name}.{NS} with its DNS answer")


def test_request_by_name_shows_the_dns_answer_and_the_client_closing(cluster: Cluster, app: App) -> None:
    t = _traced_by_name(cluster, "web")
    vip = app.vips["web"]
    assert [h["kind"] for h in t["hops"]] == ["redirect", "dns", "source-proxy", "destination-proxy", "app"], t
    dns = _hop(t, "dns")
    assert dns["query"] == f"web.{NS}.svc.cluster.local A", dns
    assert dns["addresses"] == vip and dns["answered by"] == f"Service {NS}/web", dns
    assert dns["answer"].startswith(f"web.{NS}.svc.cluster.local A -> {vip} (Service {NS}/web), "), dns
    assert dns["rcode"] == "NOERROR" and dns["pod"] == f"{NS}/client", dns
    src = _hop(t, "source-proxy")
    assert src["original destination"] == f"{vip}:80", src
    # curl closes after its answer (keep-alive server): the client ended first, as both proxies saw it
    assert src["closed by"] == "client" and _hop(t, "destination-proxy")["closed by"] == "client", t
    end = _hop(t, "app")
    assert end["closed by"] == "the client (source app) ended its side first", end
    assert int(end["client received"]) > 0 and end["total time"].endswith("ms"), end
    # the same connection from the logs alone (its trace id): the DNS hop is found again, and drawn
    again = cluster.ambient("trace", t["trace_id"], "-o", "json")
    assert again.returncode == 0, again.stderr
    assert [h["kind"] for h in json.loads(again.stdout)[0]["hops"]][:2] == ["dns", "source-proxy"]
    tree = cluster.ambient("trace", t["trace_id"])
    assert tree.returncode == 0 and "source node proxy: DNS answer" in tree.stdout, tree.stdout
    assert f"-> {vip} (Service {NS}/web)" in tree.stdout, tree.stdout


def test_a_server_that_closes_first_is_named(cluster: Cluster, app: App) -> None:
    t = _traced_by_name(cluster, "closer")
    assert _hop(t, "dns")["addresses"] == app.vips["closer"], t
    assert _hop(t, "dns")["answered by"] == f"Service {NS}/closer", t
    assert _hop(t, "source-proxy")["closed by"] == "server", t
    assert _hop(t, "destination-proxy")["closed by"] == "server", t
    assert _hop(t, "app")["closed by"] == "the server (destination app) ended its side first", t


def test_a_request_to_the_vip_has_no_dns_hop(cluster: Cluster, app: App) -> None:
    vip = app.vips["web"]
    t = wait_for(lambda: cluster.trace(f"http://{vip}/"), timeout=60, what="a completed traced request to the VIP")
    assert [h["kind"] for h in t["hops"]] == ["redirect", "source-proxy", "destination-proxy", "app"], t
    assert _hop(t, "source-proxy")["original destination"] == f"{vip}:80", t
