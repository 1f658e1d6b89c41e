"""What an HBONE connection keeps once its tunnels are closed: nothing per finished tunnel (h2's stream table
empties as streams finish, not at the next stream opened), and a client pool that a burst made grow keeps
one idle connection per key, not one per `max_streams_per_connection` tunnels of the burst (each idle
connection holds ~330 KiB of TLS and HTTP/2 state; docs/performance.md)."""

from __future__ import annotations

import asyncio
import gc
import socket

import h2.stream
import pytest

from ambient.hbone.client import HboneClient
from ambient.hbone.connection import HboneStream
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, HboneServer
from ambient.identity.ca import LocalCA
from ambient.tls.verify import PeerIdentity
from helpers import eventually

pytestmark = [pytest.mark.timeout(60)]
SERVER_ID = "spiffe://cluster.local/ns/shop/sa/web"
BURST = 40


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create()


async def _echo_once(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
    async def serve(stream: HboneStream) -> None:
        while data := await stream.read():
            await stream.write(data)
        await stream.write_eof()

    return Accept(serve=serve)


async def _roundtrip(stream: HboneStream) -> None:
    await stream.write(b"ping")
    assert await stream.read() == b"ping"
    await stream.write_eof()
    assert await stream.read() == b""
    stream.close()


def _h2_streams() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, h2.stream.H2Stream))


@pytest.mark.usefixtures("fast_paths")
async def test_finished_tunnels_leave_no_h2_stream_behind(ca: LocalCA) -> None:
    src = ca.issue("spiffe://cluster.local/ns/shop/sa/curl")
    server_sock = socket.create_server(("127.0.0.1", 0))
    async with HboneServer(server_sock, ca.issue(SERVER_ID), _echo_once) as server, HboneClient() as client:
        baseline = _h2_streams()
        streams = await asyncio.gather(
            *(client.connect(src, server.address[:2], {SERVER_ID}, f"127.0.0.1:{8000 + i}") for i in range(BURST)))
        assert _h2_streams() == baseline + 2 * BURST  # one per tunnel on each side while they are open
        await asyncio.gather(*(_roundtrip(s) for s in streams))
        del streams
        # Both ends of the still-open connection drop their finished streams, with no new stream opened.
        await eventually(lambda: _h2_streams() == baseline, what="h2 streams of finished tunnels released")
        (conn,) = client.connections()
        assert not conn.closed and conn.active_streams == 0


async def test_pool_keeps_one_idle_connection_after_a_burst(ca: LocalCA) -> None:
    src = ca.issue("spiffe://cluster.local/ns/shop/sa/curl")
    server_sock = socket.create_server(("127.0.0.1", 0))
    async with (
        HboneServer(server_sock, ca.issue(SERVER_ID), _echo_once) as server,
        HboneClient(max_streams_per_connection=4, spare_idle_timeout=0.05) as client,
    ):
        streams = await asyncio.gather(
            *(client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:80") for _ in range(BURST)))
        assert len(client.connections()) == BURST // 4
        await asyncio.gather(*(_roundtrip(s) for s in streams))
        await eventually(lambda: len(client.connections()) == 1, what="the burst's spare connections closed")
        await eventually(lambda: server.open_connections == 1, what="the server saw the spares close")
        (kept,) = client.connections()
        dials = client.stats.dials
        # The one left is kept for the full idle timeout and serves the next tunnel without a new dial.
        await _roundtrip(await client.connect(src, server.address[:2], {SERVER_ID}, "127.0.0.1:80"))
        assert client.connections() == [kept] and client.stats.dials == dials

