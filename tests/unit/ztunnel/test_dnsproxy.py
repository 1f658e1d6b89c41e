"""The DNS proxy answers known Services from state and leaves everything else to the upstream resolver."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from ambient.protocol import dnswire
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


def test_datagram_io_works_under_uvloop() -> None:
    """uvloop has no sock_recvfrom/sock_sendto: the DNS proxy's own helpers must work on it (and on the
    default loop), including waiting for a datagram that is not there yet."""
    import asyncio
    import socket

    import uvloop

    from ambient.ztunnel.dnsproxy import _recvfrom, _sendto

    async def main() -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for s in (a, b):
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
            waiting = asyncio.ensure_future(_recvfrom(loop, b, 512))
            await asyncio.sleep(0.01)  # b has nothing yet: the helper must wait, not fail
            await _sendto(loop, a, b"query", b.getsockname())
            got, peer = await asyncio.wait_for(waiting, 5)
            await _sendto(loop, b, b"answer", peer)
            back, _ = await asyncio.wait_for(_recvfrom(loop, a, 512), 5)
            return got, back
        finally:
            a.close()
            b.close()

    for new_loop in (uvloop.new_event_loop, asyncio.new_event_loop):
        loop = new_loop()
        try:
            assert loop.run_until_complete(main()) == (b"query", b"answer")
        finally:
            loop.close()


def test_silent_upstream_is_logged_with_a_reason_and_the_query_name(caplog: Any, monkeypatch: Any) -> None:
    """A TimeoutError stringifies to "": the warning must still say why (and for which name)."""
    import asyncio
    import logging
    import socket
    from types import SimpleNamespace

    from ambient.ztunnel import dnsproxy

    monkeypatch.setattr(dnsproxy, "UPSTREAM_TIMEOUT_S", 0.2)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))

    async def call(make: Any) -> Any:
        return make()

    ctx: Any = SimpleNamespace(settings=SimpleNamespace(mark=None, dns_upstream=silent.getsockname()),
                               sockets=SimpleNamespace(call=call), scope=SimpleNamespace(label="shop/web-1"))
    try:
        with caplog.at_level(logging.WARNING):
            answer = asyncio.run(dnsproxy.forward_udp(ctx, dnswire.build_query("example.com", msg_id=9)))
    finally:
        silent.close()
    assert dnswire.parse_response(answer).rcode == dnswire.RCODE_SERVFAIL
    [line] = [r.getMessage() for r in caplog.records if "DNS upstream" in r.getMessage()]
    assert line.endswith("failed for shop/web-1 (query example.com): no answer within 0.2s"), line
