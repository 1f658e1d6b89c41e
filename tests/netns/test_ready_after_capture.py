"""A captured pod is not Ready before its node proxy serves it, in a real 1-node local cluster ("rdy1").

The node agent is killed, a pod of an enrolled namespace is created (its CNI ADD fails: Pending), the agent is
started again: from then on, every time the pod is observed Ready, a meshed connection to it (from a meshed
client pod, through both proxies) succeeds. The CNI ADD only succeeds once the proxy acknowledged the pod.
A running pod enrolled while the node proxy is down is not Ready (RedirectionPending) until it is served.
The pods declare no ports and no readinessProbe, so they are Ready as soon as they run (as in Kubernetes).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_fixtures import in_pod, is_ready, local_cluster, pod_manifest, wait_ready, whoami_pod

from ambient.api.client import ApiClient
from ambient.cluster import lifecycle, processes
from helpers import wait_for

pytestmark = pytest.mark.root

CLUSTER = "rdy1"
ENROLL = {"istio.io/dataplane-mode": "ambient"}
AGENT = "node-agent-node-1"
STATUS = "ambient.istio.io/redirection"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("rdy1")
    with local_cluster(CLUSTER, tmp, 1, require=(AGENT, "ztunnel-node-1")) as (layout, api, state):
        for ns in ("rdy", "rdyclient"):
            api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": ENROLL}})
        api.create(pod_manifest("curl", ["sleep", "infinity"], ns="rdyclient"))
        client = wait_ready(api, "curl", "rdyclient", timeout=60)
        wait_for(lambda: _annotation(api, "curl", "rdyclient") == "enabled", 30, "client captured")
        yield {"layout": layout, "api": api, "client": client, "state": state}


def _annotation(api: ApiClient, name: str, ns: str) -> str | None:
    return (api.get("Pod", name, ns)["metadata"].get("annotations") or {}).get(STATUS)


def _kill_agent(layout: Any) -> None:
    """SIGKILL the node agent and keep it down (no supervisor restart) until `_start_agent`."""
    kill = getattr(processes, "kill_component", None)  # also stops supervision where there is one
    if kill is not None:
        assert kill(layout, AGENT)
        return
    pid = processes.running_components(layout)[AGENT]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: AGENT not in processes.running_components(layout), 10, "agent dead")


def test_pod_created_while_the_agent_was_down_is_ready_only_when_served(env: dict[str, Any]) -> None:
    api, layout = env["api"], env["layout"]
    _kill_agent(layout)
    try:
        pod = whoami_pod("web", labels={"app": "web"})
        pod["metadata"]["namespace"] = "rdy"
        # No declared ports, no readinessProbe: Ready as soon as it runs (as in Kubernetes), so only the CNI
        # ADD stands between "Ready" and "served" (a port check from the node would be captured until then).
        pod["spec"]["containers"][0]["ports"] = []
        api.create(pod)

        def refused() -> dict[str, Any] | None:
            p = api.get("Pod", "web", "rdy")
            return p if "node agent not reachable" in str((p.get("status") or {}).get("message")) else None

        assert wait_for(refused, 30, "web Pending with the reason")["status"]["phase"] == "Pending"
        # A long outage, as in the field: the node proxy's ZDS reconnect back-off grows meanwhile, so after the
        # restart the agent listens well before the proxy is back.
        time.sleep(12)
    finally:
        lifecycle.restart_component(layout, AGENT)
    restarted = time.monotonic()
    ready_seen, failures = 0, []
    deadline = restarted + 90
    while ready_seen < 3 and time.monotonic() < deadline:
        p = api.get("Pod", "web", "rdy")
        if is_ready(p):
            ip = p["status"]["podIP"]
            proc = in_pod(layout, env["client"], ["curl", "-sS", "-m", "5", f"http://{ip}:8080/"])
            if proc.returncode != 0:
                status = _annotation(api, "web", "rdy")
                failures.append(f"{time.monotonic() - restarted:.1f}s after the restart: curl exit "
                                f"{proc.returncode} {proc.stderr.strip()} (annotation {status})")
            else:
                assert proc.stdout.startswith("web "), proc.stdout
                ready_seen += 1
        time.sleep(0.1)
    assert not failures, f"Ready before the meshed path worked: {failures}"
    assert ready_seen == 3, "the pod never became Ready after the agent restart"
    assert _annotation(api, "web", "rdy") == "enabled"
    print(f"\nrdy1: Ready and served {time.monotonic() - restarted:.1f}s after the agent restart")


def _kill(layout: Any, name: str) -> None:
    kill = getattr(processes, "kill_component", None)
    if kill is not None:
        assert kill(layout, name)
        return
    os.kill(processes.running_components(layout)[name], signal.SIGKILL)
    wait_for(lambda: name not in processes.running_components(layout), 10, f"{name} dead")


def _ready_only_when_served(env: dict[str, Any], name: str, ns: str, since: float) -> float:
    """Poll until the pod was seen Ready 3 times; each time a meshed request to it must succeed."""
    api, layout = env["api"], env["layout"]
    ready_seen, failures = 0, []
    deadline = since + 90
    while ready_seen < 3 and time.monotonic() < deadline:
        p = api.get("Pod", name, ns)
        if is_ready(p):
            proc = in_pod(layout, env["client"], ["curl", "-sS", "-m", "5", f"http://{p['status']['podIP']}:8080/"])
            if proc.returncode != 0:
                failures.append(f"{time.monotonic() - since:.1f}s: curl exit {proc.returncode} {proc.stderr.strip()} "
                                f"(annotation {_annotation(api, name, ns)})")
            else:
                assert proc.stdout.startswith(f"{name} "), proc.stdout
                ready_seen += 1
        time.sleep(0.1)
    assert not failures, f"Ready before the meshed path worked: {failures}"
    assert ready_seen == 3, f"{ns}/{name} never became Ready again"
    return time.monotonic() - since


def test_pod_enrolled_while_the_proxy_is_down_is_not_ready_until_served(env: dict[str, Any]) -> None:
    api, layout = env["api"], env["layout"]
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "rdylate"}})
    pod = whoami_pod("late")
    pod["metadata"]["namespace"] = "rdylate"
    pod["spec"]["containers"][0]["ports"] = []  # Ready as soon as it runs: only the mesh can hold it back
    api.create(pod)
    wait_ready(api, "late", "rdylate", timeout=60)
    _kill(layout, "ztunnel-node-1")
    try:
        api.patch("Namespace", "rdylate", None, {"metadata": {"labels": ENROLL}})

        def pending() -> dict[str, Any] | None:
            p = api.get("Pod", "late", "rdylate")
            ready = next(c for c in p["status"]["conditions"] if c["type"] == "Ready")
            return p if ready.get("reason") == "RedirectionPending" else None

        p = wait_for(pending, 30, "late not Ready: captured while its node proxy is down")
        assert _annotation(api, "late", "rdylate") == "pending" and not is_ready(p)
        containers = next(c for c in p["status"]["conditions"] if c["type"] == "ContainersReady")
        assert containers["status"] == "True"
    finally:
        lifecycle.restart_component(layout, "ztunnel-node-1")
    took = _ready_only_when_served(env, "late", "rdylate", time.monotonic())
    assert _annotation(api, "late", "rdylate") == "enabled"
    print(f"\nrdy1: enrolled pod Ready and served {took:.1f}s after the proxy restart")
