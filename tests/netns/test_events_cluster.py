"""Kubernetes Events of a real local cluster ("evt1"), read with the real `kubectl` as a platform engineer
debugging a pod does: a pod whose readiness probe fails shows `Unhealthy` "Readiness probe failed: HTTP probe
failed with statuscode: 503" with a growing count, a crash-looping pod `BackOff` "Back-off restarting failed
container ...", a healthy pod Scheduled/Created/Started (and Killing when deleted), a Deployment
SuccessfulCreate, a node "Starting kubelet.".

Needs root and the kubectl binary (skipped without it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_fixtures import local_cluster, pod_manifest, wait_ready, whoami_pod

from ambient.api.client import ApiClient
from helpers import KUBECTL, needs_kubectl, wait_for

pytestmark = [pytest.mark.root, needs_kubectl]

CLUSTER = "evt1"

# Answers 503 to everything: a readiness probe that always fails.
UNAVAILABLE = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiClient, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp(CLUSTER)
    with local_cluster(CLUSTER, tmp, 1, require=("apiserver", "controller-manager")) as (_, api, state):
        out = subprocess.run([sys.executable, "-m", "ambient", "cluster", "kubeconfig", "--name", CLUSTER,
                              "--state-dir", str(state)], capture_output=True, text=True, check=True)
        env = dict(os.environ, KUBECONFIG=out.stdout.strip(), HOME=str(tmp))
        yield api, env


def kubectl(env: dict[str, str], *args: str) -> str:
    assert KUBECTL is not None
    proc = subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def events_section(env: dict[str, str], kind: str, name: str) -> str:
    out = kubectl(env, "describe", kind, name)
    return out[out.index("Events:"):]


def repeated(section: str, reason: str, message: str) -> int:
    """The count `kubectl describe` shows for the event line of `reason` + `message` ("5s (x3 over 9s)"), 1 for
    an event seen once, 0 when there is none."""
    for line in section.splitlines():
        if reason in line.split() and message in line:
            found = re.search(r"\(x(\d+) over ", line)
            return int(found.group(1)) if found else 1
    return 0


def test_a_failing_readiness_probe_shows_as_repeated_unhealthy_events(
        cluster: tuple[ApiClient, dict[str, str]]) -> None:
    api, env = cluster
    pod = pod_manifest("sick", ["python3", "-c", UNAVAILABLE, "8080"], ports=[{"containerPort": 8080}])
    pod["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": 8080},
                                                      "periodSeconds": 1}
    api.create(pod)
    message = "Readiness probe failed: HTTP probe failed with statuscode: 503"
    section = wait_for(lambda: (s := events_section(env, "pod", "sick")) and repeated(s, "Unhealthy", message) > 1
                       and s, 60, "kubectl describe pod to show Unhealthy more than once")
    line = next(line for line in section.splitlines() if "Unhealthy" in line)
    assert line.split()[0] == "Warning" and "kubelet" in line
    items = json.loads(kubectl(env, "get", "events", "--field-selector", "involvedObject.name=sick,reason=Unhealthy",
                               "-o", "json"))["items"]
    (event,) = items
    assert event["involvedObject"]["fieldPath"] == "spec.containers{app}" and event["count"] > 1
    assert event["source"]["component"] == "kubelet" and event["source"]["host"]


def test_a_crash_looping_pod_shows_back_off_events(cluster: tuple[ApiClient, dict[str, str]]) -> None:
    api, env = cluster
    created = api.create(pod_manifest("crash", ["sh", "-c", "echo bye; exit 3"]))
    message = f"Back-off restarting failed container app in pod crash_default({created['metadata']['uid']})"
    section = wait_for(lambda: (s := events_section(env, "pod", "crash")) and repeated(s, "BackOff", message) > 1
                       and s, 90, "kubectl describe pod to show BackOff more than once")
    assert next(line for line in section.splitlines() if "BackOff" in line).split()[0] == "Warning"
    assert repeated(section, "Started", "Started container app") > 1  # each restart, counted on one event
    out = kubectl(env, "get", "events", "--field-selector", "involvedObject.name=crash,type=Warning")
    assert "BackOff" in out and "pod/crash" in out


def test_a_missing_executable_is_a_failed_event(cluster: tuple[ApiClient, dict[str, str]]) -> None:
    api, env = cluster
    api.create(pod_manifest("typo", ["/no/such/binary"]))
    wait_for(lambda: repeated(events_section(env, "pod", "typo"), "Failed",
                              "Error: executable not found: /no/such/binary") >= 1,
             60, "the Failed event of a container that cannot start")


def test_a_healthy_pod_is_scheduled_created_started_then_killed(cluster: tuple[ApiClient, dict[str, str]]) -> None:
    api, env = cluster
    api.create(whoami_pod("calm"))
    pod = wait_ready(api, "calm", timeout=60)
    node = pod["spec"]["nodeName"]
    section = wait_for(lambda: (s := events_section(env, "pod", "calm")) and "Started" in s and s, 30,
                       "the Started event")
    assert repeated(section, "Scheduled", f"Successfully assigned default/calm to {node}") == 1
    assert repeated(section, "Created", "Created container: app") == 1
    assert repeated(section, "Started", "Started container app") == 1
    assert "default-scheduler" in section
    kubectl(env, "delete", "pod", "calm", "--wait=false")
    wait_for(lambda: "Stopping container app" in kubectl(env, "get", "events", "--field-selector",
                                                           "involvedObject.name=calm,reason=Killing"),
             60, "the Killing event of the deleted pod")


def test_deployment_and_node_events(cluster: tuple[ApiClient, dict[str, str]]) -> None:
    api, env = cluster
    template: dict[str, Any] = {"metadata": {"labels": {"app": "web"}},
                                "spec": {"containers": [{"name": "web", "command": ["sleep", "infinity"]}]}}
    api.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": template}})
    section = wait_for(lambda: (s := events_section(env, "deployment", "web")) and "SuccessfulCreate" in s and s, 60,
                       "the Deployment's SuccessfulCreate event")
    assert re.search(r"deployment-controller\s+Created pod: web-\w{5}", section), section
    (node,) = api.list("Node")[0]
    section = events_section(env, "node", node["metadata"]["name"])
    assert "Starting kubelet." in section and "NodeReady" in section
