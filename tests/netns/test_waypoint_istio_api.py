"""Istio's traffic-management API at a waypoint in a real local cluster ("l7a"), shaped like Istio's tasks:
request routing (VirtualService by `end-user` header to DestinationRule subsets), traffic shifting (80/20
weights), fault injection (a 2 s delay for every request; an abort 500 for half of them, with response flag
FI in the waypoint's access line).

Traffic goes only to addresses inside the cluster's own network namespaces. The cluster is always deleted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cluster_fixtures import ClusterEnv, is_ready, local_cluster

from ambient.api.client import ApiClient
from ambient.cluster import layout as L
from helpers import wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

CLUSTER = "l7a"
NS = "bookinfo"
GW_LABEL = "gateway.networking.k8s.io/gateway-name"

# HTTP/1.1 app answering "<VERSION> <path>"; closes after each response.
APP = r"""
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = f"{os.environ.get('VERSION', '?')} {self.path}".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close"); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""

# n GETs (a new connection after errors); JSON: status and version counts, slowest and fastest request.
LOAD = r"""
import collections, http.client, json, sys, time
host, path, n, headers = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
out = {"status": collections.Counter(), "version": collections.Counter(), "errors": [], "min": 1e9, "max": 0.0}
conn = None
for _ in range(n):
    start = time.monotonic()
    try:
        if conn is None:
            conn = http.client.HTTPConnection(host, 9080, timeout=20)
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        out["status"][str(resp.status)] += 1
        if resp.status == 200:
            out["version"][body.split(" ")[0]] += 1
    except Exception as e:
        out["errors"].append(type(e).__name__ + ": " + str(e))
        conn = None
    took = time.monotonic() - start
    out["min"], out["max"] = min(out["min"], took), max(out["max"], took)
print(json.dumps(out))
"""


@dataclass
class Cluster(ClusterEnv):
    """This module's cluster, with its client pod (set once Ready), the waypoint's log and a load run."""

    client: dict[str, Any] | None = None

    def waypoint_log(self) -> str:
        pod = self.api.list("Pod", NS, label_selector=f"{GW_LABEL}=waypoint")[0][0]
        path = self.state / "logs" / "pods" / f"{NS}_{pod['metadata']['name']}_istio-proxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def load(self, n: int, headers: dict[str, str] | None = None, path: str = "/") -> dict[str, Any]:
        assert self.client is not None
        netns = L.pod_netns_name(CLUSTER, self.client["metadata"]["uid"])
        out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", LOAD, f"reviews.{NS}", path, str(n),
                              json.dumps(headers or {})], capture_output=True, text=True, timeout=200, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        return dict(json.loads(out.stdout))


def _pod(name: str, labels: dict[str, str], code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"containers": [{"name": "app", "command": [sys.executable, "-c", code],
                                     "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}]}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with local_cluster(CLUSTER, tmp_path_factory.mktemp(CLUSTER), 1) as (layout, api, state):
        c = Cluster(layout, api, state)
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": NS, "labels": {"istio.io/dataplane-mode": "ambient"}}})
        run = c.ambient("waypoint", "apply", "-n", NS, "--enroll-namespace", "--wait", "--timeout", "90")
        assert run.returncode == 0, run.stderr
        api.create(_pod("client", {"app": "client"}, "import time; time.sleep(1e6)"))
        for v in ("v1", "v2"):
            api.create(_pod(f"reviews-{v}", {"app": "reviews", "version": v}, APP, {"VERSION": v}))
        api.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": NS},
                    "spec": {"selector": {"app": "reviews"},
                             "ports": [{"name": "http", "port": 9080, "targetPort": 8080}]}})
        for name in ("client", "reviews-v1", "reviews-v2"):
            wait_for(lambda n=name: is_ready(api.get("Pod", n, NS)), 90, f"pod {name} Ready")
        c.client = api.get("Pod", "client", NS)
        api.apply({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                   "metadata": {"name": "reviews", "namespace": NS},
                   "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                           {"name": "v2", "labels": {"version": "v2"}}]}})
        yield c


def virtual_service(http: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": NS}, "spec": {"hosts": ["reviews"], "http": http}}


def dest(subset: str, weight: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"destination": {"host": "reviews", "subset": subset}}
    if weight is not None:
        out["weight"] = weight
    return out


def test_request_routing_by_end_user_header(cluster: Cluster) -> None:
    cluster.api.apply(virtual_service([
        {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [dest("v2")]},
        {"route": [dest("v1")]},
    ]))
    wait_for(lambda: cluster.load(20, {"end-user": "jason"})["version"] == {"v2": 20}, 60, "jason routed to v2")
    assert cluster.load(20, {"end-user": "jason"})["version"] == {"v2": 20}
    assert cluster.load(20)["version"] == {"v1": 20}
    assert cluster.load(20, {"end-user": "mary"})["version"] == {"v1": 20}


def test_traffic_shifting_80_20(cluster: Cluster) -> None:
    cluster.api.apply(virtual_service([{"route": [dest("v1", 80), dest("v2", 20)]}]))
    wait_for(lambda: cluster.load(20)["version"].get("v2"), 60, "the split applied")
    got = cluster.load(200)
    assert got["status"] == {"200": 200}, got
    assert abs(got["version"].get("v1", 0) / 200 - 0.8) <= 0.05, got["version"]


def test_fault_delay_2s_for_every_request(cluster: Cluster) -> None:
    cluster.api.apply(virtual_service([{"route": [dest("v1")], "fault": {
        "delay": {"fixedDelay": "2s", "percentage": {"value": 100}}}}]))
    wait_for(lambda: cluster.load(1)["min"] >= 2.0, 60, "the delay applied")
    got = cluster.load(3)
    assert got["status"] == {"200": 3} and got["min"] >= 2.0, got


def test_fault_abort_500_for_half_with_flag_fi(cluster: Cluster) -> None:
    cluster.api.apply(virtual_service([{"route": [dest("v1")], "fault": {
        "abort": {"httpStatus": 500, "percentage": {"value": 50}}}}]))
    wait_for(lambda: cluster.load(10)["status"].get("500"), 60, "the abort applied")
    got = cluster.load(200)
    assert set(got["status"]) == {"200", "500"}, got
    assert 80 <= got["status"]["500"] <= 120, got["status"]
    lines = [ln for ln in cluster.waypoint_log().splitlines() if "request complete" in ln and "http.status=500" in ln]
    assert len(lines) >= 80 and all("response_flags=FI" in ln for ln in lines), lines[:2]


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def test_ambient_get_shows_waypoint_accepted_and_no_waypoint(cluster: Cluster) -> None:
    api = cluster.api
    api.apply({"apiVersion": "v1", "kind": "Service", "metadata": {
        "name": "ratings", "namespace": NS, "labels": {"istio.io/use-waypoint": "none"}},
        "spec": {"selector": {"app": "ratings"}, "ports": [{"name": "http", "port": 9080, "targetPort": 8080}]}})
    api.apply({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "ratings", "namespace": NS},
               "spec": {"hosts": ["ratings"], "http": [{"route": [{"destination": {"host": "ratings"}}]}]}})

    def shown(name: str) -> dict[str, Any] | None:
        run = cluster.ambient("get", "virtualservice", name, "-n", NS, "-o", "json")
        assert run.returncode == 0, run.stderr
        return _condition(json.loads(run.stdout), "WaypointAccepted")

    cond = wait_for(lambda: shown("ratings"), 30, "the ratings VirtualService's condition")
    assert (cond["status"], cond["reason"]) == ("False", "NoWaypoint"), cond
    assert f"{NS}/ratings" in cond["message"]
    cond = wait_for(lambda: shown("reviews"), 30, "the reviews VirtualService's condition")
    assert (cond["status"], cond["reason"]) == ("True", "Accepted"), cond
    assert f"{NS}/waypoint" in cond["message"]


# Serves the JWKS given in $JWKS at /jwks.json (the jwksUri the waypoint fetches from inside the cluster).
JWKS_SERVER = r"""
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["JWKS"].encode()
        self.send_response(200 if self.path == "/jwks.json" else 404)
        self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
"""


def test_jwt_request_authentication_with_jwks_uri_served_by_a_pod(cluster: Cluster) -> None:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]})
    issuer = "testing@secure.istio.io"

    def token(sub: str = "subject", *, iss: str = issuer, expires_in: int = 3600, signer: Any = key,
              **claims: Any) -> str:
        now = int(time.time())
        return jwt.encode({"iss": iss, "sub": sub, "iat": now, "exp": now + expires_in, **claims}, signer,
                          algorithm="RS256", headers={"kid": "k1"})

    api = cluster.api
    api.create(_pod("jwks", {"app": "jwks"}, JWKS_SERVER, {"JWKS": jwks}))
    api.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "jwks", "namespace": NS},
                "spec": {"selector": {"app": "jwks"}, "ports": [{"name": "http", "port": 8000}]}})
    wait_for(lambda: is_ready(api.get("Pod", "jwks", NS)), 90, "jwks pod Ready")
    api.apply(virtual_service([{"route": [dest("v1")]}]))  # no faults left from the tasks above
    api.apply({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
               "metadata": {"name": "jwt", "namespace": NS},
               "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
                        "jwtRules": [{"issuer": issuer,
                                      "jwksUri": f"http://jwks.{NS}.svc.cluster.local:8000/jwks.json"}]}})
    api.apply({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "require-jwt", "namespace": NS},
               "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}], "action": "ALLOW",
                        "rules": [{"from": [{"source": {"requestPrincipals": [f"{issuer}/subject"]}}],
                                   "when": [{"key": "request.auth.claims[groups]", "values": ["group1"]}]}]}})

    def status(headers: dict[str, str] | None = None) -> dict[str, int]:
        return dict(cluster.load(1, headers)["status"])

    good = {"authorization": f"Bearer {token(groups=['group1'])}"}
    wait_for(lambda: status() == {"403": 1}, 60, "the policy applied (no token: 403)")
    wait_for(lambda: status(good) == {"200": 1}, 60, "a valid token accepted (keys fetched from the jwks pod)")
    assert cluster.load(5, good)["status"] == {"200": 5}
    for bad in (token(expires_in=-3600, groups=["group1"]), token(iss="other", groups=["group1"]),
                token(signer=other, groups=["group1"])):
        assert status({"authorization": f"Bearer {bad}"}) == {"401": 1}
    assert status({"authorization": f"Bearer {token(groups=['group2'])}"}) == {"403": 1}  # the `when` on groups
    assert status() == {"403": 1}
    assert f"fetched JWKS http://jwks.{NS}.svc.cluster.local:8000/jwks.json" in cluster.waypoint_log()


SLOW_APP = APP.replace("def do_GET(self):", "def do_GET(self):\n        import time; time.sleep(0.5)")
FAILING_APP = APP.replace("self.send_response(200)", "self.send_response(500)")

# 20 concurrent GETs, one connection each: JSON list of statuses.
CONCURRENT = r"""
import concurrent.futures, http.client, json, sys
host = sys.argv[1]
def one(_):
    try:
        conn = http.client.HTTPConnection(host, 9080, timeout=20)
        conn.request("GET", "/")
        return conn.getresponse().status
    except Exception as e:
        return type(e).__name__
with concurrent.futures.ThreadPoolExecutor(20) as ex:
    print(json.dumps(list(ex.map(one, range(20)))))
"""

# Until the first 500; then how many 500s within `quiet` s (expected none: ejected), then after `back` s the
# requests until a 500 appears again.
EJECTION = r"""
import http.client, json, sys, time
host, quiet, back = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def get():
    conn = http.client.HTTPConnection(host, 9080, timeout=10)
    conn.request("GET", "/")
    return conn.getresponse().status
first = [get() for _ in range(1)]
while first[-1] != 500 and len(first) < 100:
    first.append(get())
t0 = time.monotonic()
during = []
while time.monotonic() - t0 < quiet:
    during.append(get())
time.sleep(max(0.0, back - (time.monotonic() - t0)))
after = [get()]
while after[-1] != 500 and len(after) < 100:
    after.append(get())
print(json.dumps({"first": first, "during": during, "after": after}))
"""


def _in_client(cluster: Cluster, code: str, *args: str) -> Any:
    assert cluster.client is not None
    netns = L.pod_netns_name(CLUSTER, cluster.client["metadata"]["uid"])
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, *args], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def _service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 9080, "targetPort": 8080}]}}


def test_circuit_breaking_overflow_is_503_uo(cluster: Cluster) -> None:
    api = cluster.api
    api.create(_pod("slow-1", {"app": "slow"}, SLOW_APP, {"VERSION": "slow"}))
    api.create(_service("slow"))
    wait_for(lambda: is_ready(api.get("Pod", "slow-1", NS)), 90, "slow pod Ready")
    api.apply({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": {"name": "slow", "namespace": NS},
               "spec": {"host": "slow", "trafficPolicy": {"connectionPool": {
                   "tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1}}}}})
    got = wait_for(lambda: (r := _in_client(cluster, CONCURRENT, f"slow.{NS}")) and 503 in r and r, 60,
                   "overflow under 20 concurrent requests")
    assert set(got) == {200, 503} and got.count(200) >= 2, got
    lines = [ln for ln in cluster.waypoint_log().splitlines()
             if "request complete" in ln and "http.status=503" in ln and f"slow.{NS}" in ln]
    assert lines and all("response_flags=UO" in ln for ln in lines), lines[:2]


def test_outlier_detection_ejects_the_failing_endpoint_then_returns_to_it(cluster: Cluster) -> None:
    api = cluster.api
    api.create(_pod("flaky-good", {"app": "flaky"}, APP, {"VERSION": "good"}))
    api.create(_pod("flaky-bad", {"app": "flaky"}, FAILING_APP, {"VERSION": "bad"}))
    api.create(_service("flaky"))
    for name in ("flaky-good", "flaky-bad"):
        wait_for(lambda n=name: is_ready(api.get("Pod", n, NS)), 90, f"pod {name} Ready")
    api.apply({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": {"name": "flaky", "namespace": NS},
               "spec": {"host": "flaky", "trafficPolicy": {"outlierDetection": {
                   "consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "3s", "maxEjectionPercent": 100}}}})
    # the waypoint has the rule once a 500 is followed by a run of 200s
    got = wait_for(lambda: (r := _in_client(cluster, EJECTION, f"flaky.{NS}", "2.5", "3.3")) and not
                   [s for s in r["during"] if s != 200] and r, 60, "an ejection")
    assert got["first"][-1] == 500 and len(got["during"]) >= 5, got  # nothing reached the failing pod
    assert got["after"][-1] == 500, got  # after baseEjectionTime it gets requests again
    assert "outlier detection ejected" in cluster.waypoint_log()


GRPC_SERVER = r"""
import grpc, os
from concurrent import futures
v = os.environ["VERSION"]
def handler(method):
    return grpc.unary_unary_rpc_method_handler(lambda req, ctx: f"{v} {method}".encode())
generic = grpc.method_handlers_generic_handler("helloworld.Greeter",
                                               {"SayHello": handler("SayHello"), "SayBye": handler("SayBye")})
server = grpc.server(futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers((generic,))
server.add_insecure_port("0.0.0.0:50051")
server.start()
server.wait_for_termination()
"""

GRPC_CLIENT = r"""
import collections, grpc, json, sys
target, n = sys.argv[1], int(sys.argv[2])
out = collections.Counter()
with grpc.insecure_channel(target) as ch:
    for method in ("SayHello", "SayBye"):
        call = ch.unary_unary(f"/helloworld.Greeter/{method}")
        for _ in range(n):
            try:
                out[call(b"hi", timeout=10).decode()] += 1
            except grpc.RpcError as e:
                out[f"{method} error {e.code().name}"] += 1
print(json.dumps(out))
"""

TCP_ECHO = r"""
import asyncio, os
v = os.environ["VERSION"].encode()
async def conn(r, w):
    data = await r.read(1024)
    w.write(v + b" " + data); await w.drain(); w.close()
async def main():
    server = await asyncio.start_server(conn, "0.0.0.0", 9000)
    await server.serve_forever()
asyncio.run(main())
"""

TCP_CLIENT = r"""
import collections, json, socket, sys
host, n = sys.argv[1], int(sys.argv[2])
out = collections.Counter()
for _ in range(n):
    try:
        with socket.create_connection((host, 9000), timeout=10) as s:
            s.sendall(b"hello")
            out[s.recv(1024).decode().split(" ")[0]] += 1
    except OSError as e:
        out[type(e).__name__] += 1
print(json.dumps(out))
"""


def _typed_service(name: str, selector: dict[str, str], port: int, proto: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": selector, "ports": [{"name": proto, "port": port, "targetPort": port,
                                                      "appProtocol": proto}]}}


def _two_versions(api: ApiClient, app: str, code: str, port: int, proto: str) -> None:
    """Pods `<app>-v1` and `<app>-v2` running `code` (their version in $VERSION), a Service of each and the
    Service `<app>` over both, all on `port` with appProtocol `proto`; returns once both pods are Ready."""
    for v in ("v1", "v2"):
        api.create(_pod(f"{app}-{v}", {"app": app, "version": v}, code, {"VERSION": v}))
        api.create(_typed_service(f"{app}-{v}", {"app": app, "version": v}, port, proto))
    api.create(_typed_service(app, {"app": app}, port, proto))
    for v in ("v1", "v2"):
        wait_for(lambda v=v: is_ready(api.get("Pod", f"{app}-{v}", NS)), 90, f"{app}-{v} Ready")


def test_grpc_route_splits_a_grpc_service_by_method(cluster: Cluster) -> None:
    api = cluster.api
    _two_versions(api, "greeter", GRPC_SERVER, 50051, "grpc")
    api.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
               "metadata": {"name": "greeter", "namespace": NS},
               "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "greeter", "port": 50051}],
                        "rules": [{"matches": [{"method": {"service": "helloworld.Greeter", "method": "SayHello"}}],
                                   "backendRefs": [{"name": "greeter-v2", "port": 50051}]},
                                  {"backendRefs": [{"name": "greeter-v1", "port": 50051}]}]}})
    vip = api.get("Service", "greeter", NS)["spec"]["clusterIP"]
    want = {"v2 SayHello": 10, "v1 SayBye": 10}
    got = wait_for(lambda: (r := _in_client(cluster, GRPC_CLIENT, f"{vip}:50051", "10")) == want and r, 60,
                   "SayHello to v2, SayBye to v1")
    assert got == want


def test_tcp_route_weights_a_plain_tcp_echo(cluster: Cluster) -> None:
    api = cluster.api
    _two_versions(api, "tcp-echo", TCP_ECHO, 9000, "tcp")
    api.apply({"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
               "metadata": {"name": "tcp-echo", "namespace": NS},
               "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "tcp-echo", "port": 9000}],
                        "rules": [{"backendRefs": [{"name": "tcp-echo-v1", "port": 9000, "weight": 80},
                                                   {"name": "tcp-echo-v2", "port": 9000, "weight": 20}]}]}})
    vip = api.get("Service", "tcp-echo", NS)["spec"]["clusterIP"]
    # applied once a run of 10 connections has some v2 (all to the Service's two pods would be ~50/50)
    wait_for(lambda: _in_client(cluster, TCP_CLIENT, vip, "10").get("v2"), 60, "the TCPRoute applied")
    got = _in_client(cluster, TCP_CLIENT, vip, "50")
    assert set(got) == {"v1", "v2"} and 35 <= got["v1"] <= 45, got


def test_ambient_get_shows_route_and_policy_conditions(cluster: Cluster) -> None:
    def shown(kind: str, name: str) -> dict[str, Any]:
        run = cluster.ambient("get", kind, name, "-n", NS, "-o", "json")
        assert run.returncode == 0, run.stderr
        return dict(json.loads(run.stdout))

    ra = wait_for(lambda: _condition(shown("requestauthentication", "jwt"), "WaypointAccepted"), 30,
                  "the RequestAuthentication's condition")
    assert (ra["status"], ra["reason"]) == ("True", "Accepted") and f"waypoint {NS}/waypoint" in ra["message"]
    for kind, name in (("grpcroute", "greeter"), ("tcproute", "tcp-echo")):
        parents = wait_for(lambda k=kind, n=name: (shown(k, n).get("status") or {}).get("parents"), 30,
                           f"the {kind}'s status")
        assert [c["status"] for p in parents for c in p["conditions"] if c["type"] == "Accepted"] == ["True"]
        assert [c["reason"] for p in parents for c in p["conditions"] if c["type"] == "ResolvedRefs"] == [
            "ResolvedRefs"]


def test_route_resolved_refs_name_missing_and_unpermitted_backends(cluster: Cluster) -> None:
    """Gateway API ResolvedRefs per Service parent: BackendNotFound for a Service that does not exist,
    RefNotPermitted for one in another namespace without a ReferenceGrant; `-o yaml` shows them."""
    route: dict[str, Any] = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                             "metadata": {"name": "dangling", "namespace": NS},
                             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "no-such-parent",
                                                      "port": 80}],
                                      "rules": [{"backendRefs": [{"name": "no-such-backend", "port": 80}]}]}}
    cluster.api.apply(route)

    def shown() -> str:
        run = cluster.ambient("get", "httproute", "dangling", "-n", NS, "-o", "yaml")
        assert run.returncode == 0, run.stderr
        return run.stdout

    try:
        text = wait_for(lambda: t if "BackendNotFound" in (t := shown()) else None, 30, "BackendNotFound shown")
        assert "type: ResolvedRefs" in text and f"Service {NS}/no-such-backend not found" in " ".join(text.split())
        route["spec"]["rules"] = [{"backendRefs": [{"name": "kube-dns", "namespace": "kube-system", "port": 53}]}]
        cluster.api.apply(route)
        text = wait_for(lambda: t if "RefNotPermitted" in (t := shown()) else None, 30, "RefNotPermitted shown")
        assert "no ReferenceGrant in namespace kube-system" in " ".join(text.split()), text
    finally:
        cluster.api.delete("HTTPRoute", "dangling", NS)


def test_ambient_get_shows_destination_rule_conditions(cluster: Cluster) -> None:
    def cond(name: str) -> dict[str, Any] | None:
        run = cluster.ambient("get", "destinationrule", name, "-n", NS, "-o", "json")
        assert run.returncode == 0, run.stderr
        return _condition(json.loads(run.stdout), "WaypointAccepted")

    got = wait_for(lambda: cond("reviews"), 30, "the DestinationRule's condition")
    assert (got["status"], got["reason"]) == ("True", "Accepted") and f"{NS}/waypoint" in got["message"]
