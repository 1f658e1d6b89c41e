"""The whole mesh in a real local cluster: node agents capture enrolled pods, node proxies carry their
traffic through HBONE with identities from the control plane's CA, and policies from the API hold.

One 2-node cluster ("mesh") for the module: a server in namespace "shop" on node-2, a meshed client in
namespace "client" on node-1, and an un-meshed client in namespace "plain" on node-1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import in_pod, pod_manifest, wait_ready, whoami_pod

from ambient.api.client import ApiClient
from ambient.cluster import lifecycle, network, processes
from ambient.runtime.accesslog import parse_fields
from helpers import wait_for

pytestmark = pytest.mark.root

CLUSTER = "mesh"
ENROLL = {"istio.io/dataplane-mode": "ambient"}
URL = "http://web.shop:8080/"


def _force_cleanup() -> None:
    names = network.cluster_netns(CLUSTER)
    processes.kill_netns_processes(names)
    network.destroy_network(CLUSTER)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("mesh")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMBIENT_REGISTRY_DIR", str(tmp / "registry"))
        state = tmp / "state"
        _force_cleanup()
        try:
            result = lifecycle.create_cluster(CLUSTER, 2, state)
            wanted = ("apiserver", "controlplane", "ztunnel-node-1", "node-agent-node-1", "kubelet-node-2")
            assert all(c in result.components for c in wanted), result.components
            with ApiClient(result.layout.api_socket) as api:
                for ns, labels in (("shop", ENROLL), ("client", ENROLL), ("plain", {})):
                    api.create({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": ns, "labels": labels}})
                server = whoami_pod("web", node="node-2", labels={"app": "web"})
                server["metadata"]["namespace"] = "shop"
                api.create(server)
                api.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
                            "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080, "targetPort": "http"}]}})
                for ns in ("client", "plain"):
                    api.create(pod_manifest("curl", ["sleep", "infinity"], node="node-1", ns=ns))
                pods = {ns: wait_ready(api, name, ns, timeout=60)
                        for ns, name in (("shop", "web"), ("client", "curl"), ("plain", "curl"))}
                for ns in ("shop", "client"):
                    wait_for(lambda ns=ns: _annotation(api, ns) == "enabled", 30, f"{ns} pod captured")
                yield {"layout": result.layout, "api": api, "pods": pods, "state": state}
        finally:
            # Keep the component and pod logs for post-mortems (pytest keeps the last few tmp dirs).
            with contextlib.suppress(OSError):
                shutil.copytree(state / "logs", tmp / "logs", dirs_exist_ok=True, ignore_dangling_symlinks=True)
            with contextlib.suppress(Exception):
                lifecycle.delete_cluster(CLUSTER, state)
            _force_cleanup()


def _annotation(api: ApiClient, ns: str) -> str | None:
    pod = api.get("Pod", "web" if ns == "shop" else "curl", ns)
    return (pod["metadata"].get("annotations") or {}).get("ambient.istio.io/redirection")


def _curl(mesh: dict[str, Any], ns: str, url: str = URL) -> subprocess.CompletedProcess[str]:
    return in_pod(mesh["layout"], mesh["pods"][ns], ["curl", "-sS", "-m", "5", url])


def _access_lines(mesh: dict[str, Any], node: str) -> list[dict[str, str]]:
    log = Path(mesh["state"]) / "logs" / f"ztunnel-{node}.log"
    return [parse_fields(line) for line in log.read_text().splitlines() if "\taccess\t" in line]


def _apply(mesh: dict[str, Any], obj: dict[str, Any]) -> None:
    mesh["api"].apply(obj)


def _policy(name: str, spec: dict[str, Any], kind: str = "AuthorizationPolicy") -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": kind, "metadata": {"name": name, "namespace": "shop"},
            "spec": spec}


def _log_tails(mesh: dict[str, Any], *components: str, lines: int = 25) -> str:
    """The last lines of components' logs, for a failure message (what the control plane and proxies did)."""
    out = []
    for name in components:
        log = Path(mesh["state"]) / "logs" / f"{name}.log"
        text = log.read_text(errors="replace") if log.exists() else "(no log)"
        out.append(f"--- {name}:\n" + "\n".join(text.splitlines()[-lines:]))
    return "\n".join(out)


def _until_exit(mesh: dict[str, Any], ns: str, code: int, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + timeout
    while True:
        proc = _curl(mesh, ns)
        if proc.returncode == code or time.monotonic() > deadline:
            return proc
        time.sleep(0.3)


def test_meshed_request_goes_through_hbone_with_identities_and_dns(mesh: dict[str, Any]) -> None:
    proc = _curl(mesh, "client")  # by DNS name: answered by the node proxy's DNS proxy on 15053
    assert proc.returncode == 0, proc.stderr
    client_ip = mesh["pods"]["client"]["status"]["podIP"]
    assert proc.stdout == f"web {client_ip}"  # the app sees the real client pod IP

    server_ip = mesh["pods"]["shop"]["status"]["podIP"]
    # Each proxy logs a connection when it closes, which may be a moment after curl returned.
    outbound = wait_for(lambda: [f for f in _access_lines(mesh, "node-1") if f.get("direction") == "outbound"],
                        5, "the client proxy's access line")
    inbound = wait_for(lambda: [f for f in _access_lines(mesh, "node-2") if f.get("direction") == "inbound"],
                       5, "the server proxy's access line")
    for lines in (outbound, inbound):
        assert lines, "no access-log line"
        last = lines[-1]
        assert last["src.identity"] == "spiffe://cluster.local/ns/client/sa/default"
        assert last["dst.identity"] == "spiffe://cluster.local/ns/shop/sa/default"
        assert last["dst.addr"] == f"{server_ip}:15008"
        assert last["dst.hbone_addr"] == f"{server_ip}:8080"
        assert last["dst.service"] == "web.shop.svc.cluster.local"
        assert "error" not in last
        assert int(last["bytes_recv"]) > 0


def test_node_proxy_metrics_from_the_cli(mesh: dict[str, Any]) -> None:
    assert _curl(mesh, "client").returncode == 0
    env = dict(os.environ, AMBIENT_STATE_DIR=str(mesh["state"]), AMBIENT_CLUSTER=CLUSTER)
    out = subprocess.run([sys.executable, "-m", "ambient", "zc", "metrics", "--node", "node-2"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    opened = [line for line in out.stdout.splitlines()
              if line.startswith("istio_tcp_connections_opened_total{") and 'reporter="destination"' in line]
    assert opened and any('destination_workload_namespace="shop"' in line for line in opened), out.stdout[:2000]


def test_deny_policy_resets_the_client_and_names_the_policy(mesh: dict[str, Any]) -> None:
    deny = {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["client"]}}]}]}
    _apply(mesh, _policy("deny-client", deny))
    try:
        proc = _until_exit(mesh, "client", 56)
        assert proc.returncode == 56, (proc.returncode, proc.stderr)  # L4 deny = connection reset
        errors = [f["error"] for f in _access_lines(mesh, "node-2") if "error" in f]
        assert "connection closed due to policy rejection: denied by policy shop/deny-client" in errors
    finally:
        mesh["api"].delete("AuthorizationPolicy", "deny-client", "shop")
    assert _until_exit(mesh, "client", 0).returncode == 0


def test_allow_policy_denies_everyone_else(mesh: dict[str, Any]) -> None:
    allow_other = {"action": "ALLOW",
                   "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/other/sa/x"]}}]}]}
    _apply(mesh, _policy("allow-other", allow_other))
    try:
        assert _until_exit(mesh, "client", 56).returncode == 56
        errors = [f["error"] for f in _access_lines(mesh, "node-2") if "error" in f]
        assert any("allow policies exist, but none allowed" in e for e in errors), errors
        allow_client = {"action": "ALLOW",
                        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/client/sa/default"]}}]}]}
        _apply(mesh, _policy("allow-client", allow_client))
        assert _until_exit(mesh, "client", 0).returncode == 0  # one ALLOW matching is enough
    finally:
        for name in ("allow-other", "allow-client"):
            with contextlib.suppress(Exception):
                mesh["api"].delete("AuthorizationPolicy", name, "shop")
    assert _until_exit(mesh, "client", 0).returncode == 0


def test_strict_peer_authentication_refuses_plaintext_only(mesh: dict[str, Any]) -> None:
    # PERMISSIVE (the default): a client outside the mesh reaches the meshed server in plaintext (via 15006).
    assert _until_exit(mesh, "plain", 0).returncode == 0
    _apply(mesh, _policy("default", {"mtls": {"mode": "STRICT"}}, kind="PeerAuthentication"))
    try:
        assert _until_exit(mesh, "plain", 56).returncode == 56
        assert _curl(mesh, "client").returncode == 0  # mTLS clients are still admitted
    finally:
        mesh["api"].delete("PeerAuthentication", "default", "shop")
    assert _until_exit(mesh, "plain", 0).returncode == 0


def test_unenrolled_namespace_is_released(mesh: dict[str, Any]) -> None:
    api = mesh["api"]
    before = len(_access_lines(mesh, "node-1"))
    api.patch("Namespace", "client", None, {"metadata": {"labels": {"istio.io/dataplane-mode": None}}})
    try:
        wait_for(lambda: _annotation(api, "client") is None, 30, "client pod released")
        server_before = len(_access_lines(mesh, "node-2"))
        proc = _curl(mesh, "client")
        assert proc.returncode == 0, proc.stderr
        # The positive signal: the server's proxy logs the connection as arriving in plaintext from the pod's own
        # address (through the client's node proxy it would come over HBONE, with the client's identity).
        client_ip = mesh["pods"]["client"]["status"]["podIP"]
        inbound = wait_for(lambda: [f for f in _access_lines(mesh, "node-2")[server_before:]
                                    if f.get("direction") == "inbound"
                                    and f.get("src.addr", "").startswith(f"{client_ip}:")],
                           10, "the server proxy's line for the released pod's request")
        assert "src.identity" not in inbound[-1], inbound[-1]
        outbound = [f for f in _access_lines(mesh, "node-1")[before:] if f.get("direction") == "outbound"]
        assert not outbound, "a released pod's traffic must not go through its node proxy"
    finally:
        api.patch("Namespace", "client", None, {"metadata": {"labels": ENROLL}})
        wait_for(lambda: _annotation(api, "client") == "enabled", 30, "client pod captured again")


def _rule_dump(mesh: dict[str, Any], ns: str) -> list[str]:
    out = in_pod(mesh["layout"], mesh["pods"][ns], ["iptables-save"], check=True).stdout
    return sorted(line for line in out.splitlines() if line.startswith("-A"))


def test_agent_and_proxies_killed_and_restarted_keep_pods_captured(mesh: dict[str, Any]) -> None:
    layout = mesh["layout"]
    rules_before = _rule_dump(mesh, "client")
    assert any("--to-ports 15001" in r for r in rules_before)
    for name in ("node-agent-node-1", "ztunnel-node-1", "ztunnel-node-2"):
        lifecycle.restart_component(layout, name, kill=True)
    before = len(_access_lines(mesh, "node-1"))
    assert _until_exit(mesh, "client", 0, timeout=30).returncode == 0
    # The new proxy carried it (captured, through HBONE): a fresh outbound line with identities.
    outbound = wait_for(
        lambda: [f for f in _access_lines(mesh, "node-1")[before:] if f.get("direction") == "outbound"],
        5, "an outbound access line from the restarted proxy")
    assert outbound[-1]["dst.identity"] == "spiffe://cluster.local/ns/shop/sa/default"
    assert _rule_dump(mesh, "client") == rules_before  # repaired/kept, never duplicated


def test_control_plane_outage_keeps_traffic_then_resyncs(mesh: dict[str, Any]) -> None:
    layout = mesh["layout"]
    pid = processes.running_components(layout)["controlplane"]
    import os
    import signal

    os.kill(pid, signal.SIGKILL)
    try:
        results = []
        for _ in range(10):  # 10 new meshed connections over ~3 s with the control plane gone
            results.append(_curl(mesh, "client").returncode)
            time.sleep(0.3)
        assert results == [0] * 10
    finally:
        lifecycle.restart_component(layout, "controlplane")
    # Back: the proxies resync, and a policy made after the outage is enforced.
    deny = {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["client"]}}]}]}
    _apply(mesh, _policy("after-outage", deny))
    try:
        denied = _until_exit(mesh, "client", 56, timeout=30)
        assert denied.returncode == 56, (denied, _log_tails(mesh, "controlplane", "ztunnel-node-2"))
    finally:
        mesh["api"].delete("AuthorizationPolicy", "after-outage", "shop")
    assert _until_exit(mesh, "client", 0).returncode == 0
