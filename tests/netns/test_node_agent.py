"""The node agent in a real 1-node local cluster ("t11a"): capture at pod start, label enroll/un-enroll,
both backends, restart (SIGKILL), fail closed, proxy NACK -> pending -> enabled.

The node proxy is a stand-in: the real proxy-side ZDS client (`ZdsClient`) in a thread of the test
process, which records Adds / Dels / snapshots and, like the real proxy, opens a listener on 15001 inside
each pod netns it is given. Traffic goes only to addresses inside the cluster's namespaces (it is
redirected inside the pod netns before it could go anywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import ECHO_CLIENT, ECHO_SERVER, in_netns

from ambient.api.client import ApiClient
from ambient.cluster import layout as L
from ambient.cluster import lifecycle, network, processes
from ambient.cni.apply import dump_rules, probe_ipset_entries, verify_pod_redirection
from ambient.cni.rules import RedirectConfig, normalize_iptables_save, parse_iptables_save, pod_iptables_rules
from ambient.inpod.netns import run_in_netns
from ambient.inpod.zds import Backoff, ZdsClient
from ambient.inpod.zds_codec import WorkloadInfo
from helpers import wait_for

pytestmark = pytest.mark.root

CLUSTER = "t11a"
STATUS = "ambient.istio.io/redirection"
LABEL = "istio.io/dataplane-mode"
SO_ORIGINAL_DST = 80
SO_MARK = getattr(socket, "SO_MARK", 36)


# --- stand-in node proxy ------------------------------------------------------------------------------------
@dataclass
class StandInProxy:
    """Real ZDS client; listeners on 15001 in each pod netns; records what the agent told it."""

    socket_path: Path
    adds: list[tuple[str, WorkloadInfo, int]] = field(default_factory=list)  # (uid, info, netns inode)
    dels: list[str] = field(default_factory=list)
    snapshots: list[frozenset[str]] = field(default_factory=list)
    listeners: dict[str, socket.socket] = field(default_factory=dict)  # 15001 (outbound) per pod uid
    inbound: dict[str, socket.socket] = field(default_factory=dict)  # 15006 (inbound plaintext) per pod uid
    nack_names: set[str] = field(default_factory=set)
    client: ZdsClient | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _task: asyncio.Task[None] | None = None
    _thread: threading.Thread | None = None

    async def _on_add(self, uid: str, info: WorkloadInfo, fd: int) -> None:
        if info.name in self.nack_names:
            raise RuntimeError(f"stand-in proxy refuses {info.name}")
        inode = os.fstat(fd).st_ino

        def listen(port: int) -> socket.socket:  # created inside the pod netns, like the real proxy's listeners
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, 1337)
            s.bind(("0.0.0.0", port))
            s.listen(16)
            return s

        self._close(uid)
        self.listeners[uid] = run_in_netns(fd, lambda: listen(15001), name="standin-proxy")
        self.inbound[uid] = run_in_netns(fd, lambda: listen(15006), name="standin-proxy")
        self.adds.append((uid, info, inode))

    def _close(self, uid: str) -> None:
        for table in (self.listeners, self.inbound):
            s = table.pop(uid, None)
            if s is not None:
                s.close()

    async def _on_del(self, uid: str) -> None:
        self.dels.append(uid)
        self._close(uid)

    async def _on_snapshot_done(self, keep: frozenset[str]) -> None:
        self.snapshots.append(keep)
        for uid in set(self.listeners) - keep:
            self._close(uid)

    def start(self) -> None:
        started = threading.Event()

        def main() -> None:
            async def run() -> None:
                self._loop = asyncio.get_running_loop()
                self.client = ZdsClient(self.socket_path, on_add=self._on_add, on_del=self._on_del,
                                        on_snapshot_done=self._on_snapshot_done, backoff=Backoff(0.01, 0.3))
                self._task = asyncio.current_task()
                started.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.client.run()

            asyncio.run(run())

        self._thread = threading.Thread(target=main, name="standin-proxy", daemon=True)
        self._thread.start()
        assert started.wait(10)

    def stop(self) -> None:
        """Idempotent."""
        if self._loop is not None and self._task is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: already stopped
                self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread is not None:
            self._thread.join(10)
        for uid in list(self.listeners):
            self._close(uid)

    def added(self, uid: str) -> list[int]:
        return [inode for u, _, inode in self.adds if u == uid]


# --- helpers --------------------------------------------------------------------------------------------------
@dataclass
class Env:
    layout: L.ClusterLayout
    api: ApiClient
    proxy: StandInProxy
    node: L.NodeLayout

    @property
    def agent(self) -> str:
        return f"node-agent-{self.node.name}"


def force_cleanup() -> None:
    names = network.cluster_netns(CLUSTER)
    processes.kill_netns_processes(names)
    network.destroy_network(CLUSTER)


def make_pod(env: Env, name: str, ns: str, *, labels: dict[str, str] | None = None,
             annotations: dict[str, str] | None = None) -> None:
    env.api.create({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": ns, "labels": labels or {},
                                 "annotations": annotations or {}},
                    "spec": {"nodeName": env.node.name, "containers": [{"name": "app", "command": ["sleep", "600"]}]}})


def running(env: Env, name: str, ns: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(lambda: (p := env.api.get("Pod", name, ns)) and (p.get("status") or {}).get("phase") == "Running"
                    and p, timeout=timeout, what=f"pod {ns}/{name} Running")


def annotation(env: Env, name: str, ns: str) -> str | None:
    return ((env.api.get("Pod", name, ns)["metadata"].get("annotations")) or {}).get(STATUS)


def wait_annotation(env: Env, name: str, ns: str, value: str | None, timeout: float = 20) -> None:
    wait_for(lambda: annotation(env, name, ns) == value or None, timeout=timeout, what=f"{ns}/{name} {STATUS}={value}")


def netns_of(env: Env, pod: dict[str, Any]) -> str:
    return str(L.netns_path(L.pod_netns_name(env.layout.name, pod["metadata"]["uid"])))


BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def _ipt_rules(text: str) -> list[str]:
    """Rules and user chains of an iptables-save dump. Empty built-in chains/tables are not rules:
    iptables-nft leaves them behind once a table was used, even when every rule is deleted."""
    out = []
    for line in normalize_iptables_save(text).splitlines():
        user_chain = line.startswith(":") and line[1:].split()[0] not in BUILTIN_CHAINS
        if line.startswith(("-A ", "*")) or user_chain:
            out.append(line)
    tables: list[str] = []
    for line in out:  # keep a table header only if something of it follows
        if line.startswith("*") and tables and tables[-1].startswith("*"):
            tables.pop()
        tables.append(line)
    if tables and tables[-1].startswith("*"):
        tables.pop()
    return tables


def _nft_rules(text: str) -> list[str]:
    skip = ("table ", "chain ", "type ", "}", "policy ")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(skip)]


def comparable_dump(netns: str) -> dict[str, Any]:
    d = dump_rules(netns)
    return {"iptables": _ipt_rules(d["iptables"]), "ip6tables": _ipt_rules(d["ip6tables"]),
            "nft": _nft_rules(d["nft"]), "rules": d["rules"], "routes": d["routes"]}


CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(sys.argv[3].encode())
c.shutdown(socket.SHUT_WR)
print(c.recv(100).decode())
"""


def outbound_through_proxy(env: Env, pod: dict[str, Any], dst: tuple[str, int] = ("10.244.1.250", 9999)
                           ) -> tuple[tuple[str, int], bytes, str]:
    """App in the pod connects to `dst`; the stand-in's 15001 listener must accept it.
    Returns (original destination seen via SO_ORIGINAL_DST, bytes received, what the app got back)."""
    lst = env.proxy.listeners[pod["metadata"]["uid"]]
    lst.settimeout(15)
    app = subprocess.Popen(["nsenter", f"--net={netns_of(env, pod)}", "--", sys.executable, "-c", CLIENT,
                            dst[0], str(dst[1]), "hello-from-app"], stdout=subprocess.PIPE, text=True)
    try:
        conn, _ = lst.accept()
        with conn:
            conn.settimeout(10)
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, packed = struct.unpack("!2xH4s8x", raw)
            data = b""
            while chunk := conn.recv(100):
                data += chunk
            conn.sendall(b"from-proxy")
        out, _ = app.communicate(timeout=15)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    return (socket.inet_ntoa(packed), port), data, out.strip()


def kill_agent(env: Env) -> None:
    """SIGKILL the agent and keep it down (the cluster's supervisor would restart it at once otherwise)."""
    assert processes.kill_component(env.layout, env.agent), "the agent was not running"
    wait_for(lambda: env.agent not in processes.running_components(env.layout), timeout=10, what="agent dead")


def start_agent(env: Env, *extra: str) -> None:
    argv = processes.python_module_argv("ambient.cluster.node_agent", "--state-dir", env.layout.state_dir,
                                        "--node", env.node.name, *extra)
    processes.start_component(env.layout, env.agent, argv, netns=env.node.netns,
                              env={lifecycle.COMPONENT_MARKER_ENV: env.layout.state_dir})


def agent_log(env: Env) -> str:
    return processes.log_file(env.layout, env.agent).read_text(errors="replace")


def restart_agent(env: Env, *extra: str) -> None:
    """SIGKILL the agent, start it again, wait until the proxy got the new snapshot."""
    before = len(env.proxy.snapshots)
    kill_agent(env)
    start_agent(env, *extra)
    wait_for(lambda: len(env.proxy.snapshots) > before, timeout=30, what="snapshot from the restarted agent")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("t11a")
    made: Env | None = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMBIENT_REGISTRY_DIR", str(tmp / "registry"))
        state = tmp / "state"
        lifecycle.delete_cluster(CLUSTER, state)
        force_cleanup()
        try:
            result = lifecycle.create_cluster(CLUSTER, 1, state)
            layout = result.layout
            assert "node-agent-node-1" in result.components, result.skipped
            node = layout.nodes[0]
            # If a real node proxy is part of the cluster, the stand-in takes its place on the ZDS socket.
            processes.stop_component(layout, f"ztunnel-{node.name}")
            api = ApiClient(layout.api_socket)
            for ns, labels in (("mesh", {LABEL: "ambient"}), ("plain", {})):
                api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})
            made = Env(layout, api, StandInProxy(Path(node.run_dir) / "ztunnel.sock"), node)
            made.proxy.start()
            wait_for(lambda: made is not None and made.proxy.snapshots, timeout=15, what="first snapshot")
            yield made
        finally:
            try:
                if made is not None:  # tests may have replaced the proxy: stop the current one
                    made.proxy.stop()
                    made.api.close()
            finally:
                lifecycle.delete_cluster(CLUSTER, state)
                force_cleanup()


# --- tests ------------------------------------------------------------------------------------------------------
def test_plugin_chained_into_node_conflist(env: Env) -> None:
    import json

    conf = json.loads(env.node.cni_conflist_path.read_text())
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "ambient-cni"]
    ours = conf["plugins"][-1]
    assert ours["agent_run_dir"] == env.node.run_dir
    assert ours["api_socket"] == str(env.layout.api_socket)
    assert "kube-system" in ours["exclude_namespaces"]


def test_pod_in_enrolled_namespace_is_captured_from_start(env: Env) -> None:
    make_pod(env, "a1", "mesh")
    pod = running(env, "a1", "mesh")
    uid = pod["metadata"]["uid"]
    wait_annotation(env, "a1", "mesh", "enabled")
    netns = netns_of(env, pod)
    # the stand-in proxy got the pod's own netns
    assert env.proxy.added(uid) == [os.stat(netns).st_ino]
    info = next(i for u, i, _ in env.proxy.adds if u == uid)
    assert (info.name, info.namespace, info.service_account) == ("a1", "mesh", "default")
    # exact rule set (the rule builders), DNS capture on by default
    assert verify_pod_redirection(RedirectConfig(), "iptables", netns=netns) == []
    live = parse_iptables_save(dump_rules(netns)["iptables"])
    expected = pod_iptables_rules(RedirectConfig())
    for table, chains in expected.items():
        for chain, rules in chains.items():
            assert live[table][chain] == rules, (table, chain)
    # outbound TCP reaches the proxy's 15001 with the original destination intact
    orig, data, reply = outbound_through_proxy(env, pod)
    assert orig == ("10.244.1.250", 9999)
    assert data == b"hello-from-app"
    assert reply == "from-proxy"
    # the pod IP is in the node's probe ipset, owned by the pod uid
    entries = probe_ipset_entries(netns=str(env.node.netns_path))
    assert entries.get(pod["status"]["podIP"]) == uid
    log = agent_log(env)
    assert "pod mesh/a1: rules applied" in log and "pod mesh/a1: node proxy acked the pod" in log


def test_pod_in_plain_namespace_is_not_captured(env: Env) -> None:
    make_pod(env, "p1", "plain")
    pod = running(env, "p1", "plain")
    assert annotation(env, "p1", "plain") is None
    d = dump_rules(netns_of(env, pod))
    assert "ISTIO" not in d["iptables"] and "istio" not in d["nft"]
    assert not env.proxy.added(pod["metadata"]["uid"])


def test_inbound_lands_on_15006_and_node_probes_are_not_captured(env: Env) -> None:
    a1, p1 = running(env, "a1", "mesh"), running(env, "p1", "plain")
    ip, uid = a1["status"]["podIP"], a1["metadata"]["uid"]
    a1_ns, p1_ns = Path(netns_of(env, a1)).name, Path(netns_of(env, p1)).name
    # from the node (a kubelet probe): SNATed to 169.254.7.127, so it reaches the app uncaptured
    app = subprocess.Popen(in_netns(a1_ns, ECHO_SERVER, "8080"), stdout=subprocess.PIPE, text=True)
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"
        out = subprocess.run(in_netns(env.node.netns, ECHO_CLIENT, ip, "8080", "probe"), capture_output=True,
                             text=True, timeout=20, check=True)
        assert out.stdout.strip() == "169.254.7.127|probe"
    finally:
        app.kill()
        app.wait()
    # from another pod: captured inbound, delivered to the proxy's 15006 with the original destination
    lst = env.proxy.inbound[uid]
    lst.settimeout(15)
    client = subprocess.Popen(in_netns(p1_ns, ECHO_CLIENT, ip, "8080", "inbound"), stdout=subprocess.PIPE, text=True)
    try:
        conn, peer = lst.accept()
        with conn:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, packed = struct.unpack("!2xH4s8x", raw)
            assert (socket.inet_ntoa(packed), port) == (ip, 8080)
            assert peer[0] == p1["status"]["podIP"]
            conn.settimeout(10)
            data = b""
            while not data.endswith(b"\n"):  # read it all: closing with unread data would reset the client
                data += conn.recv(100) or b"\n"
            assert data == b"inbound\n"
            conn.sendall(b"via-15006")
        out2, _ = client.communicate(timeout=15)
        assert out2 == "via-15006"
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()


def test_label_enroll_and_unenroll_running_pod(env: Env) -> None:
    make_pod(env, "b1", "plain")
    pod = running(env, "b1", "plain")
    uid, netns = pod["metadata"]["uid"], netns_of(env, pod)
    started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    before = comparable_dump(netns)
    assert "ISTIO" not in before["iptables"]

    # 1) namespace label enrolls the running pod
    env.api.patch("Namespace", "plain", None, {"metadata": {"labels": {LABEL: "ambient"}}})
    wait_annotation(env, "b1", "plain", "enabled")
    assert verify_pod_redirection(RedirectConfig(), "iptables", netns=netns) == []
    assert env.proxy.added(uid) == [os.stat(netns).st_ino]
    orig, _, _ = outbound_through_proxy(env, pod)
    assert orig == ("10.244.1.250", 9999)

    # 2) pod label `none` un-enrolls it: rules fully removed, proxy told, ipset entry and annotation gone
    env.api.patch("Pod", "b1", "plain", {"metadata": {"labels": {LABEL: "none"}}})
    wait_annotation(env, "b1", "plain", None)
    wait_for(lambda: uid in env.proxy.dels, timeout=10, what="Del for b1")
    assert comparable_dump(netns) == before
    assert pod["status"]["podIP"] not in probe_ipset_entries(netns=str(env.node.netns_path))

    # 3) namespace unlabelled, pod labelled ambient: enrolled by the pod label alone
    env.api.patch("Namespace", "plain", None, {"metadata": {"labels": {LABEL: None}}})
    env.api.patch("Pod", "b1", "plain", {"metadata": {"labels": {LABEL: "ambient"}}})
    wait_annotation(env, "b1", "plain", "enabled")
    assert verify_pod_redirection(RedirectConfig(), "iptables", netns=netns) == []

    # 4) label removed: removed again, no trace left
    env.api.patch("Pod", "b1", "plain", {"metadata": {"labels": {LABEL: None}}})
    wait_annotation(env, "b1", "plain", None)
    wait_for(lambda: env.proxy.dels.count(uid) == 2, timeout=10, what="second Del for b1")
    assert comparable_dump(netns) == before
    # never restarted
    now = env.api.get("Pod", "b1", "plain")
    assert now["status"]["containerStatuses"][0]["state"]["running"]["startedAt"] == started
    assert now["status"]["containerStatuses"][0]["restartCount"] == 0
    log = agent_log(env)
    assert "namespace plain enabled in the mesh" in log and "namespace plain disabled in the mesh" in log


def test_agent_sigkill_restart_keeps_rules_and_replays_snapshot(env: Env) -> None:
    pod = running(env, "a1", "mesh")
    uid, netns = pod["metadata"]["uid"], netns_of(env, pod)
    before = comparable_dump(netns)
    restart_agent(env)
    assert uid in env.proxy.snapshots[-1]
    assert comparable_dump(netns) == before  # still there, not duplicated
    assert verify_pod_redirection(RedirectConfig(), "iptables", netns=netns) == []
    assert annotation(env, "a1", "mesh") == "enabled"
    assert "pod mesh/a1: rules verified" in agent_log(env)
    orig, _, _ = outbound_through_proxy(env, pod)
    assert orig == ("10.244.1.250", 9999)


def test_proxy_restart_gets_a_snapshot_and_pods_stay_captured(env: Env) -> None:
    pod = running(env, "a1", "mesh")
    uid = pod["metadata"]["uid"]
    env.proxy.stop()
    env.proxy = StandInProxy(env.proxy.socket_path)  # a fresh proxy process knows nothing
    env.proxy.start()
    wait_for(lambda: env.proxy.snapshots, timeout=15, what="snapshot for the new proxy")
    assert uid in env.proxy.snapshots[0]
    assert env.proxy.added(uid) == [os.stat(netns_of(env, pod)).st_ino]
    orig, data, _ = outbound_through_proxy(env, pod)
    assert orig == ("10.244.1.250", 9999) and data == b"hello-from-app"


def test_fail_closed_while_agent_is_down(env: Env) -> None:
    kill_agent(env)
    try:
        make_pod(env, "c1", "mesh")
        def refused() -> dict[str, Any] | None:
            p = env.api.get("Pod", "c1", "mesh")
            return p if "node agent not reachable" in str((p.get("status") or {}).get("message")) else None

        pod = wait_for(refused, timeout=20, what="c1 Pending with the reason")
        assert pod["status"]["phase"] == "Pending"
        assert not pod["status"].get("podIP")
    finally:
        start_agent(env)
    pod = running(env, "c1", "mesh", timeout=40)
    wait_annotation(env, "c1", "mesh", "enabled")
    netns = netns_of(env, pod)
    assert verify_pod_redirection(RedirectConfig(), "iptables", netns=netns) == []
    assert env.proxy.added(pod["metadata"]["uid"]) == [os.stat(netns).st_ino]


def test_proxy_nack_leaves_pod_pending_then_enabled(env: Env) -> None:
    env.proxy.nack_names.add("d1")
    make_pod(env, "d1", "mesh")
    # Rules in place but the proxy refused: the CNI ADD fails (Istio's partial add), the pod does not start.
    def refused() -> dict[str, Any] | None:
        p = env.api.get("Pod", "d1", "mesh")
        return p if "node proxy has not acknowledged" in str((p.get("status") or {}).get("message")) else None

    pod = wait_for(refused, timeout=20, what="d1 Pending with the reason")
    assert pod["status"]["phase"] == "Pending"
    wait_annotation(env, "d1", "mesh", "pending")
    assert verify_pod_redirection(RedirectConfig(), "iptables", netns=netns_of(env, pod)) == []
    env.proxy.nack_names.discard("d1")
    wait_annotation(env, "d1", "mesh", "enabled")
    pod = running(env, "d1", "mesh", timeout=40)  # the runtime's retry of the sandbox now succeeds
    assert env.proxy.added(pod["metadata"]["uid"])
    assert probe_ipset_entries(netns=str(env.node.netns_path)).get(pod["status"]["podIP"]) == pod["metadata"]["uid"]


def test_pod_deletion_cleans_up(env: Env) -> None:
    pod = running(env, "d1", "mesh")
    uid, ip = pod["metadata"]["uid"], pod["status"]["podIP"]
    assert probe_ipset_entries(netns=str(env.node.netns_path)).get(ip) == uid
    env.api.delete("Pod", "d1", "mesh")
    wait_for(lambda: uid in env.proxy.dels, timeout=20, what="Del for the deleted pod")
    wait_for(lambda: ip not in probe_ipset_entries(netns=str(env.node.netns_path)), timeout=10,
             what="ipset entry removed")


def test_nftables_backend_and_annotation_overrides(env: Env) -> None:
    restart_agent(env, "--backend", "nftables")
    # pods captured by the iptables agent were switched over on restart, not doubled
    a1 = running(env, "a1", "mesh")
    assert verify_pod_redirection(RedirectConfig(), "nftables", netns=netns_of(env, a1)) == []
    make_pod(env, "n1", "mesh", annotations={"ambient.istio.io/dns-capture": "false",
                                              "ambient.istio.io/bypass-inbound-capture": "true"})
    pod = running(env, "n1", "mesh")
    wait_annotation(env, "n1", "mesh", "enabled")
    netns = netns_of(env, pod)
    cfg = RedirectConfig(dns_capture=False, inbound_capture=False)
    assert verify_pod_redirection(cfg, "nftables", netns=netns) == []
    d = dump_rules(netns)
    assert "ISTIO" not in d["iptables"] and "istio-ambient-raw" not in d["nft"]  # no DNS capture: no raw table
    orig, data, _ = outbound_through_proxy(env, pod, ("10.244.1.251", 8443))
    assert orig == ("10.244.1.251", 8443) and data == b"hello-from-app"
    restart_agent(env)  # back to iptables for whatever runs next
    assert verify_pod_redirection(cfg, "iptables", netns=netns) == []
