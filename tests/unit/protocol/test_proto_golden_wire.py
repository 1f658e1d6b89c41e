"""Golden wire tests: our generated messages produce exactly the bytes the reference field numbers imply.

Every expected byte string below was computed by hand from protocols.md (field number, wire type) and is
annotated tag by tag: a tag byte is (field_number << 3) | wire_type, as a varint; wire type 0 = varint,
2 = length-delimited. Fields > 15 need a two-byte tag, e.g. Workload.uid = 20, type 2 -> 162 -> a2 01.
If a field number in a .proto drifts from the reference, the bytes differ and the test names the message.
"""

from __future__ import annotations

import re

import pytest
from google.protobuf import any_pb2, empty_pb2, struct_pb2, wrappers_pb2
from google.protobuf.message import Message

from ambient.protocol.gen.istio.security import authorization_pb2 as az
from ambient.protocol.gen.istio.v1.auth import ca_pb2
from ambient.protocol.gen.istio.workload import workload_pb2 as wl
from ambient.protocol.gen.istio.workload.zds import zds_pb2 as zds


def hx(annotated: str) -> bytes:
    """Hex with `#` comments and any whitespace -> bytes."""
    return bytes.fromhex(re.sub(r"#[^\n]*", "", annotated).replace(" ", "").replace("\n", ""))


def assert_golden(msg: Message, expected: bytes) -> None:
    got = msg.SerializeToString(deterministic=True)
    assert got.hex(" ") == expected.hex(" "), type(msg).__name__
    back = type(msg)()
    back.ParseFromString(expected)
    assert back == msg


def _gateway_by_address() -> wl.GatewayAddress:
    return wl.GatewayAddress(address=wl.NetworkAddress(address=bytes([10, 0, 0, 9])), hbone_mtls_port=15008)


GATEWAY_BY_ADDRESS = """
    12 06               # GatewayAddress.address (2, LEN) 6 bytes
      12 04 0a000009    #   NetworkAddress.address (2, LEN) = 10.0.0.9
    18 a0 75            # GatewayAddress.hbone_mtls_port (3, VARINT) = 15008 (0x3aa0 -> a0 75)
"""


def test_workload_every_field() -> None:
    w = wl.Workload(
        uid="u1",
        name="p",
        namespace="ns",
        addresses=[bytes([10, 0, 0, 1])],
        hostname="h",
        network="n",
        tunnel_protocol=wl.HBONE,
        trust_domain="td",
        service_account="sa",
        waypoint=_gateway_by_address(),
        network_gateway=wl.GatewayAddress(hostname=wl.NamespacedHostname(namespace="ns", hostname="gw")),
        node="nd",
        canonical_name="c",
        canonical_revision="v1",
        workload_type=wl.POD,
        workload_name="w",
        native_tunnel=True,
        authorization_policies=["ns/p"],
        status=wl.UNHEALTHY,
        cluster_id="K",
        services={"ns/s": wl.PortList(ports=[wl.Port(service_port=80, target_port=8080, app_protocol=wl.HTTP11)])},
        application_tunnel=wl.ApplicationTunnel(protocol=wl.ApplicationTunnel.PROXY),
        locality=wl.Locality(region="r", zone="z"),
        network_mode=wl.HOST_NETWORK,
        extensions=[wl.Extension(name="x", config=any_pb2.Any(type_url="t"))],
        capacity=wrappers_pb2.UInt32Value(value=3),
    )
    expected = hx(
        """
        0a 01 70            # name (1, LEN) "p"
        12 02 6e73          # namespace (2, LEN) "ns"
        1a 04 0a000001      # addresses (3, LEN) raw 10.0.0.1
        22 01 6e            # network (4, LEN) "n"
        28 01               # tunnel_protocol (5, VARINT) HBONE=1
        32 02 7464          # trust_domain (6, LEN) "td"
        3a 02 7361          # service_account (7, LEN) "sa"
        42 0b               # waypoint (8, LEN) 11 bytes:
          12 06 12 04 0a000009  #   address{address 10.0.0.9}
          18 a0 75              #   hbone_mtls_port 15008
        4a 02 6e64          # node (9, LEN) "nd"
        52 01 63            # canonical_name (10, LEN) "c"
        5a 02 7631          # canonical_revision (11, LEN) "v1"
        60 02               # workload_type (12, VARINT) POD=2
        6a 01 77            # workload_name (13, LEN) "w"
        70 01               # native_tunnel (14, VARINT) true
                            # (15 reserved)
        82 01 04 6e732f70   # authorization_policies (16, LEN: 130 -> 82 01) "ns/p"
        88 01 01            # status (17, VARINT: 136 -> 88 01) UNHEALTHY=1
        92 01 01 4b         # cluster_id (18, LEN: 146 -> 92 01) "K"
        9a 01 0a            # network_gateway (19, LEN: 154 -> 9a 01) 10 bytes:
          0a 08             #   hostname (1, LEN) 8 bytes: NamespacedHostname
            0a 02 6e73      #     namespace "ns"
            12 02 6777      #     hostname "gw"
        a2 01 02 7531       # uid (20, LEN: 162 -> a2 01) "u1"
        aa 01 01 68         # hostname (21, LEN: 170 -> aa 01) "h"
        b2 01 11            # services (22, LEN: 178 -> b2 01) map entry, 17 bytes:
          0a 04 6e732f73    #   key "ns/s"
          12 09             #   value PortList, 9 bytes:
            0a 07           #     ports (1, LEN) Port, 7 bytes:
              08 50         #       service_port 80
              10 90 3f      #       target_port 8080 (0x1f90 -> 90 3f)
              18 01         #       app_protocol HTTP11=1
        ba 01 02 08 01      # application_tunnel (23, LEN: 186 -> ba 01) {protocol PROXY=1}
        c2 01 06            # locality (24, LEN: 194 -> c2 01) 6 bytes:
          0a 01 72 12 01 7a #   region "r", zone "z"
        c8 01 01            # network_mode (25, VARINT: 200 -> c8 01) HOST_NETWORK=1
        d2 01 08            # extensions (26, LEN: 210 -> d2 01) Extension, 8 bytes:
          0a 01 78          #   name "x"
          12 03 0a 01 74    #   config Any{type_url "t"}
        da 01 02 08 03      # capacity (27, LEN: 218 -> da 01) UInt32Value{value 3}
        """
    )
    assert_golden(w, expected)


def test_address_oneof_wraps_workload_and_service() -> None:
    # Address.workload (1, LEN) / Address.service (2, LEN)
    assert_golden(wl.Address(workload=wl.Workload(uid="u")), hx("0a 04  a2 01 01 75  # workload{uid 'u'}, 4 bytes"))
    assert_golden(wl.Address(service=wl.Service(name="s")), hx("12 03  0a 01 73      # service{name 's'}"))


def test_service_every_field() -> None:
    s = wl.Service(
        name="s",
        namespace="ns",
        hostname="h",
        addresses=[wl.NetworkAddress(network="n", address=bytes([10, 96, 0, 1]), length=32)],
        ports=[wl.Port(service_port=80, target_port=8080)],
        subject_alt_names=["id"],
        waypoint=_gateway_by_address(),
        load_balancing=wl.LoadBalancing(
            routing_preference=[wl.LoadBalancing.NETWORK, wl.LoadBalancing.NODE],
            mode=wl.LoadBalancing.FAILOVER,
            health_policy=wl.LoadBalancing.ALLOW_ALL,
        ),
        ip_families=wl.DUAL,
        extensions=[wl.Extension(name="x")],
        canonical=True,
        ingress_use_waypoint=True,
        weighted_waypoints=[
            wl.WeightedWaypoint(
                destination=wl.GatewayAddress(hostname=wl.NamespacedHostname(namespace="a", hostname="b")),
                weight=5,
            )
        ],
        visibility=wl.Service.NAMESPACE,
    )
    expected = hx(
        """
        0a 01 73            # name (1) "s"
        12 02 6e73          # namespace (2) "ns"
        1a 01 68            # hostname (3) "h"
        22 0b               # addresses (4, LEN) NetworkAddress, 11 bytes:
          0a 01 6e          #   network "n"
          12 04 0a600001    #   address 10.96.0.1
          18 20             #   length (optional, explicitly set) 32
        2a 05               # ports (5, LEN) Port, 5 bytes:
          08 50 10 90 3f    #   service_port 80, target_port 8080
        32 02 6964          # subject_alt_names (6) "id"
        3a 0b               # waypoint (7, LEN) GatewayAddress, 11 bytes:
        """
        + GATEWAY_BY_ADDRESS
        + """
        42 08               # load_balancing (8, LEN) 8 bytes:
          0a 02 06 04       #   routing_preference (1) packed [NETWORK=6, NODE=4]
          10 02             #   mode FAILOVER=2
          18 01             #   health_policy ALLOW_ALL=1
        48 03               # ip_families (9, VARINT) DUAL=3
        52 03 0a 01 78      # extensions (10, LEN) Extension{name "x"}
        58 01               # canonical (11) true
        60 01               # ingress_use_waypoint (12) true
        6a 0c               # weighted_waypoints (13, LEN) 12 bytes:
          0a 08             #   destination GatewayAddress, 8 bytes:
            0a 06 0a 01 61 12 01 62  # hostname{namespace "a", hostname "b"}
          10 05             #   weight 5
        70 01               # visibility (14) NAMESPACE=1
        """
    )
    assert_golden(s, expected)


def test_network_address_length_has_explicit_presence() -> None:
    # `optional uint32 length = 3`: zero is sent when set, omitted when unset.
    assert wl.NetworkAddress(length=0).SerializeToString() == hx("18 00")
    assert wl.NetworkAddress().SerializeToString() == b""
    assert not wl.NetworkAddress.FromString(b"").HasField("length")


def test_authorization_every_field() -> None:
    match = az.Match(
        namespaces=[az.StringMatch(exact="a")],
        not_namespaces=[az.StringMatch(prefix="b")],
        principals=[az.StringMatch(suffix="c")],
        not_principals=[az.StringMatch(presence=empty_pb2.Empty())],
        source_ips=[az.Address(address=bytes([10, 0, 0, 0]), length=8)],
        not_source_ips=[az.Address(address=bytes([1, 2, 3, 4]), length=32)],
        destination_ips=[az.Address(address=bytes([127, 0, 0, 1]), length=32)],
        destination_ports=[8080, 443],
        not_destination_ports=[22],
        service_accounts=[az.ServiceAccountMatch(namespace="ns", serviceAccount="sa")],
        not_service_accounts=[az.ServiceAccountMatch(serviceAccount="x")],
        extensions=[wl.Extension(name="m")],
    )
    a = az.Authorization(
        name="p",
        namespace="ns",
        scope=az.WORKLOAD_SELECTOR,
        action=az.DENY,
        rules=[az.Rule(clauses=[az.Clause(matches=[match])])],
        dry_run=True,
        extensions=[wl.Extension(name="e")],
    )
    expected = hx(
        """
        0a 01 70            # name (1) "p"
        12 02 6e73          # namespace (2) "ns"
        18 02               # scope (3, VARINT) WORKLOAD_SELECTOR=2
        20 01               # action (4, VARINT) DENY=1
        2a 52               # rules (5, LEN) Rule, 82 bytes:
         0a 50              #  clauses (1, LEN) Clause, 80 bytes:
          12 4e             #   matches (2, LEN) Match, 78 bytes:
           0a 03 0a 01 61   #    namespaces (1) StringMatch{exact (1) "a"}
           12 03 12 01 62   #    not_namespaces (2) StringMatch{prefix (2) "b"}
           1a 03 1a 01 63   #    principals (3) StringMatch{suffix (3) "c"}
           22 02 22 00      #    not_principals (4) StringMatch{presence (4) Empty}
           2a 08 0a 04 0a000000 10 08  # source_ips (5) Address{10.0.0.0, length 8}
           32 08 0a 04 01020304 10 20  # not_source_ips (6) Address{1.2.3.4, length 32}
           3a 08 0a 04 7f000001 10 20  # destination_ips (7) Address{127.0.0.1, length 32}
           4a 04 90 3f bb 03           # destination_ports (9) packed [8080, 443 (0x1bb -> bb 03)]
           52 01 16                    # not_destination_ports (10) packed [22]
           5a 08 0a 02 6e73 12 02 7361 # service_accounts (11) {namespace "ns", serviceAccount "sa"}
           62 03 12 01 78              # not_service_accounts (12) {serviceAccount "x"}
           6a 03 0a 01 6d              # extensions (13, LEN) istio.workload.Extension{name "m"}
        30 01               # dry_run (6) true
        3a 03 0a 01 65      # extensions (7, LEN) istio.workload.Extension{name "e"}
        """
    )
    assert_golden(a, expected)


def test_create_certificate_request_and_response() -> None:
    req = ca_pb2.IstioCertificateRequest(
        csr="C",
        validity_duration=86400,
        metadata=struct_pb2.Struct(fields={"k": struct_pb2.Value(string_value="v")}),
    )
    expected_req = hx(
        """
        0a 01 43            # csr (1, LEN) "C"
        18 80 a3 05         # validity_duration (3, VARINT) 86400 (0x15180 -> 80 a3 05)
        22 0a               # metadata (4, LEN) Struct, 10 bytes:
          0a 08             #   fields (1) map entry, 8 bytes:
            0a 01 6b        #     key "k"
            12 03 1a 01 76  #     value Value{string_value (3) "v"}
        """
    )
    assert_golden(req, expected_req)
    resp = ca_pb2.IstioCertificateResponse(cert_chain=["A", "B"])
    assert_golden(resp, hx("0a 01 41  0a 01 42  # cert_chain (1, LEN) repeated: 'A', 'B' (leaf first)"))


@pytest.mark.parametrize(
    ("msg", "annotated"),
    [
        (zds.ZdsHello(version=zds.V1), "08 01  # version (1, VARINT) V1=1"),
        (
            zds.WorkloadRequest(
                add=zds.AddWorkload(
                    uid="u", workload_info=zds.WorkloadInfo(name="n", namespace="ns", service_account="sa")
                )
            ),
            """
            0a 10               # add (1, LEN) AddWorkload, 16 bytes:
              0a 01 75          #   uid (1) "u"
              12 0b             #   workload_info (2, LEN) 11 bytes:
                0a 01 6e        #     name (1) "n"
                12 02 6e73      #     namespace (2) "ns"
                1a 02 7361      #     service_account (3) "sa"
            """,
        ),
        (zds.WorkloadRequest(**{"del": zds.DelWorkload(uid="u")}), "12 03 12 01 75  # del (2){uid (2!) 'u'}"),
        (zds.WorkloadRequest(snapshot_sent=zds.SnapshotSent()), "1a 00  # snapshot_sent (3, LEN) empty"),
        (zds.WorkloadRequest(keep=zds.KeepWorkload(uid="u")), "2a 03 0a 01 75  # keep (5){uid (1) 'u'}"),
        (zds.WorkloadResponse(ack=zds.Ack()), "0a 00  # ack (1, LEN) empty = ACK"),
        (zds.WorkloadResponse(ack=zds.Ack(error="e")), "0a 03 0a 01 65  # ack{error (1) 'e'} = NACK"),
    ],
    ids=["hello", "add", "del", "snapshot_sent", "keep", "ack", "nack"],
)
def test_zds_messages(msg: Message, annotated: str) -> None:
    assert_golden(msg, hx(annotated))


def test_match_extensions_is_field_13_and_survives_a_round_trip() -> None:
    # istio/ztunnel proto/authorization.proto: `repeated istio.workload.Extension extensions = 13;` in Match.
    field = az.Match.DESCRIPTOR.fields_by_name["extensions"]
    assert (field.number, field.message_type.full_name) == (13, "istio.workload.Extension")
    config = any_pb2.Any(type_url="type.googleapis.com/vendor.Thing", value=b"\x08\x01")
    a = az.Authorization(name="p", namespace="ns", rules=[az.Rule(clauses=[az.Clause(matches=[
        az.Match(destination_ports=[80], extensions=[wl.Extension(name="vendor.thing", config=config)])])])])
    wire = a.SerializeToString()
    back = az.Authorization.FromString(wire)
    (ext,) = back.rules[0].clauses[0].matches[0].extensions
    assert (ext.name, ext.config.type_url, ext.config.value) == ("vendor.thing", config.type_url, b"\x08\x01")
    # The node proxy accepts a policy carrying it and, like ztunnel, does not interpret it.
    from ambient.state import convert

    assert convert.authorization(back).rules[0].clauses[0].matches[0].destination_ports == (80,)
