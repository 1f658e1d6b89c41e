"""Static state files: the /config_dump shape loads back into the same model; bad input names its path."""

from __future__ import annotations

import json
from ipaddress import ip_address
from pathlib import Path

import pytest

from ambient.state.errors import InvalidResourceError, StateError
from ambient.state.model import (
    Action,
    Address,
    ApplicationTunnel,
    ApplicationTunnelProtocol,
    Authorization,
    Clause,
    GatewayAddress,
    HealthPolicy,
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
    ServiceAccountMatch,
    ServiceVisibility,
    StringMatch,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
    WorkloadType,
)
from ambient.state.static import load_state, load_state_file
from ambient.state.store import StateStore, view_of

KEY = "shop/web.shop.svc.cluster.local"

WORKLOADS = [
    Workload(
        uid="cluster//Pod/shop/web-1",
        name="web-1",
        namespace="shop",
        addresses=(ip_address("10.244.2.6"), ip_address("fd00:2::6")),
        tunnel_protocol=TunnelProtocol.HBONE,
        service_account="web",
        node="node-2",
        canonical_name="web",
        canonical_revision="v1",
        workload_type=WorkloadType.POD,
        workload_name="web",
        authorization_policies=("shop/sel",),
        status=WorkloadStatus.UNHEALTHY,
        cluster_id="Kubernetes",
        services={KEY: (Port(80, 8080), Port(81, 9091))},
        locality=Locality("r1", "z1", "s1"),
        capacity=3,
        waypoint=GatewayAddress(NamespacedHostname("shop", "waypoint.shop.svc.cluster.local")),
        network_gateway=GatewayAddress(NetworkAddress(ip_address("172.18.0.9"), "net1"), 15009),
        native_tunnel=True,
        application_tunnel=ApplicationTunnel(ApplicationTunnelProtocol.PROXY, 15088),
        network_mode=NetworkMode.HOST_NETWORK,
    ),
    Workload(uid="plain", name="plain", namespace="shop", addresses=(ip_address("10.244.1.9"),)),
]
SERVICES = [
    Service(
        name="web",
        namespace="shop",
        hostname="web.shop.svc.cluster.local",
        addresses=(NetworkAddress(ip_address("10.96.0.10")), NetworkAddress(ip_address("fd00:96::10"), "net1")),
        ports=(Port(80, 8080), Port(81, 0)),
        subject_alt_names=("spiffe://cluster.local/ns/shop/sa/web",),
        waypoint=GatewayAddress(NetworkAddress(ip_address("10.96.0.20"))),
        load_balancing=LoadBalancing(
            (LoadBalancingScope.REGION, LoadBalancingScope.NODE), LoadBalancingMode.STRICT, HealthPolicy.ALLOW_ALL
        ),
        canonical=True,
        ingress_use_waypoint=True,
        visibility=ServiceVisibility.NAMESPACE,
    ),
    Service(name="db", namespace="data", hostname="db.data.svc.cluster.local"),
]
POLICIES = [
    Authorization(
        "sel",
        "shop",
        Scope.WORKLOAD_SELECTOR,
        Action.DENY,
        (
            Rule(
                (
                    Clause(
                        (
                            Match(
                                namespaces=(StringMatch.exact("shop"), StringMatch.prefix("team-")),
                                not_principals=(StringMatch.presence(), StringMatch.suffix("/sa/admin")),
                                source_ips=(Address.parse("10.0.0.0/8"),),
                                not_destination_ips=(Address.parse("fd00::/8"),),
                                destination_ports=(80, 443),
                                not_service_accounts=(ServiceAccountMatch("shop", "curl"),),
                            ),
                        )
                    ),
                    Clause((Match(not_destination_ports=(22,)),)),
                )
            ),
            Rule(()),
        ),
        dry_run=True,
    ),
    Authorization("g", "istio-system", Scope.GLOBAL, Action.ALLOW, ()),
]


def test_config_dump_round_trips() -> None:
    view = view_of(WORKLOADS, SERVICES, POLICIES)
    doc = json.loads(json.dumps(view.config_dump()))
    delta = load_state(doc)
    assert delta.replace
    assert sorted(delta.workloads, key=lambda w: w.uid) == sorted(WORKLOADS, key=lambda w: w.uid)
    assert sorted(delta.services, key=lambda s: s.key) == sorted(SERVICES, key=lambda s: s.key)
    assert sorted(delta.policies, key=lambda p: p.key) == sorted(POLICIES, key=lambda p: p.key)


def test_yaml_file_applies_through_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    path.write_text(
        """
workloads:
- uid: w1
  name: web-1
  namespace: shop
  workloadIps: [10.244.2.6]
  protocol: HBONE
  serviceAccount: web
  services:
    shop/web.shop.svc.cluster.local:
    - {servicePort: 80, targetPort: 8080, appProtocol: HTTP11}
services:
- name: web
  namespace: shop
  hostname: web.shop.svc.cluster.local
  vips: [10.96.0.10]
  ports: {80: 8080}
policies:
- name: allow-curl
  namespace: shop
  scope: Namespace
  action: ALLOW
  rules: [[[{principals: [cluster.local/ns/shop/sa/curl]}]]]
"""
    )
    store = StateStore()
    store.take_writer().apply(load_state_file(path))
    v = store.current
    wl = v.workload_by_ip(ip_address("10.244.2.6"))
    assert wl is not None and wl.in_mesh and wl.identity == "spiffe://cluster.local/ns/shop/sa/web"
    assert wl.services[KEY][0].app_protocol.name == "HTTP11"
    svc = v.service_by_vip(ip_address("10.96.0.10"))
    assert svc is not None and svc.port(80) == Port(80, 8080)
    assert [e.uid for e in v.endpoints(KEY)] == ["w1"]
    (pol,) = v.namespace_policies("shop")
    assert pol.rules[0].clauses[0].matches[0].principals == (StringMatch.exact("cluster.local/ns/shop/sa/curl"),)


def test_empty_file_is_an_empty_state(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    delta = load_state_file(path)
    assert delta.replace and delta.workloads == () and delta.services == () and delta.policies == ()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "document: expected a mapping"),
        ({"pods": []}, "unknown top-level keys ['pods']"),
        ({"workloads": [{"name": "x"}]}, "workloads[0].uid: required"),
        ({"workloads": [{"uid": "u", "workloadIps": ["10.0.0.300"]}]}, "workloads[0].workloadIps[0]"),
        ({"workloads": [{"uid": "u", "protocol": "QUIC"}]}, "workloads[0].protocol: unknown TunnelProtocol"),
        ({"workloads": [{"uid": "u", "capacity": -1}]}, "workloads[0].capacity"),
        ({"workloads": [{"uid": "u", "waypoint": {"destination": "nowhere"}}]}, "workloads[0].waypoint.destination"),
        ({"services": [{"namespace": "a"}]}, "services[0].hostname: required"),
        ({"services": [{"namespace": "a", "hostname": "h", "ports": {"http": 80}}]}, "services[0].ports.http"),
        ({"policies": [{"name": "p", "namespace": "a", "scope": "Cluster"}]}, "policies[0].scope: unknown Scope"),
        (
            {"policies": [{"name": "p", "namespace": "a", "rules": [[[{"paths": ["/"]}]]]}]},
            "policies[0].rules[0][0][0]: unknown match field 'paths'",
        ),
        (
            {"policies": [{"name": "p", "namespace": "a", "rules": [[[{"sourceIps": ["10.0.0.0/40"]}]]]}]},
            "policies[0].rules[0][0][0].sourceIps[0]: not a CIDR",
        ),
        (
            {"policies": [{"name": "p", "namespace": "a", "rules": [[[{"serviceAccounts": ["curl"]}]]]}]},
            "expected 'namespace/serviceaccount'",
        ),
        ({"policies": [{"name": "p", "namespace": "a", "dryRun": "yes"}]}, "policies[0].dryRun: expected true"),
    ],
)
def test_bad_input_names_the_field(doc: object, message: str) -> None:
    with pytest.raises(InvalidResourceError) as e:
        load_state(doc)
    assert message in str(e.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot read static state file"):
        load_state_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("workloads: [\n")
    with pytest.raises(InvalidResourceError, match="not valid YAML"):
        load_state_file(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("workloads: [{name: x}]\n")
    with pytest.raises(InvalidResourceError, match=r"wrong\.yaml: workloads\[0\]\.uid: required"):
        load_state_file(wrong)
