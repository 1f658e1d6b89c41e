"""A minimal HTTP/1.1 server for the latency and connection benchmarks (the "application" end).

Answers every request (GET, no body) with a fixed body of `--body` bytes (1 KB by default), keeps the
connection alive unless the request says `Connection: close`. It parses only what the load generator
sends: the request head up to the blank line.

Invariants:
- Bounded: it exits by itself after `--max-seconds` (default 600), and closes a connection whose request
  head exceeds 64 KiB; it binds only the address it is given (inside a bench namespace or loopback).
- One asyncio Protocol per connection, responses prebuilt: the server costs the same in every variant
  (direct, stunnel, mesh), so the differences between variants are the path's.

Run: `python -m ambient.bench.httpserver --host 10.254.14.2 --port 8080`.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import cast

MAX_HEAD = 64 * 1024


def build_response(body_size: int, *, close: bool) -> bytes:
    body = b"x" * body_size
    conn = b"close" if close else b"keep-alive"
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: "
        + str(body_size).encode()
        + b"\r\nConnection: "
        + conn
        + b"\r\n\r\n"
        + body
    )


class _HttpProtocol(asyncio.Protocol):
    def __init__(self, keep: bytes, close: bytes) -> None:
        self._keep = keep
        self._close = close
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the Transport interface without subclassing asyncio.Transport
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._buf += data
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    transport.close()
                return
            head = bytes(self._buf[:end]).lower()
            del self._buf[: end + 4]
            if b"\r\nconnection: close" in head:
                transport.write(self._close)
                transport.close()
                return
            transport.write(self._keep)


async def start_server(host: str, port: int, body: int = 1024) -> asyncio.Server:
    """Listen on host:port (0 = any free port) and serve; the caller closes the returned server."""
    loop = asyncio.get_running_loop()
    keep, close = build_response(body, close=False), build_response(body, close=True)
    return await loop.create_server(lambda: _HttpProtocol(keep, close), host, port, reuse_address=True, backlog=4096)


async def serve(host: str, port: int, body: int, max_seconds: float) -> None:
    server = await start_server(host, port, body)
    async with server:
        try:
            await asyncio.wait_for(server.serve_forever(), timeout=max_seconds)
        except TimeoutError:
            pass


def run(host: str, port: int, body: int = 1024, max_seconds: float = 600.0) -> None:
    try:
        import uvloop

        uvloop.run(serve(host, port, body, max_seconds))
    except ImportError:
        asyncio.run(serve(host, port, body, max_seconds))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ambient.bench.httpserver")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=int, default=1024)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    run(args.host, args.port, args.body, args.max_seconds)


if __name__ == "__main__":
    main()
