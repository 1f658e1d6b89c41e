"""Ingress the Gateway API way in a real local cluster ("ing1"): a Gateway of class istio (HTTP listener +
HTTPS listener with a kubernetes.io/tls Secret) gets its gateway Deployment/Service/ServiceAccount, a Ready
pod within 10 s and Programmed status with addresses; an HTTPRoute with two weighted backends splits 200
requests through `ambient port-forward` within 5 points; HTTPS answers with the Secret's certificate; the
destination node proxy sees the gateway's SPIFFE identity; an unknown class or a missing Secret gets a clear
condition. The classic Istio ingress of the walk-through: `ambient install ingress`, a networking.istio.io
Gateway (port 8081) + VirtualService bound with `gateways:`, port-forward to svc/istio-ingressgateway,
`/headers` answered 200 by both backends with the ingress identity in both node proxies' lines (the gateway
speaks HBONE itself), and an L4 DENY for that identity refusing it.

Traffic goes only to loopback (the port-forward) and addresses inside the cluster's own namespaces.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import is_ready, local_cluster

from ambient.api.client import ApiClient
from ambient.cluster import layout as L
from ambient.cluster import outside
from helpers import wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

CLUSTER = "ing1"
NS = "web"
GW_ID = f"spiffe://cluster.local/ns/{NS}/sa/ingress-istio"
HOST = "web.example.test"

ECHO = r"""
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = f"{os.environ.get('VERSION', '?')} {self.path} {self.headers.get('Host')}".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


@dataclass
class Cluster:
    layout: L.ClusterLayout
    api: ApiClient
    state: Path
    certs: Path

    def ambient_popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "ambient", "-c", CLUSTER, "--state-dir", str(self.state),
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def logs(self, prefix: str) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted((self.state / "logs").glob(f"{prefix}*.log")))


def _conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp(CLUSTER)
    with local_cluster(CLUSTER, tmp, 2) as (layout, api, state):
        outside.write_certificates(tmp / "certs", [HOST])  # a CA + server cert, as a user would bring
        api.create({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": NS, "labels": {"istio.io/dataplane-mode": "ambient"}}})
        py = sys.executable
        for version, node in (("v1", 0), ("v2", 1)):
            api.create({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": f"echo-{version}", "namespace": NS,
                                     "labels": {"app": "echo", "version": version}},
                        "spec": {"nodeName": layout.nodes[node].name, "containers": [{
                            "name": "app", "command": [py, "-c", ECHO],
                            "env": [{"name": "VERSION", "value": version}],
                            "ports": [{"name": "http", "containerPort": 8080}]}]}})
            api.create({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": f"echo-{version}", "namespace": NS},
                        "spec": {"selector": {"app": "echo", "version": version},
                                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        for version in ("v1", "v2"):
            wait_for(lambda v=version: is_ready(api.get("Pod", f"echo-{v}", NS)), timeout=60,
                     what=f"echo-{version} Ready")
        yield Cluster(layout, api, state, tmp / "certs" / "outside")


def _gateway(name: str, cls: str = "istio", secret: str = "web-cert") -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"gatewayClassName": cls, "listeners": [
                {"name": "http", "port": 8080, "protocol": "HTTP"},
                {"name": "https", "port": 8443, "protocol": "HTTPS", "hostname": HOST,
                 "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": secret}]}}]}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ingress(cluster: Cluster) -> Iterator[dict[str, Any]]:
    api = cluster.api
    api.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-cert", "namespace": NS},
                "type": "kubernetes.io/tls",
                "data": {"tls.crt": base64.b64encode((cluster.certs / "server.crt").read_bytes()).decode(),
                         "tls.key": base64.b64encode((cluster.certs / "server.key").read_bytes()).decode()}})
    api.create({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "split", "namespace": NS},
                "spec": {"parentRefs": [{"name": "ingress"}], "rules": [{"backendRefs": [
                    {"name": "echo-v1", "port": 80, "weight": 80}, {"name": "echo-v2", "port": 80, "weight": 20}]}]}})
    applied = time.monotonic()
    api.create(_gateway("ingress"))

    def ready_pod() -> dict[str, Any] | None:
        pods = api.list("Pod", NS, label_selector="gateway.networking.k8s.io/gateway-name=ingress")[0]
        return next((p for p in pods if is_ready(p)), None)

    pod = wait_for(ready_pod, timeout=30, what="gateway pod Ready")
    took = time.monotonic() - applied
    http_port, https_port = _free_port(), _free_port()
    forwards = [cluster.ambient_popen("port-forward", "-n", NS, "svc/ingress-istio", f"{local}:{remote}")
                for local, remote in ((http_port, 8080), (https_port, 8443))]
    try:
        for port, forward in zip((http_port, https_port), forwards, strict=True):
            wait_for(lambda p=port, f=forward: _try_connect(p) or (f.poll() is not None and AssertionError(
                f.communicate()[1])), timeout=15, what="port-forward listening")
        yield {"pod": pod, "took": took, "http": http_port, "https": https_port}
    finally:
        for forward in forwards:
            forward.terminate()
            forward.wait(timeout=10)


def _try_connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _get(port: int, path: str = "/", host: str = HOST) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def test_gateway_is_deployed_ready_within_10s_and_programmed(cluster: Cluster, ingress: dict[str, Any]) -> None:
    assert ingress["took"] < 10.0, f"gateway pod Ready {ingress['took']:.1f}s after the apply"
    for kind in ("Deployment", "Service", "ServiceAccount"):
        obj = cluster.api.get(kind, "ingress-istio", NS)
        assert obj["metadata"]["ownerReferences"][0]["name"] == "ingress", kind
    gw = wait_for(lambda: (g := cluster.api.get("Gateway", "ingress", NS)) and _conditions(g).get("Programmed")
                  == "True" and g, timeout=15, what="Programmed")
    vip = cluster.api.get("Service", "ingress-istio", NS)["spec"]["clusterIP"]
    assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": vip}]
    listeners = {x["name"]: x for x in gw["status"]["listeners"]}
    assert listeners["http"]["attachedRoutes"] == 1
    assert {c["type"]: c["status"] for c in listeners["https"]["conditions"]}["ResolvedRefs"] == "True"


def test_weighted_split_through_the_port_forward(cluster: Cluster, ingress: dict[str, Any]) -> None:
    wait_for(lambda: _get(ingress["http"])[0] == 200, timeout=20, what="first 200 through the gateway")
    versions: Counter[str] = Counter()
    for _ in range(200):
        status, body = _get(ingress["http"], "/split")
        assert status == 200, body
        versions[body.split()[0]] += 1
    assert abs(versions["v1"] - 160) <= 10, versions  # within 5 points of 80/20
    # The destination node proxies saw the gateway's identity (HBONE from the gateway pod's node proxy; one
    # upstream stream per request, so each request's line is written when its response ends).
    lines = wait_for(lambda: [ln for ln in cluster.logs("ztunnel").splitlines() if "connection complete" in ln
                              and 'direction="inbound"' in ln and f'src.identity="{GW_ID}"' in ln], timeout=30,
                     what="inbound access lines with the gateway identity")
    assert lines


def test_gateway_metrics_count_requests_and_refusals(cluster: Cluster, ingress: dict[str, Any]) -> None:
    """Prometheus metrics on the gateway pod's 15020 (/stats/prometheus), as an Istio gateway reports them:
    istio_requests_total with reporter="source" and the gateway's workload; its own answers counted by reason."""
    wait_for(lambda: _get(ingress["http"])[0] == 200, timeout=20, what="a 200 through the gateway")
    assert _get(ingress["http"], "/%zz")[0] == 400  # a bad escape: refused by the gateway itself
    port = _free_port()
    pod = ingress["pod"]["metadata"]["name"]
    forward = cluster.ambient_popen("port-forward", "-n", NS, f"pod/{pod}", f"{port}:15020")
    try:
        wait_for(lambda: _try_connect(port) or (forward.poll() is not None and AssertionError(
            forward.communicate()[1])), timeout=15, what="port-forward to 15020 listening")
        status, text = _get(port, "/stats/prometheus", host="localhost")
    finally:
        forward.terminate()
        forward.wait(timeout=10)
    assert status == 200, text
    ok = [ln for ln in text.splitlines() if ln.startswith("istio_requests_total{") and 'response_code="200"' in ln]
    assert ok and all('reporter="source"' in ln and 'source_workload="ingress-istio"' in ln for ln in ok), text
    assert sum(int(ln.rsplit(" ", 1)[1]) for ln in ok) >= 1
    refused = [ln for ln in text.splitlines() if ln.startswith('ambient_gateway_refusals_total{reason="bad_request"}')]
    assert refused and int(refused[0].rsplit(" ", 1)[1]) >= 1, text


def test_https_answers_with_the_secrets_certificate(cluster: Cluster, ingress: dict[str, Any]) -> None:
    ctx = ssl.create_default_context(cafile=str(cluster.certs / "ca.crt"))
    conn = http.client.HTTPSConnection("127.0.0.1", ingress["https"], timeout=10, context=ctx)
    conn._tunnel_host = None
    sock = socket.create_connection(("127.0.0.1", ingress["https"]), timeout=10)
    with ctx.wrap_socket(sock, server_hostname=HOST) as tls:
        tls.sendall(f"GET /secure HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        peer = tls.getpeercert()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert ("DNS", HOST) in peer["subjectAltName"]


def test_unknown_class_and_missing_secret_get_clear_conditions(cluster: Cluster, ingress: dict[str, Any]) -> None:
    api = cluster.api
    api.create(_gateway("other", cls="example.com/nope"))
    gw = wait_for(lambda: (g := api.get("Gateway", "other", NS)) and "Accepted" in _conditions(g) and g,
                  timeout=15, what="status of the unknown-class Gateway")
    accepted = next(c for c in gw["status"]["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "False" and "example.com/nope" in accepted["message"]
    api.create(_gateway("nosecret", secret="missing"))
    gw = wait_for(lambda: (g := api.get("Gateway", "nosecret", NS)) and (g.get("status") or {}).get("listeners")
                  and g, timeout=15, what="status of the Gateway without its Secret")
    https = next(x for x in gw["status"]["listeners"] if x["name"] == "https")
    refs = next(c for c in https["conditions"] if c["type"] == "ResolvedRefs")
    assert (refs["status"], refs["reason"]) == ("False", "InvalidCertificateRef")
    assert f"{NS}/missing" in refs["message"]
    # The HTTP listener of that Gateway still serves (its pod comes up), the controller did not crash.
    wait_for(lambda: _conditions(api.get("Gateway", "nosecret", NS)).get("Programmed") == "True", timeout=30,
             what="nosecret Programmed")
    assert json.dumps(api.get("Gateway", "ingress", NS)["status"]).count("Programmed") >= 1


def test_l4_deny_for_the_gateway_identity_resets_its_requests(cluster: Cluster, ingress: dict[str, Any]) -> None:
    api = cluster.api
    api.create({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "deny-ingress", "namespace": NS},
                "spec": {"selector": {"matchLabels": {"app": "echo"}}, "action": "DENY",
                         "rules": [{"from": [{"source": {"principals": [GW_ID.removeprefix("spiffe://")]}}]}]}})
    try:
        status, body = wait_for(lambda: (r := _get(ingress["http"], "/denied"))[0] != 200 and r, timeout=15,
                                what="requests refused once the DENY applies")
        assert status == 503 and "upstream connect error" in body, (status, body)
        # The destination's node proxy refused the gateway's identity (a policy denial in its log).
        assert wait_for(lambda: [ln for ln in cluster.logs("ztunnel").splitlines()
                                 if "deny-ingress" in ln or ("denied" in ln.lower() and GW_ID in ln)],
                        timeout=10, what="the denial in a node proxy log")
    finally:
        api.delete("AuthorizationPolicy", "deny-ingress", NS)
    wait_for(lambda: _get(ingress["http"])[0] == 200, timeout=15, what="200 again after the DENY is gone")


# ----------------------------------------------------------------------------- the classic Istio ingress

CLASSIC_ID = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
WALKTHROUGH = f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: echo-gateway
  namespace: {NS}
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 8081
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
  namespace: {NS}
spec:
  hosts:
  - "*"
  gateways:
  - echo-gateway
  http:
  - match:
    - uri:
        prefix: /headers
    route:
    - destination:
        host: echo-v1
        port:
          number: 80
      weight: 50
    - destination:
        host: echo-v2
        port:
          number: 80
      weight: 50
"""


def _run(cluster: Cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ambient", "-c", CLUSTER, "--state-dir", str(cluster.state), *args],
                          input=stdin, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def classic(cluster: Cluster) -> Iterator[int]:
    done = _run(cluster, "install", "ingress", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    applied = _run(cluster, "apply", "-f", "-", stdin=WALKTHROUGH)
    assert applied.returncode == 0, applied.stderr
    port = _free_port()
    forward = cluster.ambient_popen("port-forward", "-n", "istio-system", "svc/istio-ingressgateway",
                                    f"{port}:8081")
    try:
        wait_for(lambda: _try_connect(port) or (forward.poll() is not None and AssertionError(
            forward.communicate()[1])), timeout=15, what="port-forward listening")
        yield port
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_walkthrough_ingress_reaches_the_backends_with_the_ingress_identity(cluster: Cluster, classic: int) -> None:
    _, body = wait_for(lambda: (r := _get(classic, "/headers", host="localhost:8081"))[0] == 200 and r,
                       timeout=30, what="200 from localhost:8081/headers through istio-ingressgateway")
    assert body.split()[1] == "/headers" and body.split()[2] == "localhost:8081", body
    for _ in range(10):
        assert _get(classic, "/headers", host="localhost:8081")[0] == 200
    assert _get(classic, "/other", host="localhost:8081")[0] == 404  # no VirtualService rule matches

    def inbound_per_node() -> set[str]:
        nodes = set()
        for node in cluster.layout.nodes:
            text = (cluster.state / "logs" / f"ztunnel-{node.name}.log")
            lines = text.read_text(errors="replace").splitlines() if text.exists() else []
            if any("connection complete" in ln and 'direction="inbound"' in ln and f'src.identity="{CLASSIC_ID}"' in ln
                   for ln in lines):
                nodes.add(node.name)
        return nodes

    assert wait_for(lambda: len(inbound_per_node()) == 2 and inbound_per_node(), timeout=15,
                    what="both node proxies logging the ingress identity")


def test_walkthrough_l4_deny_for_the_ingress_identity_resets_it(cluster: Cluster, classic: int) -> None:
    api = cluster.api
    api.create({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "deny-classic", "namespace": NS},
                "spec": {"selector": {"matchLabels": {"app": "echo"}}, "action": "DENY",
                         "rules": [{"from": [{"source": {"principals": [CLASSIC_ID.removeprefix("spiffe://")]}}]}]}})
    try:
        status, body = wait_for(lambda: (r := _get(classic, "/headers", host="localhost:8081"))[0] != 200 and r,
                                timeout=15, what="the DENY refusing the ingress")
        assert status == 503 and "upstream connect error" in body, (status, body)
    finally:
        api.delete("AuthorizationPolicy", "deny-classic", NS)
    wait_for(lambda: _get(classic, "/headers", host="localhost:8081")[0] == 200, timeout=15, what="200 again")


def test_classic_https_server_answers_with_the_credential_certificate(cluster: Cluster, classic: int) -> None:
    """Istio's secure-ingress task on the classic gateway: a server with tls.mode SIMPLE and credentialName
    (a kubernetes.io/tls Secret in istio-system) terminates TLS on 443 with that certificate."""
    api = cluster.api
    api.create({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": "web-credential", "namespace": "istio-system"},
                "data": {"tls.crt": base64.b64encode((cluster.certs / "server.crt").read_bytes()).decode(),
                         "tls.key": base64.b64encode((cluster.certs / "server.key").read_bytes()).decode()}})
    api.create({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                "metadata": {"name": "secure-gateway", "namespace": NS},
                "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
                    {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": [HOST],
                     "tls": {"mode": "SIMPLE", "credentialName": "web-credential"}}]}})
    api.create({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "secure", "namespace": NS},
                "spec": {"hosts": [HOST], "gateways": ["secure-gateway"],
                         "http": [{"route": [{"destination": {"host": "echo-v1", "port": {"number": 80}}}]}]}})
    port = _free_port()
    forward = cluster.ambient_popen("port-forward", "-n", "istio-system", "svc/istio-ingressgateway", f"{port}:443")
    ctx = ssl.create_default_context(cafile=str(cluster.certs / "ca.crt"))

    def fetch() -> tuple[bytes, dict[str, Any]] | None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
                    ctx.wrap_socket(sock, server_hostname=HOST) as tls:
                tls.sendall(f"GET /secure HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
                return data, dict(tls.getpeercert() or {})
        except (OSError, ssl.SSLError):
            return None  # listener not bound yet / port-forward starting

    try:
        data, peer = wait_for(lambda: (r := fetch()) and r[0].startswith(b"HTTP/1.1 200") and r, timeout=30,
                              what="HTTPS 200 through the classic gateway's 443")
        assert ("DNS", HOST) in peer["subjectAltName"]
        assert b"/secure" in data
    finally:
        forward.terminate()
        forward.wait(timeout=10)
        for kind, name, ns in (("VirtualService", "secure", NS), ("IstioGateway", "secure-gateway", NS),
                               ("Secret", "web-credential", "istio-system")):
            api.delete(kind, name, ns)
