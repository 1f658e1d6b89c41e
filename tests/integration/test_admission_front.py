"""The control plane's admission front on its own: bytes both ways, half-close, flow control, the real
client address in the backend's peer name, release of the counts, and an unreachable backend."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from ambient.controlplane.admission import REFUSED_BACKEND, AdmissionFront, ServingLimits, client_address
from helpers import eventually

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def front_factory(tmp_path: Path) -> AsyncIterator[Callable[[Handler | None], Awaitable[AdmissionFront]]]:
    async with asyncio.TaskGroup() as tg:
        servers: list[asyncio.Server] = []
        tasks: list[asyncio.Task[None]] = []

        async def make(handler: Handler | None) -> AdmissionFront:
            path = str(tmp_path / f"b{len(tasks)}.sock")
            if handler is not None:
                servers.append(await asyncio.start_unix_server(handler, path))
            front = AdmissionFront("127.0.0.1", 0, path, ServingLimits(handshake_timeout=2))
            await front.start()
            tasks.append(tg.create_task(front.run()))
            await front.started.wait()
            return front

        yield make
        for t in tasks:
            t.cancel()
        for s in servers:
            s.close()


async def test_bytes_both_ways_with_half_close_and_the_client_address(front_factory: Callable[..., Awaitable[
        AdmissionFront]]) -> None:
    seen: list[bytes] = []

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.append(w.get_extra_info("peername"))
        data = await r.read()  # until the client's half-close
        w.write(hashlib.sha256(data).hexdigest().encode())
        await w.drain()
        w.close()

    front = await front_factory(backend)
    r, w = await asyncio.open_connection("127.0.0.1", front.port)
    payload = os.urandom(8 << 20)  # more than every buffer on the way: exercises pause/resume
    w.write(payload)
    w.write_eof()
    assert await r.read() == hashlib.sha256(payload).hexdigest().encode()
    local_port = w.get_extra_info("sockname")[1]
    w.close()
    # The backend's peer is the abstract name carrying the client's address (what gRPC's peer() shows).
    assert client_address("unix-abstract:" + seen[0].lstrip(b"\0").decode()) == f"127.0.0.1:{local_port}"
    await eventually(lambda: front.open == 0 and not front.by_source)


async def test_slow_client_reader_does_not_buffer_without_bound(front_factory: Callable[..., Awaitable[
        AdmissionFront]]) -> None:
    sent = 0

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal sent
        chunk = b"x" * 65536
        try:
            while sent < 64 << 20:
                w.write(chunk)
                await w.drain()  # blocks once the front stopped reading (the client reads nothing)
                sent += len(chunk)
        except ConnectionError:
            pass

    front = await front_factory(backend)
    r, w = await asyncio.open_connection("127.0.0.1", front.port, limit=1 << 16)
    await asyncio.sleep(1.0)
    assert sent < 16 << 20, f"the backend could write {sent} bytes to a client that reads nothing"
    received = 0
    while received < sent:
        received += len(await r.read(1 << 20))
    w.close()


async def test_unreachable_backend_closes_the_client_and_counts_it(front_factory: Callable[..., Awaitable[
        AdmissionFront]]) -> None:
    front = await front_factory(None)
    r, w = await asyncio.open_connection("127.0.0.1", front.port)
    assert await asyncio.wait_for(r.read(), 5) == b""
    w.close()
    assert front.refused == {REFUSED_BACKEND: 1}
    await eventually(lambda: front.open == 0 and not front.by_source)


async def test_client_leaving_releases_its_slot_and_closes_the_backend(front_factory: Callable[..., Awaitable[
        AdmissionFront]]) -> None:
    backend_eof = asyncio.Event()

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()
        backend_eof.set()
        w.close()

    front = await front_factory(backend)
    _, w = await asyncio.open_connection("127.0.0.1", front.port)
    await eventually(lambda: front.open == 1)
    w.close()
    await asyncio.wait_for(backend_eof.wait(), 5)
    await eventually(lambda: front.open == 0 and not front.by_source)
