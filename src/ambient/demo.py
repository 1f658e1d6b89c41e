"""`make demo`: bring up the local cluster, deploy the sample app, and show traffic crossing the nodes.
`python -m ambient.demo edge` (after it): ingress through a Gateway API gateway and egress to the cluster's
outside world through a ServiceEntry.

The story is told with the same `ambient` commands a user would type (each is printed before it runs), so
the output doubles as a tutorial. Re-running is safe: a healthy cluster is reused, a broken one is
recreated, and `apply` is idempotent; after the README tour (a waypoint in namespace `demo`) the demo waits
only for the pods the node agents capture (never the waypoint's) and shows the policy at the waypoint.
The cluster is left running at the end, with pointers on how to explore it and how to tear it down.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ambient.core.errors import AmbientError

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "demo.yaml"
EDGE = ROOT / "samples" / "edge.yaml"
DENY_POLICY = ROOT / "samples" / "deny-client.yaml"
ENROLL_LABEL = "istio.io/dataplane-mode=ambient"
# The sample's workloads, one Deployment per namespace: other pods there (a waypoint deployed by the README
# tour, say) are not the demo's.
SAMPLE_APPS = {"demo": "httpbin", "client": "curl"}
USE_WAYPOINT_LABEL = "istio.io/use-waypoint"
CLUSTER = os.environ.get("AMBIENT_CLUSTER", "ambient")


class DemoError(AmbientError):
    """A demo step failed; the message says which and what the command printed."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say()
    say(f"== {title}")


def ambient(
    *args: str, check: bool = True, show: bool = True, capture: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `ambient ARGS` as a user would, echoing the command line."""
    if show:
        say(f"$ ambient {shlex.join(args)}")
    proc = subprocess.run(
        [sys.executable, "-m", "ambient", *args], text=True, capture_output=capture or not show, check=False
    )
    if capture and show and proc.stdout:
        sys.stdout.write(proc.stdout)
    if check and proc.returncode != 0:
        raise DemoError(f"`ambient {shlex.join(args)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


def get_json(*args: str) -> Any:
    proc = ambient("get", *args, "-o", "json", show=False, capture=True)
    return json.loads(proc.stdout)


def ensure_cluster() -> None:
    from ambient.cluster.errors import ClusterError
    from ambient.cluster.lifecycle import find_cluster

    try:
        info = find_cluster(CLUSTER)
    except ClusterError:
        info = None
    if info is not None and info.status == "running":
        say(f"cluster {CLUSTER!r} is already running: reusing it")
        return
    if info is not None:
        say(f"cluster {CLUSTER!r} is {info.status}: recreating it")
        ambient("cluster", "delete", "--name", CLUSTER)
    ambient("cluster", "create", "--name", CLUSTER)


def wait_pods_ready(namespaces: list[str], timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """Wait until every pod of the sample is Ready; returns {namespace: pod object} (one per deployment)."""
    deadline = time.monotonic() + timeout
    while True:
        pods: dict[str, dict[str, Any]] = {}
        ready = True
        for ns in namespaces:
            items = [p for p in get_json("pods", "-n", ns, "-l", f"app={SAMPLE_APPS[ns]}")["items"]
                     if not p["metadata"].get("deletionTimestamp")]
            if not items:
                ready = False
                continue
            pod = items[0]
            pods[ns] = pod
            conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            ready = ready and conditions.get("Ready") == "True"
        if ready:
            return pods
        if time.monotonic() > deadline:
            raise DemoError(
                f"sample pods not Ready after {timeout:.0f}s",
                hint="look at `ambient get pods -A` and `ambient logs kubelet --node node-1`",
            )
        time.sleep(0.5)


def retry_until(check: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


def capture_expected(pod: dict[str, Any], namespace: dict[str, Any] | None) -> bool:
    """Will the node agent capture this pod? Its own decision (`wants_capture`): not a waypoint's pods
    (labelled `istio.io/dataplane-mode=none`), not host-network or excluded-namespace pods, not finished ones;
    and not a pod being deleted (the agent releases it)."""
    from ambient.cluster.lifecycle import CNI_EXCLUDED_NAMESPACES
    from ambient.cni.agent_plan import wants_capture
    from ambient.cni.plugin import PluginConfig

    if pod["metadata"].get("deletionTimestamp"):
        return False
    ns_name = pod["metadata"].get("namespace") or "default"
    namespaces = {ns_name: namespace} if namespace is not None else {}
    wanted, _ = wants_capture(pod, namespaces, PluginConfig(exclude_namespaces=CNI_EXCLUDED_NAMESPACES))
    return wanted


def uncaptured(pods: list[dict[str, Any]], namespace: dict[str, Any] | None) -> list[str]:
    """Names of the pods the node agent should capture but has not (yet) marked `redirection: enabled`."""
    return [p["metadata"]["name"] for p in pods if capture_expected(p, namespace)
            and (p["metadata"].get("annotations") or {}).get("ambient.istio.io/redirection") != "enabled"]


def wait_captured(namespaces: list[str], timeout: float = 30.0) -> None:
    """Wait for the node agents' `ambient.istio.io/redirection: enabled` on every pod of `namespaces` that
    should be captured (a waypoint there, from the README tour, never is)."""
    missing: list[str] = []

    def captured() -> bool:
        missing.clear()
        for ns in namespaces:
            namespace = get_json("namespace", ns)
            missing.extend(f"{ns}/{name}" for name in uncaptured(get_json("pods", "-n", ns)["items"], namespace))
        return not missing

    if not retry_until(captured, timeout):
        raise DemoError(f"pods were not captured in time: {', '.join(missing)}",
                        hint="see `ambient logs node-agent --node node-1`")


def show_access_line(node: str, direction: str, *, errors: bool = False) -> None:
    """Print the newest access-log line of NODE's proxy for DIRECTION (the proxy logs them to stdout)."""
    from ambient.runtime.accesslog import parse_fields

    def latest() -> str | None:
        proc = ambient("logs", "ztunnel", "--node", node, show=False, capture=True, check=False)
        for line in reversed(proc.stdout.splitlines()):
            fields = parse_fields(line)
            if "\taccess\t" in line and fields.get("direction") == direction and ("error" in fields) == errors:
                return line
        return None

    retry_until(lambda: latest() is not None, timeout=5.0)
    line = latest()
    say(f"ztunnel on {node} ({direction}):")
    say(f"  {line.split(chr(9))[-1] if line else '(no access-log line yet)'}")


def show_identity_line(src_identity: str) -> None:
    """Print the newest access-log line, on any node, of a connection from SRC_IDENTITY (inbound first)."""
    from ambient.runtime.accesslog import parse_fields

    def latest() -> tuple[str, str] | None:
        found: dict[str, tuple[str, str]] = {}
        for node in node_names():
            proc = ambient("logs", "ztunnel", "--node", node, show=False, capture=True, check=False)
            for line in proc.stdout.splitlines():
                fields = parse_fields(line)
                if "\taccess\t" in line and fields.get("src.identity", "").strip('"') == src_identity:
                    found[fields.get("direction", "").strip('"')] = (node, line)
        return found.get("inbound") or found.get("outbound")

    retry_until(lambda: latest() is not None, timeout=5.0)
    hit = latest()
    if hit is None:
        say("  (no access-log line from that identity yet)")
        return
    node, line = hit
    direction = parse_fields(line).get("direction", "").strip('"')
    say(f"ztunnel on {node} ({direction}):")
    say(f"  {line.split(chr(9))[-1]}")


def node_names() -> list[str]:
    return [n["metadata"]["name"] for n in get_json("nodes").get("items", [])]


def namespace_waypoint(namespace: str) -> str | None:
    """The waypoint a namespace sends its traffic through (`istio.io/use-waypoint`), e.g. after the README
    tour's `ambient waypoint apply -n demo --enroll-namespace`; None without one."""
    labels = get_json("namespace", namespace)["metadata"].get("labels") or {}
    name = labels.get(USE_WAYPOINT_LABEL)
    return name if name and name != "none" else None


def curl_exit(curl: str, url: str) -> int:
    return ambient("exec", "-n", "client", curl, "--", "curl", "-sS", "-m", "10", url,
                   check=False, show=False, capture=True).returncode


def l4_policy_step(curl: str, httpbin: str, url: str) -> None:
    step("6. A DENY policy: the destination's proxy refuses the client's identity (L4: connection reset)")
    ambient("apply", "-f", str(DENY_POLICY))
    ambient("x", "authz", "check", "--from", f"client/{curl}", "--to", f"demo/{httpbin}:8080")
    denied = retry_until(lambda: curl_exit(curl, url) == 56)
    say(f"$ ambient exec -n client {curl} -- curl -sS -m 10 {url}")
    say("curl: (56) Recv failure: Connection reset by peer   <- exit code 56" if denied
        else "(the policy did not take effect in time)")
    show_access_line("node-2", "inbound", errors=True)
    ambient("delete", "-f", str(DENY_POLICY))
    allowed = retry_until(lambda: curl_exit(curl, url) == 0)
    say("policy removed: the request goes through again" if allowed else "policy removed, but traffic still fails")
    if not (denied and allowed):
        raise DemoError("the policy step did not behave as expected", hint="see `ambient logs ztunnel --node node-2`")


def waypoint_policy(waypoint: str) -> dict[str, Any]:
    """samples/deny-client.yaml for a namespace behind a waypoint: the same rule, bound to the waypoint
    (`targetRefs`), because the destination's proxy now sees the waypoint's identity, not the client's."""
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "deny-client", "namespace": "demo"},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": waypoint}],
                     "action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["client"]}}]}]}}


def waypoint_policy_step(curl: str, url: str, waypoint: str) -> None:
    import tempfile

    step(f"6. A DENY policy: namespace demo is behind waypoint {waypoint!r} (the README tour), so the waypoint "
         "enforces it (L7: HTTP 403)")
    say(f"(an L4 policy at httpbin's node proxy would now see the waypoint's identity, not the client's: the policy "
        f"names the waypoint in targetRefs; `ambient waypoint delete -n demo {waypoint}` brings the L4 version of "
        "this step back)")

    def status_code() -> str:
        return ambient("exec", "-n", "client", curl, "--", "curl", "-sS", "-m", "10", "-o", "/dev/null", "-w",
                       "%{http_code}", url, check=False, show=False, capture=True).stdout.strip()

    with tempfile.NamedTemporaryFile("w", prefix="deny-client-waypoint-", suffix=".json") as f:
        json.dump(waypoint_policy(waypoint), f)
        f.flush()
        ambient("apply", "-f", f.name)
        denied = retry_until(lambda: status_code() == "403")
        say(f"$ ambient exec -n client {curl} -- curl -sS -m 10 -o /dev/null -w '%{{http_code}}' {url}")
        say("403   <- the waypoint denied the request" if denied else "(the policy did not take effect in time)")
        ambient("delete", "-f", f.name)
    allowed = retry_until(lambda: status_code() == "200")
    say("policy removed: the request goes through again" if allowed else "policy removed, but traffic still fails")
    if not (denied and allowed):
        raise DemoError("the policy step did not behave as expected",
                        hint=f"see `ambient logs pod/<{waypoint} pod> -n demo` and "
                             "`ambient get authorizationpolicies -A`")


def ensure_outside_world() -> None:
    from ambient.cluster import layout as L
    from ambient.cluster import network, outside

    layout = L.load_layout(L.default_state_dir(CLUSTER))
    if not any(h.netns(CLUSTER) in network.list_netns() for h in outside.OUTSIDE_HOSTS):
        say("$ (adding the outside world to the running cluster, as `ambient cluster create --outside` does)")
        outside.create_outside_world(layout)


def edge() -> None:
    """The second demo step: a request from this machine through the ingress gateway to httpbin, and the
    client calling a host outside the cluster through a ServiceEntry."""
    step("7. The outside world: hosts beyond the nodes (httpbin.example.test), names in the cluster DNS")
    ensure_outside_world()
    pods = wait_pods_ready(["demo", "client"])
    curl = pods["client"]["metadata"]["name"]
    step("8. Ingress: a Gateway of class istio; the control plane deploys ingress-istio and routes by HTTPRoute")
    ambient("apply", "-f", str(EDGE))
    if not retry_until(lambda: any(c.get("type") == "Programmed" and c.get("status") == "True" for c in
                                   (get_json("gateway", "ingress", "-n", "demo").get("status") or {})
                                   .get("conditions") or []), timeout=30):
        raise DemoError("the ingress Gateway was not Programmed in 30s",
                        hint="see `ambient get gateway ingress -n demo -o yaml` and `ambient get pods -n demo`")
    ambient("get", "gateway", "-n", "demo")
    say("$ ambient port-forward -n demo svc/ingress-istio 8081:8081 &   # then, from this machine:")
    say("$ curl -s localhost:8081/headers")
    forward = subprocess.Popen([sys.executable, "-m", "ambient", "port-forward", "-n", "demo", "svc/ingress-istio",
                                "8081:8081"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import urllib.request

        body: list[str] = []

        def fetch() -> bool:
            try:
                with urllib.request.urlopen("http://127.0.0.1:8081/headers", timeout=5) as r:
                    body.append(r.read().decode())
                    return True
            except OSError:
                return False

        if not retry_until(fetch, timeout=20):
            raise DemoError("no answer through the ingress gateway on localhost:8081",
                            hint="see `ambient logs deploy/ingress-istio -n demo`")
        say(body[-1].rstrip())
    finally:
        forward.terminate()
        forward.wait(timeout=10)
    gateway_id = "spiffe://cluster.local/ns/demo/sa/ingress-istio"
    if namespace_waypoint("demo"):
        say("the gateway's node proxy carried it to demo's waypoint, with the gateway's own SPIFFE identity:")
    else:
        say("httpbin's node proxy saw the gateway's own SPIFFE identity:")
    show_identity_line(gateway_id)

    step("9. Egress: a ServiceEntry for httpbin.example.test; the node proxy answers its name with a VIP and")
    say("   routes it to the outside host (plain TCP); the access line names the ServiceEntry's host")
    ambient("get", "serviceentries", "-n", "client")
    ambient("exec", "-n", "client", curl, "--", "curl", "-sS", "-m", "10", "-o", "/dev/null", "-w",
            "%{http_code} from %{remote_ip}\\n", "http://httpbin.example.test/get", capture=True)
    show_access_line("node-1", "outbound")
    say("Try: ambient zc services --node node-1   # the ServiceEntry as a Service with its auto-allocated VIP")


def main() -> None:
    if sys.argv[1:] == ["edge"]:
        if os.geteuid() != 0:
            raise SystemExit("the demo needs root (try: sudo .venv/bin/python -m ambient.demo edge)")
        try:
            edge()
        except AmbientError as exc:
            say(f"demo failed: {exc}")
            raise SystemExit(1) from exc
        return
    if os.geteuid() != 0:
        raise SystemExit("make demo needs root: the local cluster is made of network namespaces (try: sudo make demo)")
    try:
        step("1. A local cluster: 2 nodes, each a network namespace, pods in namespaces of their own")
        ensure_cluster()
        ambient("get", "nodes")

        step("2. The sample: httpbin (namespace demo, node-2) and a curl client (namespace client, node-1)")
        ambient("apply", "-f", str(SAMPLE))
        pods = wait_pods_ready(["demo", "client"])
        ambient("get", "pods", "-A", "-o", "wide")
        ambient("get", "svc", "-n", "demo")

        curl = pods["client"]["metadata"]["name"]
        client_ip = pods["client"]["status"].get("podIP", "?")
        step("3. The client calls the service by its DNS name; the request crosses from node-1 to node-2")
        proc = ambient("exec", "-n", "client", curl, "--", "curl", "-sS", "-m", "10", "http://httpbin.demo:8000/ip",
                       capture=True)
        origin = json.loads(proc.stdout or "{}").get("origin")
        say()
        say(f"httpbin saw the request coming from {origin} - the curl pod's own IP is {client_ip}.")

        url = "http://httpbin.demo:8000/ip"
        step("4. Enroll both namespaces in the mesh: no pod restarts, the node agents capture the running pods")
        ambient("label", "namespace", "demo", ENROLL_LABEL, "--overwrite")
        ambient("label", "namespace", "client", ENROLL_LABEL, "--overwrite")
        wait_captured(["demo", "client"])
        ambient("zc", "workloads", "--node", "node-1")

        step("5. The same request now travels through both node proxies in an mTLS HBONE tunnel")
        ambient("exec", "-n", "client", curl, "--", "curl", "-sS", "-m", "10", url, capture=True)
        say()
        show_access_line("node-1", "outbound")
        show_access_line("node-2", "inbound")

        httpbin = pods["demo"]["metadata"]["name"]
        waypoint = namespace_waypoint("demo")
        if waypoint is None:
            l4_policy_step(curl, httpbin, url)
        else:
            waypoint_policy_step(curl, url, waypoint)

        step("Explore")
        say(f"  . {ROOT}/.venv/bin/activate        # puts `ambient` on PATH")
        say("  ambient get pods -A -o wide")
        say(f"  ambient exec -n client {curl} -- curl -s http://httpbin.demo:8000/get")
        say("  ambient zc all --node node-2              # what the node proxy knows (workloads, policies, certs)")
        say(f"  ambient x authz check --from client/{curl} --to demo/<httpbin pod>:8080   # explain a decision")
        say("  ambient logs ztunnel --node node-2        # access logs: identities, bytes, policy decisions")
        say("  ambient logs kubelet --node node-1")
        say("  ambient port-forward -n demo svc/httpbin 8080:8000   # then: curl localhost:8080/get")
        say("Tear down:")
        say("  ambient cluster delete")
    except AmbientError as exc:
        say(f"demo failed: {exc}")
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
