"""What the correlation id costs the node proxy: two identical node pairs built once, one whose proxies log
trace ids (`AMBIENT_TRACE_IDS=1`, the default: `traceparent` logged with the route and authorization
verdict) and one without (`AMBIENT_TRACE_IDS=0`), warmed once, then measured in rounds with both pairs
loaded at the same time; no restarts.

Figures, per round and pair (8 concurrent `wrk` clients, one HTTP request per connection, then one
iperf3 stream):
- new connections per second: the id is a per-connection cost;
- CPU of both node proxies (and of any worker processes) per connection (ms);
- single-stream throughput: the per-byte path does not see the id at all (a control).
Each is reported as the median per mode with their ratio, and as the median of the per-round on/off
ratios with their range; the goals (`goals.py`: under 3% cost) read the latter.

Noise (this 2-core machine is shared with other work): both pairs are loaded at the same time, and each
role is pinned to the same CPU for both pairs (node 1's proxies and the load generators on one CPU, node
2's proxies and the apps on the other), so a neighbour's burst slows the two copies of a role alike and
cancels out of each round's ratio. In A/A runs under load (both pairs with ids on) the per-round
connections/s ratios ranged 0.57-2.3 with the pairs measured one after the other, 0.73-1.35 at the same
time unpinned, 0.95-1.02 pinned. Pinning lowers the absolute rates (one CPU per side, shared by both
pairs): the figures here are for the ratio; the `ztunnel` section has the absolute ones.

Why (measured; the earlier method restarted the proxies of one pair per alternating slice and showed
0.29-0.41x connections/s with ids on):
- The load generator's own sockets end in TIME_WAIT in the client pod, for 60 s, as kernel state of the
  pod's netns (it outlives proxy restarts). After ~12 s at 2,000 conn/s (~15,000 TIME_WAIT sockets in
  the pod, the ephemeral range is 28,232 ports, all to one destination), the kernel's port search in
  connect() takes ~2 ms (it was ~30 µs), the single-threaded client caps at ~500 conn/s, and the
  proxies, now mostly idle, spend about twice the CPU per connection, in both modes. Slices were ~2,000
  or ~500 conn/s by elapsed time, not by mode, and a median of 9 fell in the fast cluster for one mode
  and the slow one for the other. The client pods here set `net.ipv4.tcp_tw_reuse=1` (a TIME_WAIT port
  is reused for a new outgoing connection once it is 1 s old, as load generators do), so every round
  measures the proxies.
- Restarts were not the cause (a pair never restarted slows down the same way after ~12 s); pairs built
  and warmed once just leave no certificate fetch or pool set-up to any slice.

`run(same=True)` (`python -m ambient.bench.trace_overhead --same`) runs both pairs with ids on: an A/A
check of the method, whose ratios show the pairs' and the machine's spread, not the ids'; `--no-pin`
leaves the CPUs to the scheduler.
`python -m ambient.bench.trace_overhead` prints the JSON; `make bench` runs it as the `trace-overhead`
section.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambient.bench.nsenv import tree_cpu_seconds
from ambient.bench.testbed import Pod, ProxyProcess, Testbed, bench_testbed, root_main, sh
from ambient.bench.ztunnel import HTTP_PORT, IPERF_PORT, _conn_rate, _iperf, _start_http

MODES = ("on", "off")


@dataclass
class Pair:
    """One node pair: a client pod on node 1, a server pod (HTTP + iperf3) on node 2, both node proxies."""

    mode: str
    client: Pod
    server: Pod
    proxies: list[ProxyProcess]


def paired_ratios(on: Sequence[float], off: Sequence[float]) -> list[float]:
    """on/off of each round (both pairs measured at the same time); rounds with a zero "off" skipped."""
    return [a / b for a, b in zip(on, off, strict=True) if b]


def summary(on: Sequence[float], off: Sequence[float]) -> dict[str, float]:
    """Per-mode medians, their ratio, and the median and range of the per-round ratios (the noise)."""
    ratios = paired_ratios(on, off) or [float("nan")]
    med_on, med_off = statistics.median(on), statistics.median(off)
    return {
        "on": med_on,
        "off": med_off,
        "ratio": med_on / med_off if med_off else float("nan"),
        "paired": statistics.median(ratios),
        "paired_min": min(ratios),
        "paired_max": max(ratios),
    }


def _build(bed: Testbed, mode: str, ids: str) -> Pair:
    bed.create({1: [("client", "client")], 2: [("server", "server")]})
    client, server = bed.pod("client"), bed.pod("server")
    # the load generator's TIME_WAIT ports are reused after 1 s: without it connect() slows to ~2 ms once
    # ~15,000 of them pile up in the pod (see the module docstring)
    sh("ip", "netns", "exec", client.netns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
    bed.spawn(server.netns, ["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL)
    _start_http(bed, server)
    proxies = [bed.start_proxy(n, env={"AMBIENT_TRACE_IDS": ids}) for n in (1, 2)]
    return Pair(mode, client, server, proxies)


def _measure(pair: Pair, seconds: float) -> tuple[float, float, int]:
    """(connections/s, both proxies' CPU ms per connection, errors) of one slice."""
    pids = [pp.proc.pid for pp in pair.proxies]
    c0 = tree_cpu_seconds(pids)
    res = _conn_rate(pair.client, pair.server.ip, HTTP_PORT, seconds)
    used = tree_cpu_seconds(pids) - c0
    seconds_run = max(1, round(seconds)) if res.get("tool") == "wrk" else seconds
    conns = res["per_second"] * seconds_run
    return res["per_second"], used / max(1.0, conns) * 1000, int(res.get("errors", 0))


def _pin(pids: Sequence[int], cpus: set[int]) -> None:
    """Every thread of these processes on `cpus` (threads started later inherit it)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task.name), cpus)


def _pin_pairs(pairs: dict[str, Pair]) -> tuple[set[int], set[int]] | None:
    """The client side (node 1's proxies, the load generators) on one CPU and the server side (node 2's
    proxies, the apps) on another, the same for both pairs: the two modes' copies of each role then share
    one CPU, and a neighbour's burst on either CPU slows both alike. None with fewer than 2 CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    client, server = {cpus[0]}, {cpus[1]}
    for pair in pairs.values():
        _pin([pair.proxies[0].proc.pid], client)
        _pin([pair.proxies[1].proc.pid], server)
        apps = sh("ip", "netns", "pids", pair.server.netns).stdout.split()
        _pin([int(p) for p in apps], server)
    return client, server


def _round(pairs: dict[str, Pair], seconds: float, iperf_seconds: int,
           pinned: tuple[set[int], set[int]] | None = None) -> dict[str, tuple[float, float, int, float]]:
    """One round: both pairs loaded at the same time (connections, then one iperf3 stream each), so a
    neighbour's burst on this shared machine hits both modes alike. Per mode: (conn/s, CPU ms per
    connection, errors, Gb/s)."""
    def client_cpu() -> None:  # the load generators run on the client side's CPU
        if pinned is not None:
            os.sched_setaffinity(0, pinned[0])

    with ThreadPoolExecutor(len(pairs), initializer=client_cpu) as pool:
        conns = dict(zip(pairs, pool.map(lambda p: _measure(p, seconds), pairs.values()), strict=True))
        gbps = dict(zip(pairs, pool.map(lambda p: _iperf(p.client, p.server.ip, IPERF_PORT, iperf_seconds),
                                        pairs.values()), strict=True))
    return {m: (*conns[m], gbps[m]) for m in pairs}


def run(seconds: int = 2, rounds: int = 16, workdir: str | None = None, quick: bool = False,
        same: bool = False, iperf_seconds: int = 1, pin: bool = True) -> dict[str, Any]:
    """Two pairs built and warmed once, then `rounds` rounds measuring both at once."""
    if quick:
        rounds = 3
    ids = {"on": "1", "off": "1" if same else "0"}
    conn: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    tput: dict[str, list[float]] = {m: [] for m in MODES}
    errors = 0
    with contextlib.ExitStack() as stack:
        pairs: dict[str, Pair] = {}
        for mode, prefix in zip(MODES, ("tron", "trof"), strict=True):
            where = str(Path(workdir) / mode) if workdir else None
            pairs[mode] = _build(stack.enter_context(bench_testbed(prefix, where)), mode, ids[mode])
        for pair in pairs.values():  # warm once: certificates, HBONE pools, the server's accept path
            _conn_rate(pair.client, pair.server.ip, HTTP_PORT, 1)
            _iperf(pair.client, pair.server.ip, IPERF_PORT, 1)
        pinned = _pin_pairs(pairs) if pin else None
        for _ in range(rounds):
            for mode, (rate, ms, err, gbps) in _round(pairs, seconds, iperf_seconds, pinned).items():
                conn[mode].append(rate)
                cpu[mode].append(ms)
                tput[mode].append(gbps)
                errors += err
    return result({"conn": conn, "cpu": cpu, "tput": tput},
                  {"cpus": "pinned per role" if pinned else "unpinned", "rounds": rounds, "slice_seconds": seconds,
                   "iperf_seconds": iperf_seconds, "connection_errors": errors}, same=same)


# (key, figure name, unit, better, slice format)
FIGURES = (
    ("conn", "connections/s", "conn/s", "higher", "{:.0f}"),
    ("cpu", "node proxies CPU per connection", "ms", "lower", "{:.3f}"),
    ("tput", "single-stream throughput", "Gb/s", "higher", "{:.2f}"),
)


def result(
    samples: dict[str, dict[str, list[float]]], conditions: dict[str, Any], same: bool = False,
) -> dict[str, Any]:
    """The section's figures from the per-round samples (`samples[key][mode]`, rounds in order): per
    figure the median of each mode and their ratio, then the median of the per-round on/off ratios with
    their range (the goals read it: both modes were measured in the same instants, so a burst from a
    neighbour cancels out of each round's ratio, not out of the medians)."""
    base = "trace ids on (second pair)" if same else "trace ids off"
    figures: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    slices: dict[str, Any] = {}
    for key, name, unit, better, fmt in FIGURES:
        on, off = samples[key]["on"], samples[key]["off"]
        s = summary(on, off)
        figures.append({"name": f"{name}, trace ids on", "value": s["on"], "unit": unit, "better": better,
                        "baseline": base, "baseline_value": s["off"]})
        ratios.append({"name": f"{name}, trace ids on / {base.removeprefix('trace ids ')}, per round",
                       "value": s["paired"], "unit": "x", "better": better,
                       "note": f"median of {len(on)} rounds, range {s['paired_min']:.3f}-{s['paired_max']:.3f}"})
        slices[f"{key}_rounds"] = {m: ", ".join(fmt.format(x) for x in samples[key][m]) for m in MODES}
    method = "two node pairs built once, measured at the same time" + (" (A/A: both with ids on)" if same else "")
    return {"figures": figures + ratios, "conditions": {"method": method, **conditions, **slices}}


def main() -> None:
    same = "--same" in sys.argv[1:]
    pin = "--no-pin" not in sys.argv[1:]
    root_main("trace-overhead", lambda: run(same=same, pin=pin))


if __name__ == "__main__":
    main()
