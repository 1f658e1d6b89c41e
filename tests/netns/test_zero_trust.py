"""Zero trust end to end in a real local cluster: every L4 policy shape enforced by the
destination's node proxy, PeerAuthentication STRICT vs PERMISSIVE with a client outside the mesh, the
explain command agreeing with the proxy, and live revocation of 1,000 open connections.

One 2-node cluster ("zt") for the module:
- node-2: shop/web (app=web) serving HTTP on 8080 and 9090 and holding echo connections on 7001 / 7002;
  shop/db (app=db) serving HTTP on 8080;
- node-1: client/curl and other/curl (both enrolled, different namespaces), plain/curl (not enrolled:
  plaintext, lands on the server proxy's 15006).
Every policy test waits until the server's node proxy holds (or dropped) the policy, read from its admin
`/config_dump`, then checks traffic once: no timing guesses. A denial must be a reset (curl exit 56), an
access-log `error=` naming the policy, and a `response_flags="DENY"` metric.
"""

from __future__ import annotations

import contextlib
import json
import resource
import select
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster_fixtures import in_pod, pod_manifest, pod_netns, wait_ready

from ambient.api.client import ApiClient
from ambient.cli.context import CliState
from ambient.cluster import lifecycle, network, processes
from ambient.runtime.accesslog import parse_fields
from helpers import wait_for

pytestmark = pytest.mark.root

CLUSTER = "zt"
ENROLL = {"istio.io/dataplane-mode": "ambient"}
REJECT = "connection closed due to policy rejection: "
CLIENT_ID = "cluster.local/ns/client/sa/default"

SERVER = r"""
import asyncio, http.server, os, resource, sys, threading
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (os.environ.get("HOSTNAME", "?") + " " + self.client_address[0]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
for port in sys.argv[1:]:
    srv = http.server.ThreadingHTTPServer(("0.0.0.0", int(port)), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
async def echo(r, w):
    try:
        while data := await r.read(4096):
            w.write(data); await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def main():
    servers = [await asyncio.start_server(echo, "0.0.0.0", p, backlog=4096) for p in (7001, 7002)]
    await asyncio.Event().wait()
asyncio.run(main())
"""

# Holds N connections to each of two ports, proves each echoes, prints READY; on "GO" from stdin watches
# them all, records when each one is closed, then proves the survivors still echo; prints JSON.
HOLDER = r"""
import json, resource, selectors, socket, sys, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
ip, n, watch = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks = []
for port in (7001, 7002):
    for _ in range(n):
        s = socket.create_connection((ip, port), timeout=20)
        socks.append((port, s))
for _, s in socks:
    s.sendall(b"x")
for _, s in socks:
    assert s.recv(1) == b"x"
print("READY", flush=True)
sys.stdin.readline()
sel = selectors.DefaultSelector()
for i, (port, s) in enumerate(socks):
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, i)
closed = {}
deadline = time.time() + watch
while time.time() < deadline and len(closed) < len(socks):
    for key, _ in sel.select(timeout=0.05):
        i = key.data
        try:
            data = socks[i][1].recv(64)
        except OSError:
            data = b""
        if not data:
            closed[i] = time.time()
            sel.unregister(socks[i][1])
    if all(i in closed for i, (p, _) in enumerate(socks) if p == 7002):
        deadline = min(deadline, time.time() + 1.0)  # grace: would any survivor be cut too?
alive_ok = 0
for i, (port, s) in enumerate(socks):
    if i in closed:
        continue
    s.setblocking(True); s.settimeout(10)
    try:
        s.sendall(b"y")
        alive_ok += s.recv(1) == b"y"
    except OSError:
        pass
out = {"closed": {str(p): sorted(closed[i] for i, (q, _) in enumerate(socks) if q == p and i in closed)
                  for p in (7001, 7002)}, "alive_ok": alive_ok}
print(json.dumps(out), flush=True)
"""


def _force_cleanup() -> None:
    processes.kill_netns_processes(network.cluster_netns(CLUSTER))
    network.destroy_network(CLUSTER)


class Mesh:
    def __init__(self, layout: Any, api: ApiClient, state: Path, pods: dict[str, dict[str, Any]]) -> None:
        self.layout, self.api, self.state, self.pods = layout, api, state, pods
        self.applied: list[tuple[str, str, str]] = []
        self.races = 0  # denials curl reported as exit 7 (reset raced its connect check)

    def ip(self, who: str) -> str:
        return str(self.pods[who]["status"]["podIP"])

    # -- traffic
    def curl(self, who: str, to: str = "web", port: int = 8080) -> subprocess.CompletedProcess[str]:
        return in_pod(self.layout, self.pods[who], ["curl", "-sS", "-m", "5", f"http://{self.ip(to)}:{port}/"])

    def codes(self, *cases: tuple[str, str, int]) -> list[int]:
        return [self.curl(who, to, port).returncode for who, to, port in cases]

    # -- the server node proxy's view
    def dump(self, node: str = "node-2") -> dict[str, Any]:
        sock = Path(self.layout.node(node).run_dir) / "ztunnel-admin.sock"
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=10) as c:
            return c.get("http://ztunnel/config_dump").json()  # type: ignore[no-any-return]

    def proxy_policies(self) -> set[str]:
        return {f"{p['namespace']}/{p['name']}" for p in self.dump().get("policies", [])}

    def wait_policies(self, present: set[str], absent: set[str] = frozenset(), timeout: float = 20) -> float:  # type: ignore[assignment]
        def ok() -> bool:
            have = self.proxy_policies()
            return present <= have and not (absent & have)

        wait_for(ok, timeout, f"node-2 proxy policies {present} (without {absent})", interval=0.05)
        return time.time()

    def access(self, node: str = "node-2") -> list[dict[str, str]]:
        log = self.state / "logs" / f"ztunnel-{node}.log"
        return [parse_fields(ln) for ln in log.read_text().splitlines() if "\taccess\t" in ln]

    def deny_metric(self, node: str = "node-2") -> float:
        proc = subprocess.run(["ip", "netns", "exec", self.layout.node(node).netns, "curl", "-sS", "-m", "5",
                               "http://127.0.0.1:15020/metrics"], capture_output=True, text=True, timeout=10)
        total = 0.0
        for ln in proc.stdout.splitlines():
            if ln.startswith("istio_tcp_connections_closed_total{") and 'response_flags="DENY"' in ln \
                    and 'reporter="destination"' in ln:
                total += float(ln.rsplit(" ", 1)[1])
        return total

    # -- objects
    def apply(self, kind: str, name: str, ns: str, spec: dict[str, Any],
              annotations: dict[str, str] | None = None) -> str:
        meta: dict[str, Any] = {"name": name, "namespace": ns}
        if annotations:
            meta["annotations"] = annotations
        self.api.apply({"apiVersion": "security.istio.io/v1", "kind": kind, "metadata": meta, "spec": spec})
        self.applied.append((kind, name, ns))
        return f"{ns}/{name}"

    def clear(self) -> None:
        """Delete what this test applied and wait until the proxy dropped it."""
        keys = set()
        for kind, name, ns in self.applied:
            with contextlib.suppress(Exception):
                self.api.delete(kind, name, ns)
            if kind == "AuthorizationPolicy":
                keys.add(f"{ns}/{name}")
        self.applied.clear()
        try:
            self.wait_policies(set(), keys | {"istio-system/istio_converted_static_strict"})
        except AssertionError as exc:
            left = [o["metadata"]["name"] for o in self.api.list("AuthorizationPolicy")[0]]
            raise AssertionError(f"{exc}; proxy has {self.proxy_policies()}, API has {left}") from None


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("zt")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMBIENT_REGISTRY_DIR", str(tmp / "registry"))
        state = tmp / "state"
        _force_cleanup()
        try:
            result = lifecycle.create_cluster(CLUSTER, 2, state)
            assert "ztunnel-node-2" in result.components, result.components
            with ApiClient(result.layout.api_socket) as api:
                for ns, labels in (("shop", ENROLL), ("client", ENROLL), ("other", ENROLL), ("plain", {})):
                    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})
                api.create(pod_manifest("web", ["python3", "-c", SERVER, "8080", "9090"], node="node-2", ns="shop",
                                        labels={"app": "web"}, ports=[{"name": "http", "containerPort": 8080}]))
                api.create(pod_manifest("db", ["python3", "-c", SERVER, "8080"], node="node-2", ns="shop",
                                        labels={"app": "db"}, ports=[{"name": "http", "containerPort": 8080}]))
                for ns in ("client", "other", "plain"):
                    api.create(pod_manifest("curl", ["sleep", "infinity"], node="node-1", ns=ns))
                pods = {key: wait_ready(api, name, ns, timeout=60) for key, ns, name in
                        (("web", "shop", "web"), ("db", "shop", "db"), ("client", "client", "curl"),
                         ("other", "other", "curl"), ("plain", "plain", "curl"))}
                m = Mesh(result.layout, api, state, pods)
                for key in ("web", "db", "client", "other"):
                    wait_for(lambda key=key: _captured(api, pods[key]), 30, f"{key} captured")
                # Meshed and plaintext paths both work before any policy.
                wait_for(lambda: m.codes(("client", "web", 8080), ("other", "db", 8080),
                                         ("plain", "web", 8080)) == [0, 0, 0], 30, "baseline traffic")
                yield m
                print(f"\nzero-trust: denials curl reported as exit 7, not 56 (reset raced connect): {m.races}")
        finally:
            with contextlib.suppress(Exception):  # keep the logs for post-mortems
                shutil.copytree(state / "logs", tmp / "logs", dirs_exist_ok=True, ignore_dangling_symlinks=True)
            with contextlib.suppress(Exception):
                lifecycle.delete_cluster(CLUSTER, state)
            _force_cleanup()


def _captured(api: ApiClient, pod: dict[str, Any]) -> bool:
    meta = api.get("Pod", pod["metadata"]["name"], pod["metadata"]["namespace"])["metadata"]
    return (meta.get("annotations") or {}).get("ambient.istio.io/redirection") == "enabled"


@pytest.fixture
def zt(mesh: Mesh) -> Iterator[Mesh]:
    try:
        yield mesh
    finally:
        mesh.clear()


def _deny_errors(m: Mesh, since: int) -> list[str]:
    return [f["error"] for f in m.access()[since:] if "error" in f]


def _expect(m: Mesh, cases: list[tuple[str, str, int, int]], policy_reason: str | None = None) -> None:
    """cases: (client, server, port, expected curl exit). Denials must log `policy_reason` and count DENY."""
    before_lines, before_deny = len(m.access()), m.deny_metric()
    procs = [_attempt(m, c, s, p, e) for c, s, p, e in cases]
    got = [p.returncode for p in procs]
    assert got == [e for *_, e in cases], list(zip(cases, got, [p.stderr for p in procs], strict=True))
    denied = sum(1 for *_, e in cases if e == 56)
    if denied and policy_reason is not None:
        errors = wait_for(lambda: [e for e in _deny_errors(m, before_lines) if e == REJECT + policy_reason],
                          5, f"access-log error {policy_reason!r}")
        assert len(errors) >= denied
        wait_for(lambda: m.deny_metric() >= before_deny + denied, 5, 'response_flags="DENY" counted')


def _attempt(m: Mesh, who: str, to: str, port: int, expected: int) -> subprocess.CompletedProcess[str]:
    """One curl. A denial is a TCP reset: curl says 56 ("Recv failure: Connection reset by peer") when the
    reset comes after its connect() completed, but 7 ("Couldn't connect to server") when the proxy's reset
    (a few ms after accept) beats curl's own check of the connect result; on this loaded machine that race
    is common, so an expected reset retries a few times hoping for 56 and accepts 7 (the access log and
    the DENY metric prove it was the policy, not the network)."""
    proc = m.curl(who, to, port)
    for _ in range(3):
        if expected != 56 or proc.returncode != 7:
            break
        proc = m.curl(who, to, port)
    if expected == 56 and proc.returncode == 7:
        assert "Couldn't connect to server" in proc.stderr, proc.stderr
        proc.returncode = 56
        m.races += 1
    return proc


def _from(**source: Any) -> dict[str, Any]:
    return {"rules": [{"from": [{"source": source}]}]}


def test_workload_selector_deny_hits_only_the_selected_pod(zt: Mesh) -> None:
    key = zt.apply("AuthorizationPolicy", "deny-web", "shop",
                   {"action": "DENY", "selector": {"matchLabels": {"app": "web"}}, **_from(namespaces=["client"])})
    zt.wait_policies({key})
    _expect(zt, [("client", "web", 8080, 56), ("client", "db", 8080, 0), ("other", "web", 8080, 0)],
            f"denied by policy {key}")


def test_namespace_wide_and_mesh_wide_deny(zt: Mesh) -> None:
    ns_key = zt.apply("AuthorizationPolicy", "deny-client", "shop", {"action": "DENY", **_from(namespaces=["client"])})
    zt.wait_policies({ns_key})
    _expect(zt, [("client", "web", 8080, 56), ("client", "db", 8080, 56), ("other", "web", 8080, 0)],
            f"denied by policy {ns_key}")
    mesh_key = zt.apply("AuthorizationPolicy", "deny-other", "istio-system",
                        {"action": "DENY", **_from(namespaces=["other"])})
    zt.wait_policies({mesh_key})
    _expect(zt, [("other", "web", 8080, 56), ("other", "db", 8080, 56)], f"denied by policy {mesh_key}")
    assert any(p["scope"].lower() == "global" and p["name"] == "deny-other" for p in zt.dump()["policies"])


def test_allow_switches_on_default_deny_and_deny_beats_allow(zt: Mesh) -> None:
    allow = zt.apply("AuthorizationPolicy", "allow-client", "shop",
                     {"action": "ALLOW", **_from(principals=[CLIENT_ID])})
    zt.wait_policies({allow})
    _expect(zt, [("client", "web", 8080, 0), ("other", "web", 8080, 56), ("plain", "web", 8080, 56)],
            "allow policies exist, but none allowed")
    deny = zt.apply("AuthorizationPolicy", "deny-9090", "shop",
                    {"action": "DENY", "rules": [{"from": [{"source": {"principals": [CLIENT_ID]}}],
                                                  "to": [{"operation": {"ports": ["9090"]}}]}]})
    zt.wait_policies({allow, deny})
    _expect(zt, [("client", "web", 9090, 56), ("client", "web", 8080, 0)], f"denied by policy {deny}")


@pytest.mark.parametrize(
    ("source", "expect"),
    [
        ({"notPrincipals": [CLIENT_ID]}, {"client": 0, "other": 56, "plain": 56}),
        ({"notNamespaces": ["client"]}, {"client": 0, "other": 56, "plain": 56}),
        ({"ipBlocks": ["OTHER/32"]}, {"client": 0, "other": 56, "plain": 0}),
        ({"notIpBlocks": ["CLIENT/32"]}, {"client": 0, "other": 56, "plain": 56}),
    ],
    ids=["notPrincipals", "notNamespaces", "ipBlocks", "notIpBlocks"],
)
def test_source_fields_in_a_deny(zt: Mesh, source: dict[str, Any], expect: dict[str, int]) -> None:
    source = {k: [v.replace("OTHER", zt.ip("other")).replace("CLIENT", zt.ip("client")) for v in vals]
              for k, vals in source.items()}
    key = zt.apply("AuthorizationPolicy", "src", "shop", {"action": "DENY", **_from(**source)})
    zt.wait_policies({key})
    _expect(zt, [(who, "web", 8080, code) for who, code in expect.items()], f"denied by policy {key}")


def test_ports_and_not_ports(zt: Mesh) -> None:
    key = zt.apply("AuthorizationPolicy", "ports", "shop",
                   {"action": "ALLOW", "rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]})
    zt.wait_policies({key})
    _expect(zt, [("client", "web", 8080, 0), ("client", "web", 9090, 56)], "allow policies exist, but none allowed")
    zt.clear()
    key = zt.apply("AuthorizationPolicy", "not-ports", "shop",
                   {"action": "DENY", "rules": [{"to": [{"operation": {"notPorts": ["8080"]}}]}]})
    zt.wait_policies({key})
    _expect(zt, [("client", "web", 8080, 0), ("other", "web", 9090, 56)], f"denied by policy {key}")


def test_dry_run_only_logs_and_explain_agrees(zt: Mesh) -> None:
    key = zt.apply("AuthorizationPolicy", "dry", "shop", {"action": "DENY", **_from(namespaces=["client"])},
                   annotations={"istio.io/dry-run": "true"})
    wait_for(lambda: any(p["name"] == "dry" and p.get("dryRun") for p in zt.dump()["policies"]) or
             key in zt.proxy_policies(), 20, "dry-run policy at the proxy")
    before = len(zt.access())
    _expect(zt, [("client", "web", 8080, 0)])
    assert not _deny_errors(zt, before)
    doc = _explain(zt, "--from", "client/curl", "--to", "shop/web:8080")
    assert doc["allowed"] is True and doc["dryRun"] == {"allowed": False, "reason": f"denied by policy {key}"}


def test_strict_vs_permissive_with_a_client_outside_the_mesh(zt: Mesh) -> None:
    strict = "istio-system/istio_converted_static_strict"
    zt.apply("PeerAuthentication", "default", "shop", {"mtls": {"mode": "PERMISSIVE"}})
    _expect(zt, [("plain", "web", 8080, 0), ("client", "web", 8080, 0)])
    zt.apply("PeerAuthentication", "default", "shop", {"mtls": {"mode": "STRICT"}})
    zt.wait_policies({strict})
    wait_for(lambda: zt.curl("plain").returncode == 56, 15, "web referencing the STRICT policy")
    _expect(zt, [("plain", "web", 8080, 56), ("plain", "db", 8080, 56), ("client", "web", 8080, 0)],
            f"denied by policy {strict}")
    doc = _explain(zt, "--from", "plain/curl", "--to", "shop/web:8080")
    assert doc["allowed"] is False and doc["decidingPolicies"] == [strict]
    # DISABLE is accepted and acts as PERMISSIVE.
    zt.apply("PeerAuthentication", "default", "shop", {"mtls": {"mode": "DISABLE"}})
    wait_for(lambda: zt.curl("plain").returncode == 0, 15, "DISABLE admits plaintext again")
    doc = _explain(zt, "--from", "plain/curl", "--to", "shop/web:8080")
    assert doc["allowed"] is True and any("DISABLE is ignored" in n for n in doc["notes"])


def test_fail_closed_when_a_referenced_policy_is_missing(zt: Mesh) -> None:
    """Missing-policy fail-closed is enforced by the proxy's evaluator (unit- and testbed-tested, see
    test_zero_trust_failclosed.py); here the explain command, run against this live cluster with the same
    evaluator, shows the decision for a workload whose STRICT reference has not arrived."""
    zt.apply("PeerAuthentication", "default", "shop", {"mtls": {"mode": "STRICT"}})
    doc = _explain(zt, "--from", "client/curl", "--to", "shop/web:8080",
                   "--assume-missing", "istio-system/istio_converted_static_strict")
    assert doc["allowed"] is False and doc["missingPolicies"] == ["istio-system/istio_converted_static_strict"]
    assert "fail closed" in doc["reason"]


def _explain(m: Mesh, *args: str) -> dict[str, Any]:
    from typer.testing import CliRunner

    from ambient.cli.main import app

    class Lister:  # the CLI closes its client when done: hand it a view that does not own ours
        list = m.api.list

    res = CliRunner().invoke(app, ["--state-dir", str(m.state), "x", "authz", "check", *args, "-o", "json"],
                             obj=CliState(client_factory=lambda _s: Lister()), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)  # type: ignore[no-any-return]


def test_explain_matches_the_proxy_for_every_client(zt: Mesh) -> None:
    key = zt.apply("AuthorizationPolicy", "allow-client", "shop", {"action": "ALLOW", **_from(namespaces=["client"])})
    zt.wait_policies({key})
    for who, ns in (("client", "client"), ("other", "other"), ("plain", "plain")):
        doc = _explain(zt, "--from", f"{ns}/curl", "--to", "shop/web:8080", "--compare-proxy")
        assert doc["proxy"] == {"node": "node-2", "missing": [], "error": None}, doc["proxy"]
        assert (zt.curl(who).returncode == 0) is doc["allowed"], (who, doc)


def _log_time(line: str) -> float:
    """The local-time stamp that starts a component log line ("2026-11-22 03:52:25,158\t...")."""
    stamp = line.split("\t", 1)[0]
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:23]) / 1000


def test_revocation_of_1000_open_connections(zt: Mesh) -> None:
    n = 500
    holder = subprocess.Popen(
        ["ip", "netns", "exec", pod_netns(zt.layout, zt.pods["client"]), "python3", "-c", HOLDER,
         zt.ip("web"), str(n), "8"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        ready, _, _ = select.select([holder.stdout], [], [], 90)  # bounded: never hang the suite
        line = holder.stdout.readline() if ready else "(holder not ready in 90 s)"
        assert line.strip() == "READY", (line, holder.stderr.read() if holder.poll() is not None else "")
        t_apply = time.time()
        holder.stdin.write("GO\n")
        holder.stdin.flush()
        key = zt.apply("AuthorizationPolicy", "deny-7002", "shop",
                       {"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["7002"]}}]}]})
        t_arrived = zt.wait_policies({key}, timeout=20)
        out, _err = holder.communicate(timeout=60)
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    closed_denied = result["closed"]["7002"]
    assert len(closed_denied) == n, f"{len(closed_denied)}/{n} denied connections closed"
    assert result["closed"]["7001"] == [], "allowed connections must not be cut"
    assert result["alive_ok"] == n, "every allowed connection still echoes"
    # When did the policy reach the proxy? Polling its config_dump says "by then" (late by up to a poll);
    # the proxy re-evaluates live connections synchronously when the policy is applied to its store and
    # logs each cut, so its first "closing live connection" line is the earlier, tighter bound.
    cuts = [_log_time(ln) for ln in (zt.state / "logs" / "ztunnel-node-2.log").read_text().splitlines()
            if "closing live connection" in ln and key in ln]
    assert len(cuts) == n, f"the proxy logged {len(cuts)} revocations"
    t_arrived = min(t_arrived, *cuts)
    since_arrival = sorted(max(0.0, t - t_arrived) for t in closed_denied)
    since_apply = sorted(t - t_apply for t in closed_denied)
    p50, p99 = since_arrival[len(since_arrival) // 2], since_arrival[int(len(since_arrival) * 0.99) - 1]
    print(f"\nrevocation of {n}/{2 * n} connections: close after the policy reached the proxy "
          f"p50={p50 * 1000:.0f}ms p99={p99 * 1000:.0f}ms max={since_arrival[-1] * 1000:.0f}ms; "
          f"after the apply p50={statistics.median(since_apply) * 1000:.0f}ms max={since_apply[-1] * 1000:.0f}ms")
    assert since_arrival[-1] <= 2.0, f"slowest close {since_arrival[-1]:.2f}s after the policy reached the proxy"
