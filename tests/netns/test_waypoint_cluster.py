"""Waypoints in a real local cluster ("t16a"): `ambient waypoint apply --wait` -> Gateway controller ->
waypoint Deployment -> Ready pod -> Programmed; the waypoint's identity from the control plane's CA with its
pod token (and nothing else); and - once the node proxy is part of `cluster create` - traffic
acceptance: client proxy -> waypoint -> destination proxy, a 90/10 HTTPRoute split, header routing, an L7
DENY (403), and un-binding without restarts.

Traffic goes only to addresses inside the cluster's own network namespaces (pods, service VIPs, the
control plane in the underlay). The cluster is always deleted (plus a forced sweep of its namespaces).
"""

from __future__ import annotations

import functools
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cluster_fixtures import ClusterEnv, is_ready, local_cluster

from ambient.api.errors import NotFoundError
from ambient.cluster import layout as L
from ambient.cluster import lifecycle, processes
from ambient.controlplane.pod_tokens import load_or_create_key, pod_token_path, verify
from helpers import wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

CLUSTER = "t16a"
NS = "shop"
WAYPOINT_ID = f"spiffe://cluster.local/ns/{NS}/sa/waypoint"
GW_LABEL = "gateway.networking.k8s.io/gateway-name"
ZTUNNEL_IN_CLUSTER = any("ztunnel" in spec.name or "ztunnel" in spec.module for spec in lifecycle.COMPONENTS)
needs_ztunnel = pytest.mark.skipif(
    not ZTUNNEL_IN_CLUSTER,
    reason="the node proxy is not started by `cluster create` yet (no 'ztunnel' in "
    "ambient.cluster.lifecycle.COMPONENTS): the waypoint traffic acceptance needs it",
)

# HTTP/1.1 server answering "<VERSION> <client ip> <path>" (what the app saw). It closes the connection
# after each response, so every hop's "connection complete" access line is written at once (a proxy logs a
# connection when it ends; the waypoint would otherwise keep its upstream connection in its pool).
ECHO = r"""
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = f"{os.environ.get('VERSION', '?')} {self.client_address[0]} {self.path}".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close"); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""

# n GETs over keep-alive connections (reconnecting after errors); JSON of what came back.
LOAD = r"""
import collections, http.client, json, sys
host, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
headers = json.loads(sys.argv[4])
out = {"status": collections.Counter(), "version": collections.Counter(), "ip": collections.Counter(),
       "bodies": [], "errors": []}
conn = None
for _ in range(n):
    try:
        if conn is None:
            conn = http.client.HTTPConnection(host, 80, timeout=10)
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        out["status"][str(resp.status)] += 1
        if resp.status == 200:
            version, ip, _ = body.split(" ", 2)
            out["version"][version] += 1
            out["ip"][ip] += 1
        if len(out["bodies"]) < 3:
            out["bodies"].append(body)
    except Exception as e:
        out["errors"].append(type(e).__name__ + ": " + str(e))
        conn = None
print(json.dumps(out))
"""

# Inside a pod: ask the CA for certificates with the pod's token; print the outcome of each request.
CA_PROBE = r"""
import asyncio, json, sys
from ambient.identity.ca_client import CaClient, CaRequestError
addr, root, token_file, own, other = sys.argv[1:6]
token = open(token_file).read().strip()
async def one(tok, ident, impersonate):
    async with CaClient(addr, token=tok, root_cert=open(root, "rb").read()) as ca:
        try:
            bundle = await ca.fetch(ident, impersonate=impersonate)
            return "OK " + str(bundle.identity)
        except CaRequestError as e:
            return e.code
async def main():
    print(json.dumps([await one(token, own, False), await one(token, other, False),
                      await one(token, other, True), await one("amb1.forged.sig", own, False)]))
asyncio.run(main())
"""


class Cluster(ClusterEnv):
    """This module's cluster, with the waypoint's pods, pod and component logs, and code run in a pod."""

    def pod_log(self, pod: dict[str, Any], container: str = "istio-proxy") -> str:
        path = self.state / "logs" / "pods" / f"{NS}_{pod['metadata']['name']}_{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def component_logs(self, prefix: str) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted((self.state / "logs").glob(f"{prefix}*.log")))

    def waypoint_pods(self) -> list[dict[str, Any]]:
        return self.api.list("Pod", NS, label_selector=f"{GW_LABEL}=waypoint")[0]

    def in_pod(self, pod: dict[str, Any], code: str, *args: str, timeout: float = 60) -> str:
        netns = L.pod_netns_name(CLUSTER, pod["metadata"]["uid"])
        out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, *args], capture_output=True,
                             text=True, timeout=timeout, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with local_cluster(CLUSTER, tmp_path_factory.mktemp(CLUSTER), 2 if ZTUNNEL_IN_CLUSTER else 1,
                       require=("apiserver", "controller-manager", "controlplane")) as (layout, api, state):
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        yield Cluster(layout, api, state)


def _conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}


# ----------------------------------------------------------------------------- the waypoint itself


def test_apply_wait_programs_a_ready_waypoint(cluster: Cluster) -> None:
    run = cluster.ambient("waypoint", "apply", "-n", NS, "--enroll-namespace", "--wait", "--timeout", "60")
    assert run.returncode == 0, run.stderr
    assert f"waypoint {NS}/waypoint programmed" in run.stdout
    api = cluster.api
    gw = api.get("Gateway", "waypoint", NS)
    assert _conditions(gw) == {"Accepted": "True", "Programmed": "True"}
    svc = api.get("Service", "waypoint", NS)
    assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": svc["spec"]["clusterIP"]}]
    assert svc["spec"]["ports"][0]["port"] == 15008 and svc["spec"]["ports"][0]["appProtocol"] == "HBONE"
    for kind in ("Deployment", "Service", "ServiceAccount"):
        owner = api.get(kind, "waypoint", NS)["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"]) == ("Gateway", gw["metadata"]["uid"]), kind
    pods = cluster.waypoint_pods()
    assert len(pods) == 1 and is_ready(pods[0])
    pod = pods[0]
    assert pod["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"
    assert pod["spec"]["serviceAccountName"] == "waypoint"
    assert api.get("Namespace", NS)["metadata"]["labels"]["istio.io/use-waypoint"] == "waypoint"
    listed = cluster.ambient("waypoint", "list", "-n", NS)
    assert listed.returncode == 0 and listed.stdout.split("\n")[1].split() == ["waypoint", "default", "service",
                                                                               "True"]

    # Identity from the control plane's CA (no local CA), state from xDS.
    log = wait_for(lambda: (t := cluster.pod_log(pod)) and "waypoint listening" in t and t, timeout=20,
                   what="waypoint log")
    assert f"certificate for {WAYPOINT_ID} issued by the control plane CA {L.CONTROLPLANE_IP}:15012" in log
    assert f"waypoint listening on 0.0.0.0:15008 as {WAYPOINT_ID}" in log
    assert "xDS state from" in log
    cp = cluster.component_logs("controlplane")
    # Issued to the pod's own account (a node token would read "to istio-system/ztunnel on node ...").
    assert f"issued {WAYPOINT_ID} to {NS}/waypoint for" in cp
    assert f"waypoint~{pod['status']['podIP']}~{pod['metadata']['name']}.{NS}" in cp


def test_pod_token_is_good_for_its_own_identity_only(cluster: Cluster) -> None:
    pod = cluster.waypoint_pods()[0]
    node, uid = pod["spec"]["nodeName"], pod["metadata"]["uid"]
    path = pod_token_path(cluster.state, node, uid)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    claims = verify(load_or_create_key(cluster.state), path.read_text().strip())
    assert (claims.namespace, claims.service_account, claims.pod, claims.uid, claims.node) == (
        NS, "waypoint", pod["metadata"]["name"], uid, node)
    out = cluster.in_pod(pod, CA_PROBE, f"{L.CONTROLPLANE_IP}:{L.CONTROLPLANE_PORT}",
                         str(cluster.state / "ca" / "root-cert.pem"), str(path), WAYPOINT_ID,
                         f"spiffe://cluster.local/ns/{NS}/sa/default")
    own, other, impersonated, forged = json.loads(out)
    assert own == f"OK {WAYPOINT_ID}"
    assert other == "PERMISSION_DENIED" and impersonated == "PERMISSION_DENIED"
    assert forged == "UNAUTHENTICATED"


# ----------------------------------------------------------------------------- waypoint traffic acceptance


@dataclass
class App:
    client: dict[str, Any]
    vip: str
    waypoint_ip: str


def _pod(name: str, command: list[str], labels: dict[str, str], node: str | None,
         env: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "command": command,
                                            "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                                            "ports": [{"name": "http", "containerPort": 8080}]
                                            if name != "client" else []}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": spec}


def _service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


@pytest.fixture(scope="module")
def app(cluster: Cluster) -> App:
    api = cluster.api
    api.patch("Namespace", NS, None, {"metadata": {"labels": {"istio.io/dataplane-mode": "ambient"}}})
    nodes = [n.name for n in cluster.layout.nodes]
    far = nodes[-1]
    py = sys.executable
    api.create(_pod("client", [py, "-c", "import time; time.sleep(1e6)"], {"app": "client"}, nodes[0]))
    for version in ("v1", "v2"):
        api.create(_pod(f"echo-{version}", [py, "-c", ECHO], {"app": "echo", "version": version}, far,
                        {"VERSION": version}))
        api.create(_service(f"echo-{version}", {"app": "echo", "version": version}))
    api.create(_service("echo", {"app": "echo"}))

    def ready_pod(name: str) -> dict[str, Any] | None:
        pod = api.get("Pod", name, NS)
        return pod if is_ready(pod) else None

    pods = {n: wait_for(functools.partial(ready_pod, n), timeout=60, what=f"pod {n} Ready")
            for n in ("client", "echo-v1", "echo-v2")}
    vip = wait_for(lambda: api.get("Service", "echo", NS)["spec"].get("clusterIP"), timeout=30, what="echo VIP")
    return App(pods["client"], vip, cluster.waypoint_pods()[0]["status"]["podIP"])


def load(cluster: Cluster, app: App, n: int, path: str = "/", headers: dict[str, str] | None = None) -> dict[str, Any]:
    out = cluster.in_pod(app.client, LOAD, app.vip, path, str(n), json.dumps(headers or {}),
                         timeout=120)
    return dict(json.loads(out))


@needs_ztunnel
def test_traffic_goes_client_proxy_waypoint_destination_proxy(cluster: Cluster, app: App) -> None:
    # The echo pods see the waypoint's address: its second HBONE hop is what reached them.
    got = wait_for(lambda: (r := load(cluster, app, 4)) and r["status"].get("200") == 4 and r, timeout=30,
                   what="GETs via waypoint")
    assert set(got["ip"]) == {app.waypoint_ip}, got
    wp_log = cluster.pod_log(cluster.waypoint_pods()[0])
    assert "request complete" in wp_log and f'dst.service="echo.{NS}.svc.cluster.local"' in wp_log
    zt = wait_for(lambda: (t := cluster.component_logs("ztunnel")) and WAYPOINT_ID in t and t, timeout=10,
                  what="ztunnel logs")
    outbound = [ln for ln in zt.splitlines() if "connection complete" in ln and 'direction="outbound"' in ln
                and f"dst.hbone_addr={app.vip}:80" in ln]
    assert outbound and all('src.workload="client' in ln and f"dst.addr={app.waypoint_ip}:15008" in ln
                            and f'dst.identity="{WAYPOINT_ID}"' in ln for ln in outbound), outbound
    inbound = [ln for ln in zt.splitlines() if "connection complete" in ln and 'direction="inbound"' in ln
               and f'src.identity="{WAYPOINT_ID}"' in ln]
    assert inbound and all('dst.workload="echo-v' in ln for ln in inbound), inbound


ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": "echo", "namespace": NS},
    "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
        "rules": [
            {"matches": [{"headers": [{"name": "x-version", "value": "v2"}]}],
             "backendRefs": [{"name": "echo-v2", "port": 80}]},
            {"matches": [{"headers": [{"name": "x-version", "value": "v1"}]}],
             "backendRefs": [{"name": "echo-v1", "port": 80}]},
            {"backendRefs": [{"name": "echo-v1", "port": 80, "weight": 90},
                             {"name": "echo-v2", "port": 80, "weight": 10}]},
        ],
    },
}


@needs_ztunnel
def test_httproute_header_match_and_90_10_split(cluster: Cluster, app: App) -> None:
    cluster.api.apply(ROUTE)
    # Applied once 20 header-routed requests in a row land on v2 (plain load balancing: 1 in 10^6).
    wait_for(lambda: load(cluster, app, 20, headers={"x-version": "v2"})["version"] == {"v2": 20}, timeout=30,
             what="header route to v2")
    assert load(cluster, app, 20, headers={"x-version": "v1"})["version"] == {"v1": 20}
    split = load(cluster, app, 1000)
    assert split["status"].get("200") == 1000, split
    share = split["version"].get("v1", 0) / 1000
    assert 0.87 <= share <= 0.93, split["version"]


@needs_ztunnel
def test_l7_deny_on_a_path_is_403_and_other_paths_work(cluster: Cluster, app: App) -> None:
    cluster.api.apply({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-admin", "namespace": NS},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "echo"}], "action": "DENY",
                 "rules": [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}]},
    })
    denied = wait_for(lambda: (r := load(cluster, app, 3, "/admin/users")) and r["status"].get("403") == 3 and r,
                      timeout=30, what="403 on /admin")
    assert denied["bodies"][0].strip() == "RBAC: access denied"
    ok = load(cluster, app, 10, "/public")
    assert ok["status"] == {"200": 10}


@needs_ztunnel
def test_unbinding_sends_traffic_directly_without_restarts(cluster: Cluster, app: App) -> None:
    before_components = processes.running_components(cluster.layout)
    wp_before = cluster.waypoint_pods()[0]
    cluster.api.patch("Namespace", NS, None, {"metadata": {"labels": {"istio.io/use-waypoint": None}}})
    client_ip = app.client["status"]["podIP"]
    direct = wait_for(lambda: (r := load(cluster, app, 6, "/admin/users")) and set(r["ip"]) == {client_ip} and r,
                      timeout=30, what="direct traffic (the app sees the client's address)")
    assert direct["status"] == {"200": 6}  # the L7 policy lives in the waypoint: not on this path any more
    assert processes.running_components(cluster.layout) == before_components
    wp_after = cluster.waypoint_pods()[0]
    assert wp_after["metadata"]["uid"] == wp_before["metadata"]["uid"]
    assert wp_after["status"]["containerStatuses"][0]["restartCount"] == 0


# ----------------------------------------------------------------------------- deletion


def test_delete_removes_deployment_service_account_and_pods(cluster: Cluster) -> None:
    pod = cluster.waypoint_pods()[0]
    run = cluster.ambient("waypoint", "delete", "-n", NS)
    assert run.returncode == 0, run.stderr
    api = cluster.api

    def gone(kind: str) -> bool:
        try:
            api.get(kind, "waypoint", NS)
        except NotFoundError:
            return True
        return False

    for kind in ("Gateway", "Deployment", "Service", "ServiceAccount"):
        wait_for(functools.partial(gone, kind), timeout=20, what=f"{kind} waypoint deleted")
    wait_for(lambda: not cluster.waypoint_pods(), timeout=30, what="waypoint pod deleted")
    token_dir = pod_token_path(cluster.state, pod["spec"]["nodeName"], pod["metadata"]["uid"]).parent
    try:
        wait_for(lambda: not token_dir.exists(), timeout=20, what="pod token removed with the pod")
    except AssertionError as exc:  # what the kubelet did with the pod (its teardown's steps and warnings)
        name, kubelet = pod["metadata"]["name"], cluster.component_logs(f"kubelet-{pod['spec']['nodeName']}")
        raise AssertionError(f"{exc}; the kubelet's lines about {name}:\n"
                             + "\n".join(line for line in kubelet.splitlines() if name in line)[-3000:]) from None
    assert "istio.io/use-waypoint" not in (api.get("Namespace", NS)["metadata"].get("labels") or {})
