"""Telemetry and L7 answers against the reference behaviour, in a real local cluster ("tel1"): node proxies on
two nodes, a waypoint, a Deployment `web` and a bare client pod.

- Node proxies as ztunnel (`src/proxy/metrics.rs`, tests/namespaced.rs): a TCP exchange where the client
  sends 11 bytes and the server answers 22 is counted by both reporters with 11 in
  istio_tcp_received_bytes_total and 22 in istio_tcp_sent_bytes_total; the outbound line logs
  bytes_sent=11 bytes_recv=22, the inbound line bytes_sent=22 bytes_recv=11; string fields are quoted and
  src.cluster / dst.cluster are written; no `_created` series.
- The waypoint as Envoy: status line with Envoy's reason phrase (not the backend's), `x-request-id`
  generated, `x-forwarded-proto: http`, `x-forwarded-for` untouched; istio_requests_total names the
  Deployment, not the pod; a CUSTOM policy without an extension provider denies only what its rules match,
  a denied request keeps its destination_service, and the policy's status says why.

Traffic goes only to addresses inside the cluster's own network namespaces. The cluster is always deleted.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cluster_fixtures import ClusterEnv, create_web_deployment, local_cluster, ready_pod, sleeper_pod
from prometheus_client.parser import text_string_to_metric_families

from ambient.cluster import layout as L
from ambient.runtime.accesslog import parse_fields
from helpers import wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

CLUSTER = "tel1"
NS = "tel"
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

# HTTP on 8080: answers with the request headers as JSON, and a reason phrase Envoy would not write;
# TCP on 9000: reads 11 bytes, answers 22, closes.
WEB = r"""
import json, socket, threading, http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200, "Fine Thanks"); self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close"); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
def tcp():
    srv = socket.create_server(("0.0.0.0", 9000))
    while True:
        c, _ = srv.accept()
        got = b""
        while len(got) < 11:
            d = c.recv(11 - len(got))
            if not d:
                break
            got += d
        c.sendall(b"y" * 22)
        c.close()
threading.Thread(target=tcp, daemon=True).start()
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""

# Inside the client pod: one raw HTTP/1.1 GET; prints the status line and the body.
HTTP_GET = r"""
import json, socket, sys
host, path = sys.argv[1], sys.argv[2]
s = socket.create_connection((host, 80), timeout=10)
s.sendall(f"GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
data = b""
while chunk := s.recv(65536):
    data += chunk
head, _, body = data.partition(b"\r\n\r\n")
print(json.dumps({"line": head.split(b"\r\n")[0].decode(), "body": body.decode(errors="replace")}))
"""

# Inside the client pod: send 11 bytes, half-close, read everything back.
TCP_11_22 = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 9000), timeout=10)
s.sendall(b"x" * 11)
s.shutdown(socket.SHUT_WR)
got = b""
while chunk := s.recv(65536):
    got += chunk
print(len(got))
"""


class Cluster(ClusterEnv):
    """This module's cluster, with commands in a netns or a pod, the node proxies' access lines and metrics."""

    def in_netns(self, netns: str, *argv: str, timeout: float = 60) -> str:
        out = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                             timeout=timeout, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    def in_pod(self, pod: dict[str, Any], code: str, *args: str) -> str:
        return self.in_netns(L.pod_netns_name(CLUSTER, pod["metadata"]["uid"]), sys.executable, "-c", code, *args)

    def ztunnel_lines(self) -> list[str]:
        text = "".join(p.read_text(errors="replace") for p in sorted((self.state / "logs").glob("ztunnel*.log")))
        return [ln for ln in text.splitlines() if "\taccess\tconnection complete\t" in ln]

    def metrics(self, netns: str) -> str:
        code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15020/metrics').read().decode())"
        return self.in_netns(netns, sys.executable, "-c", code)


def _samples(text: str, name: str, **labels: str) -> list[float]:
    return [s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


@dataclass
class App:
    client: dict[str, Any]
    web: dict[str, Any]
    vip: str
    waypoint: dict[str, Any]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with local_cluster(CLUSTER, tmp_path_factory.mktemp(CLUSTER), 2,
                       require=("apiserver", "controller-manager", "controlplane")) as (layout, api, state):
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        yield Cluster(layout, api, state)


@pytest.fixture(scope="module")
def app(cluster: Cluster) -> App:
    run = cluster.ambient("waypoint", "apply", "-n", NS, "--enroll-namespace", "--wait", "--timeout", "60")
    assert run.returncode == 0, run.stderr
    api = cluster.api
    api.patch("Namespace", NS, None, {"metadata": {"labels": {"istio.io/dataplane-mode": "ambient"}}})
    nodes = [n.name for n in cluster.layout.nodes]
    api.create(sleeper_pod("client", NS, nodes[0], {"app": "client"}))
    create_web_deployment(api, NS, nodes[-1], WEB)
    client = wait_for(functools.partial(ready_pod, api, NS, "app=client"), timeout=60, what="client Ready")
    web = wait_for(functools.partial(ready_pod, api, NS, "app=web"), timeout=60, what="web Ready")
    waypoint = wait_for(functools.partial(ready_pod, api, NS, "gateway.networking.k8s.io/gateway-name=waypoint"),
                        timeout=60, what="waypoint Ready")
    vip = wait_for(lambda: api.get("Service", "web", NS)["spec"].get("clusterIP"), timeout=30, what="web VIP")
    return App(client, web, vip, waypoint)


def test_node_proxies_count_and_log_bytes_as_ztunnel(cluster: Cluster, app: App) -> None:
    web_ip = app.web["status"]["podIP"]
    # pod-addressed: client proxy -> web's proxy directly (the waypoint serves the Service only)
    got = wait_for(lambda: cluster.in_pod(app.client, TCP_11_22, web_ip).strip() == "22", timeout=30,
                   what="11 up, 22 down")
    assert got

    def lines(direction: str) -> list[dict[str, str]]:
        return [parse_fields(ln) for ln in cluster.ztunnel_lines()
                if f'direction="{direction}"' in ln and f"dst.hbone_addr={web_ip}:9000" in ln]

    out = wait_for(lambda: lines("outbound"), timeout=15, what="outbound access line")[-1]
    inn = wait_for(lambda: lines("inbound"), timeout=15, what="inbound access line")[-1]
    assert (out["bytes_sent"], out["bytes_recv"]) == ("11", "22")
    assert (inn["bytes_sent"], inn["bytes_recv"]) == ("22", "11")
    web_pod = app.web["metadata"]["name"]
    raw = [ln for ln in cluster.ztunnel_lines() if f"dst.hbone_addr={web_ip}:9000" in ln]
    for ln in raw:  # ztunnel quotes the string fields (tracing Debug formatting)
        assert 'src.workload="client"' in ln and f'dst.workload="{web_pod}"' in ln, ln
        assert f'src.namespace="{NS}"' in ln and f'dst.namespace="{NS}"' in ln, ln
        assert 'src.cluster="Kubernetes"' in ln and 'dst.cluster="Kubernetes"' in ln, ln
    # metrics: request bytes received, response bytes sent, for both reporters
    for node, reporter in ((1, "source"), (2, "destination")):
        text = cluster.metrics(L.node_netns_name(CLUSTER, node))
        labels = {"reporter": reporter, "source_workload": "client", "destination_workload": "web"}
        assert sum(_samples(text, "istio_tcp_received_bytes_total", **labels)) == 11, (reporter, text[-3000:])
        assert sum(_samples(text, "istio_tcp_sent_bytes_total", **labels)) == 22, reporter
        assert "_created" not in text


def _get(cluster: Cluster, app: App, path: str) -> dict[str, str]:
    return dict(json.loads(cluster.in_pod(app.client, HTTP_GET, app.vip, path)))


def test_waypoint_answers_and_forwards_as_envoy(cluster: Cluster, app: App) -> None:
    got = wait_for(lambda: (r := _get(cluster, app, "/hello")) and r["line"].startswith("HTTP/1.1 200") and r,
                   timeout=30, what="GET via the waypoint")
    assert got["line"] == "HTTP/1.1 200 OK"  # Envoy's phrase, not the backend's "Fine Thanks"
    seen = json.loads(got["body"])
    assert UUID4.fullmatch(seen["x-request-id"]), seen
    assert seen["x-forwarded-proto"] == "http"
    assert "x-forwarded-for" not in seen
    text = cluster.metrics(L.pod_netns_name(CLUSTER, app.waypoint["metadata"]["uid"]))
    ok = _samples(text, "istio_requests_total", reporter="waypoint", response_code="200",
                  source_workload="client", destination_workload="web")
    assert ok and sum(ok) >= 1, text[-3000:]
    assert not _samples(text, "istio_requests_total", destination_workload=app.web["metadata"]["name"])
    assert "_created" not in text


def test_custom_policy_without_provider_denies_only_its_matches(cluster: Cluster, app: App) -> None:
    cluster.api.create({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "ext-authz", "namespace": NS},
        "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "web"}], "action": "CUSTOM",
                 "provider": {"name": "opa"}, "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
    })
    denied = wait_for(lambda: (r := _get(cluster, app, "/admin/x")) and r["line"].startswith("HTTP/1.1 403") and r,
                      timeout=30, what="CUSTOM policy enforced")
    assert denied == {"line": "HTTP/1.1 403 Forbidden", "body": "RBAC: access denied\n"}
    assert _get(cluster, app, "/public")["line"] == "HTTP/1.1 200 OK"  # outside the policy's rules
    text = cluster.metrics(L.pod_netns_name(CLUSTER, app.waypoint["metadata"]["uid"]))
    assert _samples(text, "istio_requests_total", response_code="403", response_flags="RBAC",
                    destination_service=f"web.{NS}.svc.cluster.local"), text[-3000:]

    def condition() -> dict[str, Any] | None:
        obj = cluster.api.get("AuthorizationPolicy", "ext-authz", NS)
        return next(iter((obj.get("status") or {}).get("conditions") or []), None)

    cond = wait_for(condition, timeout=30, what="policy status condition")
    assert "'opa' is not defined" in cond["message"] and "deny the requests matching its rules" in cond["message"]
