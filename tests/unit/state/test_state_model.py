"""Model values: proto-numbered enums, identities, address helpers, validation errors."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from ambient.state.errors import InvalidResourceError
from ambient.state.model import (
    Action,
    Address,
    Authorization,
    LoadBalancingMode,
    LoadBalancingScope,
    Port,
    Scope,
    Service,
    StringMatch,
    TunnelProtocol,
    Workload,
    WorkloadType,
    canonical_ip,
    parse_ip,
)


def test_enum_numbers_are_the_proto_numbers() -> None:
    assert (TunnelProtocol.NONE, TunnelProtocol.HBONE, TunnelProtocol.LEGACY_ISTIO_MTLS) == (0, 1, 2)
    assert (WorkloadType.DEPLOYMENT, WorkloadType.CRONJOB, WorkloadType.POD, WorkloadType.JOB) == (0, 1, 2, 3)
    assert (Scope.GLOBAL, Scope.NAMESPACE, Scope.WORKLOAD_SELECTOR) == (0, 1, 2)
    assert (Action.ALLOW, Action.DENY) == (0, 1)
    assert LoadBalancingScope.NODE == 4 and LoadBalancingScope.NETWORK == 6
    assert (LoadBalancingMode.STRICT, LoadBalancingMode.FAILOVER, LoadBalancingMode.PASSTHROUGH) == (1, 2, 3)


def test_workload_defaults_and_identity() -> None:
    w = Workload(uid="u", name="p", namespace="shop")
    assert w.identity == "spiffe://cluster.local/ns/shop/sa/default"
    assert not w.in_mesh and w.weight == 1
    assert Workload(uid="u", capacity=3).weight == 3 and Workload(uid="u", capacity=0).weight == 0
    assert Workload(uid="u", tunnel_protocol=TunnelProtocol.HBONE).in_mesh


def test_keys() -> None:
    assert Service("web", "shop", "web.shop.svc.cluster.local").key == "shop/web.shop.svc.cluster.local"
    assert Authorization("p", "shop").key == "shop/p"


def test_service_port_lookup() -> None:
    s = Service("web", "shop", "h", ports=(Port(80, 8080), Port(443, 0)))
    assert s.port(80) == Port(80, 8080) and s.port(443) == Port(443, 0) and s.port(81) is None


@pytest.mark.parametrize(
    "bad",
    [
        lambda: Workload(uid=""),
        lambda: Service("web", "", "h"),
        lambda: Authorization("", "shop"),
        lambda: Address(ip_address("10.0.0.0"), 33),
        lambda: Address(ip_address("fd00::"), 129),
        lambda: parse_ip(b"\x01\x02\x03"),
        lambda: parse_ip("10.0.0.300"),
    ],
)
def test_invalid_resources_raise_with_a_message(bad: object) -> None:
    with pytest.raises(InvalidResourceError) as e:
        bad()  # type: ignore[operator]
    assert str(e.value)


def test_parse_ip_from_proto_bytes_and_text() -> None:
    assert parse_ip(bytes([10, 244, 1, 5])) == IPv4Address("10.244.1.5")
    assert parse_ip(IPv6Address("fd00::1").packed) == IPv6Address("fd00::1")
    assert parse_ip("10.0.0.1") == IPv4Address("10.0.0.1")


def test_canonical_ip() -> None:
    assert canonical_ip(ip_address("::ffff:10.0.0.1")) == IPv4Address("10.0.0.1")
    assert canonical_ip(ip_address("fd00::1")) == IPv6Address("fd00::1")


@pytest.mark.parametrize(
    ("sm", "value", "expected"),
    [
        (StringMatch.exact("a"), "a", True),
        (StringMatch.exact("a"), "ab", False),
        (StringMatch.prefix("a"), "ab", True),
        (StringMatch.prefix("b"), "ab", False),
        (StringMatch.suffix("b"), "ab", True),
        (StringMatch.suffix("a"), "ab", False),
        (StringMatch.presence(), "x", True),
        (StringMatch.presence(), "", False),
    ],
)
def test_string_match(sm: StringMatch, value: str, expected: bool) -> None:
    assert sm.matches(value) is expected


def test_address_cidr() -> None:
    a = Address.parse("10.244.1.9/24")  # host bits are ignored
    assert str(a) == "10.244.1.0/24"
    assert a.contains(IPv4Address("10.244.1.200")) and not a.contains(IPv4Address("10.244.2.1"))
    assert not a.contains(IPv6Address("fd00::1"))
    assert Address(ip_address("10.1.2.3"), 8).contains(IPv4Address("10.9.9.9"))
