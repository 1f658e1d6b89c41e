"""state.convert: protobuf -> model is a faithful field copy, and malformed input raises."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from google.protobuf import empty_pb2

from ambient.protocol.gen.istio.security import authorization_pb2 as sec
from ambient.protocol.gen.istio.workload import workload_pb2 as wl
from ambient.state import convert
from ambient.state import model as m
from ambient.state.errors import InvalidResourceError


def test_workload_fields() -> None:
    w = wl.Workload(
        uid="u",
        name="n",
        namespace="ns",
        addresses=[b"\x0a\x00\x00\x01", bytes(15) + b"\x01"],
        tunnel_protocol=wl.HBONE,
        service_account="sa",
        node="node-1",
        canonical_name="c",
        canonical_revision="v1",
        workload_type=wl.POD,
        workload_name="wn",
        authorization_policies=["ns/p"],
        status=wl.UNHEALTHY,
        cluster_id="Kubernetes",
        network_mode=wl.HOST_NETWORK,
        waypoint=wl.GatewayAddress(hostname=wl.NamespacedHostname(namespace="ns", hostname="wp.ns.svc.cluster.local")),
    )
    w.services["ns/s.ns.svc.cluster.local"].ports.append(
        wl.Port(service_port=80, target_port=8080, app_protocol=wl.HTTP2)
    )
    w.capacity.value = 3
    got = convert.address(wl.Address(workload=w))
    assert isinstance(got, m.Workload)
    assert got.addresses == (ip_address("10.0.0.1"), ip_address("::1"))
    assert got.tunnel_protocol is m.TunnelProtocol.HBONE and got.in_mesh
    assert got.identity == "spiffe://cluster.local/ns/ns/sa/sa"  # empty trust domain -> default
    assert got.workload_type is m.WorkloadType.POD and got.status is m.WorkloadStatus.UNHEALTHY
    assert got.services == {"ns/s.ns.svc.cluster.local": (m.Port(80, 8080, m.AppProtocol.HTTP2),)}
    assert got.waypoint == m.GatewayAddress(m.NamespacedHostname("ns", "wp.ns.svc.cluster.local"), 15008)
    assert got.capacity == 3 and got.network_mode is m.NetworkMode.HOST_NETWORK
    assert got.authorization_policies == ("ns/p",)
    assert convert.workload(wl.Workload(uid="x")).capacity is None


def test_service_fields() -> None:
    s = wl.Service(
        name="s",
        namespace="ns",
        hostname="s.ns.svc.cluster.local",
        addresses=[wl.NetworkAddress(address=b"\x0a\x60\x00\x05")],
        ports=[wl.Port(service_port=80, target_port=0)],
        subject_alt_names=["spiffe://x"],
        ip_families=wl.IPV4_ONLY,
        load_balancing=wl.LoadBalancing(routing_preference=[wl.LoadBalancing.NODE], mode=wl.LoadBalancing.FAILOVER),
    )
    got = convert.address(wl.Address(service=s))
    assert isinstance(got, m.Service)
    assert got.key == "ns/s.ns.svc.cluster.local"
    assert got.addresses == (m.NetworkAddress(ip_address("10.96.0.5")),)
    assert got.ports == (m.Port(80, 0),) and got.subject_alt_names == ("spiffe://x",)
    assert got.load_balancing == m.LoadBalancing((m.LoadBalancingScope.NODE,), m.LoadBalancingMode.FAILOVER)


def test_authorization_fields() -> None:
    a = sec.Authorization(
        name="p",
        namespace="ns",
        scope=sec.GLOBAL,
        action=sec.DENY,
        dry_run=True,
        rules=[
            sec.Rule(
                clauses=[
                    sec.Clause(
                        matches=[
                            sec.Match(
                                principals=[
                                    sec.StringMatch(exact="cluster.local/ns/a/sa/b"),
                                    sec.StringMatch(prefix="x"),
                                ],
                                not_principals=[sec.StringMatch(presence=empty_pb2.Empty())],
                                namespaces=[sec.StringMatch(suffix="-prod")],
                                source_ips=[sec.Address(address=b"\x0a\x00\x00\x00", length=8)],
                                destination_ports=[80],
                                not_destination_ports=[81],
                                service_accounts=[sec.ServiceAccountMatch(namespace="ns", serviceAccount="sa")],
                            )
                        ]
                    )
                ]
            )
        ],
    )
    got = convert.authorization(a)
    assert got.key == "ns/p" and got.scope is m.Scope.GLOBAL and got.action is m.Action.DENY and got.dry_run
    match = got.rules[0].clauses[0].matches[0]
    assert match.principals == (m.StringMatch.exact("cluster.local/ns/a/sa/b"), m.StringMatch.prefix("x"))
    assert match.not_principals == (m.StringMatch.presence(),)
    assert match.namespaces == (m.StringMatch.suffix("-prod"),)
    assert match.source_ips == (m.Address(ip_address("10.0.0.0"), 8),)
    assert match.destination_ports == (80,) and match.not_destination_ports == (81,)
    assert match.service_accounts == (m.ServiceAccountMatch("ns", "sa"),)


@pytest.mark.parametrize(
    "bad",
    [
        wl.Address(),
        wl.Address(workload=wl.Workload(uid="u", addresses=[b"\x01\x02\x03"])),
        wl.Address(workload=wl.Workload(uid="")),
        wl.Address(workload=wl.Workload(uid="u", tunnel_protocol=7)),  # type: ignore[arg-type]
    ],
)
def test_malformed_addresses_raise(bad: wl.Address) -> None:
    with pytest.raises(InvalidResourceError):
        convert.address(bad)


def test_malformed_authorization_raises() -> None:
    with pytest.raises(InvalidResourceError):
        convert.authorization(
            sec.Authorization(
                name="p",
                namespace="n",
                rules=[sec.Rule(clauses=[sec.Clause(matches=[sec.Match(principals=[sec.StringMatch()])])])],
            )
        )
