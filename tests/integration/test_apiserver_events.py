"""Kubernetes Events through the API server and the real `kubectl` (in-process server, loopback TLS only).

Events are written as the cluster's components write them (`ambient.cluster.events.EventRecorder` over the
API socket), then read as a platform engineer reads them: `kubectl get events` (table, -o wide, field
selectors, -w), `kubectl events --for`, `kubectl describe pod|deployment|node`; and the store keeps them
bounded: per-object cap, overall cap, TTL. Skipped when kubectl is not installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ambient.api import events as ev
from ambient.api.client import ApiClient, AsyncApiClient
from ambient.api.server import ApiServer, serve_in_thread
from ambient.cluster.events import EventRecorder
from helpers import KUBECTL, needs_kubectl, wait_for

pytestmark = needs_kubectl

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  containers: [{name: app, command: [python3, -m, http.server]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers: [{name: api, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Node
metadata: {name: node-1}
"""
READINESS = "Readiness probe failed: HTTP probe failed with statuscode: 503"


def _server(tmp: Path, **kwargs: Any) -> Iterator[ApiServer]:
    (tmp / "cluster.json").write_text('{"name": "evtest"}')
    with serve_in_thread(tmp, tls="127.0.0.1:0", **kwargs) as srv:
        yield srv


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    yield from _server(tmp_path_factory.mktemp("ev"))


def kubectl(server: ApiServer, *args: str, stdin: str | None = None) -> str:
    assert KUBECTL is not None
    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig_path), "HOME": str(server.state_dir)}
    proc = subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True, timeout=30, input=stdin)
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def record(server: ApiServer, script: Callable[[Callable[..., EventRecorder]], Any]) -> None:
    """Run `script(recorder_for)` against the server's socket, then write everything it recorded."""

    async def main() -> None:
        async with AsyncApiClient(server.socket_path) as client:
            recorders: list[EventRecorder] = []

            def recorder_for(component: str, host: str | None = None) -> EventRecorder:
                recorders.append(EventRecorder(client, component, host))
                return recorders[-1]

            await script(recorder_for)
            for r in recorders:
                await r.drain()
                assert r.dropped == 0

    asyncio.run(main())


def _get(server: ApiServer, kind: str, name: str, ns: str | None = None) -> dict[str, Any]:
    with ApiClient(server.socket_path) as api:
        return api.get(kind, name, ns)


@pytest.fixture(scope="module")
def recorded(server: ApiServer) -> dict[str, Any]:
    kubectl(server, "apply", "-f", "-", stdin=MANIFESTS)
    pod, deploy = _get(server, "Pod", "web", "shop"), _get(server, "Deployment", "api", "shop")

    async def script(recorder_for: Callable[..., EventRecorder]) -> None:
        sched = recorder_for("default-scheduler", None)
        kubelet = recorder_for("kubelet", "node-1")
        ctrl = recorder_for("deployment-controller", None)
        sched.event(pod, ev.NORMAL, "Scheduled", "Successfully assigned shop/web to node-1")
        kubelet.event(pod, ev.NORMAL, "Created", "Created container: app", ev.container_path("app"))
        kubelet.event(pod, ev.NORMAL, "Started", "Started container app", ev.container_path("app"))
        for _ in range(4):
            kubelet.event(pod, ev.WARNING, "Unhealthy", READINESS, ev.container_path("app"))
        ctrl.event(deploy, ev.NORMAL, "SuccessfulCreate", "Created pod: api-x7k2p")
        kubelet.event({"kind": "Node", "metadata": {"name": "node-1", "uid": "node-1"}}, ev.NORMAL, "Starting",
                      "Starting kubelet.")

    record(server, script)
    return {"pod": pod, "deploy": deploy}


def test_kubectl_get_events_prints_kubernetes_columns(server: ApiServer, recorded: dict[str, Any]) -> None:
    lines = kubectl(server, "get", "events", "-n", "shop").splitlines()
    assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    unhealthy = next(line for line in lines if "Unhealthy" in line)
    assert "(x4 over" in unhealthy and "pod/web" in unhealthy and unhealthy.rstrip().endswith(READINESS)
    assert any("Scheduled" in line and "Successfully assigned shop/web to node-1" in line for line in lines)
    assert any("deployment/api" in line and "Created pod: api-x7k2p" in line for line in lines)
    wide = kubectl(server, "get", "events", "-n", "shop", "-o", "wide")
    assert "spec.containers{app}" in wide and "kubelet, node-1" in wide
    # a Node's events live in "default"
    assert "node/node-1" in kubectl(server, "get", "events", "-n", "default")
    items = json.loads(kubectl(server, "get", "events", "-n", "shop", "-o", "json"))["items"]
    unhealthy_ev = next(e for e in items if e["reason"] == "Unhealthy")
    assert unhealthy_ev["count"] == 4 and unhealthy_ev["type"] == "Warning"
    assert unhealthy_ev["involvedObject"]["uid"] == recorded["pod"]["metadata"]["uid"]
    assert unhealthy_ev["metadata"]["name"].startswith("web.")
    assert unhealthy_ev["reportingComponent"] == "kubelet" and unhealthy_ev["reportingInstance"] == "node-1"


def test_field_selectors_as_kubectl_and_users_send_them(server: ApiServer, recorded: dict[str, Any]) -> None:
    def reasons(selector: str) -> list[str]:
        out = kubectl(server, "get", "events", "-A", "--field-selector", selector, "-o",
                      "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}")
        return sorted(out.split())

    uid = recorded["pod"]["metadata"]["uid"]
    assert reasons(f"involvedObject.name=web,involvedObject.namespace=shop,involvedObject.uid={uid}") == [
        "Created", "Scheduled", "Started", "Unhealthy"]
    assert reasons("involvedObject.kind=Deployment") == ["SuccessfulCreate"]
    assert reasons("type=Warning") == ["Unhealthy"]
    assert reasons("reason=Started,involvedObject.fieldPath=spec.containers{app}") == ["Started"]
    assert reasons("source=default-scheduler") == ["Scheduled"]


def test_kubectl_describe_shows_the_events_of_a_pod_a_deployment_and_a_node(
        server: ApiServer, recorded: dict[str, Any]) -> None:
    described = kubectl(server, "describe", "pod", "web", "-n", "shop")
    events = described[described.index("Events:"):].splitlines()
    assert events[1].split() == ["Type", "Reason", "Age", "From", "Message"]
    assert any(line.split()[:2] == ["Normal", "Scheduled"] and "default-scheduler" in line for line in events)
    unhealthy = next(line for line in events if "Unhealthy" in line)
    assert "(x4 over" in unhealthy and "kubelet" in unhealthy and READINESS in unhealthy
    described = kubectl(server, "describe", "deployment", "api", "-n", "shop")
    assert "SuccessfulCreate" in described and "deployment-controller  Created pod: api-x7k2p" in described
    described = kubectl(server, "describe", "node", "node-1")
    assert "Starting kubelet." in described
    out = kubectl(server, "events", "-n", "shop", "--for", "pod/web")
    assert "Unhealthy" in out and "Created container: app" in out and "api-x7k2p" not in out


def test_kubectl_get_events_watch_shows_new_and_repeated_events(server: ApiServer, recorded: dict[str, Any]) -> None:
    assert KUBECTL is not None
    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig_path), "HOME": str(server.state_dir)}
    out = server.state_dir / "watch.out"
    with out.open("w") as sink:
        proc = subprocess.Popen([KUBECTL, "get", "events", "-n", "shop", "-w", "--request-timeout=60s"], env=env,
                                stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: "Created container: app" in out.read_text(), 20, "the watch's initial list")
        pod = recorded["pod"]

        async def script(recorder_for: Callable[..., EventRecorder]) -> None:
            kubelet = recorder_for("kubelet", "node-1")
            for _ in range(2):
                kubelet.event(pod, ev.WARNING, "BackOff", "Back-off restarting failed container app in pod "
                              f"web_shop({pod['metadata']['uid']})", ev.container_path("app"))

        record(server, script)
        wait_for(lambda: "(x2 over" in out.read_text() and "BackOff" in out.read_text(), 20,
                 "the watch to show the repeated BackOff")
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    yield from _server(tmp_path_factory.mktemp("evsmall"), event_limits=ev.EventLimits(ttl=3, per_object=3, total=5),
                       event_sweep_interval=0.3)


def test_the_store_caps_events_per_object_and_overall(small: ApiServer) -> None:
    kubectl(small, "apply", "-f", "-", stdin=MANIFESTS)
    pod = _get(small, "Pod", "web", "shop")
    deploy = _get(small, "Deployment", "api", "shop")

    async def script(recorder_for: Callable[..., EventRecorder]) -> None:
        kubelet = recorder_for("kubelet", "node-1")
        for i in range(6):  # six different messages: six Events about one pod
            kubelet.event(pod, ev.WARNING, "Failed", f"Error: executable not found: app{i}", ev.container_path("app"))

    record(small, script)
    items = json.loads(kubectl(small, "get", "events", "-n", "shop", "-o", "json"))["items"]
    assert sorted(e["message"] for e in items) == [f"Error: executable not found: app{i}" for i in (3, 4, 5)]

    async def more(recorder_for: Callable[..., EventRecorder]) -> None:
        ctrl = recorder_for("deployment-controller", None)
        for i in range(3):
            ctrl.event(deploy, ev.NORMAL, "SuccessfulCreate", f"Created pod: api-{i}")

    record(small, more)
    items = json.loads(kubectl(small, "get", "events", "-A", "-o", "json"))["items"]
    assert len(items) == 5  # overall: the oldest pod event went
    assert sorted(e["message"] for e in items) == [
        "Created pod: api-0", "Created pod: api-1", "Created pod: api-2",
        "Error: executable not found: app4", "Error: executable not found: app5"]


def test_events_expire_after_the_ttl(small: ApiServer) -> None:
    kubectl(small, "apply", "-f", "-", stdin=MANIFESTS)
    pod = _get(small, "Pod", "web", "shop")

    async def script(recorder_for: Callable[..., EventRecorder]) -> None:
        recorder_for("kubelet", "node-1").event(pod, ev.NORMAL, "Started", "ttl probe")

    record(small, script)
    assert "ttl probe" in kubectl(small, "get", "events", "-n", "shop")

    def expired() -> bool:
        with ApiClient(small.socket_path) as api:
            items, _ = api.list("Event", "shop", field_selector="message=ttl probe")
        return not items

    wait_for(expired, 15, "the event to expire after its 3 s TTL")
