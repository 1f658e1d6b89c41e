"""Kubernetes defaults as the real `kubectl` sees them (in-process API server on loopback TLS; skipped without
kubectl): `describe` prints the probe defaults, `get -o jsonpath` the Service and Deployment defaults, a
server dry run answers them, `diff` of an unchanged manifest is empty (client-side and server-side), and a
patch that removes a defaulted field gets it back; error texts name Istio's Gateway as kubectl users write it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator

import pytest

from ambient.api.server import ApiServer, serve_in_thread
from helpers import KUBECTL, needs_kubectl

pytestmark = needs_kubectl

POD = """
apiVersion: v1
kind: Pod
metadata: {name: probed, namespace: default}
spec:
  containers:
  - name: app
    image: whoami:1.0
    ports: [{containerPort: 8080}]
    livenessProbe:
      httpGet: {port: 8080, path: /healthz}
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 2
"""

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: whoami}]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    state = tmp_path_factory.mktemp("kdef")
    (state / "cluster.json").write_text('{"name": "kdefaults"}')
    with serve_in_thread(state, tls="127.0.0.1:0") as srv:
        yield srv


def kubectl(server: ApiServer, *args: str, stdin: str | None = None, ok: tuple[int, ...] = (0,)) -> str:
    assert KUBECTL is not None
    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig_path), "HOME": str(server.state_dir)}
    proc = subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True, timeout=30, input=stdin)
    assert proc.returncode in ok, f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr}{proc.stdout}"
    return proc.stdout + proc.stderr


def jsonpath(server: ApiServer, kind: str, name: str, path: str) -> str:
    return kubectl(server, "get", kind, name, "-n", "default", "-o", f"jsonpath={path}")


def test_describe_shows_the_probe_defaults(server: ApiServer) -> None:
    kubectl(server, "apply", "-f", "-", stdin=POD)
    out = kubectl(server, "describe", "pod", "probed", "-n", "default")
    # kubectl up to 1.31 prints `#success=1 #failure=3`, later ones `successThreshold=1 failureThreshold=3`
    thresholds = r"(#success|successThreshold)=1 (#failure|failureThreshold)=3"
    assert re.search(r"Liveness: +http-get http://:8080/healthz delay=0s timeout=1s period=10s " + thresholds, out), out
    # The readiness period is the user's; the rest is defaulted.
    assert re.search(r"Readiness: +tcp-socket :8080 delay=0s timeout=1s period=2s " + thresholds, out), out
    pod = json.loads(kubectl(server, "get", "pod", "probed", "-n", "default", "-o", "json"))
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert (spec["restartPolicy"], spec["dnsPolicy"], spec["schedulerName"], spec["enableServiceLinks"],
            spec["serviceAccountName"], spec["securityContext"]) == (
        "Always", "ClusterFirst", "default-scheduler", True, "default", {})
    assert (container["imagePullPolicy"], container["terminationMessagePath"], container["terminationMessagePolicy"],
            container["ports"][0]["protocol"]) == ("IfNotPresent", "/dev/termination-log", "File", "TCP")
    # kubectl's client-side apply of the same manifest: nothing to change, nothing to diff.
    assert "pod/probed unchanged" in kubectl(server, "apply", "-f", "-", stdin=POD)
    kubectl(server, "diff", "-f", "-", stdin=POD)
    kubectl(server, "delete", "pod", "probed", "-n", "default")


def test_service_defaults_and_user_values(server: ApiServer) -> None:
    kubectl(server, "apply", "-f", "-", stdin=SERVICE)
    got = jsonpath(server, "svc", "web", "{.spec.type} {.spec.sessionAffinity} {.spec.internalTrafficPolicy} "
                   "{.spec.ipFamilyPolicy} {.spec.ipFamilies[0]} {.spec.ports[0].protocol} {.spec.ports[0].targetPort}")
    assert got == "ClusterIP None Cluster SingleStack IPv4 TCP 80"
    kubectl(server, "diff", "-f", "-", stdin=SERVICE)
    # A value the user sets wins over the default, and brings its own defaults along.
    kubectl(server, "apply", "-f", "-", stdin=SERVICE.replace("  ports:", "  sessionAffinity: ClientIP\n  ports:"))
    assert jsonpath(server, "svc", "web", "{.spec.sessionAffinity} "
                    "{.spec.sessionAffinityConfig.clientIP.timeoutSeconds}") == "ClientIP 10800"
    kubectl(server, "delete", "svc", "web", "-n", "default")


def test_deployment_server_side_apply_dry_run_and_patch(server: ApiServer) -> None:
    dry = json.loads(kubectl(server, "create", "--dry-run=server", "-o", "json", "-f", "-", stdin=DEPLOYMENT))
    assert dry["spec"]["strategy"] == {"type": "RollingUpdate",
                                       "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    assert "NotFound" in kubectl(server, "get", "deploy", "web", "-n", "default", ok=(1,))  # nothing stored
    kubectl(server, "apply", "--server-side", "-f", "-", stdin=DEPLOYMENT)
    got = jsonpath(server, "deploy", "web", "{.spec.replicas} {.spec.revisionHistoryLimit} "
                   "{.spec.progressDeadlineSeconds} {.spec.strategy.rollingUpdate.maxSurge} "
                   "{.spec.template.spec.containers[0].imagePullPolicy}")
    assert got == "1 10 600 25% Always"  # an untagged image is pulled Always
    rv = jsonpath(server, "deploy", "web", "{.metadata.resourceVersion}")
    kubectl(server, "diff", "--server-side", "-f", "-", stdin=DEPLOYMENT)
    kubectl(server, "apply", "--server-side", "-f", "-", stdin=DEPLOYMENT)
    assert jsonpath(server, "deploy", "web", "{.metadata.resourceVersion}") == rv  # re-apply: no write
    # Removing a defaulted field brings the default back.
    kubectl(server, "patch", "deploy", "web", "-n", "default", "--type=json",
            "-p", '[{"op": "remove", "path": "/spec/revisionHistoryLimit"}]')
    assert jsonpath(server, "deploy", "web", "{.spec.revisionHistoryLimit}") == "10"
    kubectl(server, "delete", "deploy", "web", "-n", "default")


def test_istio_gateway_errors_name_the_kind_as_users_write_it(server: ApiServer) -> None:
    out = kubectl(server, "get", "gateways.networking.istio.io", "nope", "-n", "default", ok=(1,))
    assert 'gateways.networking.istio.io "nope" in namespace "default" not found' in out, out
    assert "IstioGateway" not in out
    bad = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  bogus: 1
  servers: [{port: {number: 80, protocol: HTTP, name: http}, hosts: ["*"]}]
"""
    for args in (("apply",), ("apply", "--server-side")):  # create, server-side apply
        out = kubectl(server, *args, "-f", "-", stdin=bad, ok=(1,))
        assert 'Gateway.networking.istio.io default/gw: strict decoding error: unknown field "spec.bogus"' in out, out
    kubectl(server, "apply", "-f", "-", stdin=bad.replace("  bogus: 1\n", ""))
    out = kubectl(server, "apply", "-f", "-", stdin=bad, ok=(1,))  # a patch of the stored one
    assert 'unknown field "spec.bogus"' in out and "IstioGateway" not in out, out
    out = kubectl(server, "explain", "gateways.networking.istio.io")
    assert "Gateway (networking.istio.io/v1)" in out and "IstioGateway" not in out, out
    kubectl(server, "delete", "gateways.networking.istio.io", "gw", "-n", "default")
