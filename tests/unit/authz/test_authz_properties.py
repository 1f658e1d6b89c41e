"""Property tests of the L4 authorization evaluator over random policies and connections."""

from __future__ import annotations

from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st

from ambient.authz.evaluate import ConnectionInfo, evaluate
from ambient.state.model import (
    Action,
    Address,
    Authorization,
    Clause,
    Match,
    Rule,
    Scope,
    ServiceAccountMatch,
    StringMatch,
    TunnelProtocol,
    Workload,
)
from ambient.state.store import view_of

NAMESPACES = ["shop", "other", "istio-system"]
SAS = ["curl", "web", "default"]
IPS = ["10.244.1.7", "10.244.2.6", "10.0.0.1", "fd00::7"]

names = st.sampled_from(["a", "b", "c", "d", "e"])
string_matches = st.one_of(
    st.builds(StringMatch.exact, st.sampled_from([*NAMESPACES, "cluster.local/ns/shop/sa/curl"])),
    st.builds(StringMatch.prefix, st.sampled_from(["sh", "cluster.local/ns/", "o"])),
    st.builds(StringMatch.suffix, st.sampled_from(["op", "/sa/curl", "er"])),
    st.just(StringMatch.presence()),
)
cidrs = st.sampled_from(["10.244.0.0/16", "10.244.1.7/32", "0.0.0.0/0", "fd00::/8", "10.0.0.0/8"]).map(Address.parse)
sams = st.builds(ServiceAccountMatch, st.sampled_from([*NAMESPACES, ""]), st.sampled_from(SAS))
ports = st.sampled_from([80, 8080, 9090])


def small(elem: st.SearchStrategy) -> st.SearchStrategy:  # type: ignore[type-arg]
    return st.lists(elem, max_size=2).map(tuple)


matches = st.builds(
    Match,
    namespaces=small(string_matches),
    not_namespaces=small(string_matches),
    principals=small(string_matches),
    not_principals=small(string_matches),
    source_ips=small(cidrs),
    not_source_ips=small(cidrs),
    destination_ips=small(cidrs),
    not_destination_ips=small(cidrs),
    destination_ports=small(ports),
    not_destination_ports=small(ports),
    service_accounts=small(sams),
    not_service_accounts=small(sams),
)
rules = st.lists(
    st.builds(Rule, st.lists(st.builds(Clause, st.lists(matches, max_size=2).map(tuple)), max_size=2).map(tuple)),
    max_size=2,
).map(tuple)


def policies_in(ns: str, scopes: st.SearchStrategy[Scope]) -> st.SearchStrategy[Authorization]:
    return st.builds(
        Authorization,
        name=names,
        namespace=st.just(ns),
        scope=scopes,
        action=st.sampled_from(Action),
        rules=rules,
        dry_run=st.booleans(),
    )


applicable = st.lists(
    st.one_of(
        policies_in("shop", st.sampled_from([Scope.NAMESPACE, Scope.WORKLOAD_SELECTOR])),
        policies_in("istio-system", st.just(Scope.GLOBAL)),
    ),
    max_size=4,
    unique_by=lambda p: p.key,
)
connections = st.builds(
    ConnectionInfo,
    src_ip=st.sampled_from(IPS).map(ip_address),
    dst_ip=st.sampled_from(IPS).map(ip_address),
    dst_port=ports,
    src_identity=st.one_of(
        st.none(),
        st.builds(
            lambda ns, sa: f"spiffe://cluster.local/ns/{ns}/sa/{sa}", st.sampled_from(NAMESPACES), st.sampled_from(SAS)
        ),
    ),
)


def target(pols: list[Authorization]) -> Workload:
    # The workload references every selector policy of its namespace in the generated set.
    refs = tuple(p.key for p in pols if p.scope == Scope.WORKLOAD_SELECTOR and p.namespace == "shop")
    return Workload(
        uid="w",
        name="web",
        namespace="shop",
        addresses=(ip_address("10.244.2.6"),),
        tunnel_protocol=TunnelProtocol.HBONE,
        authorization_policies=refs,
    )


DENY_ALL = Authorization("zz-deny-all", "shop", Scope.NAMESPACE, Action.DENY, (Rule(()),))
ALLOW_ALL = Authorization("zz-allow-all", "shop", Scope.NAMESPACE, Action.ALLOW, (Rule(()),))


@settings(max_examples=150, deadline=None)
@given(applicable, connections)
def test_a_matching_deny_always_wins(pols: list[Authorization], conn: ConnectionInfo) -> None:
    pols = [*pols, DENY_ALL]
    d = evaluate(conn, target(pols), view_of(policies=pols))
    assert d.denied and "shop/zz-deny-all" in d.policies


@settings(max_examples=150, deadline=None)
@given(applicable, connections, st.lists(policies_in("elsewhere", st.sampled_from(Scope)), max_size=3))
def test_unrelated_namespace_policies_never_change_the_decision(
    pols: list[Authorization], conn: ConnectionInfo, unrelated: list[Authorization]
) -> None:
    # GLOBAL-scope ones would be related by definition: only namespace/selector scopes are unrelated.
    unrelated = [p for p in unrelated if p.scope != Scope.GLOBAL]
    wl = target(pols)
    before = evaluate(conn, wl, view_of(policies=pols))
    after = evaluate(conn, wl, view_of(policies=[*pols, *unrelated]))
    assert (after.allowed, after.reason) == (before.allowed, before.reason)


@settings(max_examples=150, deadline=None)
@given(applicable, connections)
def test_dry_run_policies_never_change_enforcement(pols: list[Authorization], conn: ConnectionInfo) -> None:
    wl = target(pols)
    enforced_only = [p for p in pols if not p.dry_run]
    wl_enforced = target(enforced_only)
    full = evaluate(conn, wl, view_of(policies=pols))
    without = evaluate(conn, wl_enforced, view_of(policies=enforced_only))
    assert (full.allowed, full.reason) == (without.allowed, without.reason)


@settings(max_examples=100, deadline=None)
@given(applicable, connections)
def test_allowed_stays_allowed_when_an_allow_all_is_added(pols: list[Authorization], conn: ConnectionInfo) -> None:
    before = evaluate(conn, target(pols), view_of(policies=pols))
    after = evaluate(conn, target(pols), view_of(policies=[*pols, ALLOW_ALL]))
    if before.allowed:
        assert after.allowed
