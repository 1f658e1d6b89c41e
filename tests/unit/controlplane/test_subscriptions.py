"""controlplane.xds_server subscription bookkeeping (delta xDS wildcard / named semantics), address aliases
for on-demand lookups, and the NACKED proxy-status column."""

from __future__ import annotations

import pytest

from ambient.controlplane import proxy_status
from ambient.controlplane.xds_server import ResourceCache, TypeStatus, address_aliases, apply_subscription
from ambient.protocol.gen.istio.workload import workload_pb2 as wl
from ambient.protocol.xds import ADDRESS_TYPE_URL as T


@pytest.mark.parametrize(
    ("subscribe", "unsubscribe", "initial", "wildcard", "names", "answer"),
    [
        ([], [], {}, True, set(), []),  # legacy wildcard: no names at all
        (["*"], [], {"u1": "v"}, True, set(), []),  # explicit wildcard
        (["*"], ["*"], {}, False, set(), []),  # ztunnel on-demand start: "subscribe to nothing"
        (["*"], ["*"], {"u1": "v"}, False, {"u1"}, []),  # on-demand reconnect: what it holds stays subscribed
        (["/10.0.0.1"], [], {}, False, set(), ["/10.0.0.1"]),  # named only
    ],
)
def test_first_request(subscribe: list[str], unsubscribe: list[str], initial: dict[str, str], wildcard: bool,
                       names: set[str], answer: list[str]) -> None:
    ts = TypeStatus()
    assert apply_subscription(ts, subscribe, unsubscribe, initial) is True  # a first request is answered
    assert (ts.subscribed, ts.wildcard, ts.names, ts.answer, ts.known) == (True, wildcard, names, answer, initial)


def test_later_requests() -> None:
    ts = TypeStatus()
    apply_subscription(ts, ["*"], ["*"], {})
    assert apply_subscription(ts, [], [], {}) is False  # nothing to do
    assert apply_subscription(ts, ["/10.0.0.1", "ns/svc"], [], {}) is True
    assert ts.answer == ["/10.0.0.1", "ns/svc"]
    ts.names.add("u1")
    ts.known["u1"] = "v1"
    assert apply_subscription(ts, [], ["u1"], {}) is False
    assert "u1" not in ts.names and "u1" not in ts.known  # dropped by the proxy: no removal owed
    assert apply_subscription(ts, ["*"], [], {}) is True and ts.wildcard and ts.resync  # full diff next


def test_aliases_and_resolve() -> None:
    c = ResourceCache()
    pod = wl.Address(workload=wl.Workload(uid="u1", addresses=[bytes([10, 244, 1, 2])]))
    svc = wl.Address(service=wl.Service(name="s", namespace="ns", hostname="s.ns.svc.cluster.local",
                                        addresses=[wl.NetworkAddress(network="n1", address=bytes([10, 96, 0, 9]))]))
    assert address_aliases(pod) == ("/10.244.1.2",)
    assert address_aliases(svc) == ("n1/10.96.0.9",)
    c.apply(T, {"u1": pod, "ns/s.ns.svc.cluster.local": svc})
    (by_ip,) = c.resolve(T, "/10.244.1.2")
    assert by_ip.name == "u1" and list(by_ip.aliases) == ["/10.244.1.2"]
    assert [r.name for r in c.resolve(T, "ns/s.ns.svc.cluster.local")] == ["ns/s.ns.svc.cluster.local"]
    assert c.resolve(T, "/10.9.9.9") == []
    # the alias follows the resource: a new IP, then a removal
    c.apply(T, {"u1": wl.Address(workload=wl.Workload(uid="u1", addresses=[bytes([10, 244, 1, 3])]))})
    assert c.resolve(T, "/10.244.1.2") == [] and [r.name for r in c.resolve(T, "/10.244.1.3")] == ["u1"]
    c.apply(T, {"u1": None})
    assert c.resolve(T, "/10.244.1.3") == [] and c.resolve(T, "u1") == []
    assert c.diff(T, {}, 0)[0][0].aliases == []  # pushes carry the cached resource, without aliases


def test_proxy_status_shows_a_nack() -> None:
    status = {"proxies": [{"node_id": "zt", "peer": "p", "connected_at": 1.0, "types": {
        "type.googleapis.com/istio.workload.Address": {
            "synced": False, "acked_version": "3", "current_version": "4", "lag_versions": 1, "nacks": 1,
            "nacked_version": "4", "last_nack": "bad address"}}}]}
    (row,) = proxy_status.rows(status, now=2.0)
    assert row[2] == "NACKED (4: bad address)" and row[5] == "1"
