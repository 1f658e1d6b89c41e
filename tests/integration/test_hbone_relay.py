"""The node proxy's data path without tasks: the HBONE receive fast path (DATA frames delivered without
h2's state machine) and the socket <-> stream relay of `copy_bidirectional`.

- The fast path is checked differentially: the same wire bytes, cut into chunks of every size, go to a
  plain h2 server connection and to an `HboneConnection`; both must deliver the same bytes per stream and
  leave the same inbound flow-control windows (the fast path does h2's bookkeeping by hand).
- The relay moves bytes both ways with half-close and exact counters over a real TLS HBONE tunnel, and a
  stalled application bounds what the proxy holds to the stream's receive window (the sender stalls).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hbone_fakes import FakeTransport
from hyperframe.frame import DataFrame, PingFrame, WindowUpdateFrame

from ambient.hbone.client import HboneClient
from ambient.hbone.connection import HboneConnection, HboneStream
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, HboneServer
from ambient.hbone.stream import ACK_BATCH
from ambient.identity.ca import LocalCA
from ambient.tls.verify import PeerIdentity
from ambient.ztunnel.copy import CopyStats, HboneEnd, SocketEnd, copy_bidirectional, finish
from helpers import eventually, tcp_pair

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("fast_paths")]  # fast paths on and off
SERVER_ID = "spiffe://cluster.local/ns/shop/sa/web"
CLIENT_ID = "spiffe://cluster.local/ns/x/sa/client"


def _client_wire() -> tuple[bytes, dict[int, bytes]]:
    """A client's bytes: preface, two CONNECT streams, then DATA frames of every kind interleaved with
    other frames; and the payload each stream must deliver."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    headers = [(":method", "CONNECT"), (":authority", "10.0.0.1:80")]
    client.send_headers(1, headers)
    client.send_headers(3, headers)
    wire = bytearray(client.data_to_send())
    want: dict[int, bytearray] = {1: bytearray(), 3: bytearray()}

    def data(sid: int, payload: bytes, *flags: str, pad: int = 0) -> None:
        f = DataFrame(sid, data=payload, pad_length=pad)
        for flag in flags:
            f.flags.add(flag)
        wire.extend(f.serialize())
        want[sid] += payload

    data(1, os.urandom(1))
    data(3, os.urandom(40_000))
    wire.extend(WindowUpdateFrame(0, window_increment=1000).serialize())
    data(1, b"")
    data(1, os.urandom(9))
    data(3, b"padded", "PADDED", pad=5)  # h2's path
    wire.extend(PingFrame(0, opaque_data=b"12345678").serialize())
    data(1, os.urandom(16_384))
    data(3, os.urandom(100), "END_STREAM")  # h2's path: ends stream 3
    data(1, os.urandom(60_000))
    return bytes(wire), {k: bytes(v) for k, v in want.items()}


@pytest.mark.parametrize("step", [1, 5, 9, 10, 4096, 1 << 20])
async def test_receive_fast_path_matches_h2(step: int) -> None:
    wire, want = _client_wire()
    chunks = [wire[i : i + step] for i in range(0, len(wire), step)]

    reference = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    big = 1 << 22  # windows large enough for the payload, as ours are
    reference.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: big, h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20})
    reference.max_inbound_frame_size = 1 << 20
    reference.initiate_connection()
    reference.increment_flow_control_window(big)
    ref_data: dict[int, bytearray] = {1: bytearray(), 3: bytearray()}
    for chunk in chunks:
        for ev in reference.receive_data(chunk):
            if isinstance(ev, h2.events.DataReceived):
                ref_data[ev.stream_id] += ev.data or b""

    streams: dict[int, HboneStream] = {}

    def on_request(stream: HboneStream, _req: ConnectRequest) -> None:
        streams[stream.stream_id] = stream
        stream.respond(200)

    conn = HboneConnection(client_side=False, on_request=on_request)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    for chunk in chunks:
        conn.data_received(memoryview(bytearray(chunk)))  # a view of a buffer, as the TLS layer hands it
    assert conn.error is None and not transport.closed
    assert {sid: bytes(b) for sid, b in ref_data.items()} == want
    for sid, payload in want.items():
        got = b"".join(streams[sid]._chunks)
        assert got == payload, f"stream {sid}: {len(got)} of {len(payload)} bytes"
    # Window bookkeeping identical to h2's: the same bytes consumed (nothing acknowledged yet on either side).
    def consumed(manager: Any) -> int:
        return int(manager.max_window_size - manager.current_window_size)

    ours, ref = conn._h2, reference
    assert consumed(ours._inbound_flow_control_window_manager) == consumed(ref._inbound_flow_control_window_manager)
    assert consumed(ours._inbound_flow_control_window_manager) >= sum(map(len, want.values()))
    for sid in (1, 3):
        assert consumed(ours.streams[sid]._inbound_window_manager) == consumed(ref.streams[sid]._inbound_window_manager)
    assert streams[3].at_eof is False and streams[3]._eof  # END_STREAM went through h2 after the data


async def test_fast_path_data_beyond_the_window_is_a_flow_control_error() -> None:
    """A peer ignoring our window is caught even though DATA frames bypass h2: the frame goes to h2."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    wire = bytearray(client.data_to_send())
    conn = HboneConnection(client_side=False, on_request=lambda s, _r: s.respond(200))
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(bytes(wire))
    window = conn._h2.streams[1]._inbound_window_manager.current_window_size
    conn.data_received(DataFrame(1, data=b"x" * (window + 1)).serialize())
    assert conn.error is not None and "protocol error" in conn.error.message
    assert transport.closed


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create()


async def _echo(stream: HboneStream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.write_eof()


async def test_relay_both_ways_with_half_close_and_exact_counters(ca: LocalCA) -> None:
    async def handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
        return Accept(serve=_echo)

    loop = asyncio.get_running_loop()
    lsock = socket.create_server(("127.0.0.1", 0))
    async with HboneServer(lsock, ca.issue(SERVER_ID), handler) as server, HboneClient() as client:
        stream = await client.connect(ca.issue(CLIENT_ID), server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        app_peer, app = tcp_pair()
        payload = os.urandom(5 * 1024 * 1024 + 3)  # > the 4 MiB stream window: acknowledgements must flow
        stats = CopyStats()

        async def app_side() -> bytes:
            async def send() -> None:
                await loop.sock_sendall(app_peer, payload)
                app_peer.shutdown(socket.SHUT_WR)

            sender = asyncio.create_task(send())
            out = bytearray()
            while chunk := await loop.sock_recv(app_peer, 1 << 20):
                out += chunk
            await sender
            return bytes(out)

        a_end, b_end = SocketEnd(app, "app"), HboneEnd(stream, "up")
        async with asyncio.TaskGroup() as tg:
            echoed = tg.create_task(app_side())
            error = await asyncio.wait_for(copy_bidirectional(a_end, b_end, stats), 30)
        finish(a_end, b_end, error)
        assert error is None
        assert echoed.result() == payload
        assert (stats.sent, stats.received) == (len(payload), len(payload))
        assert stream.connection.streams == {}  # both directions ended: released without a reset
        app_peer.close()


async def test_relay_holds_at_most_the_stream_window_for_a_stalled_app(ca: LocalCA) -> None:
    pushed = asyncio.Event()
    total = 24 * 1024 * 1024

    served: list[HboneStream] = []

    async def flood(stream: HboneStream) -> None:
        served.append(stream)
        try:
            await stream.write(b"z" * total)
            pushed.set()
        except Exception:
            pass

    async def handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
        return Accept(serve=flood)

    lsock = socket.create_server(("127.0.0.1", 0))
    async with HboneServer(lsock, ca.issue(SERVER_ID), handler) as server, HboneClient() as client:
        stream = await client.connect(ca.issue(CLIENT_ID), server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        app_peer, app = tcp_pair()  # app_peer never reads
        app.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        stats = CopyStats()
        a_end, b_end = SocketEnd(app, "app"), HboneEnd(stream, "up")
        copy = asyncio.create_task(copy_bidirectional(a_end, b_end, stats))
        window = stream.connection.settings.stream_window
        # The positive signal first: the sender has no flow-control window left (it has more to send) and the
        # proxy holds most of that window (the rest: consumed, its acknowledgement not sent yet) ...
        await eventually(lambda: served and served[0].connection._h2.local_flow_control_window(
            served[0].stream_id) == 0 and stream._held >= window // 2, timeout=20,
            what="the sender's window used up and held by the proxy")
        # ... so it is stalled by flow control, not done.
        assert not pushed.is_set(), "the sender was not stalled by flow control"
        held = stream._held
        # Held = received but not yet written to the app socket: never more than the stream window
        # (plus the acknowledgement batch not yet reported).
        assert 0 < held <= window + ACK_BATCH
        assert stats.received + held <= window + ACK_BATCH + 8 * 1024 * 1024  # socket buffers only
        copy.cancel()
        with pytest.raises(asyncio.CancelledError):
            await copy
        finish(a_end, b_end, asyncio.CancelledError())
        app_peer.close()


async def test_concurrent_relays_share_one_read_buffer_without_mixing_bytes(ca: LocalCA) -> None:
    """Every relay of the thread reads into the same buffer: each connection must still get exactly its own
    bytes back (the buffer is consumed inside the callback that filled it), and a relayed socket end keeps
    no read buffer of its own (an idle proxied connection holds none)."""

    async def handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
        return Accept(serve=_echo)

    loop = asyncio.get_running_loop()
    lsock = socket.create_server(("127.0.0.1", 0))
    async with HboneServer(lsock, ca.issue(SERVER_ID), handler) as server, HboneClient() as client:
        bundle = ca.issue(CLIENT_ID)

        async def one(i: int) -> tuple[bytes, bytes, SocketEnd]:
            stream = await client.connect(bundle, server.address[:2], {SERVER_ID}, "127.0.0.1:80")
            app_peer, app = tcp_pair()
            payload = bytes([i]) * 1000 + os.urandom(700_000 + i * 4097)

            async def send() -> None:
                await loop.sock_sendall(app_peer, payload)
                app_peer.shutdown(socket.SHUT_WR)

            a_end, b_end = SocketEnd(app, "app"), HboneEnd(stream, "up")
            async with asyncio.TaskGroup() as tg:
                tg.create_task(send())
                copy = tg.create_task(copy_bidirectional(a_end, b_end, CopyStats()))
                out = bytearray()
                while chunk := await loop.sock_recv(app_peer, 65536):
                    out += chunk
            finish(a_end, b_end, copy.result())
            app_peer.close()
            return payload, bytes(out), a_end

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(8))), 40)
    for payload, echoed, end in results:
        assert echoed == payload
        assert len(end._buf) == 0  # relayed: no per-connection read buffer was allocated


async def test_answer_before_the_request_ends_reaches_the_app_without_a_reset(ca: LocalCA) -> None:
    """A server that answers completely before reading the whole request (a 403 before the body) ends its
    half and stops the stream with RST_STREAM(NO_ERROR) (RFC 9113 8.1). The relay must deliver the whole
    answer and a FIN to the app, drain what the app still sends, and not reset the app's connection."""
    answer = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 19\r\n\r\nRBAC: access denied"

    async def early_answer(stream: HboneStream) -> None:
        await stream.read()  # the request head, not its body
        await stream.write(answer)
        await stream.write_eof()  # returning without reading the rest: the server stops the stream

    async def handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
        return Accept(serve=early_answer)

    loop = asyncio.get_running_loop()
    async with HboneServer(socket.create_server(("127.0.0.1", 0)), ca.issue(SERVER_ID), handler) as server, \
            HboneClient() as client:
        stream = await client.connect(ca.issue(CLIENT_ID), server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        app_peer, app = tcp_pair()
        body = os.urandom(8 * 1024 * 1024)  # more than the windows: still being sent when the answer comes

        async def app_side() -> bytes:
            async def send() -> None:
                await loop.sock_sendall(app_peer, b"POST / HTTP/1.1\r\ncontent-length: 8388608\r\n\r\n")
                await asyncio.sleep(0.05)
                with contextlib.suppress(OSError):  # the relay may stop reading once it has drained enough
                    await loop.sock_sendall(app_peer, body)
                    app_peer.shutdown(socket.SHUT_WR)

            sender = asyncio.create_task(send())
            out = bytearray()
            while chunk := await loop.sock_recv(app_peer, 1 << 20):  # raises ConnectionResetError on a reset
                out += chunk
            await sender
            return bytes(out)

        a_end, b_end = SocketEnd(app, "app"), HboneEnd(stream, "up")
        async with asyncio.TaskGroup() as tg:
            got = tg.create_task(app_side())
            error = await asyncio.wait_for(copy_bidirectional(a_end, b_end, stats := CopyStats()), 30)
        finish(a_end, b_end, error)
        assert got.result() == answer
        assert error is None, error
        assert stats.received == len(answer)
        app_peer.close()
