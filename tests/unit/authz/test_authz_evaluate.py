"""Table tests of the pure L4 authorization evaluator (protocols.md s.3 "Policy evaluation")."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_address

import pytest

from ambient.authz.evaluate import (
    REASON_NO_ALLOW_MATCHED,
    REASON_NO_ALLOW_POLICIES,
    ConnectionInfo,
    PeerIdentity,
    evaluate,
)
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

CURL = "spiffe://cluster.local/ns/shop/sa/curl"
OTHER = "spiffe://cluster.local/ns/other/sa/bot"


def s(text: str) -> StringMatch:
    """Istio notation: '*' presence, 'x*' prefix, '*x' suffix, else exact."""
    if text == "*":
        return StringMatch.presence()
    if text.endswith("*"):
        return StringMatch.prefix(text[:-1])
    if text.startswith("*"):
        return StringMatch.suffix(text[1:])
    return StringMatch.exact(text)


def m(**kw: object) -> Match:
    """A Match from friendly values: strings for StringMatch fields, 'cidr' for IPs, 'ns/sa' for SAs."""
    out: dict[str, object] = {}
    for key, values in kw.items():
        assert isinstance(values, list | tuple)
        if key in ("principals", "not_principals", "namespaces", "not_namespaces"):
            out[key] = tuple(s(v) for v in values)
        elif key.endswith("_ips"):
            out[key] = tuple(Address.parse(v) for v in values)
        elif key.endswith("service_accounts"):
            out[key] = tuple(ServiceAccountMatch(*v.split("/")) for v in values)
        else:
            out[key] = tuple(values)
    return Match(**out)  # type: ignore[arg-type]


def pol(
    name: str,
    *matches: Match,
    action: Action = Action.ALLOW,
    scope: Scope = Scope.NAMESPACE,
    ns: str = "shop",
    dry_run: bool = False,
    rules: tuple[Rule, ...] | None = None,
) -> Authorization:
    if rules is None:
        rules = (Rule((Clause(tuple(matches)),)),)
    return Authorization(name=name, namespace=ns, scope=scope, action=action, rules=rules, dry_run=dry_run)


def deny(name: str, *matches: Match, **kw: object) -> Authorization:
    return pol(name, *matches, action=Action.DENY, **kw)  # type: ignore[arg-type]


def web(refs: tuple[str, ...] = (), ns: str = "shop") -> Workload:
    return Workload(
        uid=f"{ns}/web",
        name="web",
        namespace=ns,
        addresses=(ip_address("10.244.2.6"),),
        service_account="web",
        tunnel_protocol=TunnelProtocol.HBONE,
        authorization_policies=refs,
    )


def conn(
    identity: str | None = CURL, src: str = "10.244.1.7", dst: str = "10.244.2.6", port: int = 8080
) -> ConnectionInfo:
    return ConnectionInfo(ip_address(src), ip_address(dst), port, identity)


ANY = m()  # an empty Match matches everything
NONE_MATCH = m(principals=["nobody/ns/x/sa/y"])


@dataclass
class Case:
    id: str
    policies: list[Authorization]
    allowed: bool
    reason: str  # substring of Decision.reason
    conn: ConnectionInfo = field(default_factory=conn)
    refs: tuple[str, ...] = ()
    ns: str = "shop"


def ok(id: str, policies: list[Authorization], reason: str = "", **kw: object) -> Case:
    return Case(id, policies, True, reason, **kw)  # type: ignore[arg-type]


def no(id: str, policies: list[Authorization], reason: str = "", **kw: object) -> Case:
    return Case(id, policies, False, reason, **kw)  # type: ignore[arg-type]


PLAIN = conn(identity=None)
NM = REASON_NO_ALLOW_MATCHED

CASES = [
    # --- combination and precedence
    ok("no-policies", [], REASON_NO_ALLOW_POLICIES),
    ok("allow-matches", [pol("a", m(principals=[CURL]))], "allowed by policy shop/a"),
    no("allow-no-match-default-deny", [pol("a", NONE_MATCH)], NM),
    no("deny-matches", [deny("d", ANY)], "denied by policy shop/d"),
    ok("deny-no-match-no-allow", [deny("d", NONE_MATCH)], REASON_NO_ALLOW_POLICIES),
    no("deny-beats-allow", [pol("a", ANY), deny("d", ANY)], "denied by policy shop/d"),
    no("deny-miss-allow-miss", [deny("d", NONE_MATCH), pol("a", NONE_MATCH)], NM),
    ok("deny-miss-allow-match", [deny("d", NONE_MATCH), pol("a", ANY)], "allowed by policy shop/a"),
    ok("second-allow-matches", [pol("a1", NONE_MATCH), pol("a2", ANY)], "allowed by policy shop/a2"),
    no("two-denies", [deny("d1", ANY), deny("d2", ANY)], "denied by policies shop/d1, shop/d2"),
    no("allow-without-rules-matches-nothing", [pol("a", rules=())], NM),
    ok("deny-without-rules-matches-nothing", [deny("d", rules=())], REASON_NO_ALLOW_POLICIES),
    ok("rule-without-clauses-matches-all", [pol("a", rules=(Rule(()),))], "allowed by policy shop/a"),
    ok("empty-match-matches-all", [pol("a", ANY)], "allowed by policy shop/a"),
    no("clause-without-matches-matches-nothing", [pol("a", rules=(Rule((Clause(()),)),))], NM),
    # --- scopes
    no("global-applies", [pol("g", NONE_MATCH, scope=Scope.GLOBAL, ns="istio-system")], NM),
    no("global-deny-applies", [deny("g", ANY, scope=Scope.GLOBAL, ns="istio-system")], "istio-system/g"),
    ok("other-namespace-ignored", [pol("a", NONE_MATCH, ns="other")], REASON_NO_ALLOW_POLICIES),
    ok("other-namespace-deny-ignored", [deny("d", ANY, ns="other")], REASON_NO_ALLOW_POLICIES),
    ok("selector-unreferenced-ignored", [deny("d", ANY, scope=Scope.WORKLOAD_SELECTOR)], "no allow"),
    no("selector-referenced", [deny("d", ANY, scope=Scope.WORKLOAD_SELECTOR)], "shop/d", refs=("shop/d",)),
    ok(
        "selector-ref-allow",
        [pol("a", m(principals=[CURL]), scope=Scope.WORKLOAD_SELECTOR)],
        "allowed by policy shop/a",
        refs=("shop/a",),
    ),
    no("ref-to-other-ns-policy", [deny("d", ANY, ns="x", scope=Scope.WORKLOAD_SELECTOR)], "x/d", refs=("x/d",)),
    ok("ref-and-namespace-dedup", [pol("a", ANY)], "allowed by policy shop/a", refs=("shop/a",)),
    # --- fail closed on a referenced-but-missing policy
    no("missing-ref", [], "policy shop/late referenced by workload shop/web", refs=("shop/late",)),
    no("missing-ref-despite-allow", [pol("a", ANY)], "has not been received yet", refs=("shop/late",)),
    # --- dry run
    ok("dry-deny-not-enforced", [deny("d", ANY, dry_run=True)], REASON_NO_ALLOW_POLICIES),
    ok("dry-allow-no-default-deny", [pol("a", NONE_MATCH, dry_run=True)], REASON_NO_ALLOW_POLICIES),
    no("dry-deny-and-real-deny", [deny("dd", ANY, dry_run=True), deny("d", ANY)], "denied by policy shop/d"),
    no("dry-allow-does-not-allow", [pol("a", NONE_MATCH), pol("da", ANY, dry_run=True)], NM),
    # --- principals
    ok("principal-exact", [pol("a", m(principals=[CURL.removeprefix("spiffe://")]))], "shop/a"),
    ok("principal-with-spiffe-prefix", [pol("a", m(principals=[CURL]))], "shop/a"),
    ok("principal-prefix", [pol("a", m(principals=["cluster.local/ns/shop/*"]))], "shop/a"),
    ok("principal-suffix", [pol("a", m(principals=["*/sa/curl"]))], "shop/a"),
    no("principal-suffix-miss", [pol("a", m(principals=["*/sa/admin"]))], NM),
    ok("principal-presence-mtls", [pol("a", m(principals=["*"]))], "shop/a"),
    no("principal-presence-plaintext", [pol("a", m(principals=["*"]))], NM, conn=PLAIN),
    no("principal-exact-plaintext", [pol("a", m(principals=[CURL]))], NM, conn=PLAIN),
    ok("principals-or", [pol("a", m(principals=[OTHER, CURL]))], "shop/a"),
    ok("not-principal-other", [pol("a", m(not_principals=[OTHER]))], "shop/a"),
    no("not-principal-self", [pol("a", m(not_principals=[CURL]))], NM),
    no("deny-not-principals-any-plaintext", [deny("d", m(not_principals=["*"]))], "shop/d", conn=PLAIN),
    ok("deny-not-principals-any-mtls", [deny("d", m(not_principals=["*"]))], REASON_NO_ALLOW_POLICIES),
    no("allow-not-principal-plaintext-failsafe", [pol("a", m(not_principals=[OTHER]))], NM, conn=PLAIN),
    no("principal-wrong-trust-domain", [pol("a", m(principals=["other.td/ns/shop/sa/curl"]))], NM),
    # --- namespaces
    ok("namespace-exact", [pol("a", m(namespaces=["shop"]))], "shop/a"),
    no("namespace-miss", [pol("a", m(namespaces=["other"]))], NM),
    ok("namespace-prefix", [pol("a", m(namespaces=["sh*"]))], "shop/a"),
    ok("namespace-suffix", [pol("a", m(namespaces=["*op"]))], "shop/a"),
    no("not-namespace-self", [pol("a", m(not_namespaces=["shop"]))], NM),
    ok("not-namespace-other", [pol("a", m(not_namespaces=["other"]))], "shop/a"),
    no("namespace-plaintext", [pol("a", m(namespaces=["shop"]))], NM, conn=PLAIN),
    no("deny-not-namespace-plaintext", [deny("d", m(not_namespaces=["shop"]))], "shop/d", conn=PLAIN),
    ok("deny-not-namespace-same", [deny("d", m(not_namespaces=["shop"]))], REASON_NO_ALLOW_POLICIES),
    no("deny-not-namespace-other", [deny("d", m(not_namespaces=["shop"]))], "shop/d", conn=conn(OTHER)),
    no("namespace-non-spiffe-identity", [pol("a", m(namespaces=["shop"]))], NM, conn=conn("spiffe://x")),
    ok("principal-non-spiffe-identity", [pol("a", m(principals=["x"]))], "shop/a", conn=conn("spiffe://x")),
    ok("namespace-and-not-namespace", [pol("a", m(namespaces=["s*"], not_namespaces=["staging"]))], "a"),
    # --- service accounts
    ok("sa-match", [pol("a", m(service_accounts=["shop/curl"]))], "shop/a"),
    no("sa-wrong-namespace", [pol("a", m(service_accounts=["other/curl"]))], NM),
    ok("sa-any-namespace", [pol("a", m(service_accounts=["/curl"]))], "shop/a"),
    no("not-sa-self", [pol("a", m(not_service_accounts=["shop/curl"]))], NM),
    ok("not-sa-other", [pol("a", m(not_service_accounts=["shop/admin"]))], "shop/a"),
    no("sa-plaintext", [pol("a", m(service_accounts=["shop/curl"]))], NM, conn=PLAIN),
    no("deny-not-sa-plaintext", [deny("d", m(not_service_accounts=["shop/curl"]))], "shop/d", conn=PLAIN),
    no("allow-not-sa-plaintext", [pol("a", m(not_service_accounts=["shop/x"]))], NM, conn=PLAIN),
    # --- source IPs
    ok("src-cidr-v4", [pol("a", m(source_ips=["10.244.1.0/24"]))], "shop/a"),
    no("src-cidr-v4-miss", [pol("a", m(source_ips=["10.244.9.0/24"]))], NM),
    ok("src-host-route", [pol("a", m(source_ips=["10.244.1.7"]))], "shop/a"),
    ok("src-any-v4", [pol("a", m(source_ips=["0.0.0.0/0"]))], "shop/a"),
    ok("src-cidr-v6", [pol("a", m(source_ips=["fd00::/64"]))], "shop/a", conn=conn(src="fd00::7", dst="fd00::6")),
    no("src-v4-cidr-v6-peer", [pol("a", m(source_ips=["0.0.0.0/0"]))], NM, conn=conn(src="fd00::7")),
    ok("src-v4-mapped", [pol("a", m(source_ips=["10.244.1.0/24"]))], "a", conn=conn(src="::ffff:10.244.1.7")),
    no("not-src", [pol("a", m(not_source_ips=["10.244.1.0/24"]))], NM),
    ok("not-src-other", [pol("a", m(not_source_ips=["10.9.0.0/16"]))], "shop/a"),
    ok("src-plaintext", [pol("a", m(source_ips=["10.244.1.0/24"]))], "shop/a", conn=PLAIN),
    ok("not-src-plaintext", [pol("a", m(not_source_ips=["10.9.0.0/16"]))], "shop/a", conn=PLAIN),
    no("deny-src-plaintext", [deny("d", m(source_ips=["10.244.0.0/16"]))], "shop/d", conn=PLAIN),
    ok("src-ips-or", [pol("a", m(source_ips=["10.9.0.0/16", "10.244.1.0/24"]))], "shop/a"),
    # --- destination IPs and ports
    ok("dst-ip", [pol("a", m(destination_ips=["10.244.2.6/32"]))], "shop/a"),
    no("dst-ip-miss", [pol("a", m(destination_ips=["10.244.3.0/24"]))], NM),
    no("not-dst-ip", [pol("a", m(not_destination_ips=["10.244.2.0/24"]))], NM),
    ok("dst-ip-v6", [pol("a", m(destination_ips=["fd00::/8"]))], "a", conn=conn(src="fd00::7", dst="fd00::6")),
    ok("dst-port", [pol("a", m(destination_ports=[8080]))], "shop/a"),
    no("dst-port-miss", [pol("a", m(destination_ports=[9090]))], NM),
    ok("dst-ports-or", [pol("a", m(destination_ports=[80, 8080]))], "shop/a"),
    no("not-dst-port", [pol("a", m(not_destination_ports=[8080]))], NM),
    ok("not-dst-port-other", [pol("a", m(not_destination_ports=[22]))], "shop/a"),
    no("deny-port", [deny("d", m(destination_ports=[8080]))], "shop/d"),
    ok("deny-other-port", [deny("d", m(destination_ports=[22]))], REASON_NO_ALLOW_POLICIES),
    # --- structure: fields AND, matches OR, clauses AND, rules OR
    no("fields-and", [pol("a", m(principals=[CURL], destination_ports=[9090]))], NM),
    ok("fields-and-all-hold", [pol("a", m(principals=[CURL], destination_ports=[8080]))], "shop/a"),
    ok("matches-or", [pol("a", m(namespaces=["x"]), m(destination_ports=[8080]))], "shop/a"),
    no(
        "clauses-and",
        [pol("a", rules=(Rule((Clause((m(principals=[CURL]),)), Clause((m(destination_ports=[1]),)))),))],
        NM,
    ),
    ok(
        "clauses-and-both",
        [pol("a", rules=(Rule((Clause((m(principals=[CURL]),)), Clause((m(destination_ports=[8080]),)))),))],
        "shop/a",
    ),
    ok(
        "rules-or",
        [pol("a", rules=(Rule((Clause((NONE_MATCH,)),)), Rule((Clause((m(destination_ports=[8080]),)),))))],
        "shop/a",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_table(case: Case) -> None:
    view = view_of(policies=case.policies)
    decision = evaluate(case.conn, web(case.refs, case.ns), view)
    assert decision.allowed is case.allowed, decision
    assert case.reason in decision.reason, decision.reason


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 60


def test_deny_decision_names_policies_and_error_text() -> None:
    view = view_of(policies=[pol("a", ANY), deny("d", ANY)])
    d = evaluate(conn(), web(), view)
    assert d.denied and d.policies == ("shop/d",)
    assert d.error == "connection closed due to policy rejection: denied by policy shop/d"
    assert {(r.policy, r.matched) for r in d.results} == {("shop/a", True), ("shop/d", True)}


def test_no_allow_matched_error_text_is_the_reference_one() -> None:
    d = evaluate(conn(), web(), view_of(policies=[pol("a", NONE_MATCH)]))
    assert d.error == "connection closed due to policy rejection: allow policies exist, but none allowed"


def test_missing_policy_is_reported_and_present_ones_still_evaluated() -> None:
    d = evaluate(conn(), web(("shop/late", "shop/late")), view_of(policies=[pol("a", ANY)]))
    assert d.denied and d.missing == ("shop/late",) and d.policies == ("shop/late",)
    assert "shop/late" in d.reason and "fail closed" in d.reason
    assert [r.policy for r in d.results] == ["shop/a"]


def test_dry_run_deny_reported_as_would_deny() -> None:
    d = evaluate(conn(), web(), view_of(policies=[deny("d", ANY, dry_run=True)]))
    assert d.allowed
    assert d.shadow_allowed is False and d.shadow_reason == "denied by policy shop/d"
    assert [(r.policy, r.effect) for r in d.dry_run] == [("shop/d", "would deny")]


def test_dry_run_allow_reported_as_would_allow_or_no_match() -> None:
    d = evaluate(conn(), web(), view_of(policies=[pol("x", NONE_MATCH, dry_run=True), pol("y", ANY, dry_run=True)]))
    assert d.allowed and d.shadow_allowed is True
    assert {r.policy: r.effect for r in d.dry_run} == {"shop/x": "no match", "shop/y": "would allow"}


def test_dry_run_allow_not_matching_shadow_denies() -> None:
    d = evaluate(conn(), web(), view_of(policies=[pol("x", NONE_MATCH, dry_run=True)]))
    assert d.allowed and d.shadow_allowed is False and d.shadow_reason == REASON_NO_ALLOW_MATCHED


def test_no_dry_run_means_no_shadow() -> None:
    d = evaluate(conn(), web(), view_of(policies=[pol("a", ANY)]))
    assert d.shadow_allowed is None and d.dry_run == ()


def test_all_matching_allows_listed() -> None:
    d = evaluate(conn(), web(), view_of(policies=[pol("a", ANY), pol("b", ANY), pol("c", NONE_MATCH)]))
    assert d.allowed and d.policies == ("shop/a", "shop/b")


@pytest.mark.parametrize(
    ("identity", "principal", "namespace", "sa"),
    [
        (CURL, "cluster.local/ns/shop/sa/curl", "shop", "curl"),
        ("spiffe://td/ns/a/sa/b", "td/ns/a/sa/b", "a", "b"),
        ("spiffe://td/ns//sa/b", "td/ns//sa/b", None, None),
        ("spiffe://td/foo", "td/foo", None, None),
        ("td/ns/a/sa/b", "td/ns/a/sa/b", "a", "b"),
    ],
)
def test_peer_identity_parse(identity: str, principal: str, namespace: str | None, sa: str | None) -> None:
    p = PeerIdentity.parse(identity)
    assert (p.principal, p.namespace, p.service_account) == (principal, namespace, sa)
