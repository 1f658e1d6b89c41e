"""A small bounded HTTP/1.1 load generator: fixed-rate latency and new-connection rate.

`fixed_rate(...)`: open loop. Request i is due at start + i/rate, whatever happened to earlier ones; a
dispatcher hands due requests to `connections` keep-alive connections (each one request at a time, no
pipelining). Latency is measured per request from the moment it is written to the moment its whole
response is read; the time a due request waited for a free connection is reported separately
(`max_queue_ms`) so a saturated path shows up instead of silently slowing the offered rate.

`connection_rate(...)`: `concurrency` workers each loop: new TCP connection, one request with
`Connection: close`, read the response to EOF, close. Counts completed connections per second.

Invariants:
- Bounded in count and time: at most rate*duration requests / `max_connections` connections, every I/O
  wait has a timeout, and the whole run is cancelled after duration + 30 s.
- Every task is owned by a TaskGroup; sockets are closed on every path.
- Failures are counted (`errors`), not raised: the caller decides whether a figure is usable.

CLI (prints one JSON object): `python -m ambient.bench.loadgen rate --host H --port P --rate 500
--duration 5 --connections 16` or `... connect --host H --port P --duration 3 --concurrency 8`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from typing import Any

IO_TIMEOUT = 5.0
REQUEST_KEEP = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: ambient-bench\r\n\r\n"
REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: ambient-bench\r\nConnection: close\r\n\r\n"


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (p in 0..100); 0.0 for an empty list."""
    if not sorted_values:
        return 0.0
    rank = max(1, int(-(-p * len(sorted_values) // 100)))  # ceil(p/100 * n), at least 1
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"unexpected status {head[:40]!r}")
    await reader.readexactly(length)
    return length


async def fixed_rate(host: str, port: int, *, rate: float, duration: float, connections: int = 16) -> dict[str, Any]:
    # perf_counter, not loop.time(): uvloop's clock has millisecond resolution
    clock = time.perf_counter
    total = max(1, int(rate * duration))
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    latencies: list[float] = []
    waits: list[float] = []
    errors = 0
    body_bytes = 0

    async def open_conn() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), IO_TIMEOUT)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    ready = asyncio.Event()
    pending = connections
    first_due = last_done = 0.0  # the measured window: first scheduled request .. last response

    async def warm_up() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        # Connect and send one unrecorded request before the clock starts, so TLS handshakes and the
        # first-request costs of every hop are not counted as request latency.
        nonlocal pending
        try:
            conn = await open_conn()
            conn[1].write(REQUEST_KEEP)
            await asyncio.wait_for(_read_response(conn[0]), IO_TIMEOUT)
            return conn
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            return None
        finally:
            pending -= 1
            if pending == 0:
                ready.set()

    async def worker() -> None:
        nonlocal errors, body_bytes, last_done
        conn = await warm_up()
        try:
            while (due := await queue.get()) is not None:
                try:
                    if conn is None:
                        conn = await open_conn()
                    reader, writer = conn
                    t0 = clock()
                    waits.append(max(0.0, t0 - due))
                    writer.write(REQUEST_KEEP)
                    got = await asyncio.wait_for(_read_response(reader), IO_TIMEOUT)
                    last_done = clock()
                    latencies.append(last_done - t0)
                    body_bytes += got
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
                    errors += 1
                    if conn is not None:
                        conn[1].close()
                    conn = None
        finally:
            if conn is not None:
                conn[1].close()

    async def dispatch() -> None:
        nonlocal first_due
        await ready.wait()
        start = first_due = clock() + 0.05
        for i in range(total):
            due = start + i / rate
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait(due)
        for _ in range(connections):
            queue.put_nowait(None)

    async with asyncio.timeout(duration + 30), asyncio.TaskGroup() as tg:
        for _ in range(connections):
            tg.create_task(worker())
        tg.create_task(dispatch())
    elapsed = (last_done - first_due) if latencies else 0.0
    latencies.sort()
    return {
        "requests": total,
        "completed": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "achieved_rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "offered_rps": rate,
        "connections": connections,
        "response_body_bytes": body_bytes // max(1, len(latencies)),
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p90_ms": percentile(latencies, 90) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": (latencies[-1] if latencies else 0.0) * 1e3,
        "max_queue_ms": (max(waits) if waits else 0.0) * 1e3,
    }


async def connection_rate(
    host: str, port: int, *, duration: float, concurrency: int = 8, max_connections: int = 100_000
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    done = 0
    errors = 0
    started_count = 0

    async def one() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), IO_TIMEOUT)
            await asyncio.wait_for(loop.sock_sendall(sock, REQUEST_CLOSE), IO_TIMEOUT)
            got = b""
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), IO_TIMEOUT):
                got += chunk
            if not got.startswith(b"HTTP/1.1 200"):
                raise ConnectionError("no 200 response")
        finally:
            sock.close()

    async def worker() -> None:
        nonlocal done, errors, started_count
        while loop.time() < deadline and started_count < max_connections:
            started_count += 1
            try:
                await one()
                done += 1
            except (OSError, TimeoutError):
                errors += 1

    started = time.perf_counter()
    async with asyncio.timeout(duration + 30), asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    elapsed = time.perf_counter() - started
    return {
        "connections": done,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "per_second": done / elapsed if elapsed > 0 else 0.0,
        "concurrency": concurrency,
    }


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ambient.bench.loadgen")
    sub = parser.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("rate", help="fixed request rate on keep-alive connections: latency percentiles")
    c = sub.add_parser("connect", help="new connections per second (one request each)")
    for p in (r, c):
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--duration", type=float, default=5.0)
    r.add_argument("--rate", type=float, default=500.0)
    r.add_argument("--connections", type=int, default=16)
    c.add_argument("--concurrency", type=int, default=8)
    c.add_argument("--max-connections", type=int, default=100_000)
    args = parser.parse_args(argv)
    if args.mode == "rate":
        result = _run(
            fixed_rate(args.host, args.port, rate=args.rate, duration=args.duration, connections=args.connections)
        )
    else:
        result = _run(
            connection_rate(
                args.host,
                args.port,
                duration=args.duration,
                concurrency=args.concurrency,
                max_connections=args.max_connections,
            )
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
