"""Golden tables for controlplane.translate (pure: objects in, protobuf messages out)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import empty_pb2, text_format

from ambient.controlplane import translate as tr
from ambient.protocol.gen.istio.security import authorization_pb2 as sec
from ambient.protocol.gen.istio.workload import workload_pb2 as wl


def mkpod(
    name: str = "web-7d4b9-abcde",
    ns: str = "default",
    labels: dict[str, str] | None = None,
    ready: bool = True,
    ip: str | None = "10.244.1.5",
    **extra: Any,
) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels or {}},
        "spec": {
            "nodeName": "node-1",
            "serviceAccountName": "web-sa",
            "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }
    if ip:
        pod["status"]["podIP"] = ip
    for k, v in extra.items():
        pod["metadata"][k] = v
    return pod


def svc(
    name: str, selector: dict[str, str], ports: list[dict[str, Any]], ns: str = "default", **meta: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, **meta},
        "spec": {"clusterIP": "10.96.0.20", "selector": selector, "ports": ports},
    }


AMBIENT_NS = {"istio.io/dataplane-mode": "ambient"}


def test_pod_golden() -> None:
    pod = mkpod(
        labels={"app": "web", "version": "v2", "pod-template-hash": "7d4b9"},
        ownerReferences=[{"kind": "ReplicaSet", "name": "web-7d4b9"}],
    )
    service = svc(
        "web",
        {"app": "web"},
        [{"port": 80, "targetPort": "http", "appProtocol": "http"}, {"port": 9000, "targetPort": 9001}],
    )
    ctx = tr.PodContext(
        namespace_labels=AMBIENT_NS, services=[service], selector_policies=[("default/allow-web", {"app": "web"})]
    )
    got = tr.workload_from_pod(pod, ctx)
    want = text_format.Parse(
        """
        uid: "uid-web-7d4b9-abcde" name: "web-7d4b9-abcde" namespace: "default"
        addresses: "\\n\\364\\001\\005"
        tunnel_protocol: HBONE trust_domain: "cluster.local" service_account: "web-sa" node: "node-1"
        canonical_name: "web" canonical_revision: "v2" workload_type: DEPLOYMENT workload_name: "web"
        authorization_policies: "default/allow-web" status: HEALTHY cluster_id: "Kubernetes"
        services { key: "default/web.default.svc.cluster.local"
                   value { ports { service_port: 80 target_port: 8080 app_protocol: HTTP11 }
                           ports { service_port: 9000 target_port: 9001 } } }
        """,
        wl.Workload(),
    )
    assert got == want, text_format.MessageToString(got)


@pytest.mark.parametrize(
    ("pod_labels", "ns_labels", "hbone"),
    [
        ({}, {}, False),
        ({}, AMBIENT_NS, True),
        ({"istio.io/dataplane-mode": "ambient"}, {}, True),
        ({"istio.io/dataplane-mode": "none"}, AMBIENT_NS, False),
        ({"gateway.istio.io/managed": "istio.io-mesh-controller"}, {}, True),  # waypoints speak HBONE
    ],
)
def test_enrollment(pod_labels: dict[str, str], ns_labels: dict[str, str], hbone: bool) -> None:
    w = tr.workload_from_pod(mkpod(labels=pod_labels), tr.PodContext(namespace_labels=ns_labels))
    assert w is not None
    assert w.tunnel_protocol == (wl.HBONE if hbone else wl.NONE)


@pytest.mark.parametrize(
    ("meta", "labels", "name", "wtype", "canonical"),
    [
        ({}, {}, "solo", wl.POD, "solo"),
        ({"ownerReferences": [{"kind": "Deployment", "name": "api"}]}, {}, "api", wl.DEPLOYMENT, "api"),
        ({"ownerReferences": [{"kind": "ReplicaSet", "name": "api-5f6d8c9b7"}]}, {}, "api", wl.DEPLOYMENT, "api"),
        ({"ownerReferences": [{"kind": "Job", "name": "batch"}]}, {}, "batch", wl.JOB, "batch"),
        ({"ownerReferences": [{"kind": "Job", "name": "nightly-28912345"}]}, {}, "nightly", wl.CRONJOB, "nightly"),
        ({}, {"app.kubernetes.io/name": "shop"}, "solo", wl.POD, "shop"),
        ({}, {"service.istio.io/canonical-name": "cn", "app": "a"}, "solo", wl.POD, "cn"),
    ],
)
def test_workload_name_type_canonical(
    meta: dict[str, Any], labels: dict[str, str], name: str, wtype: int, canonical: str
) -> None:
    w = tr.workload_from_pod(mkpod(name="solo", labels=labels, **meta), tr.PodContext())
    assert w is not None
    assert (w.workload_name, w.workload_type, w.canonical_name, w.canonical_revision) == (
        name,
        wtype,
        canonical,
        "latest",
    )


def test_pod_status_and_skips() -> None:
    assert tr.workload_from_pod(mkpod(ready=False), tr.PodContext()).status == wl.UNHEALTHY  # type: ignore[union-attr]
    assert tr.workload_from_pod(mkpod(deletionTimestamp="2026-01-01T00:00:00Z"), tr.PodContext()).status == wl.UNHEALTHY  # type: ignore[union-attr]
    assert tr.workload_from_pod(mkpod(ip=None), tr.PodContext()) is None
    done = mkpod()
    done["status"]["phase"] = "Succeeded"
    assert tr.workload_from_pod(done, tr.PodContext()) is None
    dual = mkpod()
    dual["status"]["podIPs"] = [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}]
    assert [len(a) for a in tr.workload_from_pod(dual, tr.PodContext()).addresses] == [4, 16]  # type: ignore[union-attr]


def test_named_target_port_missing_on_pod_drops_the_port() -> None:
    service = svc("web", {"app": "web"}, [{"port": 80, "targetPort": "grpc-api"}, {"port": 81, "targetPort": 8081}])
    w = tr.workload_from_pod(mkpod(labels={"app": "web"}), tr.PodContext(services=[service]))
    ports = w.services["default/web.default.svc.cluster.local"].ports  # type: ignore[union-attr]
    assert [(p.service_port, p.target_port) for p in ports] == [(81, 8081)]


@pytest.mark.parametrize(
    ("pod_labels", "ns_labels", "gateway_for", "want"),
    [
        ({"istio.io/use-waypoint": "wp"}, {}, "workload", "wp"),
        ({"istio.io/use-waypoint": "wp"}, {}, "all", "wp"),
        ({"istio.io/use-waypoint": "wp"}, {}, "service", None),  # a service waypoint is not a workload's
        ({}, {"istio.io/use-waypoint": "nswp"}, "all", "nswp"),
        ({"istio.io/use-waypoint": "none"}, {"istio.io/use-waypoint": "nswp"}, "all", None),
    ],
)
def test_workload_waypoint(
    pod_labels: dict[str, str], ns_labels: dict[str, str], gateway_for: str, want: str | None
) -> None:
    gateways = {
        f"default/{n}": {
            "metadata": {"name": n, "namespace": "default", "labels": {"istio.io/waypoint-for": gateway_for}}
        }
        for n in ("wp", "nswp")
    }
    w = tr.workload_from_pod(mkpod(labels=pod_labels), tr.PodContext(namespace_labels=ns_labels, gateways=gateways))
    assert w is not None
    if want is None:
        assert not w.HasField("waypoint")
    else:
        assert w.waypoint.hostname.hostname == f"{want}.default.svc.cluster.local"
        assert w.waypoint.hostname.namespace == "default" and w.waypoint.hbone_mtls_port == 15008


def test_service_golden() -> None:
    s = svc(
        "web",
        {"app": "web"},
        [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "grpc-x", "port": 90, "targetPort": 9090}],
        labels={"istio.io/use-waypoint": "wp"},
    )
    got = tr.service_from_k8s(s, {}, {})
    want = text_format.Parse(
        """
        name: "web" namespace: "default" hostname: "web.default.svc.cluster.local"
        addresses { address: "\\n`\\000\\024" }
        ports { service_port: 80 target_port: 0 app_protocol: HTTP11 }
        ports { service_port: 90 target_port: 9090 app_protocol: GRPC }
        waypoint { hostname { namespace: "default" hostname: "wp.default.svc.cluster.local" } hbone_mtls_port: 15008 }
        ip_families: IPV4_ONLY
        """,
        wl.Service(),
    )
    assert got == want, text_format.MessageToString(got)
    headless = svc("h", {}, [{"port": 80}])
    headless["spec"]["clusterIP"] = "None"
    assert list(tr.service_from_k8s(headless).addresses) == []  # type: ignore[union-attr]
    assert tr.service_from_k8s({"metadata": {"name": "x", "namespace": "d"}, "spec": {"type": "ExternalName"}}) is None


def ap(
    spec: dict[str, Any], ns: str = "default", name: str = "p", annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "annotations": annotations or {}}, "spec": spec}


PRESENT = sec.StringMatch(presence=empty_pb2.Empty())


@pytest.mark.parametrize(
    ("policy", "want_text", "message"),
    [
        # scope: root namespace without selector -> GLOBAL; no selector -> NAMESPACE; selector -> WORKLOAD_SELECTOR
        (ap({}, ns="istio-system"), 'name: "p" namespace: "istio-system" scope: GLOBAL', None),
        (ap({"action": "DENY"}), 'name: "p" namespace: "default" scope: NAMESPACE action: DENY', None),
        (
            ap({"selector": {"matchLabels": {"app": "a"}}}),
            'name: "p" namespace: "default" scope: WORKLOAD_SELECTOR',
            None,
        ),
        # an empty rule matches everything
        (ap({"rules": [{}]}), 'name: "p" namespace: "default" scope: NAMESPACE rules {}', None),
        (
            ap(
                {
                    "rules": [
                        {
                            "from": [
                                {
                                    "source": {
                                        "principals": ["spiffe://cluster.local/ns/a/sa/b", "*"],
                                        "namespaces": ["x*"],
                                    }
                                },
                                {"source": {"notNamespaces": ["*-test"], "ipBlocks": ["10.0.0.0/8", "1.2.3.4"]}},
                            ],
                            "to": [{"operation": {"ports": ["80", 443], "notPorts": ["8080"]}}],
                        }
                    ]
                }
            ),
            """name: "p" namespace: "default" scope: NAMESPACE
               rules { clauses { matches { namespaces { prefix: "x" }
                                           principals { exact: "cluster.local/ns/a/sa/b" } principals { presence {} } }
                                 matches { not_namespaces { suffix: "-test" }
                                           source_ips { address: "\\n\\000\\000\\000" length: 8 }
                                           source_ips { address: "\\001\\002\\003\\004" length: 32 } } }
                       clauses { matches { destination_ports: [80, 443] not_destination_ports: 8080 } } }""",
            None,
        ),
        (
            ap(
                {
                    "rules": [
                        {
                            "when": [
                                {"key": "source.ip", "values": ["10.1.0.0/16"], "notValues": ["10.1.2.3"]},
                                {"key": "destination.port", "values": ["80"]},
                            ]
                        }
                    ]
                }
            ),
            """name: "p" namespace: "default" scope: NAMESPACE
               rules { clauses { matches { source_ips { address: "\\n\\001\\000\\000" length: 16 } }
                                 matches { not_source_ips { address: "\\n\\001\\002\\003" length: 32 } } }
                       clauses { matches { destination_ports: 80 } } }""",
            None,
        ),
        # HTTP-only rule in an ALLOW: the rule is dropped (never matches); the other rule stays
        (
            ap(
                {
                    "selector": {"matchLabels": {"app": "a"}},
                    "rules": [
                        {"to": [{"operation": {"methods": ["GET"]}}]},
                        {"from": [{"source": {"namespaces": ["ok"]}}]},
                    ],
                }
            ),
            """name: "p" namespace: "default" scope: WORKLOAD_SELECTOR
               rules { clauses { matches { namespaces { exact: "ok" } } } }""",
            "more restrictive than requested: rules using HTTP attributes never match at L4 (they are dropped): "
            "to.operation.methods",
        ),
        # HTTP-only fields in a DENY are ignored: it denies more
        (
            ap(
                {
                    "action": "DENY",
                    "rules": [
                        {
                            "to": [{"operation": {"ports": ["80"], "paths": ["/admin"]}}],
                            "when": [{"key": "request.headers[x]", "values": ["y"]}],
                        }
                    ],
                }
            ),
            """name: "p" namespace: "default" scope: NAMESPACE action: DENY
               rules { clauses { matches { destination_ports: 80 } } }""",
            "more restrictive than requested: HTTP attributes are ignored, so the DENY applies to all matching "
            "connections: to.operation.paths, when.request.headers[x]",
        ),
        (
            ap({"action": "ALLOW", "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}),
            'name: "p" namespace: "default" scope: NAMESPACE',
            "more restrictive than requested",
        ),
        (
            ap(
                {
                    "rules": [
                        {"from": [{"source": {"serviceAccounts": ["other/api", "web"], "notServiceAccounts": ["x/y"]}}]}
                    ]
                }
            ),
            """name: "p" namespace: "default" scope: NAMESPACE
               rules { clauses { matches { service_accounts { namespace: "other" serviceAccount: "api" }
                                           service_accounts { namespace: "default" serviceAccount: "web" }
                                           not_service_accounts { namespace: "x" serviceAccount: "y" } } } }""",
            None,
        ),
        (
            ap({}, annotations={"istio.io/dry-run": "true"}),
            'name: "p" namespace: "default" scope: NAMESPACE dry_run: true',
            None,
        ),
    ],
)
def test_authorization_policy(policy: dict[str, Any], want_text: str, message: str | None) -> None:
    result = tr.authorization_from_policy(policy)
    want = text_format.Parse(want_text, sec.Authorization())
    assert result.authorization == want, text_format.MessageToString(result.authorization)
    if message is None:
        assert result.message is None
    else:
        assert result.message is not None and result.message.startswith(message), result.message


@pytest.mark.parametrize(
    "spec",
    [
        {"action": "CUSTOM", "provider": {"name": "ext"}},
        {"action": "AUDIT"},
        {"targetRefs": [{"kind": "Gateway", "name": "wp"}]},
    ],
)
def test_policies_not_sent_to_the_node_proxy(spec: dict[str, Any]) -> None:
    assert tr.authorization_from_policy(ap(spec)).authorization is None


def pa(
    name: str,
    ns: str,
    mode: str | None,
    selector: dict[str, str] | None = None,
    ports: dict[str, str] | None = None,
    created: str = "2026-01-01T00:00:00Z",
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if mode:
        spec["mtls"] = {"mode": mode}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    if ports:
        spec["portLevelMtls"] = {p: {"mode": m} for p, m in ports.items()}
    return {"metadata": {"name": name, "namespace": ns, "creationTimestamp": created}, "spec": spec}


STATIC = "istio-system/istio_converted_static_strict"


@pytest.mark.parametrize(
    ("pas", "labels", "refs"),
    [
        ([], {}, []),
        ([pa("mesh", "istio-system", "STRICT")], {}, [STATIC]),
        ([pa("mesh", "istio-system", "STRICT"), pa("ns", "default", "PERMISSIVE")], {}, []),
        ([pa("ns", "default", "STRICT")], {}, [STATIC]),
        ([pa("ns", "default", "STRICT"), pa("w", "default", "PERMISSIVE", {"app": "a"})], {"app": "a"}, []),
        ([pa("ns", "default", "STRICT"), pa("w", "default", "PERMISSIVE", {"app": "a"})], {"app": "b"}, [STATIC]),
        ([pa("w", "default", "STRICT", {"app": "a"})], {"app": "a"}, [STATIC]),
        ([pa("ns", "default", "DISABLE")], {}, []),  # DISABLE acts as PERMISSIVE
        ([pa("g", "istio-system", "STRICT", {"app": "a"})], {"app": "a"}, []),  # root selector PAs are ignored
        (
            [pa("w", "default", "PERMISSIVE", {"app": "a"}, {"9090": "STRICT"})],
            {"app": "a"},
            ["default/converted_peer_authentication_w"],
        ),
        (
            [pa("ns", "default", "STRICT"), pa("w", "default", None, {"app": "a"}, {"9090": "PERMISSIVE"})],
            {"app": "a"},
            ["default/converted_peer_authentication_w"],
        ),
    ],
)
def test_peer_authentication_refs(pas: list[dict[str, Any]], labels: dict[str, str], refs: list[str]) -> None:
    assert tr.peer_authentication_refs(labels, "default", pas) == refs


def test_peer_authentication_policies() -> None:
    static = tr.static_strict_policy()
    assert static == text_format.Parse(
        """name: "istio_converted_static_strict" namespace: "istio-system" scope: WORKLOAD_SELECTOR action: DENY
           rules { clauses { matches { not_principals { presence {} } } } }""",
        sec.Authorization(),
    )
    strict_port = tr.converted_peer_authentication(
        pa("w", "default", "PERMISSIVE", {"app": "a"}, {"9090": "STRICT"}), False
    )
    assert strict_port is not None
    assert list(strict_port.rules[0].clauses[0].matches[0].destination_ports) == [9090]
    open_port = tr.converted_peer_authentication(pa("w", "default", None, {"app": "a"}, {"9090": "PERMISSIVE"}), True)
    assert open_port is not None
    m = open_port.rules[0].clauses[0].matches[0]
    assert list(m.not_destination_ports) == [9090] and list(m.not_principals) == [PRESENT]
    assert tr.converted_peer_authentication(pa("w", "default", "STRICT", {"app": "a"}), False) is None


def test_resource_names() -> None:
    w = wl.Address(workload=wl.Workload(uid="u1"))
    s = wl.Address(service=wl.Service(namespace="d", hostname="h.d.svc.cluster.local"))
    assert tr.resource_name(w) == "u1"
    assert tr.resource_name(s) == "d/h.d.svc.cluster.local"
    assert tr.resource_name(sec.Authorization(name="p", namespace="d")) == "d/p"


def test_custom_policy_status_says_its_provider_is_missing_and_what_waypoints_do() -> None:
    # istiod (authz builder) with a CUSTOM provider not in meshConfig.extensionProviders: "failed to process
    # CUSTOM action ... will generate deny configs", a DENY built from the policy's own rules
    result = tr.authorization_from_policy(ap({"action": "CUSTOM", "provider": {"name": "opa"},
                                              "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}))
    assert result.authorization is None and result.message is not None
    assert "'opa' is not defined" in result.message and "extensionProviders" in result.message
    assert "deny the requests matching its rules" in result.message
    audit = tr.authorization_from_policy(ap({"action": "AUDIT"})).message
    assert audit is not None and "never changes a decision" in audit
