"""HBONE client pool: sharing per key, isolation between source identities, stream caps, one dial for
concurrent callers, idle release."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ambient.hbone.client import HboneClient
from ambient.hbone.connection import H2Settings, HboneStream
from ambient.hbone.errors import HboneConnectError
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, HboneServer
from ambient.identity.ca import LocalCA
from ambient.tls.verify import PeerIdentity

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaked_tasks")]
SERVER_ID = "spiffe://cluster.local/ns/shop/sa/web"


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create()


def listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


class Echo:
    def __init__(self) -> None:
        self.peers: list[str] = []

    async def handler(self, _req: ConnectRequest, peer: PeerIdentity) -> Decision:
        self.peers.append(peer.uri)

        async def echo(stream: HboneStream) -> None:
            while data := await stream.read():
                await stream.write(data)
            await stream.write_eof()

        return Accept(serve=echo)


async def _roundtrip(stream: HboneStream, payload: bytes) -> bytes:
    await stream.write(payload)
    await stream.write_eof()
    out = bytearray()
    while data := await stream.read():
        out += data
    return bytes(out)


async def test_concurrent_callers_same_key_share_one_connection(ca: LocalCA) -> None:
    echo = Echo()
    src = ca.issue("spiffe://cluster.local/ns/shop/sa/curl")
    async with HboneServer(listener(), ca.issue(SERVER_ID), echo.handler) as server, HboneClient() as client:
        streams = await asyncio.gather(
            *(client.connect(src, server.address[:2], {SERVER_ID}, f"127.0.0.1:{8000 + i}") for i in range(20))
        )
        results = await asyncio.gather(*(_roundtrip(s, f"msg-{i}".encode()) for i, s in enumerate(streams)))
        assert results == [f"msg-{i}".encode() for i in range(20)]
        assert server.stats.tls_established == 1
        assert server.stats.tcp_accepted == 1
        assert client.stats.dials == 1
        assert len({id(s.connection) for s in streams}) == 1
        for s in streams:
            s.close()


async def test_different_source_identities_never_share(ca: LocalCA) -> None:
    echo = Echo()
    a = ca.issue("spiffe://cluster.local/ns/shop/sa/a")
    b = ca.issue("spiffe://cluster.local/ns/shop/sa/b")
    async with HboneServer(listener(), ca.issue(SERVER_ID), echo.handler) as server, HboneClient() as client:
        streams = await asyncio.gather(
            *(client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:80") for src in (a, b, a, b))
        )
        assert streams[0].connection is streams[2].connection
        assert streams[1].connection is streams[3].connection
        assert streams[0].connection is not streams[1].connection
        assert server.stats.tls_established == 2
        assert sorted(echo.peers) == sorted([a.identity.uri, b.identity.uri] * 2)
        for s in streams:
            s.close()


async def test_different_expected_identities_use_different_connections(ca: LocalCA) -> None:
    echo = Echo()
    src = ca.issue("spiffe://cluster.local/ns/shop/sa/curl")
    async with HboneServer(listener(), ca.issue(SERVER_ID), echo.handler) as server, HboneClient() as client:
        s1 = await client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        s2 = await client.connect(src, server.address[:2], {SERVER_ID, "spiffe://cluster.local/ns/x/sa/y"},
                                  "127.0.0.1:80")
        assert s1.connection is not s2.connection
        s1.close()
        s2.close()


async def test_more_than_client_stream_cap_opens_second_connection(ca: LocalCA) -> None:
    echo = Echo()
    src = ca.issue("spiffe://cluster.local/ns/shop/sa/curl")
    async with HboneServer(listener(), ca.issue(SERVER_ID), echo.handler) as server, \
            HboneClient(max_streams_per_connection=5) as client:
        streams = await asyncio.gather(
            *(client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:80") for _ in range(6))
        )
        conns = {id(s.connection) for s in streams}
        assert len(conns) == 2 and server.stats.tls_established == 2
        # a finished stream frees its slot: the next one reuses a pooled connection
        streams[0].close()
        await asyncio.sleep(0)
        extra = await client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        assert id(extra.connection) in conns and server.stats.tls_established == 2
        for s in [*streams, extra]:
            s.close()


async def test_default_cap_is_100_streams(ca: LocalCA) -> None:
    echo = Echo()
    src = ca.issue("spiffe://cluster.local/ns/shop/sa/curl")
    async with HboneServer(listener(), ca.issue(SERVER_ID), echo.handler) as server, HboneClient() as client:
        streams = await asyncio.gather(
            *(client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:80") for _ in range(101))
        )
        counts: dict[int, int] = {}
        for s in streams:
            counts[id(s.connection)] = counts.get(id(s.connection), 0) + 1
        assert sorted(counts.values()) == [1, 100]
        for s in streams:
            s.close()


async def test_peer_settings_cap_streams(ca: LocalCA) -> None:
    echo = Echo()
    src = ca.issue("spiffe://cluster.local/ns/shop/sa/curl")
    settings = H2Settings(max_concurrent_streams=3)
    async with HboneServer(listener(), ca.issue(SERVER_ID), echo.handler, settings=settings) as server, \
            HboneClient() as client:
        streams = await asyncio.gather(
            *(client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:80") for _ in range(4))
        )
        assert len({id(s.connection) for s in streams}) == 2
        assert server.stats.tls_established == 2
        for s in streams:
            s.close()


async def test_failed_dial_fails_all_waiters_with_one_dial(ca: LocalCA) -> None:
    sock = listener()
    port = sock.getsockname()[1]
    sock.close()
    src = ca.issue("spiffe://cluster.local/ns/shop/sa/curl")
    dials = 0

    async def counting_dialer(dst: tuple[str, int], source_ip: str | None) -> socket.socket:
        nonlocal dials
        dials += 1
        await asyncio.sleep(0.05)
        s = socket.socket()
        s.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(s, dst)
        except BaseException:
            s.close()
            raise
        return s

    async with HboneClient(dialer=counting_dialer) as client:
        results = await asyncio.gather(
            *(client.connect(src, ("127.0.0.1", port), {SERVER_ID}, "127.0.0.1:80") for _ in range(5)),
            return_exceptions=True,
        )
    assert all(isinstance(r, HboneConnectError) for r in results)
    assert dials == 1


async def test_idle_connection_released(ca: LocalCA) -> None:
    echo = Echo()
    src = ca.issue("spiffe://cluster.local/ns/shop/sa/curl")
    async with HboneServer(listener(), ca.issue(SERVER_ID), echo.handler) as server, \
            HboneClient(idle_timeout=0.2) as client:
        s = await client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        assert await _roundtrip(s, b"x") == b"x"
        conn = s.connection
        s.close()
        async with asyncio.timeout(10):
            await conn.lost
        assert client.connections() == []
        s2 = await client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        assert s2.connection is not conn and server.stats.tls_established == 2
        s2.close()


async def test_source_ip_binding_and_custom_dialer_used(ca: LocalCA) -> None:
    echo = Echo()
    src = ca.issue("spiffe://cluster.local/ns/shop/sa/curl")
    async with HboneServer(listener(), ca.issue(SERVER_ID), echo.handler) as server, HboneClient() as client:
        s = await client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:80", source_ip="127.0.0.2")
        assert s.connection.local_addr is not None and s.connection.local_addr[0] == "127.0.0.2"
        s2 = await client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:80", source_ip="127.0.0.3")
        assert s2.connection is not s.connection
        s.close()
        s2.close()


async def test_stream_above_a_goaway_last_stream_id_is_retried_on_a_new_connection(ca: LocalCA) -> None:
    """RFC 9113 6.8: a CONNECT sent on a pooled connection that the peer is closing (GOAWAY with a lower last
    stream id) was not processed; the pool opens it again on a new connection instead of failing the app's
    connection (which the node proxy would reset)."""
    import h2.config
    import h2.connection
    import h2.events

    from ambient.tls.contexts import server_context

    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        h2c.initiate_connection()
        writer.write(h2c.data_to_send())
        answered = 0
        while data := await reader.read(65536):
            for ev in h2c.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    if answered == 1 and connections == 1:  # the first connection is going away
                        h2c.close_connection(last_stream_id=ev.stream_id - 2)
                        writer.write(h2c.data_to_send())
                        await writer.drain()
                        writer.close()
                        return
                    h2c.send_headers(ev.stream_id, [(":status", "200")])
                    answered += 1
            writer.write(h2c.data_to_send())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context(ca.issue(SERVER_ID)))
    addr = server.sockets[0].getsockname()[:2]
    src = ca.issue("spiffe://cluster.local/ns/shop/sa/curl")
    try:
        async with HboneClient() as client:
            first = await client.connect(src, addr, {SERVER_ID}, "127.0.0.1:80")
            second = await client.connect(src, addr, {SERVER_ID}, "127.0.0.1:80")  # pooled, then refused
            assert connections == 2
            assert first.connection is not second.connection
            first.close()
            second.close()
    finally:
        server.close()
        await server.wait_closed()
