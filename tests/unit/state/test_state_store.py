"""Indexed state stores: one writer, atomic views, indexes kept in step with deltas, listeners, dumps."""

from __future__ import annotations

import json
from ipaddress import ip_address

import pytest

from ambient.state.errors import WriterTakenError
from ambient.state.model import (
    Action,
    Authorization,
    Clause,
    GatewayAddress,
    LoadBalancing,
    LoadBalancingMode,
    LoadBalancingScope,
    Locality,
    Match,
    NamespacedHostname,
    NetworkAddress,
    NetworkMode,
    Port,
    Rule,
    Scope,
    Service,
    StringMatch,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
)
from ambient.state.store import StateChange, StateDelta, StateStore, view_of

SVC_KEY = "shop/web.shop.svc.cluster.local"


def wl(
    uid: str, ip: str, *, ns: str = "shop", sa: str = "web", services: tuple[str, ...] = (), **kw: object
) -> Workload:
    return Workload(
        uid=uid,
        name=uid,
        namespace=ns,
        addresses=(ip_address(ip),),
        service_account=sa,
        tunnel_protocol=TunnelProtocol.HBONE,
        services={s: (Port(80, 8080),) for s in services},
        **kw,  # type: ignore[arg-type]
    )


def svc(hostname: str = "web.shop.svc.cluster.local", vip: str = "10.96.0.10", ns: str = "shop") -> Service:
    return Service(
        name=hostname.split(".")[0],
        namespace=ns,
        hostname=hostname,
        addresses=(NetworkAddress(ip_address(vip)),),
        ports=(Port(80, 8080),),
    )


def pol(name: str, scope: Scope, ns: str = "shop", action: Action = Action.ALLOW) -> Authorization:
    return Authorization(name, ns, scope, action, (Rule((Clause((Match(namespaces=(StringMatch.exact("x"),)),)),)),))


@pytest.fixture
def store() -> StateStore:
    return StateStore()


def test_one_writer_only(store: StateStore) -> None:
    store.take_writer()
    with pytest.raises(WriterTakenError, match="already has a writer"):
        store.take_writer()


def test_upserts_are_indexed(store: StateStore) -> None:
    w = store.take_writer()
    a = wl("a", "10.244.1.5", services=(SVC_KEY,))
    b = wl("b", "10.244.2.5", sa="curl", services=(SVC_KEY,))
    s = svc()
    g = pol("g", Scope.GLOBAL, ns="istio-system")
    n = pol("n", Scope.NAMESPACE)
    sel = pol("sel", Scope.WORKLOAD_SELECTOR)
    change = w.apply(StateDelta(workloads=(b, a), services=(s,), policies=(g, n, sel)))
    v = store.current
    assert v is change.current and v.version == 1
    assert v.workload("a") is a
    assert v.workload_by_ip(ip_address("10.244.2.5")) is b
    assert v.workload_by_ip(ip_address("10.244.2.5"), network="other") is None
    assert v.workloads_by_identity("spiffe://cluster.local/ns/shop/sa/curl") == (b,)
    assert v.service_by_vip(ip_address("10.96.0.10")) is s
    assert v.service_by_hostname("shop", "web.shop.svc.cluster.local") is s
    assert v.services_by_hostname("web.shop.svc.cluster.local") == (s,)
    assert v.endpoints(SVC_KEY) == (b, a)  # in order of arrival
    assert v.global_policies() == (g,)
    assert v.namespace_policies("shop") == (n,)
    assert v.namespace_policies("istio-system") == ()
    assert v.policy("shop/sel") is sel
    assert change.workloads_upserted == {"a", "b"} and change.services_upserted == {SVC_KEY}
    assert change.policies_upserted == {"istio-system/g", "shop/n", "shop/sel"}


def test_ipv4_mapped_lookup(store: StateStore) -> None:
    store.take_writer().apply(StateDelta(workloads=(wl("a", "10.244.1.5"),), services=(svc(),)))
    assert store.current.workload_by_ip(ip_address("::ffff:10.244.1.5")) is not None
    assert store.current.service_by_vip(ip_address("::ffff:10.96.0.10")) is not None


def test_host_network_workloads_are_never_found_by_address(store: StateStore) -> None:
    """As ztunnel's WorkloadStore: a host-network pod shares its node's IP, so the address names others."""
    w = store.take_writer()
    node_agent = wl("agent", "172.18.0.11", network_mode=NetworkMode.HOST_NETWORK)
    w.apply(StateDelta(workloads=(node_agent,)))
    assert store.current.workload_by_ip(ip_address("172.18.0.11")) is None
    assert store.current.workload("agent") is node_agent
    pod = wl("pod", "172.18.0.11")
    w.apply(StateDelta(workloads=(pod,)))
    assert store.current.workload_by_ip(ip_address("172.18.0.11")) is pod
    w.apply(StateDelta(removed_addresses=("agent",)))
    assert store.current.workload_by_ip(ip_address("172.18.0.11")) is pod


def test_removals_by_resource_name(store: StateStore) -> None:
    w = store.take_writer()
    w.apply(
        StateDelta(
            workloads=(wl("a", "10.244.1.5", services=(SVC_KEY,)),),
            services=(svc(),),
            policies=(pol("n", Scope.NAMESPACE),),
        )
    )
    change = w.apply(StateDelta(removed_addresses=("a", SVC_KEY, "nope"), removed_policies=("shop/n", "x/y")))
    v = store.current
    assert change.workloads_removed == {"a"} and change.services_removed == {SVC_KEY}
    assert change.policies_removed == {"shop/n"}
    assert v.workload("a") is None and v.workload_by_ip(ip_address("10.244.1.5")) is None
    assert v.service_by_vip(ip_address("10.96.0.10")) is None and v.endpoints(SVC_KEY) == ()
    assert v.namespace_policies("shop") == () and v.policy("shop/n") is None
    assert v.workloads_by_identity("spiffe://cluster.local/ns/shop/sa/web") == ()


def test_workload_update_moves_indexes(store: StateStore) -> None:
    w = store.take_writer()
    w.apply(StateDelta(workloads=(wl("a", "10.244.1.5", services=(SVC_KEY,)),)))
    w.apply(StateDelta(workloads=(wl("a", "10.244.1.6", sa="other"),)))
    v = store.current
    assert v.workload_by_ip(ip_address("10.244.1.5")) is None
    assert v.workload_by_ip(ip_address("10.244.1.6")) is not None
    assert v.endpoints(SVC_KEY) == ()
    assert v.workloads_by_identity("spiffe://cluster.local/ns/shop/sa/web") == ()
    assert len(v.workloads_by_identity("spiffe://cluster.local/ns/shop/sa/other")) == 1


def test_service_vip_change_moves_index(store: StateStore) -> None:
    w = store.take_writer()
    w.apply(StateDelta(services=(svc(vip="10.96.0.10"),)))
    w.apply(StateDelta(services=(svc(vip="10.96.0.11"),)))
    assert store.current.service_by_vip(ip_address("10.96.0.10")) is None
    assert store.current.service_by_vip(ip_address("10.96.0.11")) is not None


def test_policy_scope_change_moves_index(store: StateStore) -> None:
    w = store.take_writer()
    w.apply(StateDelta(policies=(pol("p", Scope.NAMESPACE),)))
    w.apply(StateDelta(policies=(pol("p", Scope.GLOBAL),)))
    assert store.current.namespace_policies("shop") == ()
    assert [p.key for p in store.current.global_policies()] == ["shop/p"]
    w.apply(StateDelta(policies=(pol("p", Scope.WORKLOAD_SELECTOR),)))
    assert store.current.global_policies() == () and store.current.policy("shop/p") is not None


def test_duplicate_ip_last_upsert_wins_and_removal_uncovers_the_other(store: StateStore) -> None:
    w = store.take_writer()
    w.apply(StateDelta(workloads=(wl("old", "10.244.1.5"),)))
    w.apply(StateDelta(workloads=(wl("new", "10.244.1.5"),)))
    assert store.current.workload_by_ip(ip_address("10.244.1.5")).uid == "new"  # type: ignore[union-attr]
    w.apply(StateDelta(removed_addresses=("new",)))
    assert store.current.workload_by_ip(ip_address("10.244.1.5")).uid == "old"  # type: ignore[union-attr]


def test_readers_keep_a_consistent_old_view(store: StateStore) -> None:
    w = store.take_writer()
    w.apply(StateDelta(workloads=(wl("a", "10.244.1.5", services=(SVC_KEY,)),), services=(svc(),)))
    held = store.current
    w.apply(StateDelta(removed_addresses=("a", SVC_KEY), workloads=(wl("b", "10.244.1.9"),)))
    assert held.workload("a") is not None and held.workload("b") is None
    assert held.service_by_vip(ip_address("10.96.0.10")) is not None
    assert [x.uid for x in held.endpoints(SVC_KEY)] == ["a"]
    assert store.current.workload("a") is None and store.current.workload("b") is not None
    assert store.current.version == held.version + 1


def test_unchanged_upsert_is_not_a_change(store: StateStore) -> None:
    w = store.take_writer()
    seen: list[StateChange] = []
    store.subscribe(seen.append)
    w.apply(StateDelta(workloads=(wl("a", "10.244.1.5"),)))
    change = w.apply(StateDelta(workloads=(wl("a", "10.244.1.5"),), removed_addresses=("ghost",)))
    assert change.empty and len(seen) == 1 and store.current.version == 1


def test_remove_and_readd_identical_in_one_delta_is_no_change(store: StateStore) -> None:
    w = store.take_writer()
    w.apply(StateDelta(workloads=(wl("a", "10.244.1.5"),)))
    change = w.apply(StateDelta(workloads=(wl("a", "10.244.1.5"),), removed_addresses=("a",)))
    assert change.empty and store.current.workload("a") is not None


def test_replace_removes_what_is_absent(store: StateStore) -> None:
    w = store.take_writer()
    w.apply(
        StateDelta(
            workloads=(wl("a", "10.244.1.5"), wl("b", "10.244.1.6")),
            services=(svc(),),
            policies=(pol("n", Scope.NAMESPACE),),
        )
    )
    change = w.apply(StateDelta(workloads=(wl("a", "10.244.1.5"), wl("c", "10.244.1.7")), replace=True))
    v = store.current
    assert {x.uid for x in v.workloads()} == {"a", "c"}
    assert change.workloads_removed == {"b"} and change.workloads_upserted == {"c"}
    assert change.services_removed == {SVC_KEY} and change.policies_removed == {"shop/n"}
    assert v.workload_by_ip(ip_address("10.244.1.6")) is None and v.namespace_policies("shop") == ()


def test_listeners_isolated_and_unsubscribe(store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    w = store.take_writer()
    got: list[StateChange] = []

    def broken(change: StateChange) -> None:
        raise RuntimeError("boom")

    store.subscribe(broken)
    unsubscribe = store.subscribe(got.append)
    w.apply(StateDelta(policies=(pol("n", Scope.NAMESPACE),)))
    assert len(got) == 1 and got[0].policies_changed and got[0].current is store.current
    assert "state change listener" in caplog.text
    unsubscribe()
    w.apply(StateDelta(removed_policies=("shop/n",)))
    assert len(got) == 1
    assert store.current.policy("shop/n") is None


def test_listener_sees_the_new_view_already_published(store: StateStore) -> None:
    w = store.take_writer()
    seen: list[bool] = []
    store.subscribe(lambda change: seen.append(store.current.workload("a") is not None))
    w.apply(StateDelta(workloads=(wl("a", "10.244.1.5"),)))
    assert seen == [True]


def test_config_dump_is_json_and_reference_shaped() -> None:
    wp = GatewayAddress(NamespacedHostname("shop", "waypoint.shop.svc.cluster.local"))
    a = wl(
        "a",
        "10.244.1.5",
        services=(SVC_KEY,),
        node="node-1",
        waypoint=wp,
        locality=Locality("r", "z"),
        status=WorkloadStatus.UNHEALTHY,
        authorization_policies=("shop/sel",),
    )
    plain = Workload(uid="p", name="p", namespace="shop", addresses=(ip_address("10.244.1.9"),))
    s = Service(
        name="web",
        namespace="shop",
        hostname="web.shop.svc.cluster.local",
        addresses=(NetworkAddress(ip_address("10.96.0.10")),),
        ports=(Port(80, 8080),),
        subject_alt_names=("spiffe://cluster.local/ns/shop/sa/web",),
        load_balancing=LoadBalancing((LoadBalancingScope.NODE,), LoadBalancingMode.FAILOVER),
    )
    dump = view_of([a, plain], [s], [pol("sel", Scope.WORKLOAD_SELECTOR, action=Action.DENY)]).config_dump()
    assert json.loads(json.dumps(dump)) == dump
    assert set(dump) == {"workloads", "services", "policies"}
    wa, wp_ = dump["workloads"]
    assert wa["uid"] == "a" and wa["workloadIps"] == ["10.244.1.5"] and wa["protocol"] == "HBONE"
    assert wa["waypoint"] == {"destination": "shop/waypoint.shop.svc.cluster.local", "hboneMtlsPort": 15008}
    assert wa["status"] == "Unhealthy" and wa["node"] == "node-1" and wa["services"] == {SVC_KEY: {"80": 8080}}
    assert wa["identity"] == "spiffe://cluster.local/ns/shop/sa/web"
    assert wp_["protocol"] == "TCP"
    (ds,) = dump["services"]
    assert ds["vips"] == ["/10.96.0.10"] and ds["ports"] == {"80": 8080}
    assert ds["endpoints"]["a"]["status"] == "Unhealthy"
    assert ds["loadBalancer"]["routingPreferences"] == ["NODE"] and ds["loadBalancer"]["mode"] == "FAILOVER"
    (dp,) = dump["policies"]
    assert dp["scope"] == "WorkloadSelector" and dp["action"] == "Deny" and dp["dryRun"] is False
    assert dp["rules"] == [[[{"namespaces": ["x"]}]]]


def test_many_workloads_of_one_identity_and_service(store: StateStore) -> None:
    w = store.take_writer()
    pods = tuple(wl(f"p{i:04}", f"10.244.{i // 250}.{i % 250 + 1}", services=(SVC_KEY,)) for i in range(2000))
    w.apply(StateDelta(workloads=pods))
    held = store.current
    w.apply(StateDelta(removed_addresses=tuple(p.uid for p in pods[:1000])))
    ident = "spiffe://cluster.local/ns/shop/sa/web"
    assert len(held.workloads_by_identity(ident)) == 2000 and len(held.endpoints(SVC_KEY)) == 2000
    assert [p.uid for p in store.current.endpoints(SVC_KEY)] == [p.uid for p in pods[1000:]]
    assert len(store.current.workloads_by_identity(ident)) == 1000
