"""HBONE client <-> server over loopback: bytes, half-close, identity from the certificate, statuses,
flow-control isolation, drain."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from ambient.bench.hbone import CLIENT_ID, SERVER_ID, BenchCerts, measure_throughput
from ambient.hbone.client import HboneClient
from ambient.hbone.connection import HboneStream
from ambient.hbone.errors import HboneConnectError, HboneError, HboneStatusError
from ambient.hbone.pipe import TcpByteStream
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, HboneServer, Reject
from ambient.tls.verify import PeerIdentity

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("fast_paths")]  # fast paths on and off
MB = 1024 * 1024
Handler = Callable[[ConnectRequest, PeerIdentity], Awaitable[Decision]]
Served = tuple[HboneServer, HboneClient, list[tuple[ConnectRequest, PeerIdentity]]]


@pytest.fixture(scope="module")
def certs() -> BenchCerts:
    return BenchCerts.make()


def listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


async def echo(stream: HboneStream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.write_eof()


async def echo_handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
    return Accept(serve=echo)


@pytest.fixture
async def served(certs: BenchCerts) -> AsyncIterator[Served]:
    """Server whose handler dispatches on the authority port: 7 echo, 401/503 reject, else echo."""
    seen: list[tuple[ConnectRequest, PeerIdentity]] = []

    async def handler(req: ConnectRequest, peer: PeerIdentity) -> Decision:
        seen.append((req, peer))
        if req.target_port in (401, 503):
            return Reject(req.target_port)
        return Accept(serve=echo)

    async with HboneServer(listener(), certs.server, handler) as server, HboneClient() as client:
        yield server, client, seen


async def _send_all(stream: HboneStream, data: bytes, chunk: int = MB) -> None:
    for i in range(0, len(data), chunk):
        await stream.write(data[i : i + chunk])
    await stream.write_eof()


async def _read_all(stream: HboneStream) -> bytes:
    buf = bytearray()
    while data := await stream.read():
        buf += data
    return bytes(buf)


async def test_echo_50mb_with_half_close_and_identity_from_certificate(served, certs: BenchCerts) -> None:  # type: ignore[no-untyped-def]
    server, client, seen = served
    data = os.urandom(50 * MB)
    stream = await client.connect(
        certs.client, server.address[:2], {SERVER_ID}, "127.0.0.1:7",
        {"baggage": "k8s.namespace.name=bench", "x-forwarded-client-cert": "By=spiffe://cluster.local/ns/x/sa/admin",
         "x-spiffe-id": "spiffe://cluster.local/ns/x/sa/admin"},
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_send_all(stream, data))
        got = tg.create_task(_read_all(stream))
    assert hashlib.sha256(got.result()).digest() == hashlib.sha256(data).digest()
    assert stream.at_eof
    stream.close()
    req, peer = seen[0]
    assert peer.uri == CLIENT_ID  # from the certificate, not from the forged headers
    assert req.headers["x-spiffe-id"].endswith("/sa/admin")
    assert req.authority == "127.0.0.1:7" and req.baggage == {"k8s.namespace.name": "bench"}
    assert req.traceparent is not None and req.local_addr is not None and req.local_addr[1] == server.address[1]
    assert stream.peer is not None and stream.peer.uri == SERVER_ID


async def test_bulk_writes_from_a_reused_buffer_and_from_bytes_arrive_as_written(served, certs: BenchCerts) -> None:  # type: ignore[no-untyped-def]
    """`write` copies what it cannot prove immutable: a buffer overwritten as soon as `write` returns
    still arrives as it was written; views of bytes (sent without a copy) arrive intact too."""
    server, client, _ = served
    stream = await client.connect(certs.client, server.address[:2], {SERVER_ID}, "127.0.0.1:7")
    data = os.urandom(24 * MB)
    buf = bytearray(2 * MB)

    async def send() -> None:
        for i in range(0, 12 * MB, 2 * MB):  # first half: one reused mutable buffer, scribbled over after each write
            buf[:] = data[i : i + 2 * MB]
            await stream.write(buf)
            buf[:] = bytes(2 * MB)
        view = memoryview(data)
        for i in range(12 * MB, 24 * MB, 3 * MB // 2):  # second half: views of bytes
            await stream.write(view[i : i + 3 * MB // 2])
        await stream.write_eof()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(send())
        got = tg.create_task(_read_all(stream))
    assert hashlib.sha256(got.result()).digest() == hashlib.sha256(data).digest()
    stream.close()


async def test_half_close_each_direction_through_tcp_upstream(certs: BenchCerts) -> None:
    """Client sends 50 MB + FIN; the TCP upstream answers only after seeing EOF (proves FIN -> END_STREAM),
    with its digest and 50 MB of its own, then FIN (proves END_STREAM -> EOF at the client)."""
    reply = os.urandom(50 * MB)

    async def upstream_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h = hashlib.sha256()
        while data := await reader.read(MB):
            h.update(data)
        writer.write(h.digest())
        for i in range(0, len(reply), MB):
            writer.write(reply[i : i + MB])
            await writer.drain()
        writer.write_eof()
        await writer.drain()
        writer.close()

    up = await asyncio.start_server(upstream_conn, "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    results: list[tuple[object, object]] = []

    async def handler(req: ConnectRequest, _peer: PeerIdentity) -> Decision:
        upstream = await TcpByteStream.connect(req.target_ip, req.target_port)
        return Accept(upstream=upstream, on_done=lambda r, e: results.append((r, e)))

    data = os.urandom(50 * MB)
    async with up, HboneServer(listener(), certs.server, handler) as server, HboneClient() as client:
        stream = await client.connect(certs.client, server.address[:2], {SERVER_ID}, f"127.0.0.1:{up_port}")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_send_all(stream, data))
            got = tg.create_task(_read_all(stream))
        body = got.result()
        stream.close()
        assert body[:32] == hashlib.sha256(data).digest()
        assert hashlib.sha256(body[32:]).digest() == hashlib.sha256(reply).digest()
        for _ in range(100):
            if results:
                break
            await asyncio.sleep(0.05)
    result, error = results[0]
    assert error is None
    assert (result.a_to_b, result.b_to_a) == (len(data), len(reply) + 32)  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", [401, 503])
async def test_handler_status_reaches_client(served, certs: BenchCerts, status: int) -> None:  # type: ignore[no-untyped-def]
    server, client, _ = served
    with pytest.raises(HboneStatusError) as info:
        await client.connect(certs.client, server.address[:2], {SERVER_ID}, f"127.0.0.1:{status}")
    assert info.value.status == status
    assert str(status) in str(info.value)
    # the connection stays usable after a rejected stream
    stream = await client.connect(certs.client, server.address[:2], {SERVER_ID}, "127.0.0.1:7")
    await stream.write(b"ping")
    assert await stream.read() == b"ping"
    stream.close()


@pytest.mark.parametrize(
    "headers",
    [
        [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "127.0.0.1:7")],
        [(":method", "CONNECT"), (":authority", "web.example")],
    ],
    ids=["GET", "authority-without-port"],
)
async def test_bad_requests_get_400_without_reaching_handler(served, certs: BenchCerts, headers) -> None:  # type: ignore[no-untyped-def]
    server, client, seen = served
    ok = await client.connect(certs.client, server.address[:2], {SERVER_ID}, "127.0.0.1:7")
    conn = ok.connection
    with pytest.raises(HboneStatusError) as info:
        await conn.open_stream(headers)
    assert info.value.status == 400
    assert len(seen) == 1  # only the valid CONNECT reached the handler
    ok.close()


async def test_flow_control_isolation(certs: BenchCerts) -> None:
    """Stream A's reader stalls (server keeps writing, client never reads); stream B on the same
    connection still moves 12 MB both ways."""
    a_written = 0

    async def flood(stream: HboneStream) -> None:
        nonlocal a_written
        chunk = bytes(MB)
        while True:
            await stream.write(chunk)
            a_written += len(chunk)

    async def handler(req: ConnectRequest, _peer: PeerIdentity) -> Decision:
        return Accept(serve=flood if req.target_port == 1 else echo)

    async with HboneServer(listener(), certs.server, handler) as server, HboneClient() as client:
        a = await client.connect(certs.client, server.address[:2], {SERVER_ID}, "127.0.0.1:1")
        for _ in range(100):
            if a_written >= 4 * MB:
                break
            await asyncio.sleep(0.02)
        b = await client.connect(certs.client, server.address[:2], {SERVER_ID}, "127.0.0.1:2")
        assert a.connection is b.connection
        data = os.urandom(12 * MB)
        async with asyncio.timeout(30):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_send_all(b, data))
                got = tg.create_task(_read_all(b))
        assert got.result() == data
        # A is stalled at its window: bounded buffering, not the whole flood.
        assert a_written <= 6 * MB
        a.close()
        b.close()


async def test_drain_refuses_new_streams_and_cuts_live_ones_at_deadline(certs: BenchCerts) -> None:
    async with HboneServer(listener(), certs.server, echo_handler) as server, HboneClient() as client:
        stream = await client.connect(certs.client, server.address[:2], {SERVER_ID}, "127.0.0.1:7")
        server.close()
        # new connections are refused at once
        other = BenchCerts.make()
        with pytest.raises(HboneConnectError):
            await client.connect(other.client, server.address[:2], {SERVER_ID}, "127.0.0.1:7")
        # the live stream still works until the deadline
        await stream.write(b"still here")
        assert await stream.read() == b"still here"
        await server.drain(0.2)
        with pytest.raises(Exception):  # noqa: B017 - reset or connection lost, both are errors
            while await stream.read():
                pass
        stream.close()


async def test_connection_refused_names_the_peer(certs: BenchCerts) -> None:
    sock = listener()
    port = sock.getsockname()[1]
    sock.close()
    async with HboneClient(connect_timeout=5) as client:
        with pytest.raises(HboneConnectError, match=f"127.0.0.1:{port}"):
            await client.connect(certs.client, ("127.0.0.1", port), {SERVER_ID}, "127.0.0.1:7")


def test_throughput_benchmark_runs() -> None:
    assert measure_throughput(0.3) > 0


async def test_both_ends_disable_nagle(served, certs: BenchCerts) -> None:  # type: ignore[no-untyped-def]
    """A small write after a small write must not wait for a delayed ACK (40 ms per stream otherwise)."""
    server, client, _ = served
    stream = await client.connect(certs.client, server.address[:2], {SERVER_ID}, "127.0.0.1:7")
    socks = [stream.connection._transport.get_extra_info("socket")]
    socks += [c._transport.get_extra_info("socket") for c in server._conns]
    assert len(socks) == 2
    for sock in socks:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    stream.close()


async def test_completed_inbound_data_survives_connection_loss(certs: BenchCerts) -> None:
    """The server sends its whole reply + END_STREAM and then drops the connection before the client
    read anything: the client still reads the complete reply, then EOF; writing fails."""
    reply = os.urandom(300_000)

    async def send_and_hang_up(stream: HboneStream) -> None:
        await stream.write(reply)
        await stream.write_eof()
        stream.connection.close("test hang-up")

    async def handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
        return Accept(serve=send_and_hang_up)

    async with HboneServer(listener(), certs.server, handler) as server, HboneClient() as client:
        stream = await client.connect(certs.client, server.address[:2], {SERVER_ID}, "127.0.0.1:7")
        async with asyncio.timeout(10):
            await stream.connection.lost
        assert await _read_all(stream) == reply
        with pytest.raises(HboneError):
            await stream.write(b"late")
        stream.close()
