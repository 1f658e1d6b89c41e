"""Loopback micro-benchmarks for HBONE (called by `make bench`; never a timed test assertion).

`measure_throughput(seconds)` pushes bytes one way through one HBONE tunnel on 127.0.0.1 (client,
server and a discarding sink in one event loop, so one core does both ends' TLS and HTTP/2) and returns
bytes/s. `measure_plain_tls(seconds)` does the same over bare TLS 1.3 with the same certificates and the
same event loop: the ratio between the two is the cost of HTTP/2 framing and our stream layer.
Run `python -m ambient.bench.hbone [seconds]` to print both.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from dataclasses import dataclass

from ambient.hbone.client import HboneClient
from ambient.hbone.connection import HboneStream
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, HboneServer
from ambient.identity.ca import LocalCA
from ambient.identity.certs import CertBundle
from ambient.tls.contexts import client_context, server_context
from ambient.tls.verify import PeerIdentity

CHUNK = 1024 * 1024
SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"
CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"


@dataclass(frozen=True)
class BenchCerts:
    ca: LocalCA
    server: CertBundle
    client: CertBundle

    @classmethod
    def make(cls) -> BenchCerts:
        ca = LocalCA.create()
        return cls(ca, ca.issue(SERVER_ID), ca.issue(CLIENT_ID))


def _listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


async def _hbone_throughput(seconds: float) -> float:
    certs = BenchCerts.make()
    received = 0

    async def sink(stream: HboneStream) -> None:
        nonlocal received
        while data := await stream.read():
            received += len(data)
        await stream.write_eof()

    async def handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
        return Accept(serve=sink)

    payload = bytes(CHUNK)
    async with HboneServer(_listener(), certs.server, handler) as server, HboneClient() as client:
        stream = await client.connect(certs.client, server.address[:2], {SERVER_ID}, "127.0.0.1:9")
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            await stream.write(payload)
        await stream.write_eof()
        await stream.read()  # the sink's EOF: everything was received
        elapsed = time.perf_counter() - start
        stream.close()
    return received / elapsed


async def _tls_throughput(seconds: float) -> float:
    certs = BenchCerts.make()
    received = 0
    done = asyncio.Event()

    class Sink(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            nonlocal received
            received += len(data)

        def eof_received(self) -> bool:
            done.set()
            return False

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, sock=_listener(), ssl=server_context(certs.server))
    try:
        addr = server.sockets[0].getsockname()
        _, writer = await asyncio.open_connection(
            addr[0], addr[1], ssl=client_context(certs.client), server_hostname=""
        )
        payload = bytes(CHUNK)
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            writer.write(payload)
            await writer.drain()
        # TLS 1.3 has no half-close through asyncio's SSL transport: closing sends close_notify.
        writer.close()
        await done.wait()
        elapsed = time.perf_counter() - start
    finally:
        server.close()
    return received / elapsed


async def _echo(stream: HboneStream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.write_eof()


async def _echo_handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
    return Accept(serve=_echo)


async def _latency(rounds: int) -> dict[str, float]:
    certs = BenchCerts.make()
    samples: list[float] = []
    async with HboneServer(_listener(), certs.server, _echo_handler) as server, HboneClient() as client:
        stream = await client.connect(certs.client, server.address[:2], {SERVER_ID}, "127.0.0.1:9")
        for _ in range(rounds):
            t0 = time.perf_counter()
            await stream.write(b"x")
            await stream.read()
            samples.append(time.perf_counter() - t0)
        stream.close()
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6,
    }


async def _stream_rate(seconds: float) -> float:
    certs = BenchCerts.make()
    count = 0
    async with HboneServer(_listener(), certs.server, _echo_handler) as server, HboneClient() as client:
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            stream = await client.connect(certs.client, server.address[:2], {SERVER_ID}, "127.0.0.1:9")
            await stream.write(b"x")
            await stream.write_eof()
            while await stream.read():
                pass
            stream.close()
            count += 1
        elapsed = time.perf_counter() - start
    return count / elapsed


def measure_latency(rounds: int = 2000) -> dict[str, float]:
    """1-byte echo round trips on one open tunnel (client -> server -> client): p50/p99 in us."""
    return asyncio.run(_latency(rounds))


def measure_stream_rate(seconds: float = 2.0) -> float:
    """New tunnels/s (CONNECT + 1-byte echo + close, sequential) over one pooled connection."""
    return asyncio.run(_stream_rate(seconds))


def measure_throughput(seconds: float = 3.0) -> float:
    """Bytes/s through one HBONE tunnel over loopback (one process, one event loop)."""
    return asyncio.run(_hbone_throughput(seconds))


def measure_plain_tls(seconds: float = 3.0) -> float:
    """Bytes/s over one bare TLS 1.3 connection over loopback, same setup as `measure_throughput`."""
    return asyncio.run(_tls_throughput(seconds))


def main(argv: list[str]) -> None:
    seconds = float(argv[0]) if argv else 3.0
    hbone = measure_throughput(seconds)
    tls = measure_plain_tls(seconds)
    print(f"hbone tunnel: {hbone * 8 / 1e9:.2f} Gb/s ({hbone / 1e6:.0f} MB/s)")
    print(f"plain TLS   : {tls * 8 / 1e9:.2f} Gb/s ({tls / 1e6:.0f} MB/s)")
    print(f"ratio       : {hbone / tls:.2f}")
    lat = measure_latency()
    print(f"echo latency: p50 {lat['p50_us']:.0f} us, p99 {lat['p99_us']:.0f} us (one tunnel, 1 byte)")
    print(f"tunnels/s   : {measure_stream_rate(min(seconds, 2.0)):.0f} (sequential, pooled connection)")


if __name__ == "__main__":
    main(sys.argv[1:])
