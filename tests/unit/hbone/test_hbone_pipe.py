from __future__ import annotations

import asyncio

import pytest

from ambient.hbone.pipe import copy_bidirectional


class MemStream:
    """In-memory ByteStream: reads from a list of chunks, records writes and EOF."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = list(chunks)
        self.written = bytearray()
        self.eof_written = False
        self.fail_after = fail_after

    async def read(self, max_bytes: int = -1) -> bytes:
        await asyncio.sleep(0)
        if self.fail_after is not None and not self.chunks:
            raise ConnectionResetError("peer reset")
        return self.chunks.pop(0) if self.chunks else b""

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.eof_written, "write after EOF"
        self.written += data

    async def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        pass


async def test_copies_both_ways_and_propagates_eof() -> None:
    a = MemStream([b"hello ", b"world"])
    b = MemStream([b"x" * 100])
    result = await copy_bidirectional(a, b)
    assert bytes(b.written) == b"hello world" and bytes(a.written) == b"x" * 100
    assert a.eof_written and b.eof_written
    assert (result.a_to_b, result.b_to_a) == (11, 100)


async def test_error_in_one_direction_is_raised_plainly() -> None:
    a = MemStream([b"abc"], fail_after=1)
    b = MemStream([])
    with pytest.raises(ConnectionResetError):
        await copy_bidirectional(a, b)
