"""The dashboard's aggregation: access lines of the last minute -> nodes, edges (denials counted), rows."""

from __future__ import annotations

from datetime import datetime

from ambient.dashboard.model import policy_rows, snapshot
from ambient.runtime.trace import parse_lines

T = "2026-12-06T04:26:00.000000Z"
NOW = datetime.fromisoformat(T.replace("Z", "+00:00")).timestamp() + 1

OK = (f'{T}\tinfo\taccess\tconnection complete\tsrc.addr=10.244.1.2:1 src.workload="client" src.namespace="a" '
      'src.identity="spiffe://cluster.local/ns/a/sa/default" dst.addr=10.244.2.2:15008 dst.hbone_addr=10.244.2.2:8080 '
      'dst.workload="web" dst.namespace="a" direction="outbound" bytes_sent=10 bytes_recv=20 duration="1ms" '
      'route="hbone" trace_id=0b22a74cd1c28b98eb5815590056b302')
DENIED = (OK.replace("info", "error", 1).replace("trace_id=0b22", "trace_id=1b22")
          + ' error="HBONE CONNECT to x failed: 401 Unauthorized"')
VIA_WP = (f'{T}\tinfo\taccess\tconnection complete\tsrc.addr=10.244.1.2:2 src.workload="client" src.namespace="a" '
          'dst.addr=10.244.1.3:15008 direction="outbound" bytes_sent=1 bytes_recv=2 duration="1ms" '
          'route="waypoint spiffe://cluster.local/ns/b/sa/waypoint" trace_id=2b22a74cd1c28b98eb5815590056b302')
WP = (f'{T}\tinfo\taccess\trequest complete\tsrc.addr=10.244.1.2:2 src.workload="client" src.namespace="a" '
      'dst.workload="echo" dst.namespace="b" direction="waypoint" http.method=GET http.status=403 '
      'response_flags=RBAC duration="1ms" trace_id=2b22a74cd1c28b98eb5815590056b302')
OLD = OK.replace("04:26:00", "04:20:00")


def test_edges_count_bytes_denials_and_waypoint_legs() -> None:
    entries = parse_lines("ztunnel-node-1", [OLD, OK, OK, DENIED, VIA_WP]) + parse_lines(
        "pod b_waypoint-abc12_istio-proxy", [WP])
    snap = snapshot(entries, NOW)
    edges = {(e["src"], e["dst"]): e for e in snap["edges"]}
    web = edges[("a/client", "a/web")]
    assert (web["count"], web["denied"], web["bytes_sent"], web["bytes_recv"]) == (3, 1, 30, 60)
    assert web["identities"] == ["spiffe://cluster.local/ns/a/sa/default"]
    assert edges[("a/client", "b/waypoint")]["count"] == 1
    assert edges[("b/waypoint", "b/echo")]["denied"] == 1
    kinds = {n["id"]: n["kind"] for n in snap["nodes"]}
    assert kinds == {"a/client": "workload", "a/web": "workload", "b/waypoint": "waypoint", "b/echo": "workload"}
    assert snap["proxies"] == ["ztunnel-node-1"]
    assert len(snap["connections"]) == 5  # the old line is outside the window
    assert snap["connections"][0]["trace_id"]  # newest first, each with its trace id


def test_policy_rows() -> None:
    rows = policy_rows([{"metadata": {"name": "p", "namespace": "a"},
                         "spec": {"action": "DENY", "selector": {"matchLabels": {"app": "web"}}}},
                        {"metadata": {"name": "q", "namespace": "a"}, "spec": {}}])
    assert rows == [{"namespace": "a", "name": "p", "action": "DENY", "applies_to": "app=web"},
                    {"namespace": "a", "name": "q", "action": "ALLOW", "applies_to": "every workload of the namespace"}]


WP_TID = "3b22a74cd1c28b98eb5815590056b302"
VIA_WP_SA = (f'{T}\tinfo\taccess\tconnection complete\tsrc.addr=10.244.1.2:3 src.workload="client" '
             'src.namespace="a" src.identity="spiffe://cluster.local/ns/a/sa/default" dst.addr=10.244.1.3:15008 '
             'direction="outbound" bytes_sent=100 bytes_recv=900 duration="5ms" '
             f'route="waypoint spiffe://cluster.local/ns/b/sa/wp-sa" trace_id={WP_TID}')
WP_OK = (f'{T}\tinfo\taccess\trequest complete\tsrc.addr=10.244.1.2:3 src.workload="client" src.namespace="a" '
         'src.identity="spiffe://cluster.local/ns/a/sa/default" dst.workload="echo" dst.namespace="b" '
         'dst.identity="spiffe://cluster.local/ns/b/sa/echo" direction="waypoint" http.method=GET http.status=200 '
         f'duration="3ms" trace_id={WP_TID}')
# the destination proxy's line for the waypoint's (pooled) upstream connection, written when it closed
WP_UPSTREAM = (f'{T}\tinfo\taccess\tconnection complete\tsrc.addr=10.244.1.3:4 src.workload="waypoint-abc12" '
               'src.namespace="b" src.identity="spiffe://cluster.local/ns/b/sa/wp-sa" dst.addr=10.244.2.5:8080 '
               'dst.workload="echo" dst.namespace="b" direction="inbound" bytes_sent=800 bytes_recv=90 '
               f'duration="9ms" trace_id={WP_TID}')


def test_a_waypoints_upstream_leg_has_its_identity_and_bytes_and_one_node() -> None:
    """The waypoint -> backend edge runs as the waypoint (not its client), carries the destination proxy's
    bytes, and the waypoint is one node although its service account is not its deployment's name."""
    entries = (parse_lines("ztunnel-node-1", [VIA_WP_SA]) + parse_lines("pod b_waypoint-abc12_istio-proxy", [WP_OK])
               + parse_lines("ztunnel-node-2", [WP_UPSTREAM]))
    snap = snapshot(entries, NOW)
    edges = {(e["src"], e["dst"]): e for e in snap["edges"]}
    assert set(edges) == {("a/client", "b/waypoint"), ("b/waypoint", "b/echo")}
    upstream = edges[("b/waypoint", "b/echo")]
    assert upstream["identities"] == ["spiffe://cluster.local/ns/b/sa/wp-sa"]
    assert (upstream["count"], upstream["bytes_sent"], upstream["bytes_recv"]) == (1, 90, 800)
    assert edges[("a/client", "b/waypoint")]["identities"] == ["spiffe://cluster.local/ns/a/sa/default"]
    assert {n["id"]: n["kind"] for n in snap["nodes"]} == {
        "a/client": "workload", "b/waypoint": "waypoint", "b/echo": "workload"}
