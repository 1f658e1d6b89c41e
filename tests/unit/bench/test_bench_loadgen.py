"""The load generator and the bench HTTP server, on loopback (no root needed)."""

from __future__ import annotations

import pytest

from ambient.bench.httpserver import start_server
from ambient.bench.loadgen import connection_rate, fixed_rate, percentile


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0


async def test_fixed_rate_completes_every_request_with_1kb_bodies() -> None:
    server = await start_server("127.0.0.1", 0, body=1024)
    async with server:
        port = server.sockets[0].getsockname()[1]
        result = await fixed_rate("127.0.0.1", port, rate=200, duration=0.5, connections=4)
    assert result["requests"] == 100
    assert result["completed"] == 100
    assert result["errors"] == 0
    assert result["response_body_bytes"] == 1024
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["achieved_rps"] == pytest.approx(200, rel=0.5)


async def test_connection_rate_counts_new_connections_and_stops_at_the_limit() -> None:
    server = await start_server("127.0.0.1", 0, body=16)
    async with server:
        port = server.sockets[0].getsockname()[1]
        result = await connection_rate("127.0.0.1", port, duration=5.0, concurrency=4, max_connections=50)
    assert result["connections"] == 50
    assert result["errors"] == 0
    assert result["per_second"] > 0


async def test_refused_connections_are_counted_as_errors_not_raised() -> None:
    server = await start_server("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    result = await connection_rate("127.0.0.1", port, duration=0.3, concurrency=2, max_connections=20)
    assert result["connections"] == 0
    assert result["errors"] == 20
