"""`ambient trace` in a real local cluster ("trc1"): a client on node 1, a web Deployment on node 2 in an
enrolled namespace, a plain server in an unenrolled one.

- a meshed request through the Service VIP shows every hop: the pod's REDIRECT rule to 15001 with its packet
  counter delta, the source node proxy's route (hbone, the endpoint IP:port, both SPIFFE identities), the
  destination node proxy (the client's IP as the source the app saw, "no allow policies"), the app's bytes;
- a request by name: the redirect hop's rule is still the TCP one (15001), the DNS redirect listed apart;
- a DENY policy: the trace stops at the destination node proxy and names the policy;
- an unenrolled destination: the source node proxy's route is passthrough and nothing follows;
- a logged connection is shown again by its trace id;
- through a waypoint whose upstream connection is pooled: the destination hop says it is not logged yet.

Traffic goes only to addresses inside the cluster's own network namespaces. The cluster is always deleted.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cluster_fixtures import ClusterEnv, create_web_deployment, is_ready, local_cluster, ready_pod, sleeper_pod

from helpers import wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

CLUSTER = "trc1"
NS = "trc"
PLAIN_NS = "plain"

SERVE = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello " + self.client_address[0].encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""
# HTTP/1.1 keep-alive: the waypoint pools its upstream connection, so the destination line waits for its close
SERVE_KEEPALIVE = SERVE.replace("class H(http.server.BaseHTTPRequestHandler):\n",
                                "class H(http.server.BaseHTTPRequestHandler):\n    protocol_version = 'HTTP/1.1'\n")


class Cluster(ClusterEnv):
    """This module's cluster; `trace` is `ambient trace` of the client pod, as JSON."""

    def trace(self, *command: str) -> list[dict[str, Any]]:
        run = self.ambient("trace", "-n", NS, "client", "-o", "json", "--", *command)
        assert run.returncode == 0, run.stderr[-3000:]
        return list(json.loads(run.stdout))


@dataclass
class App:
    client: dict[str, Any]
    web: dict[str, Any]
    plain: dict[str, Any]
    vip: str


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
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PLAIN_NS}})
    nodes = [n.name for n in cluster.layout.nodes]
    api.create(sleeper_pod("client", NS, nodes[0], {"app": "client"}))
    create_web_deployment(api, NS, nodes[-1], SERVE)
    api.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain", "namespace": PLAIN_NS,
                                                               "labels": {"app": "plain"}},
                "spec": {"nodeName": nodes[-1], "containers": [
                    {"name": "app", "command": [sys.executable, "-c", SERVE]}]}})
    client = wait_for(functools.partial(ready_pod, api, NS, "app=client"), timeout=60, what="client Ready")
    web = wait_for(functools.partial(ready_pod, api, NS, "app=web"), timeout=60, what="web Ready")
    plain = wait_for(functools.partial(ready_pod, api, PLAIN_NS, "app=plain"), timeout=60, what="plain Ready")
    vip = wait_for(lambda: api.get("Service", "web", NS)["spec"].get("clusterIP"), timeout=30, what="web VIP")
    return App(client, web, plain, vip)


def _curl(url: str) -> list[str]:
    return ["curl", "-s", "-m", "5", url]


def _hop(trace: dict[str, Any], kind: str) -> dict[str, Any]:
    hops = [h for h in trace["hops"] if h["kind"] == kind]
    assert hops, (kind, trace)
    return dict(hops[0])


def test_meshed_request_shows_every_hop(cluster: Cluster, app: App) -> None:
    # first, the mesh is programmed once a request gets through (the client's proxy knows the Service)
    wait_for(lambda: (t := cluster.trace(*_curl(f"http://{app.vip}/"))) and t[-1]["outcome"] == "completed" and t,
             timeout=60, what="a completed traced request")
    traces = cluster.trace(*_curl(f"http://{app.vip}/"))
    assert len(traces) == 1, traces
    t = traces[0]
    assert t["outcome"] == "completed" and len(t["trace_id"]) == 32, t
    kinds = [h["kind"] for h in t["hops"]]
    assert kinds == ["redirect", "source-proxy", "destination-proxy", "app"], kinds
    redirect = _hop(t, "redirect")["facts"]
    assert "REDIRECT --to-ports 15001" in redirect["rule"] and redirect["packets"].startswith("+"), redirect
    # iptables-nft: nft's view of the same rule is not listed again
    assert not [k for k, v in redirect.items() if k.startswith("also matched") and "15001" in v], redirect
    src = _hop(t, "source-proxy")["facts"]
    web_ip, client_ip = app.web["status"]["podIP"], app.client["status"]["podIP"]
    assert src["route"] == "hbone; endpoint: only usable endpoint (of 1)", src
    assert src["endpoint"] == f"{web_ip}:8080", src
    assert src["original destination"] == f"{app.vip}:80", src
    # the request that succeeded in the wait above opened the HBONE connection (idle for 5 min in the pool)
    assert src["hbone connection"] == "pooled", src
    assert src["service"] == f"web.{NS}.svc.cluster.local", src
    assert src["source identity"] == f"spiffe://cluster.local/ns/{NS}/sa/default", src
    assert src["peer identity"] == f"spiffe://cluster.local/ns/{NS}/sa/default", src
    dst = _hop(t, "destination-proxy")["facts"]
    assert dst["source ip seen by the app"] == client_ip, dst
    assert dst["source identity"] == f"spiffe://cluster.local/ns/{NS}/sa/default", dst
    assert dst["policy"] == "no allow policies", dst
    end = _hop(t, "app")["facts"]
    assert int(end["bytes from app"]) > 0 and end["command exit"] == "0", end
    # the same connection again, by its trace id, from the logs alone
    run = cluster.ambient("trace", t["trace_id"], "-o", "json")
    assert run.returncode == 0, run.stderr
    again = json.loads(run.stdout)[0]
    assert [h["kind"] for h in again["hops"]] == ["source-proxy", "destination-proxy", "app"], again
    tree = cluster.ambient("trace", t["trace_id"])
    assert tree.returncode == 0 and "destination node proxy" in tree.stdout, tree.stdout


def test_request_by_name_names_the_tcp_redirect_and_lists_dns_apart(cluster: Cluster, app: App) -> None:
    """curl resolves the name first (the pod's DNS queries go to the DNS proxy's 15053): the connection's rule
    is still the TCP redirect to 15001, and the DNS redirect is listed as such."""
    def traced() -> dict[str, Any] | None:
        ts = cluster.trace(*_curl(f"http://web.{NS}.svc.cluster.local/"))
        return ts[-1] if ts and ts[-1]["outcome"] == "completed" else None

    t = wait_for(traced, timeout=60, what="a completed traced request by name")
    redirect = _hop(t, "redirect")["facts"]
    assert "--to-ports 15001" in redirect["rule"] or "redirect to :15001" in redirect["rule"], redirect
    dns = [v for k, v in redirect.items() if k.startswith("dns rule (+")]
    assert dns and all("15053" in v for v in dns), redirect


def test_denied_request_stops_at_the_destination_proxy(cluster: Cluster, app: App) -> None:
    cluster.api.create({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-client", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "DENY",
                 "rules": [{"from": [{"source": {"namespaces": [NS]}}]}]},
    })
    try:
        t = wait_for(lambda: (ts := cluster.trace(*_curl(f"http://{app.vip}/"))) and ts[-1]["outcome"] == "denied"
                     and ts[-1], timeout=60, what="a denied traced request")
        assert t["stopped_at"] == "destination-proxy", t
        assert f"{NS}/deny-client" in t["reason"], t
        assert [h["kind"] for h in t["hops"]][-1] == "destination-proxy", t
    finally:
        cluster.api.delete("AuthorizationPolicy", "deny-client", NS)


def test_unenrolled_destination_is_passthrough(cluster: Cluster, app: App) -> None:
    plain_ip = app.plain["status"]["podIP"]
    traces = wait_for(lambda: (ts := cluster.trace(*_curl(f"http://{plain_ip}:8080/")))
                      and ts[-1]["outcome"] == "completed" and ts, timeout=60, what="a traced passthrough")
    t = traces[-1]
    src = _hop(t, "source-proxy")["facts"]
    assert src["route"].startswith("passthrough") and src["endpoint"] == f"{plain_ip}:8080", src
    assert "source identity" not in src  # plain TCP: no mTLS identities
    assert [h["kind"] for h in t["hops"]] == ["redirect", "source-proxy", "app"], t


WP_NS = "trw"


def test_request_through_a_waypoint_shows_its_route(cluster: Cluster, app: App) -> None:
    api, py = cluster.api, sys.executable
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": WP_NS}})
    run = cluster.ambient("waypoint", "apply", "-n", WP_NS, "--enroll-namespace", "--wait", "--timeout", "60")
    assert run.returncode == 0, run.stderr
    api.patch("Namespace", WP_NS, None, {"metadata": {"labels": {"istio.io/dataplane-mode": "ambient"}}})
    api.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "echo", "namespace": WP_NS,
                                                               "labels": {"app": "echo"}},
                "spec": {"nodeName": cluster.layout.nodes[-1].name, "containers": [
                    {"name": "app", "command": [py, "-c", SERVE_KEEPALIVE], "ports": [{"containerPort": 8080}]}]}})
    api.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": WP_NS},
                "spec": {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
    api.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "echo-route", "namespace": WP_NS},
               "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
                        "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}]}})
    wait_for(lambda: is_ready(api.get("Pod", "echo", WP_NS)), timeout=60, what="echo Ready")
    vip = wait_for(lambda: api.get("Service", "echo", WP_NS)["spec"].get("clusterIP"), timeout=30, what="echo VIP")

    def traced() -> dict[str, Any] | None:
        t = cluster.trace(*_curl(f"http://{vip}/"))[-1]
        way = [h for h in t["hops"] if h["kind"] == "waypoint"]
        return t if t["outcome"] == "completed" and way and way[0]["facts"].get("route") else None

    t = wait_for(traced, timeout=90, what="a traced request through the waypoint with its route")
    src = _hop(t, "source-proxy")["facts"]
    assert src["route"] == f"waypoint spiffe://cluster.local/ns/{WP_NS}/sa/waypoint", src
    way = _hop(t, "waypoint")["facts"]
    assert way["route"] == f"{WP_NS}/echo-route" and way["status"] == "200", way
    assert way["request"] == "GET /" and way["upstream"].endswith(":8080"), way
    assert way["source identity"] == f"spiffe://cluster.local/ns/{NS}/sa/default", way
    # the waypoint's upstream connection is pooled (keep-alive echo): the destination node proxy logs it only
    # when it closes, so the hop is shown as not logged yet, never silently missing
    dst = _hop(t, "destination-proxy")["facts"]
    assert dst["note"].startswith("not logged yet (pooled upstream") and dst["upstream"].endswith(":8080"), dst


def test_waypoint_denial_names_the_policy(cluster: Cluster, app: App) -> None:
    """Runs after the waypoint test above (its namespace, waypoint and echo Service)."""
    api = cluster.api
    vip = api.get("Service", "echo", WP_NS)["spec"]["clusterIP"]
    api.apply({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "no-admin", "namespace": WP_NS},
               "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "echo"}], "action": "DENY",
                        "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}})

    def denied() -> dict[str, Any] | None:
        t = cluster.trace(*_curl(f"http://{vip}/admin"))[-1]
        return t if t["outcome"] == "denied" else None

    t = wait_for(denied, timeout=90, what="a traced request denied by the waypoint")
    assert t["stopped_at"] == "waypoint" and t["reason"] == f"L7 policy {WP_NS}/no-admin (status 403)", t
    way = _hop(t, "waypoint")["facts"]
    assert way["details"] == f"rbac_access_denied_matched_policy[ns[{WP_NS}]-policy[no-admin]]", way


def test_follow_traces_the_next_connections(cluster: Cluster, app: App) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ambient", "-c", CLUSTER, "--state-dir", str(cluster.state),
                             "trace", "--follow", "-n", NS, "client", "--count", "2", "-o", "json", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and proc.stderr.readline().startswith("following connections from")
        for path in ("/one", "/two"):
            cluster.trace(*_curl(f"http://{app.vip}{path}"))
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    traces = [json.loads(line) for line in out.splitlines()]
    assert len(traces) == 2 and all(t["outcome"] == "completed" for t in traces), traces
    assert all(_hop(t, "source-proxy")["facts"]["original destination"] == f"{app.vip}:80" for t in traces), traces
