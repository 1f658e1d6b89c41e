"""What the correlation id costs the node proxy: one node pair whose proxies run with trace ids on
(`AMBIENT_TRACE_IDS=1`, the default: `traceparent` logged with the route and authorization verdict) and off
(`AMBIENT_TRACE_IDS=0`) in short alternating slices (restarted per slice); median per mode and median of the
per-slice-pair ratios (this machine is shared: slices far apart in time differ by more than the modes).

Figures (each "on" figure against its "off" baseline of the same run):
- new connections per second (one HTTP request per connection, 8 concurrent clients): the id is a
  per-connection cost;
- CPU of both node proxies per connection (ms);
- single-stream throughput (iperf3): the per-byte path does not see the id at all (a control).

`python -m ambient.bench.trace_overhead` prints the JSON; `make bench` runs it as the `trace-overhead` section.
"""

from __future__ import annotations

import statistics
import subprocess
from typing import Any

from ambient.bench.testbed import bench_testbed, root_main
from ambient.bench.ztunnel import HTTP_PORT, IPERF_PORT, _conn_rate, _cpu_seconds, _iperf, _start_http

MODES = {"on": "1", "off": "0"}


def run(seconds: int = 2, rounds: int = 9, workdir: str | None = None, quick: bool = False) -> dict[str, Any]:
    """One node pair; per slice the proxies are (re)started in one mode, warmed, measured; modes alternate
    slice by slice, so a burst from a neighbour on this shared machine hits neighbouring slices of both
    modes, and the median of the per-slice-pair ratios is the figure's yardstick."""
    if quick:
        rounds = 3
    with bench_testbed("trc", workdir) as bed:
        bed.create({1: [("client", "client")], 2: [("server", "server")]})
        client, server = bed.pod("client"), bed.pod("server")
        bed.spawn(server.netns, ["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL)
        _start_http(bed, server)
        conn: dict[str, list[float]] = {m: [] for m in MODES}
        cpu: dict[str, list[float]] = {m: [] for m in MODES}
        tput: dict[str, list[float]] = {m: [] for m in MODES}
        errors = 0
        for r in range(rounds):
            for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                proxies = [bed.start_proxy(n, env={"AMBIENT_TRACE_IDS": MODES[mode]}, tag=f"-{mode}{r}")
                           for n in (1, 2)]
                try:
                    _conn_rate(client, server.ip, HTTP_PORT, 0.5)  # warm: certificates, pools
                    c0 = _cpu_seconds(proxies)
                    res = _conn_rate(client, server.ip, HTTP_PORT, seconds)
                    used = _cpu_seconds(proxies) - c0
                    conn[mode].append(res["per_second"])
                    cpu[mode].append(used / max(1.0, res["per_second"] * seconds) * 1000)
                    errors += int(res.get("errors", 0))
                    if r < 3:
                        tput[mode].append(_iperf(client, server.ip, IPERF_PORT, 1))
                finally:
                    for pp in proxies:
                        pp.kill()
        med = {name: {m: statistics.median(v[m]) for m in MODES} for name, v in
               (("conn", conn), ("cpu", cpu), ("tput", tput))}

        def paired(values: dict[str, list[float]]) -> float:
            return statistics.median(on / off for on, off in zip(values["on"], values["off"], strict=True) if off)

        figures = [
            {"name": "connections/s, trace ids on", "value": med["conn"]["on"], "unit": "conn/s",
             "baseline": "trace ids off", "baseline_value": med["conn"]["off"]},
            {"name": "node proxies CPU per connection, trace ids on", "value": med["cpu"]["on"], "unit": "ms",
             "better": "lower", "baseline": "trace ids off", "baseline_value": med["cpu"]["off"]},
            {"name": "throughput, trace ids on", "value": med["tput"]["on"], "unit": "Gb/s",
             "baseline": "trace ids off", "baseline_value": med["tput"]["off"]},
        ]
        return {
            "figures": figures,
            "conditions": {
                "slices": rounds, "slice_seconds": seconds, "connection_errors": errors,
                "connections_per_s_slices": {m: ", ".join(f"{x:.0f}" for x in conn[m]) for m in MODES},
                "cpu_ms_per_connection_slices": {m: ", ".join(f"{x:.3f}" for x in cpu[m]) for m in MODES},
                "connection_rate_cost_pct (paired median)": round((1 - paired(conn)) * 100, 2),
                "cpu_per_connection_cost_pct (paired median)": round((paired(cpu) - 1) * 100, 2),
                "throughput_cost_pct (paired median)": round((1 - paired(tput)) * 100, 2),
            },
        }


def main() -> None:
    root_main("trace-overhead", run)


if __name__ == "__main__":
    main()
