"""Table tests of the waypoint's L7 AuthorizationPolicy evaluation."""

from __future__ import annotations

from typing import Any

import pytest

from ambient.waypoint.l7authz import (
    L7Policy,
    RequestAttrs,
    Target,
    applicable,
    evaluate,
    match_value,
    parse_policy,
)

CURL = "spiffe://cluster.local/ns/shop/sa/curl"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"


def pol(action: str, rules: list[dict[str, Any]] | None, *, name: str = "p", dry_run: bool = False,
        targets: list[dict[str, Any]] | None = None) -> L7Policy:
    spec: dict[str, Any] = {"action": action,
                            "targetRefs": targets or [{"kind": "Service", "group": "", "name": "reviews"}]}
    if rules is not None:
        spec["rules"] = rules
    meta: dict[str, Any] = {"name": name, "namespace": "shop"}
    if dry_run:
        meta["annotations"] = {"istio.io/dry-run": "true"}
    return parse_policy({"kind": "AuthorizationPolicy", "metadata": meta, "spec": spec})


def op(**fields: list[str]) -> dict[str, Any]:
    return {"to": [{"operation": fields}]}


def src(**fields: list[str]) -> dict[str, Any]:
    return {"from": [{"source": fields}]}


def r(method: str = "GET", path: str = "/", *, principal: str = CURL, host: str = "reviews.shop:80",
      port: int = 80, headers: dict[str, str] | None = None, http: bool = True, ip: str = "10.244.1.7") -> RequestAttrs:
    return RequestAttrs(principal, port, method, path, host, headers or {}, ip, http)


# (case id, policies, request, allowed)
CASES: list[tuple[str, list[L7Policy], RequestAttrs, bool]] = [
    ("no policies allow", [], r(), True),
    ("allow-nothing: ALLOW without rules", [pol("ALLOW", None)], r(), False),
    ("allow-all: ALLOW with an empty rule", [pol("ALLOW", [{}])], r(), True),
    ("DENY without rules matches nothing", [pol("DENY", None)], r(), True),
    ("DENY path exact", [pol("DENY", [op(paths=["/admin"])])], r(path="/admin"), False),
    ("DENY path exact, other path", [pol("DENY", [op(paths=["/admin"])])], r(path="/admin2"), True),
    ("DENY path prefix*", [pol("DENY", [op(paths=["/admin/*"])])], r(path="/admin/users"), False),
    ("DENY path *suffix", [pol("DENY", [op(paths=["*.php"])])], r(path="/x/index.php"), False),
    ("DENY path * presence", [pol("DENY", [op(paths=["*"])])], r(path="/"), False),
    ("DENY beats ALLOW", [pol("ALLOW", [{}], name="a"), pol("DENY", [op(methods=["DELETE"])], name="d")],
     r("DELETE"), False),
    ("ALLOW method", [pol("ALLOW", [op(methods=["GET", "HEAD"])])], r("HEAD"), True),
    ("ALLOW method mismatch denies", [pol("ALLOW", [op(methods=["GET"])])], r("POST"), False),
    ("methods are case-sensitive", [pol("ALLOW", [op(methods=["get"])])], r("GET"), False),
    ("notMethods", [pol("ALLOW", [op(notMethods=["DELETE"])])], r("DELETE"), False),
    ("notMethods other", [pol("ALLOW", [op(notMethods=["DELETE"])])], r("GET"), True),
    ("notPaths", [pol("DENY", [op(notPaths=["/public/*"])])], r(path="/private"), False),
    ("notPaths excluded", [pol("DENY", [op(notPaths=["/public/*"])])], r(path="/public/x"), True),
    ("hosts case-insensitive, port ignored", [pol("ALLOW", [op(hosts=["Reviews.Shop"])])], r(host="reviews.shop:80"),
     True),
    ("hosts prefix wildcard", [pol("ALLOW", [op(hosts=["*.shop.svc.cluster.local"])])],
     r(host="reviews.shop.svc.cluster.local"), True),
    ("notHosts", [pol("DENY", [op(notHosts=["reviews.shop"])])], r(host="evil.example"), False),
    ("ports", [pol("ALLOW", [op(ports=["9080"])])], r(port=80), False),
    ("ports match", [pol("ALLOW", [op(ports=["80"])])], r(port=80), True),
    ("notPorts", [pol("DENY", [op(notPorts=["80"])])], r(port=8080), False),
    ("fields AND inside operation", [pol("ALLOW", [op(methods=["GET"], paths=["/a"])])], r("GET", "/b"), False),
    ("operations OR", [pol("ALLOW", [{"to": [{"operation": {"paths": ["/a"]}}, {"operation": {"paths": ["/b"]}}]}])],
     r(path="/b"), True),
    ("rules OR", [pol("ALLOW", [op(paths=["/a"]), op(paths=["/b"])])], r(path="/b"), True),
    ("principal without spiffe://", [pol("ALLOW", [src(principals=["cluster.local/ns/shop/sa/curl"])])], r(), True),
    ("principal with spiffe://", [pol("ALLOW", [src(principals=[CURL])])], r(), True),
    ("principal mismatch", [pol("ALLOW", [src(principals=["cluster.local/ns/shop/sa/other"])])], r(), False),
    ("principal prefix", [pol("ALLOW", [src(principals=["cluster.local/ns/shop/*"])])], r(), True),
    ("notPrincipals in DENY", [pol("DENY", [src(notPrincipals=["cluster.local/ns/ops/*"])])], r(), False),
    ("notPrincipals in DENY, excluded", [pol("DENY", [src(notPrincipals=["cluster.local/ns/ops/*"])])],
     r(principal=ADMIN), True),
    ("namespaces from the certificate", [pol("ALLOW", [src(namespaces=["ops"])])], r(principal=ADMIN), True),
    ("namespaces mismatch", [pol("ALLOW", [src(namespaces=["ops"])])], r(), False),
    ("notNamespaces", [pol("DENY", [src(notNamespaces=["shop"])])], r(principal=ADMIN), False),
    ("serviceAccounts ns/sa", [pol("ALLOW", [src(serviceAccounts=["shop/curl"])])], r(), True),
    ("from AND to", [pol("ALLOW", [{**src(namespaces=["ops"]), **op(paths=["/admin*"])}])], r(path="/admin"), False),
    ("from AND to both", [pol("ALLOW", [{**src(namespaces=["ops"]), **op(paths=["/admin*"])}])],
     r(path="/admin", principal=ADMIN), True),
    ("ipBlocks", [pol("ALLOW", [src(ipBlocks=["10.244.0.0/16"])])], r(ip="10.244.1.7"), True),
    ("notIpBlocks in DENY", [pol("DENY", [src(notIpBlocks=["10.244.0.0/16"])])], r(ip="192.0.2.1"), False),
    ("when header value", [pol("ALLOW", [{"when": [{"key": "request.headers[x-token]", "values": ["s3cr3t"]}]}])],
     r(headers={"x-token": "s3cr3t"}), True),
    ("when header absent", [pol("ALLOW", [{"when": [{"key": "request.headers[x-token]", "values": ["*"]}]}])],
     r(), False),
    ("when header notValues", [pol("DENY", [{"when": [{"key": "request.headers[X-Env]", "notValues": ["prod"]}]}])],
     r(headers={"x-env": "dev"}), False),
    ("when conditions AND", [pol("ALLOW", [{"when": [
        {"key": "request.headers[a]", "values": ["1"]}, {"key": "request.headers[b]", "values": ["2"]}]}])],
     r(headers={"a": "1"}), False),
    ("when source.namespace", [pol("ALLOW", [{"when": [{"key": "source.namespace", "values": ["shop"]}]}])], r(),
     True),
    ("unknown when key fails closed in ALLOW", [pol("ALLOW", [{"when": [{"key": "request.auth.claims[iss]",
                                                                          "values": ["x"]}]}])], r(), False),
    ("unknown when key matches in DENY", [pol("DENY", [{"when": [{"key": "request.auth.claims[iss]",
                                                                   "values": ["x"]}]}])], r(), False),
    ("requestPrincipals never match in ALLOW", [pol("ALLOW", [src(requestPrincipals=["*"])])], r(), False),
    ("L4 traffic: HTTP-only ALLOW never allows", [pol("ALLOW", [op(methods=["GET"])])], r(http=False), False),
    ("L4 traffic: HTTP-only DENY denies", [pol("DENY", [op(paths=["/admin"])])], r(http=False), False),
    ("L4 traffic: principal ALLOW works", [pol("ALLOW", [src(principals=[CURL])])], r(http=False), True),
    ("L4 traffic: ports still evaluated", [pol("DENY", [op(ports=["9999"])])], r(http=False), True),
    ("AUDIT never denies", [pol("AUDIT", [{}])], r(), True),
    ("AUDIT does not switch on default deny", [pol("AUDIT", [op(paths=["/x"])])], r(path="/y"), True),
    ("AUDIT does not allow past an ALLOW", [pol("AUDIT", [{}], name="a"), pol("ALLOW", [op(paths=["/x"])])],
     r(path="/y"), False),
    # CUSTOM without an extension provider: istiod builds an RBAC DENY from the policy's rules
    ("CUSTOM without provider denies what its rules match", [pol("CUSTOM", [op(paths=["/admin*"])])],
     r(path="/admin/users"), False),
    ("CUSTOM without provider lets other requests through", [pol("CUSTOM", [op(paths=["/admin*"])])],
     r(path="/reviews"), True),
    ("CUSTOM with an empty rule denies everything", [pol("CUSTOM", [{}])], r(), False),
    ("CUSTOM without rules matches nothing", [pol("CUSTOM", None)], r(), True),
    ("CUSTOM before ALLOW", [pol("ALLOW", [{}], name="a"), pol("CUSTOM", [op(methods=["DELETE"])], name="c")],
     r("DELETE"), False),
    ("CUSTOM: unknown attributes match (fail closed)", [pol("CUSTOM", [src(requestPrincipals=["*"])])], r(),
     False),
    ("dry-run CUSTOM not enforced", [pol("CUSTOM", [{}], dry_run=True)], r(), True),
    ("dry-run DENY not enforced", [pol("DENY", [{}], dry_run=True)], r(), True),
    ("dry-run ALLOW does not switch on default deny", [pol("ALLOW", [op(paths=["/x"])], dry_run=True)], r(), True),
]


@pytest.mark.parametrize(("policies", "request_", "allowed"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_table(policies: list[L7Policy], request_: RequestAttrs, allowed: bool) -> None:
    assert evaluate(policies, request_).allowed is allowed


def test_reasons_name_the_policy() -> None:
    d = evaluate([pol("DENY", [op(paths=["/admin"])], name="no-admin")], r(path="/admin"))
    assert d.denied and d.policy == "shop/no-admin" and "shop/no-admin" in d.reason
    d = evaluate([pol("ALLOW", [op(paths=["/x"])], name="only-x")], r(path="/y"))
    assert d.reason == "allow policies exist, but none allowed"
    d = evaluate([pol("ALLOW", [op(paths=["/x"])], name="only-x")], r(path="/x"))
    assert d.allowed and d.policy == "shop/only-x"


def test_dry_run_outcome_is_reported_as_shadow() -> None:
    d = evaluate([pol("DENY", [op(paths=["/admin"])], name="shadow", dry_run=True)], r(path="/admin"))
    assert d.allowed and d.shadow is not None and "shop/shadow" in d.shadow


def test_applicable_by_service_and_gateway_target() -> None:
    svc = pol("ALLOW", [{}], name="svc")
    gw = pol("ALLOW", [{}], name="gw", targets=[{"kind": "Gateway", "name": "waypoint"}])
    other = pol("ALLOW", [{}], name="other", targets=[{"kind": "Service", "name": "ratings"}])
    foreign = pol("ALLOW", [{}], name="foreign", targets=[{"kind": "Service", "name": "reviews", "namespace": "x"}])
    got = applicable([svc, gw, other, foreign], Target("reviews", "shop", "waypoint", "shop"))
    assert [p.name for p in got] == ["svc", "gw"]
    assert [p.name for p in applicable([svc, gw], Target("", "", "waypoint", "shop"))] == ["gw"]


@pytest.mark.parametrize(("pattern", "value", "hit"), [
    ("*", "x", True), ("*", "", False), ("/a*", "/abc", True), ("*c", "abc", True), ("abc", "abc", True),
    ("abc", "abcd", False),
])
def test_match_value(pattern: str, value: str, hit: bool) -> None:
    assert match_value(pattern, value) is hit


def test_parse_policy_shapes() -> None:
    p = parse_policy({"kind": "AuthorizationPolicy", "metadata": {"name": "n"},
                      "spec": {"targetRef": {"kind": "Gateway", "name": "waypoint"}, "action": "deny",
                               "rules": [{"from": [{"source": {"remoteIpBlocks": ["1.2.3.0/24"]}}],
                                          "to": [{"operation": {"ports": ["80"]}}]}]}})
    assert p.action == "DENY" and p.namespace == "default"
    assert p.targets[0].kind == "Gateway" and p.targets[0].namespace == "default"
    assert p.rules[0].sources[0].ip_blocks == ("1.2.3.0/24",)
    assert p.rules[0].operations[0].ports == ("80",)


def test_custom_denial_names_the_policy_and_its_missing_provider() -> None:
    custom = parse_policy({"kind": "AuthorizationPolicy", "metadata": {"name": "ext", "namespace": "shop"},
                           "spec": {"action": "CUSTOM", "provider": {"name": "opa"},
                                    "targetRefs": [{"kind": "Service", "name": "reviews"}],
                                    "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}})
    assert custom.provider == "opa"
    d = evaluate([custom], r(path="/admin"))
    assert d.denied and d.policy == "shop/ext"
    assert "shop/ext" in d.reason and "'opa'" in d.reason and "extensionProviders" in d.reason


def test_audit_matches_are_reported_without_changing_the_decision() -> None:
    audit = pol("AUDIT", [op(paths=["/audited*"])], name="audit")
    deny = pol("DENY", [op(methods=["DELETE"])], name="deny")
    d = evaluate([audit, deny], r(path="/audited/1"))
    assert d.allowed and d.audit == ("shop/audit",)
    d = evaluate([audit, deny], r("DELETE", path="/audited/1"))
    assert d.denied and d.policy == "shop/deny" and d.audit == ("shop/audit",)
    assert evaluate([audit, deny], r(path="/other")).audit == ()


def test_denial_details_name_the_policy_as_envoy_rbac_does() -> None:
    d = evaluate([pol("DENY", [op(paths=["/admin"])], name="no-admin")], r(path="/admin"))
    assert d.details == "rbac_access_denied_matched_policy[ns[shop]-policy[no-admin]]"
    d = evaluate([pol("ALLOW", [op(paths=["/x"])], name="only-x")], r(path="/y"))
    assert d.details == "rbac_access_denied_matched_policy[none]"
    assert evaluate([pol("ALLOW", [op(paths=["/x"])], name="only-x")], r(path="/x")).details == ""
