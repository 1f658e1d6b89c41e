"""Byte streams and the bidirectional copy between a tunnel and an upstream socket.

Role: the small `ByteStream` interface both `HboneStream` and plain TCP satisfy, an adapter for asyncio
TCP streams, and `copy_bidirectional`, which moves bytes both ways independently and propagates
half-close (EOF on one side -> write_eof on the other) so request/response protocols that rely on
FIN keep working through the tunnel.

Invariants: both directions are tasks of one TaskGroup (a failure in one cancels the other, and the
caller sees the error); buffering is one chunk per direction (<= CHUNK bytes) plus the transports'.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any, Protocol

CHUNK = 256 * 1024


def set_nodelay(sock: Any) -> None:
    """Disable Nagle. asyncio only does it for sockets whose `proto` is IPPROTO_TCP, which excludes
    sockets accepted from `socket.create_server` listeners (proto 0); without it a small write after a
    small write waits for the peer's delayed ACK (40 ms)."""
    if sock is None:
        return
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


class ByteStream(Protocol):
    async def read(self, max_bytes: int = -1) -> bytes: ...
    async def write(self, data: bytes | bytearray | memoryview) -> None: ...
    async def write_eof(self) -> None: ...
    def close(self) -> None: ...


class TcpByteStream:
    """`ByteStream` over an asyncio (StreamReader, StreamWriter) pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, *, sock: socket.socket | None = None) -> TcpByteStream:
        if sock is not None:
            reader, writer = await asyncio.open_connection(sock=sock, limit=CHUNK)
        else:
            reader, writer = await asyncio.open_connection(host, port, limit=CHUNK)
        return cls(reader, writer)

    async def read(self, max_bytes: int = -1) -> bytes:
        return await self.reader.read(CHUNK if max_bytes < 0 else max_bytes)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def write_eof(self) -> None:
        if self.writer.can_write_eof() and not self.writer.is_closing():
            self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()


@dataclass(slots=True)
class CopyResult:
    """Bytes moved: `a_to_b` (e.g. client -> upstream) and `b_to_a`."""

    a_to_b: int = 0
    b_to_a: int = 0


async def _copy(src: ByteStream, dst: ByteStream, result: CopyResult, forward: bool) -> None:
    while True:
        data = await src.read(CHUNK)
        if not data:
            await dst.write_eof()
            return
        await dst.write(data)
        if forward:
            result.a_to_b += len(data)
        else:
            result.b_to_a += len(data)


async def copy_bidirectional(a: ByteStream, b: ByteStream) -> CopyResult:
    """Copy a->b and b->a until both directions reached EOF. Raises the first error (the other
    direction is cancelled). Does not close the streams: the caller owns them."""
    result = CopyResult()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_copy(a, b, result, True))
            tg.create_task(_copy(b, a, result, False))
    except* Exception as group:
        # Callers want the error itself (for the access log), not a group of one.
        raise group.exceptions[0] from None
    return result
