"""HBONE robustness: rapid-reset flood, PING keepalive, certificate rotation on the server, uvloop."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from ambient.hbone.client import HboneClient
from ambient.hbone.connection import H2Settings, HboneStream
from ambient.hbone.protocol import ConnectRequest, build_connect_headers
from ambient.hbone.server import Accept, Decision, HboneServer
from ambient.identity.ca import LocalCA
from ambient.identity.certs import CertBundle
from ambient.tls.verify import PeerIdentity
from helpers import eventually

pytestmark = pytest.mark.timeout(60)
SERVER_ID = "spiffe://cluster.local/ns/shop/sa/web"


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create()


def listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


async def echo(stream: HboneStream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.write_eof()


async def slow_echo_handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
    await asyncio.sleep(0.5)  # not answered yet when the attacker resets
    return Accept(serve=echo)


async def test_rapid_reset_flood_cuts_attacker_only(ca: LocalCA) -> None:
    attacker_id = ca.issue("spiffe://cluster.local/ns/x/sa/attacker")
    victim_id = ca.issue("spiffe://cluster.local/ns/x/sa/victim")
    async with HboneServer(listener(), ca.issue(SERVER_ID), slow_echo_handler) as server, \
            HboneClient() as client:
        victim = await client.connect(victim_id, server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        first = await client.connect(attacker_id, server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        conn = first.connection
        h2c = conn._h2
        headers = build_connect_headers("127.0.0.1:80")
        for _ in range(300):  # open and reset at once, like CVE-2023-44487
            if conn.error is not None:  # GOAWAY received
                break
            sid = h2c.get_next_available_stream_id()
            h2c.send_headers(sid, headers)
            h2c.reset_stream(sid)
            conn._flush()
            await asyncio.sleep(0)
        async with asyncio.timeout(10):
            await conn.lost
        assert "ENHANCE_YOUR_CALM" in str(conn.error)
        # the victim's connection is untouched
        await victim.write(b"still fine")
        assert await victim.read() == b"still fine"
        victim.close()


async def test_unanswered_ping_drops_connection(ca: LocalCA) -> None:
    async def handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
        return Accept(serve=echo)

    settings = H2Settings(max_header_list_size=16384, ping_interval=0.1, ping_timeout=0.3)
    src = ca.issue("spiffe://cluster.local/ns/x/sa/c")
    async with HboneServer(listener(), ca.issue(SERVER_ID), handler) as server, \
            HboneClient(settings=settings) as client:
        stream = await client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        conn = stream.connection
        await eventually(lambda: conn.pings_answered >= 3, what="several keepalive PINGs answered")
        assert not conn.closed
        for server_conn in list(server._conns):
            assert server_conn._transport is not None
            server_conn._transport.pause_reading()  # the server stops answering
        async with asyncio.timeout(10):
            await conn.lost
        assert "did not answer PING" in str(conn.error)
        with pytest.raises(Exception, match="PING"):
            await stream.read()
        stream.close()


async def test_server_certificate_rotation_applies_to_new_connections(ca: LocalCA) -> None:
    current: list[CertBundle] = [ca.issue(SERVER_ID)]

    async def handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
        return Accept(serve=echo)

    async with HboneServer(listener(), lambda: current[0], handler) as server, HboneClient() as client:
        s1 = await client.connect(ca.issue("spiffe://cluster.local/ns/x/sa/a"), server.address[:2], {SERVER_ID},
                                  "127.0.0.1:80")
        current[0] = ca.issue(SERVER_ID)
        s2 = await client.connect(ca.issue("spiffe://cluster.local/ns/x/sa/b"), server.address[:2], {SERVER_ID},
                                  "127.0.0.1:80")
        assert s1.peer is not None and s2.peer is not None
        assert s1.peer.serial_number != s2.peer.serial_number
        assert s2.peer.serial_number == current[0].serial_number
        # the old connection keeps working
        await s1.write(b"old")
        assert await s1.read() == b"old"
        s1.close()
        s2.close()


def test_echo_under_uvloop(ca: LocalCA) -> None:
    async def main() -> bytes:
        async def handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
            return Accept(serve=echo)

        async with HboneServer(listener(), ca.issue(SERVER_ID), handler) as server, HboneClient() as client:
            s = await client.connect(ca.issue("spiffe://cluster.local/ns/x/sa/u"), server.address[:2],
                                     {SERVER_ID}, "127.0.0.1:80")
            payload = bytes(range(256)) * 8192
            await s.write(payload)
            await s.write_eof()
            out = bytearray()
            while data := await s.read():
                out += data
            s.close()
            return bytes(out) if out == payload else b"mismatch"

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == bytes(range(256)) * 8192
    finally:
        loop.close()


async def test_oversized_header_list_cuts_connection_without_reaching_handler(ca: LocalCA) -> None:
    calls: list[str] = []

    async def handler(req: ConnectRequest, _peer: PeerIdentity) -> Decision:
        calls.append(req.authority)
        return Accept(serve=echo)

    src = ca.issue("spiffe://cluster.local/ns/x/sa/big")
    async with HboneServer(listener(), ca.issue(SERVER_ID), handler) as server, HboneClient() as client:
        ok = await client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        conn = ok.connection
        headers = [*build_connect_headers("127.0.0.1:81"), ("x-big", "a" * (70 * 1024))]
        with pytest.raises(Exception):  # noqa: B017 - connection-level error, the stream never opens
            await conn.open_stream(headers)
        async with asyncio.timeout(10):
            await conn.lost
        assert calls == ["127.0.0.1:80"]
        # the server still serves new connections
        s2 = await client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:82")
        await s2.write(b"ok")
        assert await s2.read() == b"ok"
        s2.close()
