"""Abusive HTTP through a real HBONE tunnel into the waypoint: the offending tunnel is answered or closed,
the waypoint stays up and keeps serving other tunnels on the same HBONE connection."""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import pytest
from h2.errors import ErrorCodes

from ambient.bench.loopback import loopback

pytestmark = pytest.mark.timeout(60)


async def _read_all(stream: object, limit: float = 10.0) -> bytes:
    out = bytearray()
    async with asyncio.timeout(limit):
        while True:
            try:
                data = await stream.read()  # type: ignore[attr-defined]
            except Exception:  # reset by the waypoint: also "closed"
                break
            if not data:
                break
            out += data
    return bytes(out)


async def _good_request(lb: object) -> bytes:
    stream = await lb.open()  # type: ignore[attr-defined]
    await stream.write(b"GET /ok HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
    out = await _read_all(stream)
    stream.close()
    return out


async def test_malformed_and_abusive_tunnels_do_not_hurt_the_waypoint() -> None:
    async with loopback() as lb:
        # bad request line -> 400, then the tunnel ends
        s = await lb.open()
        await s.write(b"NOT HTTP\r\n\r\n")
        assert (await _read_all(s)).startswith(b"HTTP/1.1 400 ")
        s.close()
        # oversized header list -> 431
        s = await lb.open()
        await s.write(b"GET / HTTP/1.1\r\nHost: r\r\n" + b"X-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n")
        assert (await _read_all(s)).startswith(b"HTTP/1.1 431 ")
        s.close()
        # HTTP/2 rapid reset -> GOAWAY ENHANCE_YOUR_CALM
        s = await lb.open()
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        for _ in range(400):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "r")])
            conn.reset_stream(sid, ErrorCodes.CANCEL)
        await s.write(conn.data_to_send())
        raw = await _read_all(s)
        events = conn.receive_data(raw) if raw else []
        term = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        assert term and term[0].error_code == ErrorCodes.ENHANCE_YOUR_CALM
        s.close()
        # invalid HTTP/2 frames -> GOAWAY PROTOCOL_ERROR
        s = await lb.open()
        await s.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        raw = await _read_all(s)
        assert raw[3:4] == b"\x04"  # the server's SETTINGS, and then it closed (GOAWAY checked in unit tests)
        s.close()
        # the waypoint still serves
        out = await _good_request(lb)
        assert out.startswith(b"HTTP/1.1 200 ") and b'"path": "/ok"' in out
        assert lb.waypoint_server.serving
