"""`ambient x authz check` / `controlplane.explain`: cluster objects in, the destination proxy's decision out,
with the policies that produced it, without traffic."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from ambient.cli.context import CliState
from ambient.cli.main import app
from ambient.controlplane.explain import ExplainError, MeshModel, Source, render_text

ENROLL = {"istio.io/dataplane-mode": "ambient"}


def ns(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}


def pod(name: str, namespace: str, ip: str, labels: dict[str, str] | None = None, sa: str = "default",
        port: int | None = 8080) -> dict[str, Any]:
    ports = [{"containerPort": port}] if port else []
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}",
                         "labels": labels or {}},
            "spec": {"serviceAccountName": sa, "nodeName": "node-1",
                     "containers": [{"name": "app", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}


def ap(name: str, namespace: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}}, "spec": spec}


def pa(name: str, namespace: str, mode: str, selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"mtls": {"mode": mode}}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": spec}


BASE = [
    ns("shop", ENROLL), ns("client", ENROLL), ns("plain"), ns("istio-system"),
    pod("web", "shop", "10.244.2.6", {"app": "web"}, sa="web"),
    pod("db", "shop", "10.244.2.7", {"app": "db"}),
    pod("curl", "client", "10.244.1.7", sa="curl"),
    pod("curl", "plain", "10.244.1.8"),
    pod("legacy", "plain", "10.244.1.9"),
]


def model(*extra: dict[str, Any], root: str = "istio-system") -> MeshModel:
    objs: dict[str, list[dict[str, Any]]] = {}
    for o in [*BASE, *extra]:
        objs.setdefault(o["kind"], []).append(o)
    return MeshModel(objs, root)


def check(m: MeshModel, src: str, dst: str = "shop/web", port: int = 8080, **kw: Any) -> Any:
    source = m.source_pod(src) if "/" in src else Source(src, src)
    return m.explain(source, dst, port, **kw)


DENY_CLIENT = {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["client"]}}]}]}


def test_no_policies_allows_with_the_proxys_reason() -> None:
    ex = check(model(), "client/curl")
    assert ex.enforced and ex.allowed
    assert ex.decision.reason == "no allow policies"
    assert ex.source.identity == "spiffe://cluster.local/ns/client/sa/curl"
    assert ex.policies == ()


def test_namespace_deny_names_the_policy_and_the_log_error() -> None:
    ex = check(model(ap("deny-client", "shop", DENY_CLIENT)), "client/curl")
    assert not ex.allowed
    assert ex.decision.error == "connection closed due to policy rejection: denied by policy shop/deny-client"
    [line] = ex.policies
    assert (line.key, line.action, line.scope, line.effect) == ("shop/deny-client", "DENY", "NAMESPACE", "deny")
    text = render_text(ex)
    assert "DENY" in text and "shop/deny-client" in text and "curl exit 56" in text


def test_selector_policy_applies_only_to_selected_workload() -> None:
    m = model(ap("deny-web", "shop", {**DENY_CLIENT, "selector": {"matchLabels": {"app": "web"}}}))
    assert not check(m, "client/curl", "shop/web").allowed
    db = check(m, "client/curl", "shop/db")
    assert db.allowed and db.policies == ()
    assert check(m, "client/curl", "shop/web").policies[0].scope == "WORKLOAD_SELECTOR"


def test_mesh_wide_policy_in_root_namespace_and_configurable_root() -> None:
    mesh_deny = ap("deny-all-client", "istio-system", DENY_CLIENT)
    ex = check(model(mesh_deny), "client/curl", "shop/db")
    assert not ex.allowed and ex.policies[0].scope == "GLOBAL"
    # With another root namespace the same object is only namespace-wide in istio-system.
    assert check(model(mesh_deny, root="mesh-root"), "client/curl", "shop/db").allowed
    custom_root = ap("deny-all-client", "mesh-root", DENY_CLIENT)
    assert not check(model(custom_root, root="mesh-root"), "client/curl", "shop/db").allowed


def test_deny_beats_allow_and_allow_switches_on_default_deny() -> None:
    allow_client = {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": [
        "cluster.local/ns/client/sa/curl"]}}]}]}
    m = model(ap("allow-client", "shop", allow_client))
    assert check(m, "client/curl").decision.reason == "allowed by policy shop/allow-client"
    other = check(m, "10.244.1.8")  # plaintext: principals never match
    assert not other.allowed and other.decision.reason == "allow policies exist, but none allowed"
    both = check(model(ap("allow-client", "shop", allow_client), ap("deny", "shop", DENY_CLIENT)), "client/curl")
    assert not both.allowed and both.decision.policies == ("shop/deny",)
    effects = {p.key: p.effect for p in both.policies}
    assert effects == {"shop/allow-client": "allow", "shop/deny": "deny"}


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ({"notPrincipals": ["cluster.local/ns/client/sa/curl"]}, True),  # DENY everyone but curl
        ({"notNamespaces": ["client"]}, True),
        ({"ipBlocks": ["10.244.1.0/24"]}, False),
        ({"notIpBlocks": ["10.244.1.7/32"]}, True),
        ({"principals": ["*"]}, False),
    ],
)
def test_source_fields_in_a_deny(source: dict[str, Any], allowed: bool) -> None:
    m = model(ap("d", "shop", {"action": "DENY", "rules": [{"from": [{"source": source}]}]}))
    assert check(m, "client/curl").allowed is allowed


def test_ports_and_not_ports() -> None:
    m = model(ap("d", "shop", {"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["9090"]}}]}]}))
    assert check(m, "client/curl", port=8080).allowed
    assert not check(m, "client/curl", port=9090).allowed
    m = model(ap("d", "shop", {"action": "DENY", "rules": [{"to": [{"operation": {"notPorts": ["8080"]}}]}]}))
    assert check(m, "client/curl", port=8080).allowed
    assert not check(m, "client/curl", port=9090).allowed


def test_dry_run_reports_what_would_happen_but_allows() -> None:
    m = model(ap("d", "shop", DENY_CLIENT, {"istio.io/dry-run": "true"}))
    ex = check(m, "client/curl")
    assert ex.allowed and ex.decision.shadow_allowed is False
    assert ex.policies[0].effect == "would deny" and ex.policies[0].dry_run
    assert "dry-run: would be denied" in render_text(ex)


def test_http_only_allow_is_narrowed_and_the_status_is_shown() -> None:
    m = model(ap("get-only", "shop", {"action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}))
    ex = check(m, "client/curl")
    assert not ex.allowed  # the HTTP rule is dropped: the ALLOW matches nothing
    assert ex.policies[0].status and "more restrictive than requested" in ex.policies[0].status
    assert "more restrictive than requested" in render_text(ex)


def test_custom_action_is_listed_as_not_sent() -> None:
    ex = check(model(ap("ext", "shop", {"action": "CUSTOM", "provider": {"name": "x"}})), "client/curl")
    assert ex.allowed
    assert [(p.key, p.effect) for p in ex.policies] == [("shop/ext", "not sent")]


def test_strict_refuses_plaintext_permissive_and_disable_accept_it() -> None:
    strict = model(pa("default", "shop", "STRICT"))
    ex = check(strict, "plain/curl")
    assert not ex.allowed and ex.decision.policies == ("istio-system/istio_converted_static_strict",)
    assert check(strict, "client/curl").allowed
    assert check(model(pa("default", "shop", "PERMISSIVE")), "plain/curl").allowed
    disabled = check(model(pa("default", "shop", "DISABLE")), "plain/curl")
    assert disabled.allowed
    assert any("DISABLE is ignored" in n for n in disabled.notes)
    mesh_strict = model(pa("default", "istio-system", "STRICT"))
    assert not check(mesh_strict, "10.244.1.8", "shop/db").allowed
    by_selector = model(pa("web-strict", "shop", "STRICT", {"app": "web"}))
    assert not check(by_selector, "plain/curl", "shop/web").allowed
    assert check(by_selector, "plain/curl", "shop/db").allowed


def test_missing_referenced_policy_fails_closed() -> None:
    m = model(pa("default", "shop", "STRICT"))
    ex = check(m, "client/curl", assume_missing=["istio-system/istio_converted_static_strict"])
    assert not ex.allowed and "has not been received yet (fail closed)" in ex.decision.reason
    assert [(p.key, p.effect) for p in ex.policies] == [("istio-system/istio_converted_static_strict", "missing")]


def test_unenrolled_destination_is_not_enforced() -> None:
    ex = check(model(ap("deny", "plain", DENY_CLIENT)), "client/curl", "plain/legacy")
    assert not ex.enforced and ex.allowed and ex.decision is None
    assert any("not enrolled" in n for n in ex.notes)


def test_unknown_pod_is_an_actionable_error() -> None:
    with pytest.raises(ExplainError, match="pod shop/nope not found"):
        check(model(), "client/curl", "shop/nope")


# ------------------------------------------------------------------------------------------- CLI


class _Client:
    def __init__(self, objs: list[dict[str, Any]]) -> None:
        self.objs = objs

    def list(self, kind: str, namespace: str | None = None) -> tuple[list[dict[str, Any]], str]:
        return [o for o in self.objs if o["kind"] == kind], "1"


def _run(objs: list[dict[str, Any]], *args: str) -> Any:
    client = _Client([*BASE, *objs])
    return CliRunner().invoke(app, list(args), obj=CliState(client_factory=lambda _s: client),
                              catch_exceptions=False)


def test_cli_text_and_json() -> None:
    res = _run([ap("deny-client", "shop", DENY_CLIENT)], "x", "authz", "check", "--from", "client/curl",
               "--to", "shop/web:8080")
    assert res.exit_code == 0, res.output
    assert "DENY" in res.output and "denied by policy shop/deny-client" in res.output
    res = _run([ap("deny-client", "shop", DENY_CLIENT)], "x", "authz", "check", "--from", "client/curl",
               "--to", "shop/web", "-o", "json", "--exit-code")
    assert res.exit_code == 1
    doc = json.loads(res.output)
    assert doc["allowed"] is False and doc["decidingPolicies"] == ["shop/deny-client"]
    assert doc["destination"] == {"name": "shop/web", "ip": "10.244.2.6", "port": 8080}


def test_cli_plaintext_source_ip() -> None:
    res = _run([pa("default", "shop", "STRICT")], "x", "authz", "check", "--from-ip", "10.0.0.9",
               "--to", "shop/web:8080", "-o", "json")
    doc = json.loads(res.output)
    assert doc["allowed"] is False and doc["source"]["identity"] is None


def test_cli_needs_exactly_one_source() -> None:
    res = _run([], "x", "authz", "check", "--to", "shop/web:8080")
    assert res.exit_code == 2


def test_compare_with_proxy_names_policies_not_yet_received() -> None:
    from ambient.controlplane.explain import compare_with_proxy, proxy_unreachable

    m = model(ap("deny-client", "shop", DENY_CLIENT), pa("default", "shop", "STRICT"))
    ex = check(m, "client/curl")
    behind = compare_with_proxy(ex, "node-2", {"policies": [{"namespace": "shop", "name": "deny-client"}]})
    assert behind.proxy is not None and behind.proxy.missing == ("istio-system/istio_converted_static_strict",)
    assert "has NOT received istio-system/istio_converted_static_strict" in render_text(behind)
    synced = compare_with_proxy(ex, "node-2", {"policies": [
        {"namespace": "shop", "name": "deny-client"},
        {"namespace": "istio-system", "name": "istio_converted_static_strict"}]})
    assert synced.proxy is not None and synced.proxy.missing == ()
    assert synced.to_dict()["proxy"] == {"node": "node-2", "missing": [], "error": None}
    down = proxy_unreachable(ex, "node-2", "connection refused")
    assert "not compared (connection refused)" in render_text(down)
