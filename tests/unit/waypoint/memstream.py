"""An in-memory `ByteStream` pair for the waypoint's codec tests (imported as a sibling module by pytest)."""

from __future__ import annotations

import asyncio


class Pipe:
    """One direction of an in-memory byte stream; b"" on the queue is EOF."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = False


class End:
    """A `ByteStream` end: reads from `rx`, writes to `tx`; `sent` keeps everything written; EOF (b"")
    stays EOF."""

    def __init__(self, rx: Pipe, tx: Pipe) -> None:
        self.rx, self.tx = rx, tx
        self.buf = b""
        self.eof = False
        self.sent = bytearray()

    async def read(self, max_bytes: int = -1) -> bytes:
        if self.eof:
            return b""
        if not self.buf:
            self.buf = await self.rx.q.get()
            if not self.buf:
                self.eof = True
                return b""
        n = len(self.buf) if max_bytes < 0 else max_bytes
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.tx.closed:
            raise ConnectionResetError("closed")
        if data:
            self.sent += data
            self.tx.q.put_nowait(bytes(data))

    async def write_eof(self) -> None:
        self.close()

    def close(self) -> None:
        if not self.tx.closed:
            self.tx.closed = True
            self.tx.q.put_nowait(b"")


def pair() -> tuple[End, End]:
    a, b = Pipe(), Pipe()
    return End(a, b), End(b, a)
