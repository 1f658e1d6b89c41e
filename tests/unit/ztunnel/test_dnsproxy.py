"""The DNS proxy answers known Services from state and leaves everything else to the upstream resolver."""

from __future__ import annotations

from ipaddress import ip_address

from ambient.cluster import dnswire
from ambient.state.model import NetworkAddress, Service
from ambient.state.store import view_of
from ambient.ztunnel.dnsproxy import answer_from_state

VIEW = view_of(services=[Service(name="web", namespace="shop", hostname="web.shop.svc.cluster.local",
                                 addresses=(NetworkAddress(ip_address("10.96.0.7")),))])


def test_known_service_is_answered_with_its_vip() -> None:
    response = answer_from_state(dnswire.build_query("web.shop.svc.cluster.local", msg_id=77), VIEW)
    assert response is not None
    parsed = dnswire.parse_response(response)
    assert (parsed.id, parsed.rcode, parsed.addresses) == (77, dnswire.RCODE_NOERROR, ["10.96.0.7"])


def test_unknown_names_are_forwarded() -> None:
    for name in ("web.shop.client.svc.cluster.local", "other.shop.svc.cluster.local", "example.com"):
        assert answer_from_state(dnswire.build_query(name), VIEW) is None, name


def test_garbage_gets_formerr_not_a_crash() -> None:
    response = answer_from_state(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff", VIEW)
    assert response is not None and dnswire.parse_response(response).rcode == dnswire.RCODE_FORMERR
    assert answer_from_state(b"\x00", VIEW) is None
