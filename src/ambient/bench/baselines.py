"""Baselines measured in the same run as the mesh: direct over a veth, and through a stunnel4 mTLS pair.

Sections (each in its own `NetnsPair`, deleted afterwards):
- `baseline-throughput`: iperf3, one TCP stream client netns -> server netns, direct and through stunnel.
- `baseline-latency`: HTTP/1.1 keep-alive, 1 KB responses, fixed offered rate (open loop): p50/p99 direct
  and through stunnel, and the stunnel pair's CPU per 1,000 req/s.
- `baseline-connections`: new TCP connections per second (one request each), direct and through stunnel.

The building blocks (`start_iperf3_server`, `iperf3_throughput`, `start_http_server`, `fixed_rate_in`,
`connection_rate_in`) are public so the node proxy's bench can drive its own path the same way.

Invariants: see `nsenv` (namespaces and processes always cleaned up, bounded durations, traffic only
inside the pair). Figures are returned only when the load ran without errors, otherwise the section fails
with the reason (a figure from a half-broken path would mislead).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from ambient.bench.errors import BenchError
from ambient.bench.harness import BenchContext, Figure, Section, SectionOutput
from ambient.bench.nsenv import NetnsPair, cpu_seconds, require
from ambient.bench.stunnel import start_stunnel_pair

IPERF_PORT = 5201
HTTP_PORT = 8080


@dataclass(frozen=True)
class Durations:
    iperf_s: float
    iperf_rounds: int
    rate_s: float
    rate_rps: float
    connect_s: float

    @classmethod
    def for_run(cls, quick: bool) -> Durations:
        return cls(1.0, 1, 1.0, 200.0, 1.0) if quick else cls(2.0, 3, 5.0, 500.0, 3.0)


# ----------------------------------------------------------------------------------- building blocks


def start_iperf3_server(pair: NetnsPair, port: int = IPERF_PORT) -> subprocess.Popen[bytes]:
    """iperf3 server in the server netns on all its addresses (veth and loopback); stopped with the pair."""
    proc = pair.spawn(pair.server, [require("iperf3"), "-s", "-p", str(port), "--forceflush"], label="iperf3-server")
    pair.wait_listening(pair.server, port, proc)
    return proc


def iperf3_throughput(pair: NetnsPair, host: str, port: int, seconds: float) -> dict[str, float]:
    """One iperf3 TCP stream from the client netns to host:port; bits/s received and the sender's CPU."""
    out = pair.run(
        pair.client,
        [require("iperf3"), "-c", host, "-p", str(port), "-t", str(seconds), "-J"],
        timeout=seconds + 20,
    )
    try:
        report = json.loads(out)
        bps = float(report["end"]["sum_received"]["bits_per_second"])
        cpu = report["end"].get("cpu_utilization_percent", {})
    except (ValueError, KeyError, TypeError) as e:
        raise BenchError(f"unreadable iperf3 report: {out[:200]!r}") from e
    if bps <= 0:
        raise BenchError("iperf3 measured no throughput")
    return {"bits_per_second": bps, "host_cpu_percent": float(cpu.get("host_total", 0.0))}


def start_http_server(pair: NetnsPair, port: int = HTTP_PORT, body: int = 1024) -> subprocess.Popen[bytes]:
    """The bench HTTP server in the server netns (all its addresses); stopped with the pair."""
    argv = [sys.executable, "-m", "ambient.bench.httpserver", "--host", "0.0.0.0", "--port", str(port)]
    proc = pair.spawn(pair.server, [*argv, "--body", str(body), "--max-seconds", "600"], label=f"http-{port}")
    pair.wait_listening(pair.server, port, proc, timeout=20)
    return proc


def _loadgen(pair: NetnsPair, args: list[str], timeout: float) -> dict[str, Any]:
    out = pair.run(pair.client, [sys.executable, "-m", "ambient.bench.loadgen", *args], timeout=timeout)
    try:
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise BenchError(f"unreadable load generator output: {out[:200]!r}") from e
    return result


def fixed_rate_in(
    pair: NetnsPair, host: str, port: int, *, rate: float, seconds: float, connections: int = 16
) -> dict[str, Any]:
    """Fixed-rate keep-alive HTTP load from the client netns (see `loadgen.fixed_rate`)."""
    args = ["rate", "--host", host, "--port", str(port), "--rate", str(rate), "--duration", str(seconds)]
    return _loadgen(pair, [*args, "--connections", str(connections)], timeout=seconds + 40)


def connection_rate_in(
    pair: NetnsPair, host: str, port: int, *, seconds: float, concurrency: int = 8
) -> dict[str, Any]:
    """New connections/s from the client netns (see `loadgen.connection_rate`)."""
    args = ["connect", "--host", host, "--port", str(port), "--duration", str(seconds)]
    return _loadgen(pair, [*args, "--concurrency", str(concurrency)], timeout=seconds + 40)


def _check(result: dict[str, Any], what: str, completed_key: str) -> None:
    if result.get("errors") or not result.get(completed_key):
        raise BenchError(f"{what}: {result.get('errors')} errors, {result.get(completed_key)} completed")


# ------------------------------------------------------------------------------------------ sections


def throughput(ctx: BenchContext) -> SectionOutput:
    d = Durations.for_run(ctx.quick)
    direct: list[float] = []
    via: list[float] = []
    with NetnsPair() as pair:
        start_iperf3_server(pair)
        tunnel = start_stunnel_pair(pair, IPERF_PORT)
        # Interleaved rounds (direct, stunnel, direct, ...): a burst of load from a neighbour on this
        # shared machine then hits both variants instead of skewing the ratio; the median is reported.
        for _ in range(d.iperf_rounds):
            direct.append(iperf3_throughput(pair, pair.server_addr, IPERF_PORT, d.iperf_s)["bits_per_second"])
            via.append(iperf3_throughput(pair, tunnel.host, tunnel.port, d.iperf_s)["bits_per_second"])
    f_direct = Figure("direct (veth)", statistics.median(direct) / 1e9, "Gb/s")
    f_stunnel = Figure("stunnel mTLS pair", statistics.median(via) / 1e9, "Gb/s").against(f_direct)
    return SectionOutput(
        [f_direct, f_stunnel],
        {
            "streams": 1,
            "rounds": f"{d.iperf_rounds} x {d.iperf_s:g} s each, interleaved, median",
            "direct_rounds_gbps": ", ".join(f"{v / 1e9:.2f}" for v in direct),
            "stunnel_rounds_gbps": ", ".join(f"{v / 1e9:.2f}" for v in via),
            "tls": "TLS 1.3, ECDSA P-256, mutual",
        },
    )


def latency(ctx: BenchContext) -> SectionOutput:
    d = Durations.for_run(ctx.quick)
    with NetnsPair() as pair:
        start_http_server(pair)
        direct = fixed_rate_in(pair, pair.server_addr, HTTP_PORT, rate=d.rate_rps, seconds=d.rate_s)
        _check(direct, "direct", "completed")
        tunnel = start_stunnel_pair(pair, HTTP_PORT)
        cpu0 = cpu_seconds(list(tunnel.pids))
        via = fixed_rate_in(pair, tunnel.host, tunnel.port, rate=d.rate_rps, seconds=d.rate_s)
        cpu = cpu_seconds(list(tunnel.pids)) - cpu0
        _check(via, "through stunnel", "completed")
    p50 = Figure("direct p50", direct["p50_ms"], "ms", "lower")
    p99 = Figure("direct p99", direct["p99_ms"], "ms", "lower")
    cores = cpu / float(via["seconds"])
    per_1k = cores / (float(via["achieved_rps"]) / 1000.0)
    figures = [
        p50,
        p99,
        Figure("stunnel p50", via["p50_ms"], "ms", "lower").against(p50),
        Figure("stunnel p99", via["p99_ms"], "ms", "lower").against(p99),
        Figure("stunnel added p50", via["p50_ms"] - direct["p50_ms"], "ms", "lower"),
        Figure("stunnel added p99", via["p99_ms"] - direct["p99_ms"], "ms", "lower"),
        Figure("direct achieved rate", direct["achieved_rps"], "req/s"),
        Figure("stunnel achieved rate", via["achieved_rps"], "req/s"),
        Figure("stunnel CPU per 1,000 req/s", per_1k, "cores", "lower", note="both stunnels together"),
    ]
    conditions = {
        "offered_rate_rps": d.rate_rps,
        "seconds_each": d.rate_s,
        "connections": direct["connections"],
        "response_bytes": direct["response_body_bytes"],
        "http": "HTTP/1.1 keep-alive",
    }
    return SectionOutput(figures, conditions)


def connections(ctx: BenchContext) -> SectionOutput:
    d = Durations.for_run(ctx.quick)
    with NetnsPair() as pair:
        start_http_server(pair)
        direct = connection_rate_in(pair, pair.server_addr, HTTP_PORT, seconds=d.connect_s)
        _check(direct, "direct", "connections")
        tunnel = start_stunnel_pair(pair, HTTP_PORT)
        via = connection_rate_in(pair, tunnel.host, tunnel.port, seconds=d.connect_s)
        _check(via, "through stunnel", "connections")
    f_direct = Figure("direct", direct["per_second"], "conn/s")
    return SectionOutput(
        [f_direct, Figure("stunnel mTLS pair", via["per_second"], "conn/s").against(f_direct)],
        {"concurrency": direct["concurrency"], "seconds_each": d.connect_s, "per_connection": "1 request, 1 KB"},
    )


SECTIONS = [
    Section(
        "baseline-throughput",
        "Baseline: single-stream TCP throughput",
        "iperf3, one stream, from a client netns to a server netns over a veth, and the same through a stunnel4 "
        "pair (client-side stunnel in the client netns, server-side in the server netns, mutual TLS 1.3); "
        "rounds alternate between the two paths.",
        throughput,
    ),
    Section(
        "baseline-latency",
        "Baseline: HTTP latency at a fixed rate",
        "Python open-loop load generator (ambient.bench.loadgen) in the client netns sends GETs at a fixed rate "
        "over 16 keep-alive connections to a Python asyncio server returning 1 KB; latency from request write "
        "to full response. Stunnel CPU from /proc/<pid>/stat over the run.",
        latency,
    ),
    Section(
        "baseline-connections",
        "Baseline: new connections per second",
        "8 concurrent workers each loop: new TCP connection, one GET with Connection: close, read to EOF. The "
        "direct figure is bounded by the Python client and server (the ceiling any path can show here).",
        connections,
    ),
]
