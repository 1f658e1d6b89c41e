"""A captured pod is not Ready before its node proxy serves it, in a real 1-node local cluster ("rdy1").

The node agent is killed, a pod of an enrolled namespace is created (its CNI ADD fails: Pending), the agent is
started again: from then on, every time the pod is observed Ready, a meshed connection to it (from a meshed
client pod, through both proxies) succeeds. The CNI ADD only succeeds once the proxy acknowledged the pod.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from h8_helpers import in_pod, is_ready, pod_manifest, wait_for, wait_ready, whoami_pod

from ambient.api.client import ApiClient
from ambient.cluster import lifecycle, network, processes

pytestmark = pytest.mark.root

CLUSTER = "rdy1"
ENROLL = {"istio.io/dataplane-mode": "ambient"}
AGENT = "node-agent-node-1"
STATUS = "ambient.istio.io/redirection"


def _force_cleanup() -> None:
    processes.kill_netns_processes(network.cluster_netns(CLUSTER))
    network.destroy_network(CLUSTER)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("rdy1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMBIENT_REGISTRY_DIR", str(tmp / "registry"))
        state = tmp / "state"
        _force_cleanup()
        try:
            result = lifecycle.create_cluster(CLUSTER, 1, state)
            assert AGENT in result.components and "ztunnel-node-1" in result.components, result.components
            with ApiClient(result.layout.api_socket) as api:
                for ns in ("rdy", "rdyclient"):
                    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": ENROLL}})
                api.create(pod_manifest("curl", ["sleep", "infinity"], ns="rdyclient"))
                client = wait_ready(api, "curl", "rdyclient", timeout=60)
                wait_for(lambda: _annotation(api, "curl", "rdyclient") == "enabled", 30, "client captured")
                yield {"layout": result.layout, "api": api, "client": client, "state": state}
        finally:
            with contextlib.suppress(Exception):  # keep the logs for post-mortems
                shutil.copytree(state / "logs", tmp / "logs", dirs_exist_ok=True, ignore_dangling_symlinks=True)
            with contextlib.suppress(Exception):
                lifecycle.delete_cluster(CLUSTER, state)
            _force_cleanup()


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
