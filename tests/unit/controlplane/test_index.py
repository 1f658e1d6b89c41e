"""controlplane.index: incremental recompute and change reporting."""

from __future__ import annotations

from typing import Any

import pytest

from ambient.controlplane.index import MeshIndex


def pod(
    name: str, labels: dict[str, str], ip: str = "10.244.1.5", node: str = "node-1", sa: str = "sa"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "labels": labels},
        "spec": {"nodeName": node, "serviceAccountName": sa},
        "status": {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_pod_service_policy_dependencies() -> None:
    ix = MeshIndex()
    ix.upsert("Namespace", {"metadata": {"name": "default", "labels": {"istio.io/dataplane-mode": "ambient"}}})
    ix.upsert("Pod", pod("a", {"app": "a"}))
    ix.upsert("Pod", pod("b", {"app": "b"}, ip="10.244.1.6"))
    d = ix.flush()
    assert set(d.addresses) == {"uid-a", "uid-b"}
    assert ix.flush().empty  # nothing changed

    # A Service selecting app=a recomputes a (gains services) but b is unchanged, so not reported.
    ix.upsert(
        "Service",
        {
            "metadata": {"name": "s", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.9", "selector": {"app": "a"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    d = ix.flush()
    assert set(d.addresses) == {"uid-a", "default/s.default.svc.cluster.local"}
    assert list(ix.addresses["uid-a"].workload.services) == ["default/s.default.svc.cluster.local"]

    # A selector policy: sent, and referenced by the matching pod only.
    ix.upsert(
        "AuthorizationPolicy",
        {
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "b"}}, "action": "DENY", "rules": [{}]},
        },
    )
    d = ix.flush()
    assert set(d.authorizations) == {"default/p"} and set(d.addresses) == {"uid-b"}
    assert list(ix.addresses["uid-b"].workload.authorization_policies) == ["default/p"]

    # Status-only update of the pod: same resource, nothing reported.
    p = pod("a", {"app": "a"})
    p["status"]["startTime"] = "now"
    ix.upsert("Pod", p)
    assert ix.flush().empty

    # Namespace leaves the mesh: every pod changes tunnel protocol.
    ix.upsert("Namespace", {"metadata": {"name": "default", "labels": {}}})
    assert set(ix.flush().addresses) == {"uid-a", "uid-b"}

    # Deletions are reported as None.
    ix.delete("Pod", pod("a", {}))
    ix.delete("AuthorizationPolicy", {"metadata": {"name": "p", "namespace": "default"}})
    d = ix.flush()
    assert d.addresses["uid-a"] is None and d.authorizations["default/p"] is None
    assert list(ix.addresses["uid-b"].workload.authorization_policies) == []


def test_replace_deletes_missing_and_node_service_accounts() -> None:
    ix = MeshIndex()
    ix.replace("Pod", [pod("a", {}, sa="one"), pod("b", {}, node="node-2", sa="two")])
    ix.flush()
    assert ix.node_service_accounts("node-1") == {("default", "one")}
    ix.replace("Pod", [pod("b", {}, node="node-2", sa="two")])
    d = ix.flush()
    assert d.addresses == {"uid-a": None}
    assert ix.node_service_accounts("node-1") == set()
    assert ix.node_service_accounts("node-2") == {("default", "two")}


def test_peer_authentication_static_policy_lifecycle() -> None:
    ix = MeshIndex()
    ix.upsert("Pod", pod("a", {"app": "a"}))
    ix.flush()
    strict = {"metadata": {"name": "default", "namespace": "istio-system"}, "spec": {"mtls": {"mode": "STRICT"}}}
    ix.upsert("PeerAuthentication", strict)
    d = ix.flush()
    assert "istio-system/istio_converted_static_strict" in d.authorizations
    assert list(ix.addresses["uid-a"].workload.authorization_policies) == ["istio-system/istio_converted_static_strict"]
    ix.delete("PeerAuthentication", strict)
    d = ix.flush()
    assert d.authorizations == {"istio-system/istio_converted_static_strict": None}
    assert list(ix.addresses["uid-a"].workload.authorization_policies) == []


def test_custom_policy_is_not_referenced_and_status_is_recorded() -> None:
    ix = MeshIndex()
    ix.upsert("Pod", pod("a", {"app": "a"}))
    ix.upsert(
        "AuthorizationPolicy",
        {
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "a"}}, "action": "CUSTOM"},
        },
    )
    ix.upsert(
        "AuthorizationPolicy",
        {
            "metadata": {"name": "l7", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "a"}}, "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]},
        },
    )
    ix.flush()
    assert set(ix.authorizations) == {"default/l7"}
    assert list(ix.addresses["uid-a"].workload.authorization_policies) == ["default/l7"]
    assert (ix.policy_status[("default", "l7")] or "").startswith("more restrictive than requested")
    assert "CUSTOM" in (ix.policy_status[("default", "ext")] or "")


def test_peer_authentication_disable_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from ambient.controlplane.index import MeshIndex

    index = MeshIndex()
    pa = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
          "metadata": {"name": "off", "namespace": "shop", "resourceVersion": "1"},
          "spec": {"mtls": {"mode": "DISABLE"}}}
    with caplog.at_level("WARNING"):
        index.upsert("PeerAuthentication", pa)
        index.flush()
        index.flush()
    warnings = [r.getMessage() for r in caplog.records if "PeerAuthentication shop/off" in r.getMessage()]
    assert len(warnings) == 1 and "DISABLE is ignored" in warnings[0]
    # ... and says so where the user looks: a ZtunnelAccepted=False condition on the object's status.
    status, reason, message = index.status_pending[("PeerAuthentication", "shop", "off")]
    assert (status, reason) == ("False", "UnsupportedValue") and "acts as PERMISSIVE" in message
    strict = {**pa, "metadata": {**pa["metadata"], "name": "on"}, "spec": {"mtls": {"mode": "STRICT"}}}
    index.upsert("PeerAuthentication", strict)
    index.flush()
    assert index.status_pending[("PeerAuthentication", "shop", "on")][:2] == ("True", "Accepted")
    # Once the condition is written (the object comes back with it), nothing is pending for it again.
    written = {**pa, "status": {"conditions": [{"type": "ZtunnelAccepted", "status": status, "reason": reason,
                                                "message": message}]}}
    index.status_pending.clear()
    index.upsert("PeerAuthentication", written)
    index.flush()
    assert ("PeerAuthentication", "shop", "off") not in index.status_pending


def _route(name: str, filters: list[dict] | None = None, parent_kind: str = "Service") -> dict:
    rule: dict = {"backendRefs": [{"name": "reviews", "port": 9080}]}
    if filters is not None:
        rule["filters"] = filters
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "shop", "generation": 2},
            "spec": {"parentRefs": [{"group": "" if parent_kind == "Service" else "gateway.networking.k8s.io",
                                     "kind": parent_kind, "name": "reviews"}], "rules": [rule]}}


def test_http_route_status_reports_unsupported_filters_on_its_service_parents() -> None:
    from ambient.controlplane.index import MeshIndex, route_status

    index = MeshIndex()
    index.upsert("HTTPRoute", _route("plain"))
    index.upsert("HTTPRoute", _route("mirror", [{"type": "ExtensionRef",
                                                  "extensionRef": {"group": "x", "kind": "Y", "name": "z"}}]))
    index.upsert("HTTPRoute", _route("north-south", parent_kind="Gateway"))  # not a mesh route: not ours
    delta = index.flush()
    assert not delta.addresses and not delta.authorizations  # routes change no xDS resource
    assert index.status_pending[("HTTPRoute", "shop", "plain")][:2] == ("True", "Accepted")
    status, reason, message = index.status_pending[("HTTPRoute", "shop", "mirror")]
    assert (status, reason) == ("False", "UnsupportedValue") and "rule 0: filter ExtensionRef" in message
    assert ("HTTPRoute", "shop", "north-south") not in index.status_pending
    resolved = index.route_resolved[("HTTPRoute", "shop", "mirror")]
    assert resolved[:2] == ("False", "BackendNotFound")  # no Service reviews in this index
    patch = route_status(_route("mirror"), (status, reason, message), "2026-11-22T00:00:00Z", resolved)
    assert patch["parents"] == [{
        "parentRef": {"group": "", "kind": "Service", "name": "reviews"},
        "controllerName": "istio.io/gateway-controller",
        "conditions": [{"type": "Accepted", "status": "False", "reason": "UnsupportedValue", "message": message,
                        "lastTransitionTime": "2026-11-22T00:00:00Z", "observedGeneration": 2},
                       {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound",
                        "message": "rule 0: Service shop/reviews not found",
                        "lastTransitionTime": "2026-11-22T00:00:00Z", "observedGeneration": 2}]}]
    # Written back (the watch returns the object with its status): nothing pending for it any more.
    index.status_pending.clear()
    index.upsert("HTTPRoute", {**_route("mirror", [{"type": "ExtensionRef", "extensionRef": {
        "group": "x", "kind": "Y", "name": "z"}}]), "status": patch})
    index.flush()
    assert ("HTTPRoute", "shop", "mirror") not in index.status_pending


def _svc(name: str, ns: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"port": 9080}]}}


def _backend_route(backends: list[dict], kind: str = "HTTPRoute") -> dict:
    return {"kind": kind, "metadata": {"name": "r", "namespace": "shop", "generation": 1},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
                     "rules": [{"backendRefs": backends}]}}


GRANT = {"kind": "ReferenceGrant", "metadata": {"name": "g", "namespace": "other"},
         "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}],
                  "to": [{"group": "", "kind": "Service"}]}}


@pytest.mark.parametrize(("backends", "grants", "expected", "names"), [
    ([{"name": "reviews", "port": 9080}], [], ("True", "ResolvedRefs"), ""),
    ([{"name": "gone", "port": 9080}], [], ("False", "BackendNotFound"), "rule 0: Service shop/gone not found"),
    ([{"name": "ratings", "namespace": "other", "port": 9080}], [], ("False", "RefNotPermitted"),
     "Service other/ratings (no ReferenceGrant in namespace other"),
    ([{"name": "ratings", "namespace": "other", "port": 9080}], [GRANT], ("True", "ResolvedRefs"), ""),
    ([{"name": "gone", "namespace": "other", "port": 9080}], [GRANT], ("False", "BackendNotFound"), "other/gone"),
    ([{"name": "x", "group": "networking.istio.io", "kind": "Hostname", "port": 80},
      {"name": "gone", "port": 9080}], [], ("False", "InvalidKind"), "Hostname shop/x"),
])
def test_route_resolved_refs(backends: list[dict], grants: list[dict], expected: tuple[str, str],
                             names: str) -> None:
    from ambient.controlplane.index import route_resolved_refs
    from ambient.l7.gateway_routes import parse_reference_grant

    services = {("reviews", "shop"), ("ratings", "other")}
    status, reason, message = route_resolved_refs(
        _backend_route(backends), "HTTPRoute", lambda n, s: (n, s) in services,
        [parse_reference_grant(g) for g in grants])
    assert (status, reason) == expected and names in message


def test_route_resolved_refs_follow_services_and_grants() -> None:
    """The condition is recomputed when the backend Service appears and when a ReferenceGrant is added."""
    from ambient.controlplane.index import MeshIndex

    index = MeshIndex()
    key = ("HTTPRoute", "shop", "r")
    index.upsert("HTTPRoute", _backend_route([{"name": "ratings", "namespace": "other", "port": 9080}]))
    index.flush()
    assert index.route_resolved[key][1] == "RefNotPermitted" and key in index.status_pending
    index.upsert("ReferenceGrant", GRANT)
    index.flush()
    assert index.route_resolved[key][1] == "BackendNotFound"
    index.upsert("Service", _svc("ratings", "other"))
    index.flush()
    assert index.route_resolved[key][:2] == ("True", "ResolvedRefs")
    index.delete("Service", _svc("ratings", "other"))
    index.flush()
    assert index.route_resolved[key][1] == "BackendNotFound"
