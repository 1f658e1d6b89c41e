"""The cluster DNS decisions and wire format (sans-IO): queries in, responses out, no sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambient.protocol import dnswire as W

SERVICES = {("web", "default"): ["10.96.0.20"], ("headless", "prod"): []}


def lookup(name: str, ns: str) -> list[str] | None:
    return SERVICES.get((name, ns))


def ask(name: str, qtype: int = W.TYPE_A) -> W.ParsedResponse:
    reply = W.answer(W.build_query(name, qtype, msg_id=0xBEEF), lookup)
    assert reply is not None
    resp = W.parse_response(reply)
    assert resp.id == 0xBEEF
    return resp


@pytest.mark.parametrize(
    ("name", "qtype", "rcode", "addresses"),
    [
        ("web.default.svc.cluster.local", W.TYPE_A, W.RCODE_NOERROR, ["10.96.0.20"]),
        ("WEB.Default.SVC.cluster.local.", W.TYPE_A, W.RCODE_NOERROR, ["10.96.0.20"]),  # case, trailing dot
        ("web.default.svc.cluster.local", W.TYPE_AAAA, W.RCODE_NOERROR, []),  # exists, no IPv6: NODATA
        ("headless.prod.svc.cluster.local", W.TYPE_A, W.RCODE_NOERROR, []),
        ("nope.default.svc.cluster.local", W.TYPE_A, W.RCODE_NXDOMAIN, []),
        ("web.other.svc.cluster.local", W.TYPE_A, W.RCODE_NXDOMAIN, []),
        ("10-244-1-5.default.pod.cluster.local", W.TYPE_A, W.RCODE_NOERROR, ["10.244.1.5"]),
        ("10-244-1-999.default.pod.cluster.local", W.TYPE_A, W.RCODE_NXDOMAIN, []),
        ("default.svc.cluster.local", W.TYPE_A, W.RCODE_NOERROR, []),  # empty non-terminal
        ("a.b.c.svc.cluster.local", W.TYPE_A, W.RCODE_NXDOMAIN, []),
        ("whatever.cluster.local", W.TYPE_A, W.RCODE_NXDOMAIN, []),
        ("example.com", W.TYPE_A, W.RCODE_REFUSED, []),  # never forwarded
        ("web.default.svc.cluster.local.example.com", W.TYPE_A, W.RCODE_REFUSED, []),
        ("notcluster.local", W.TYPE_A, W.RCODE_REFUSED, []),
    ],
)
def test_resolution_table(name: str, qtype: int, rcode: int, addresses: list[str]) -> None:
    resp = ask(name, qtype)
    assert (resp.rcode, resp.addresses) == (rcode, addresses)
    assert resp.authoritative == (rcode != W.RCODE_REFUSED)


def test_response_echoes_question_and_sets_flags() -> None:
    query = W.build_query("web.default.svc.cluster.local", msg_id=7)
    reply = W.answer(query, lookup)
    assert reply is not None
    msg_id, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", reply[:12])
    assert (msg_id, qd, an, ns, ar) == (7, 1, 1, 0, 0)
    assert flags & 0x8000 and flags & 0x0100 and not flags & 0x0080  # QR, RD echoed, RA never (no recursion)
    assert reply[12:len(query)] == query[12:]  # the question section is copied verbatim


def test_edns_query_is_accepted() -> None:
    base = W.build_query("web.default.svc.cluster.local")
    opt = b"\x00" + struct.pack("!HHIH", W.TYPE_OPT, 1232, 0, 0)  # root name, OPT, payload 1232
    query = base[:10] + struct.pack("!H", 1) + base[12:] + opt
    reply = W.answer(query, lookup)
    assert reply is not None and W.parse_response(reply).addresses == ["10.96.0.20"]


def test_malformed_and_odd_messages() -> None:
    assert W.answer(b"\x00\x01", lookup) is None  # not even a header: silence
    truncated = W.build_query("web.default.svc.cluster.local")[:20]
    reply = W.answer(truncated, lookup)
    assert reply is not None and W.parse_response(reply).rcode == W.RCODE_FORMERR
    response = bytearray(W.build_query("x.cluster.local"))
    response[2] |= 0x80  # QR set: it is a response; answering it could loop
    assert W.answer(bytes(response), lookup) is None
    notify = bytearray(W.build_query("x.cluster.local"))
    notify[2] |= 4 << 3  # opcode NOTIFY
    reply = W.answer(bytes(notify), lookup)
    assert reply is not None and W.parse_response(reply).rcode == W.RCODE_NOTIMP
    loop = bytearray(W.build_query("x"))
    loop[12:14] = b"\xc0\x0c"  # a compression pointer pointing at itself
    reply = W.answer(bytes(loop), lookup)
    assert reply is not None and W.parse_response(reply).rcode == W.RCODE_FORMERR


def test_truncation_over_udp_limit() -> None:
    many = {("big", "default"): [f"10.96.1.{i}" for i in range(1, 60)]}
    query = W.build_query("big.default.svc.cluster.local")
    udp = W.answer(query, lambda n, ns: many.get((n, ns)), udp=True)
    tcp = W.answer(query, lambda n, ns: many.get((n, ns)), udp=False)
    assert udp is not None and tcp is not None
    assert len(udp) <= 512 and W.parse_response(udp).truncated
    assert len(W.parse_response(tcp).addresses) == 59


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    reply = W.answer(data, lookup)
    assert reply is None or len(reply) >= 12
