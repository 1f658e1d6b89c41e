"""Services in a real 2-node cluster: VIP DNAT across nodes, the client IP the server sees, named targetPort,
endpoint changes, a Service without pods failing fast, and DNS names through the DNS VIP."""

from __future__ import annotations

import ipaddress
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_fixtures import curl, in_pod, pod_manifest, pod_netns, two_node_cluster, wait_ready, whoami_pod

from ambient.cluster import layout as L
from helpers import wait_for

pytestmark = pytest.mark.root


def service(name: str, selector: dict[str, str], port: int = 80, target: int | str = "http") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": selector, "ports": [{"name": "web", "port": port, "targetPort": target}]}}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two whoami servers (one per node) behind Service `who`, and a client pod on node-1."""
    with two_node_cluster(tmp_path_factory.mktemp("t8-svc")) as (layout, api):
        api.create(whoami_pod("who-1", node="node-1", labels={"app": "who"}))
        api.create(whoami_pod("who-2", node="node-2", labels={"app": "who"}))
        api.create(pod_manifest("client", ["sleep", "600"], node="node-1"))
        api.create(service("who", {"app": "who"}))
        pods = {n: wait_ready(api, n) for n in ("who-1", "who-2", "client")}

        def two_endpoints() -> bool:
            subsets = api.get("Endpoints", "who", "default").get("subsets") or []
            return sum(len(s.get("addresses") or []) for s in subsets) == 2

        wait_for(two_endpoints, 20, "2 endpoints")

        # The kubelets program the DNAT rules a moment after the Endpoints change: wait until node-1's
        # rules send the VIP to both pods (before that the VIP may still REJECT, or reach only one).
        def rules_have_both() -> bool:
            nat = subprocess.run(["ip", "netns", "exec", layout.node("node-1").netns, "iptables-save", "-t", "nat"],
                                 capture_output=True, text=True, check=False).stdout
            return all(f"{pods[n]['status']['podIP']}:" in nat for n in ("who-1", "who-2"))

        wait_for(rules_have_both, 20, "node-1's DNAT rules to name both endpoints")
        vip = api.get("Service", "who", "default")["spec"]["clusterIP"]
        yield {"layout": layout, "api": api, "pods": pods, "vip": vip}


def test_vip_allocated_from_service_range(world: dict[str, Any]) -> None:
    vip = ipaddress.ip_address(world["vip"])
    assert vip in ipaddress.ip_network(L.SERVICE_CIDR) and str(vip) not in ("10.96.0.1", "10.96.0.10")


def test_vip_reaches_both_nodes_and_server_sees_client_pod_ip(world: dict[str, Any]) -> None:
    layout, pods = world["layout"], world["pods"]
    client, client_ip = pods["client"], pods["client"]["status"]["podIP"]
    seen: dict[str, str] = {}
    for _ in range(40):
        out = curl(layout, client, f"http://{world['vip']}/")
        name, _, peer = out.partition(" ")
        assert name in ("who-1", "who-2"), out
        seen[name] = peer
        if len(seen) == 2:
            break
    assert set(seen) == {"who-1", "who-2"}, "random DNAT should pick both endpoints"
    assert seen["who-2"] == client_ip  # cross-node: no SNAT, the real client pod IP
    assert seen["who-1"] == client_ip  # same node (bridged, br_netfilter) keeps it too


def test_pod_to_pod_direct_across_nodes(world: dict[str, Any]) -> None:
    layout, pods = world["layout"], world["pods"]
    out = curl(layout, pods["client"], f"http://{pods['who-2']['status']['podIP']}:8080/")
    assert out == f"who-2 {pods['client']['status']['podIP']}"


def test_endpoints_follow_pod_readiness_and_rules_follow_endpoints(world: dict[str, Any]) -> None:
    layout, api, pods = world["layout"], world["api"], world["pods"]
    api.create(whoami_pod("late", node="node-2", labels={"app": "late"}, port=9000))
    api.create(service("late", {"app": "late"}, port=81, target="http"))
    wait_ready(api, "late")
    vip = wait_for(lambda: api.get("Service", "late", "default")["spec"].get("clusterIP"), 10, "VIP")
    out = wait_for(lambda: (o := curl(layout, pods["client"], f"http://{vip}:81/")).startswith("late") and o,
                   20, "late reachable via VIP (named targetPort 9000)")
    assert out.endswith(pods["client"]["status"]["podIP"])
    api.delete("Pod", "late", "default")
    wait_for(lambda: not api.get("Endpoints", "late", "default").get("subsets"), 20, "endpoints emptied")
    res = wait_for(lambda: (r := in_pod(layout, pods["client"], ["curl", "-s", "-m", "5", f"http://{vip}:81/"]))
                   .returncode == 7 and r, 20, "connection refused once no endpoint is left")
    assert res.returncode == 7  # curl: "Failed to connect" (refused), not a timeout (28)
    api.delete("Service", "late", "default")


def test_service_without_pods_has_no_endpoints_and_fails_fast(world: dict[str, Any]) -> None:
    layout, api, pods = world["layout"], world["api"], world["pods"]
    api.create(service("nobody", {"app": "nobody"}))
    vip = wait_for(lambda: api.get("Service", "nobody", "default")["spec"].get("clusterIP"), 10, "VIP")
    ep = wait_for(lambda: api.get("Endpoints", "nobody", "default"), 10, "Endpoints object")
    assert ep.get("subsets") in (None, [])
    node_ns = layout.node("node-1").netns

    def rejected() -> subprocess.CompletedProcess[str] | None:
        save = subprocess.run(["ip", "netns", "exec", node_ns, "iptables-save", "-t", "filter"],
                              capture_output=True, text=True).stdout
        return None if vip not in save else subprocess.CompletedProcess([], 0, save, "")

    wait_for(rejected, 15, "REJECT rule for the empty service")
    t0 = time.monotonic()
    res = in_pod(layout, pods["client"], ["curl", "-s", "-m", "10", f"http://{vip}/"])
    elapsed = time.monotonic() - t0
    assert res.returncode == 7 and elapsed < 3, (res.returncode, elapsed)  # refused at once, not a hang
    api.delete("Service", "nobody", "default")
    wait_for(lambda: vip not in subprocess.run(["ip", "netns", "exec", node_ns, "iptables-save"],
                                               capture_output=True, text=True).stdout, 15, "rules removed")


def test_dns_names_resolve_to_vip_and_connect_across_nodes(world: dict[str, Any]) -> None:
    layout, pods = world["layout"], world["pods"]
    client = pods["client"]
    for name in ("who", "who.default", "who.default.svc.cluster.local"):
        out = in_pod(layout, client, ["python3", "-c", "import socket,sys; print(socket.gethostbyname(sys.argv[1]))",
                                      name], timeout=20)
        assert out.stdout.strip() == world["vip"], (name, out.stderr)
    out = wait_for(lambda: (o := curl(layout, client, "http://who.default.svc.cluster.local/")).startswith("who-2")
                   and o, 20, "who-2 via DNS name")
    assert out == f"who-2 {client['status']['podIP']}"
    bad = in_pod(layout, client, ["python3", "-c",
                                  "import socket; socket.gethostbyname('nope.default.svc.cluster.local')"])
    assert bad.returncode != 0 and "gaierror" in bad.stderr


def test_node_netns_reaches_vip_too(world: dict[str, Any]) -> None:
    layout = world["layout"]
    out = subprocess.run(["ip", "netns", "exec", layout.node("node-2").netns, "curl", "-s", "-m", "5",
                          f"http://{world['vip']}/"], capture_output=True, text=True, timeout=20)
    assert out.stdout.split(" ")[0] in ("who-1", "who-2")
    assert pod_netns(layout, world["pods"]["client"])  # fixture sanity
