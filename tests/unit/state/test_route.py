"""Table tests of the pure outbound routing decision and the inbound CONNECT authority check. No sockets."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import ip_address

import pytest

from ambient.state.model import (
    GatewayAddress,
    HealthPolicy,
    LoadBalancing,
    LoadBalancingMode,
    LoadBalancingScope,
    Locality,
    NamespacedHostname,
    NetworkAddress,
    Port,
    Service,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
)
from ambient.state.route import (
    Direct,
    Hbone,
    Passthrough,
    Reject,
    Route,
    SocketAddr,
    ViaWaypoint,
    check_inbound_authority,
    decide_outbound,
)
from ambient.state.store import StateView, view_of

HOST = "web.shop.svc.cluster.local"
KEY = f"shop/{HOST}"
WP_HOST = "waypoint.shop.svc.cluster.local"
WP_KEY = f"shop/{WP_HOST}"
VIP = "10.96.0.10"
WP_VIP = "10.96.0.20"
SAN = "spiffe://cluster.local/ns/shop/sa/web-canonical"
WEB_ID = "spiffe://cluster.local/ns/shop/sa/web"
WP_ID = "spiffe://cluster.local/ns/shop/sa/waypoint"
WAYPOINT = GatewayAddress(NamespacedHostname("shop", WP_HOST))


def pod(uid: str, ip: str | tuple[str, ...], *, sa: str = "web", node: str = "n2", **kw: object) -> Workload:
    ips = (ip,) if isinstance(ip, str) else ip
    base: dict[str, object] = {
        "uid": uid,
        "name": uid,
        "namespace": "shop",
        "addresses": tuple(ip_address(x) for x in ips),
        "service_account": sa,
        "node": node,
        "tunnel_protocol": TunnelProtocol.HBONE,
        "services": {KEY: (Port(80, 8080), Port(81, 9091))},
    }
    base.update(kw)
    return Workload(**base)  # type: ignore[arg-type]


CLIENT = pod("client", "10.244.1.7", sa="curl", node="n1", services={}, locality=Locality("r1", "z1"))
WEB1 = pod("web-1", "10.244.2.6")
WAYPOINT_POD = pod("wp-1", "10.244.2.9", sa="waypoint", services={WP_KEY: ()})


def service(vip: str = VIP, **kw: object) -> Service:
    base: dict[str, object] = {
        "name": "web",
        "namespace": "shop",
        "hostname": HOST,
        "addresses": (NetworkAddress(ip_address(vip)),),
        "ports": (Port(80, 8080), Port(81, 0), Port(82, 15008)),
        "subject_alt_names": (SAN,),
    }
    base.update(kw)
    return Service(**base)  # type: ignore[arg-type]


WP_SVC = Service("waypoint", "shop", WP_HOST, (NetworkAddress(ip_address(WP_VIP)),), (Port(15008, 15008),))


def summary(route: Route) -> tuple[object, ...]:
    if isinstance(route, Reject):
        return ("Reject", route.reason)
    if isinstance(route, Hbone):
        return ("Hbone", str(route.address), str(route.authority), route.expected_identities, route.service_hostname)
    if isinstance(route, ViaWaypoint):
        return ("Waypoint", str(route.address), str(route.authority), route.expected_identities)
    if isinstance(route, Direct):
        return ("Direct", str(route.address))
    assert isinstance(route, Passthrough)
    return ("Passthrough", str(route.address))


@dataclass
class Case:
    id: str
    workloads: list[Workload]
    services: list[Service]
    dst: str
    port: int
    expected: tuple[object, ...]  # for Reject: ("Reject", substring of the reason)
    source: Workload | None = CLIENT


HB_WEB1 = ("Hbone", "10.244.2.6:15008", "10.244.2.6:8080", (WEB_ID, SAN), HOST)
NODE_LB = LoadBalancing((LoadBalancingScope.NODE,), LoadBalancingMode.STRICT)
W = [CLIENT, WEB1]
unhealthy = replace(WEB1, status=WorkloadStatus.UNHEALTHY)

CASES = [
    Case("unknown-source", W, [service()], VIP, 80, ("Reject", "unknown source"), source=None),
    Case("unknown-address-passthrough", W, [service()], "192.0.2.1", 443, ("Passthrough", "192.0.2.1:443")),
    Case("vip-to-hbone-endpoint", W, [service()], VIP, 80, HB_WEB1),
    Case("vip-v4-mapped", W, [service()], "::ffff:10.96.0.10", 80, HB_WEB1),
    Case("vip-unknown-port", W, [service()], VIP, 99, ("Reject", f"service {KEY} has no port 99")),
    Case(
        "vip-named-port-resolved-per-workload",
        W,
        [service()],
        VIP,
        81,
        ("Hbone", "10.244.2.6:15008", "10.244.2.6:9091", (WEB_ID, SAN), HOST),
    ),
    Case(
        "vip-named-port-unresolved",
        [CLIENT, pod("web-1", "10.244.2.6", services={KEY: (Port(80, 8080),)})],
        [service()],
        VIP,
        81,
        ("Reject", "had 1 endpoint(s) but none usable"),
    ),
    Case(
        "workload-port-map-wins",
        [CLIENT, pod("web-1", "10.244.2.6", services={KEY: (Port(80, 8081),)})],
        [service()],
        VIP,
        80,
        ("Hbone", "10.244.2.6:15008", "10.244.2.6:8081", (WEB_ID, SAN), HOST),
    ),
    Case("vip-no-endpoints", [CLIENT], [service()], VIP, 80, ("Reject", f"service {KEY} has no endpoints")),
    Case("vip-only-unhealthy", [CLIENT, unhealthy], [service()], VIP, 80, ("Reject", "none usable")),
    Case(
        "vip-unhealthy-allowed-by-health-policy",
        [CLIENT, unhealthy],
        [service(load_balancing=LoadBalancing(health_policy=HealthPolicy.ALLOW_ALL))],
        VIP,
        80,
        HB_WEB1,
    ),
    Case(
        "vip-skips-unhealthy",
        [CLIENT, WEB1, replace(pod("web-0", "10.244.2.5"), status=WorkloadStatus.UNHEALTHY)],
        [service()],
        VIP,
        80,
        HB_WEB1,
    ),
    Case(
        "vip-skips-zero-capacity", [CLIENT, WEB1, pod("web-0", "10.244.2.5", capacity=0)], [service()], VIP, 80, HB_WEB1
    ),
    Case("vip-skips-addressless", [CLIENT, WEB1, pod("web-0", ())], [service()], VIP, 80, HB_WEB1),
    Case(
        "vip-non-mesh-endpoint-direct",
        [CLIENT, pod("web-1", "10.244.2.6", tunnel_protocol=TunnelProtocol.NONE)],
        [service()],
        VIP,
        80,
        ("Direct", "10.244.2.6:8080"),
    ),
    Case(
        "vip-target-proxy-port",
        [CLIENT, pod("web-1", "10.244.2.6", services={KEY: ()})],
        [service()],
        VIP,
        82,
        ("Reject", "proxy port"),
    ),
    Case(
        "service-waypoint",
        [*W, WAYPOINT_POD],
        [service(waypoint=WAYPOINT), WP_SVC],
        VIP,
        80,
        ("Waypoint", "10.244.2.9:15008", f"{VIP}:80", (WP_ID,)),
    ),
    Case(
        "service-waypoint-from-the-waypoint",
        [WEB1, WAYPOINT_POD],
        [service(waypoint=WAYPOINT), WP_SVC],
        VIP,
        80,
        HB_WEB1,
        source=WAYPOINT_POD,
    ),
    Case(
        "service-waypoint-by-address",
        [*W, WAYPOINT_POD],
        [service(waypoint=GatewayAddress(NetworkAddress(ip_address("10.244.2.9"))))],
        VIP,
        80,
        ("Waypoint", "10.244.2.9:15008", f"{VIP}:80", (WP_ID,)),
    ),
    Case(
        "service-waypoint-by-vip",
        [*W, WAYPOINT_POD],
        [service(waypoint=GatewayAddress(NetworkAddress(ip_address(WP_VIP)))), WP_SVC],
        VIP,
        80,
        ("Waypoint", "10.244.2.9:15008", f"{VIP}:80", (WP_ID,)),
    ),
    Case(
        "service-waypoint-missing", W, [service(waypoint=WAYPOINT)], VIP, 80, ("Reject", f"waypoint {WP_KEY} not found")
    ),
    Case(
        "service-waypoint-no-pods",
        W,
        [service(waypoint=WAYPOINT), WP_SVC],
        VIP,
        80,
        ("Reject", f"waypoint {WP_KEY} has no usable endpoints"),
    ),
    Case(
        "service-waypoint-unknown-address",
        W,
        [service(waypoint=GatewayAddress(NetworkAddress(ip_address("10.244.9.9"))))],
        VIP,
        80,
        ("Reject", "not a known workload or service"),
    ),
    Case(
        "pod-addressed-hbone",
        W,
        [service()],
        "10.244.2.6",
        8080,
        ("Hbone", "10.244.2.6:15008", "10.244.2.6:8080", (WEB_ID,), None),
    ),
    Case(
        "pod-addressed-non-mesh",
        [CLIENT, pod("web-1", "10.244.2.6", tunnel_protocol=TunnelProtocol.NONE)],
        [],
        "10.244.2.6",
        8080,
        ("Direct", "10.244.2.6:8080"),
    ),
    Case(
        "pod-addressed-workload-waypoint",
        [CLIENT, replace(WEB1, waypoint=WAYPOINT), WAYPOINT_POD],
        [WP_SVC],
        "10.244.2.6",
        8080,
        ("Waypoint", "10.244.2.9:15008", "10.244.2.6:8080", (WP_ID,)),
    ),
    Case(
        "pod-addressed-workload-waypoint-from-the-waypoint",
        [replace(WEB1, waypoint=WAYPOINT), WAYPOINT_POD],
        [WP_SVC],
        "10.244.2.6",
        8080,
        ("Hbone", "10.244.2.6:15008", "10.244.2.6:8080", (WEB_ID,), None),
        source=WAYPOINT_POD,
    ),
    Case(
        "service-addressed-ignores-workload-waypoint",
        [CLIENT, replace(WEB1, waypoint=WAYPOINT), WAYPOINT_POD],
        [service(), WP_SVC],
        VIP,
        80,
        HB_WEB1,
    ),
    Case("pod-port-15008-loop", W, [], "10.244.2.6", 15008, ("Reject", "proxy port")),
    Case("pod-port-15001-loop", W, [], "10.244.2.6", 15001, ("Reject", "proxy port")),
    Case("pod-port-15006-loop", W, [], "10.244.2.6", 15006, ("Reject", "proxy port")),
    Case(
        "lb-strict-node-same-node",
        [CLIENT, WEB1, pod("web-local", "10.244.1.8", node="n1")],
        [service(load_balancing=NODE_LB)],
        VIP,
        80,
        ("Hbone", "10.244.1.8:15008", "10.244.1.8:8080", (WEB_ID, SAN), HOST),
    ),
    Case("lb-strict-node-none-local", W, [service(load_balancing=NODE_LB)], VIP, 80, ("Reject", "none usable")),
    Case(
        "lb-failover-node-falls-back",
        W,
        [service(load_balancing=LoadBalancing((LoadBalancingScope.NODE,), LoadBalancingMode.FAILOVER))],
        VIP,
        80,
        HB_WEB1,
    ),
    Case(
        "lb-failover-region-zone-prefers-zone",
        [
            CLIENT,
            pod("web-z1", "10.244.3.1", locality=Locality("r1", "z1")),
            pod("web-z2", "10.244.3.2", locality=Locality("r1", "z2")),
            pod("web-r2", "10.244.3.3", locality=Locality("r2", "z1")),
        ],
        [
            service(
                load_balancing=LoadBalancing(
                    (LoadBalancingScope.REGION, LoadBalancingScope.ZONE), LoadBalancingMode.FAILOVER
                )
            )
        ],
        VIP,
        80,
        ("Hbone", "10.244.3.1:15008", "10.244.3.1:8080", (WEB_ID, SAN), HOST),
    ),
    Case(
        "lb-failover-region-zone-falls-back-to-region",
        [
            CLIENT,
            pod("web-z2", "10.244.3.2", locality=Locality("r1", "z2")),
            pod("web-r2", "10.244.3.3", locality=Locality("r2", "z1")),
        ],
        [service(load_balancing=LoadBalancing((LoadBalancingScope.REGION, LoadBalancingScope.ZONE)))],
        VIP,
        80,
        ("Hbone", "10.244.3.2:15008", "10.244.3.2:8080", (WEB_ID, SAN), HOST),
    ),
    Case(
        "lb-passthrough-mode",
        W,
        [service(load_balancing=LoadBalancing(mode=LoadBalancingMode.PASSTHROUGH))],
        VIP,
        80,
        ("Passthrough", f"{VIP}:80"),
    ),
    Case(
        "v6-vip-picks-v6-endpoint-address",
        [CLIENT, pod("web-1", ("10.244.2.6", "fd00:2::6"))],
        [service(vip="fd00:96::10")],
        "fd00:96::10",
        80,
        ("Hbone", "[fd00:2::6]:15008", "[fd00:2::6]:8080", (WEB_ID, SAN), HOST),
    ),
    Case(
        "other-network-vip-not-ours",
        W,
        [service(addresses=(NetworkAddress(ip_address(VIP), "net2"),))],
        VIP,
        80,
        ("Passthrough", f"{VIP}:80"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_outbound_table(case: Case) -> None:
    view = view_of(case.workloads, case.services)
    route = decide_outbound(case.source, ip_address(case.dst), case.port, view, random.Random(1))
    got = summary(route)
    if case.expected[0] == "Reject":
        assert got[0] == "Reject", got
        assert str(case.expected[1]) in str(got[1]), got
    else:
        assert got == case.expected


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 25


def test_weighted_random_by_capacity() -> None:
    heavy = pod("web-heavy", "10.244.2.7", capacity=3)
    light = pod("web-light", "10.244.2.8")  # capacity unset: weight 1
    view = view_of([CLIENT, heavy, light], [service()])
    rng = random.Random(42)
    picks: Counter[str] = Counter()
    n = 4000
    for _ in range(n):
        route = decide_outbound(CLIENT, ip_address(VIP), 80, view, rng)
        assert isinstance(route, Hbone)
        picks[route.workload.uid] += 1
    # Expected 3:1. Binomial sd at n=4000, p=.75 is ~27 picks: +-150 is > 5 sd.
    assert abs(picks["web-heavy"] - 3000) < 150, picks
    assert picks["web-heavy"] + picks["web-light"] == n


def test_uniform_when_capacities_equal_and_deterministic_with_seed() -> None:
    eps = [pod(f"web-{i}", f"10.244.2.{10 + i}") for i in range(4)]
    view = view_of([CLIENT, *eps], [service()])

    def run(seed: int) -> list[str]:
        rng = random.Random(seed)
        out = []
        for _ in range(2000):
            r = decide_outbound(CLIENT, ip_address(VIP), 80, view, rng)
            assert isinstance(r, Hbone)
            out.append(r.workload.uid)
        return out

    first = run(7)
    assert first == run(7)
    counts = Counter(first)
    assert set(counts) == {e.uid for e in eps}
    assert all(abs(c - 500) < 110 for c in counts.values()), counts  # sd ~19


def test_failover_spreads_within_the_best_group_only() -> None:
    same = [pod(f"local-{i}", f"10.244.1.{20 + i}", node="n1") for i in range(2)]
    remote = pod("remote", "10.244.2.30", node="n2", capacity=100)
    lb = LoadBalancing((LoadBalancingScope.NODE,), LoadBalancingMode.FAILOVER)
    view = view_of([CLIENT, *same, remote], [service(load_balancing=lb)])
    rng = random.Random(3)
    seen = set()
    for _ in range(200):
        r = decide_outbound(CLIENT, ip_address(VIP), 80, view, rng)
        assert isinstance(r, Hbone)
        seen.add(r.workload.uid)
    assert seen == {"local-0", "local-1"}


# ------------------------------------------------------------------------------------- inbound check

LOCAL = WEB1


def _inbound_view() -> StateView:
    web_via_wp = service(waypoint=WAYPOINT)
    pod_via_wp = pod("web-2", "10.244.2.7", waypoint=WAYPOINT)
    return view_of([CLIENT, WEB1, WAYPOINT_POD, pod_via_wp], [web_via_wp, WP_SVC])


InboundCase = tuple[str, str, str, Callable[[], Workload | None], int, str]

INBOUND: list[InboundCase] = [
    ("same-ip", "10.244.2.6", "10.244.2.6:8080", lambda: LOCAL, 200, "ok"),
    ("malformed", "10.244.2.6", "web:8080", lambda: LOCAL, 400, "malformed"),
    ("no-port", "10.244.2.6", "10.244.2.6", lambda: LOCAL, 400, "malformed"),
    ("port-zero", "10.244.2.6", "10.244.2.6:0", lambda: LOCAL, 400, "malformed"),
    ("port-too-big", "10.244.2.6", "10.244.2.6:70000", lambda: LOCAL, 400, "malformed"),
    ("v6-without-brackets", "fd00::6", "fd00::6:80", lambda: LOCAL, 400, "malformed"),
    ("v4-in-brackets", "10.244.2.6", "[10.244.2.6]:80", lambda: LOCAL, 400, "malformed"),
    ("proxy-port-15001", "10.244.2.6", "10.244.2.6:15001", lambda: LOCAL, 400, "proxy port"),
    ("proxy-port-15006", "10.244.2.6", "10.244.2.6:15006", lambda: LOCAL, 400, "proxy port"),
    ("proxy-port-15008", "10.244.2.6", "10.244.2.6:15008", lambda: LOCAL, 400, "proxy port"),
    ("loopback", "10.244.2.6", "127.0.0.1:8080", lambda: LOCAL, 400, "not a workload address"),
    ("loopback-v6", "10.244.2.6", "[::1]:8080", lambda: LOCAL, 400, "not a workload address"),
    ("unspecified", "10.244.2.6", "0.0.0.0:8080", lambda: LOCAL, 400, "not a workload address"),
    ("unknown-local", "10.244.2.6", "10.244.2.6:8080", lambda: None, 503, "no workload known"),
    ("authority-mismatch", "10.244.2.6", "10.244.2.7:8080", lambda: LOCAL, 400, "does not match"),
    ("dialled-not-local", "10.244.2.99", "10.244.2.99:8080", lambda: LOCAL, 503, "not an address of workload"),
    ("waypoint-for-service-vip", "10.244.2.9", f"{VIP}:80", lambda: WAYPOINT_POD, 200, "waypoint for service"),
    ("waypoint-for-workload", "10.244.2.9", "10.244.2.7:8080", lambda: WAYPOINT_POD, 200, "waypoint for workload"),
    ("non-waypoint-for-vip", "10.244.2.6", f"{VIP}:80", lambda: LOCAL, 400, "does not match"),
    ("waypoint-for-unrelated-pod", "10.244.2.9", "10.244.1.7:8080", lambda: WAYPOINT_POD, 400, "does not match"),
]


@pytest.mark.parametrize(
    ("dialled", "authority", "local", "status", "reason"),
    [c[1:] for c in INBOUND],
    ids=[c[0] for c in INBOUND],
)
def test_inbound_authority(
    dialled: str, authority: str, local: Callable[[], Workload | None], status: int, reason: str
) -> None:
    check = check_inbound_authority(ip_address(dialled), authority, local(), _inbound_view())
    assert (check.status, check.ok) == (status, status == 200), check
    assert reason in check.reason, check.reason


def test_inbound_v6_authority_and_waypoint_flag() -> None:
    local = pod("web-6", "fd00:2::6")
    check = check_inbound_authority(ip_address("fd00:2::6"), "[fd00:2::6]:8080", local, view_of([local]))
    assert check.ok and check.target == SocketAddr(ip_address("fd00:2::6"), 8080) and not check.via_waypoint
    wp = check_inbound_authority(ip_address("10.244.2.9"), f"{VIP}:80", WAYPOINT_POD, _inbound_view())
    assert wp.ok and wp.via_waypoint


def test_inbound_extra_proxy_ports() -> None:
    ports = frozenset({15001, 15006, 15008, 15000, 15020, 15021})
    for port in (15000, 15020, 15021):
        check = check_inbound_authority(
            ip_address("10.244.2.6"), f"10.244.2.6:{port}", LOCAL, _inbound_view(), proxy_ports=ports
        )
        assert check.status == 400
    assert check_inbound_authority(ip_address("10.244.2.6"), "10.244.2.6:15000", LOCAL, _inbound_view()).ok


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:80", "10.0.0.1:80"),
        ("[fd00::1]:443", "[fd00::1]:443"),
        ("10.0.0.1:", None),
        (":80", None),
        ("[fd00::1]443", None),
        ("10.0.0.1:8a", None),
    ],
)
def test_socket_addr_parse(text: str, expected: str | None) -> None:
    parsed = SocketAddr.parse(text)
    assert (str(parsed) if parsed else None) == expected


def test_endpoint_pick_says_why() -> None:
    rng = random.Random(1)
    one = decide_outbound(CLIENT, ip_address(VIP), 80, view_of([CLIENT, pod("web-a", "10.244.2.7")], [service()]),
                          rng)
    assert isinstance(one, Hbone) and one.pick == "only usable endpoint (of 1)"
    two = [pod(f"web-{i}", f"10.244.2.{10 + i}") for i in range(2)]
    r = decide_outbound(CLIENT, ip_address(VIP), 80, view_of([CLIENT, *two], [service()]), rng)
    assert isinstance(r, Hbone) and r.pick == "weighted random among 2 usable (of 2)"
    same = [pod(f"local-{i}", f"10.244.1.{20 + i}", node="n1") for i in range(2)]
    remote = pod("remote", "10.244.2.30", node="n2")
    lb = LoadBalancing((LoadBalancingScope.NODE,), LoadBalancingMode.FAILOVER)
    r = decide_outbound(CLIENT, ip_address(VIP), 80, view_of([CLIENT, *same, remote], [service(load_balancing=lb)]),
                        rng)
    assert isinstance(r, Hbone)
    assert r.pick == "weighted random among 2 usable (of 3) after the routing preference (3 usable)"
