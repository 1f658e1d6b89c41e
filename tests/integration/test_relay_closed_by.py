"""Who ended a socket <-> HBONE stream relay first (`CopyStats.closed_by`, the access line's `closed_by=`),
over a real TLS HBONE tunnel on loopback: the app (client side) ending first, the tunnel's far end (server
side) ending first, and the far end resetting the stream."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ambient.hbone.client import HboneClient
from ambient.hbone.connection import HboneStream
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, HboneServer
from ambient.identity.ca import LocalCA
from ambient.tls.verify import PeerIdentity
from ambient.ztunnel.copy import CopyStats, HboneEnd, SocketEnd, copy_bidirectional, finish
from helpers import tcp_pair

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("fast_paths")]
SERVER_ID = "spiffe://cluster.local/ns/shop/sa/web"
CLIENT_ID = "spiffe://cluster.local/ns/x/sa/client"
REQUEST, ANSWER = b"GET / HTTP/1.1\r\n\r\n", b"answer"


def _server(first: str):  # type: ignore[no-untyped-def]
    async def serve(stream: HboneStream) -> None:
        got = b""
        while len(got) < len(REQUEST):
            got += await stream.read()
        await stream.write(ANSWER)
        if first == "server":
            await stream.write_eof()
        elif first == "server_reset":
            await asyncio.sleep(0.05)
            stream.abort()
            return
        while await stream.read():
            pass
        if first == "client":
            await stream.write_eof()

    return serve


@pytest.mark.parametrize("first", ["client", "server", "server_reset"])
async def test_relay_notes_who_ended_first(first: str) -> None:
    ca = LocalCA.create()

    async def handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
        return Accept(serve=_server(first))

    loop = asyncio.get_running_loop()
    lsock = socket.create_server(("127.0.0.1", 0))
    async with HboneServer(lsock, ca.issue(SERVER_ID), handler) as server, HboneClient() as client:
        stream = await client.connect(ca.issue(CLIENT_ID), server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        app_peer, app = tcp_pair()
        stats = CopyStats()

        async def app_side() -> bytes:
            await loop.sock_sendall(app_peer, REQUEST)
            got = await loop.sock_recv(app_peer, 100)
            if first == "client":
                app_peer.shutdown(socket.SHUT_WR)  # curl closing after its answer
            try:
                while await loop.sock_recv(app_peer, 100):
                    pass
            except ConnectionResetError:
                pass  # the stream reset is passed on to the app by `finish`
            app_peer.close()  # the server ended: the app closes too (its end comes second)
            return got

        a_end, b_end = SocketEnd(app, "app"), HboneEnd(stream, "up")
        async with asyncio.TaskGroup() as tg:
            answered = tg.create_task(app_side())
            error = await asyncio.wait_for(copy_bidirectional(a_end, b_end, stats), 30)
            finish(a_end, b_end, error)
        assert answered.result() == ANSWER
        assert stats.closed_by == first, (stats, error)
        assert (error is None) == (first != "server_reset"), error
