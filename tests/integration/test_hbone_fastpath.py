"""HBONE fast paths and lifecycle edges: the DATA frame bypass and inbound frame buffer (bytes and
flow-control windows exact), the listener handoff on close (queued connections still served), a
blocked read woken by close, and TLS from the first byte under uvloop."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import tempfile
from collections.abc import Iterable

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import uvloop
from h2.frame_buffer import FrameBuffer
from hbone_fakes import FakeTransport
from hyperframe.frame import DataFrame, HeadersFrame, WindowUpdateFrame

from ambient.hbone.client import HboneClient
from ambient.hbone.connection import HboneConnection, HboneStream
from ambient.hbone.errors import HboneError
from ambient.hbone.h2fast import FastFrameBuffer
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, HboneServer
from ambient.identity.ca import LocalCA
from ambient.tls.verify import PeerIdentity
from helpers import eventually

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("fast_paths")]  # fast paths on and off
SERVER_ID = "spiffe://cluster.local/ns/shop/sa/web"
CLIENT_ID = "spiffe://cluster.local/ns/x/sa/client"


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create()


def listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


async def echo(stream: HboneStream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.write_eof()


async def echo_handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
    return Accept(serve=echo)


def _frames(buf: FrameBuffer, chunks: list[bytes]) -> list[tuple[str, int, bytes, frozenset[str]]]:
    out = []
    buf.max_frame_size = 1 << 20
    for chunk in chunks:
        buf.add_data(chunk)
        for f in buf:
            data = getattr(f, "data", b"")
            out.append((type(f).__name__, f.stream_id, bytes(data), frozenset(f.flags)))
    return out


def test_fast_frame_buffer_parses_like_h2() -> None:
    wire = b""
    for i, size in enumerate((0, 1, 9, 16384, 70000)):
        f = DataFrame(1 + 2 * i, data=os.urandom(size))
        if i == 2:
            f.flags.add("END_STREAM")
        wire += f.serialize()
    padded = DataFrame(3, data=b"padded payload", pad_length=7)
    padded.flags.add("PADDED")
    wire += padded.serialize()
    headers = HeadersFrame(5, data=b"\x82")
    headers.flags.add("END_HEADERS")
    wire += headers.serialize() + WindowUpdateFrame(0, window_increment=1000).serialize()
    for step in (1, 7, 4096, len(wire)):
        chunks = [wire[i : i + step] for i in range(0, len(wire), step)]
        assert _frames(FastFrameBuffer(), chunks) == _frames(FrameBuffer(), chunks)


async def test_bulk_bytes_and_windows_exact(ca: LocalCA) -> None:
    async with HboneServer(listener(), ca.issue(SERVER_ID), echo_handler) as server, HboneClient() as client:
        s = await client.connect(ca.issue(CLIENT_ID), server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        h2c = s.connection._h2
        before = h2c.outbound_flow_control_window
        payload = os.urandom(3 * 1024 * 1024 + 17)
        out = bytearray()

        async def reader() -> None:
            while data := await s.read():
                out.extend(data)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(reader())
            view = memoryview(payload)
            for i in range(0, len(payload), 200_000):  # odd sizes: frames split by window and frame size
                await s.write(view[i : i + 200_000])
            await s.write_eof()
        assert bytes(out) == payload
        assert s.bytes_sent == len(payload)
        # The bypass did h2's accounting: 3 MiB is below half the 16 MiB connection window, so the peer
        # has not sent a connection-level WINDOW_UPDATE yet and the window is down by exactly the payload.
        assert h2c.outbound_flow_control_window == before - len(payload)
        s.close()


class _KeepingTransport(FakeTransport):
    """Keeps the very objects it is given, as a TLS transport's write backlog would (never in the open
    state of asyncio's or uvloop's, which encrypt before `writelines` returns: the worst case)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[bytes | memoryview] = []

    def write(self, data: bytes | memoryview) -> None:
        self.kept.append(data)

    def writelines(self, chunks: Iterable[bytes | memoryview]) -> None:
        self.kept.extend(chunks)

    def take(self) -> bytes:
        out = b"".join(bytes(c) for c in self.kept)
        self.kept.clear()
        return out


async def test_bulk_frames_from_a_reused_buffer_survive_a_transport_that_keeps_them() -> None:
    """A relay reuses its read buffer as soon as `send_nowait` returns, and bulk frames of such a buffer
    go through a reused scratch buffer: a transport still holding an earlier frame must see it unchanged."""
    conn = HboneConnection(client_side=True)
    transport = _KeepingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    big = 1 << 24
    peer.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: big, h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20})
    peer.max_inbound_frame_size = 1 << 20
    peer.initiate_connection()
    peer.increment_flow_control_window(big)
    peer.receive_data(transport.take())
    conn.data_received(peer.data_to_send())
    opening = asyncio.ensure_future(conn.open_stream([(":method", "CONNECT"), (":authority", "10.0.0.1:80")]))
    await eventually(lambda: transport.kept, what="the CONNECT request written")
    for ev in peer.receive_data(transport.take()):
        if isinstance(ev, h2.events.RequestReceived):
            peer.send_headers(ev.stream_id, [(":status", "200")])
    conn.data_received(peer.data_to_send())
    stream = await opening
    buf = bytearray(300_000)
    sent = []
    for _ in range(3):
        buf[:] = os.urandom(len(buf))
        sent.append(bytes(buf))
        assert stream.send_nowait(memoryview(buf)) == len(buf)
    got = bytearray()
    for ev in peer.receive_data(transport.take()):
        if isinstance(ev, h2.events.DataReceived):
            got += ev.data or b""
    assert bytes(got) == b"".join(sent)
    stream.close()


async def test_drain_serves_connections_already_queued(ca: LocalCA) -> None:
    lsock = listener()
    addr = lsock.getsockname()
    async with HboneServer(lsock, ca.issue(SERVER_ID), echo_handler) as server, HboneClient() as client:
        # Connected by the kernel (in the backlog) but not yet accepted by the server: the loop has not run.
        queued = socket.create_connection(addr)
        queued.setblocking(False)
        # What the node proxy does on SIGTERM: close the listener, then drain with a deadline.
        draining = asyncio.ensure_future(server.drain(5))
        await asyncio.sleep(0)
        with pytest.raises(OSError):
            socket.create_connection(addr, timeout=2).close()  # the listener is gone

        async def dial(_dst: object, _src: str | None) -> socket.socket:
            return queued

        s = await client.connect(ca.issue(CLIENT_ID), addr, {SERVER_ID}, "127.0.0.1:80", dialer=dial)
        await s.write(b"handoff")
        await s.write_eof()
        assert await s.read() == b"handoff"
        assert not draining.done()  # the drain waited for the late connection's stream
        s.close()
        async with asyncio.timeout(5):
            await draining
        assert server.stats.tcp_accepted == 1 and server.stats.tls_established == 1


async def test_close_wakes_a_pending_read(ca: LocalCA) -> None:
    async def hold(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
        async def serve(stream: HboneStream) -> None:
            await asyncio.sleep(30)

        return Accept(serve=serve)

    async with HboneServer(listener(), ca.issue(SERVER_ID), hold) as server, HboneClient() as client:
        s = await client.connect(ca.issue(CLIENT_ID), server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        pending = asyncio.ensure_future(s.read())
        await eventually(lambda: server.stats.streams >= 1, what="the server serving the stream")
        assert not pending.done()  # the server sends nothing: the read waits
        s.close()
        async with asyncio.timeout(5):
            with pytest.raises(HboneError):
                await pending
        await server.drain(0)


def test_client_hello_sent_immediately_under_uvloop(ca: LocalCA) -> None:
    """A raw TLS client that writes its ClientHello right after connect() (before the server's loop runs)
    must complete the handshake at once, not after the handshake timeout."""
    bundle = ca.issue(CLIENT_ID)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as d:
        cp, kp = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        with open(cp, "wb") as fc, open(kp, "wb") as fk:
            fc.write(bundle.chain_bytes())
            fk.write(bundle.key_pem)
        ctx.load_cert_chain(cp, kp)

    async def main() -> float:
        lsock = listener()
        async with HboneServer(lsock, ca.issue(SERVER_ID), echo_handler, handshake_timeout=20) as server:
            loop = asyncio.get_running_loop()
            started = loop.time()
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(*server.address[:2], ssl=ctx, server_hostname="x"), 10
            )
            elapsed = loop.time() - started
            writer.close()
            return elapsed

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(main()) < 5
    finally:
        loop.close()
