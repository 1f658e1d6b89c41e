"""Benchmarks of the node proxy in real network namespaces (root; not a timed test). `make bench` calls
`run_bench()`; `python -m ambient.bench.ztunnel` prints the JSON (`--idle-only [N]`: only the idle-memory
step, twice, on a minimal testbed: `run_idle()`).

Side by side on one node pair (testbed.py): pods outside the mesh talk directly ("direct"), through a
stunnel mTLS pair ("stunnel", the C baseline a user would otherwise use), and enrolled pods talk through
both node proxies ("mesh"):
- throughput: iperf3, one stream, 3 rounds of `seconds // 2` alternating between the paths, median;
- latency: 1 KB request / 1 KB response on one keep-alive connection at a fixed rate, p50 / p99, and the
  CPU per 1,000 requests of the node proxies (and, as the yardstick, of the two stunnel processes);
- aggregate throughput: 4 parallel iperf3 streams between 2 pod pairs (2 each), rounds, median; compared
  with the single mesh stream (does the node proxy use more than one core?);
- memory per idle meshed connection: IDLE_CONNECTIONS keep-alive connections (one request each, then idle)
  held from one pod to another through both node proxies; the RSS growth of the two proxies while they
  are held, per connection and proxy, and the share of it returned once they are closed;
- new connections per second: 8 concurrent clients (and, as "capacity", 32: 8 leave the path latency-bound
  with CPU to spare), one HTTP request with `Connection: close` per connection, against the harness's
  HTTP server, direct, through stunnel and through the mesh. The client is `wrk` (C; ~15k conn/s direct
  here) when installed, else the harness's asyncio load generator (`ambient.bench.loadgen connect`,
  4-7k/s direct, but ~280 µs of CPU per connection taken from the same two cores the proxies run on).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ambient.bench.nsenv import cpu_seconds, process_tree
from ambient.bench.testbed import (
    Pod,
    ProxyProcess,
    Testbed,
    bench_testbed,
    pod_socket,
    root_main,
    sh,
    start_echo,
)
from ambient.hbone.protocol import POOL_SPARE_IDLE_TIMEOUT
from ambient.ztunnel.copy import TRIM_DELAY

IPERF_PORT = 5201
ECHO_PORT = 8080
HTTP_PORT = 8081  # ambient.bench.httpserver: the connection-rate target
STUNNEL_IPERF = (15201, 16201)  # client-side accept on loopback, server-side accept on the pod IP
STUNNEL_ECHO = (18080, 18443)
STUNNEL_HTTP = (18081, 18444)
CONN_CONCURRENCY = 8
CAPACITY_CONCURRENCY = 32  # enough concurrent clients to saturate the path (8 leave it latency-bound)
THROUGHPUT_ROUNDS = 3
WORKERS = max(2, len(os.sched_getaffinity(0)))  # node proxy processes for the every-core figures
IDLE_CONNECTIONS = 10_000
IDLE_SETTLE = POOL_SPARE_IDLE_TIMEOUT + TRIM_DELAY + 4.0  # seconds from the close to the "after" RSS
_PROXY_ENV = {  # the idle-connection figure holds more streams from one source than the default admission cap
    "AMBIENT_ZTUNNEL_INBOUND_MAX_PER_SOURCE": str(IDLE_CONNECTIONS * 2),
    "AMBIENT_ZTUNNEL_INBOUND_MAX": str(IDLE_CONNECTIONS * 2),
}
# Run inside the client pod: open N keep-alive connections (one GET each, response read), print "held",
# wait for a line on stdin, close them all, print "closed".
_HOLDER = r"""
import socket, sys
n, ip, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
socks = []
for _ in range(n):
    s = socket.create_connection((ip, port), timeout=30)
    s.sendall(req)
    buf = b""
    while True:
        buf += s.recv(65536) or b"!"
        if buf.endswith(b"!"):
            sys.exit("closed mid-response")
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(body) >= length:
                break
    socks.append(s)
print("held", flush=True)
sys.stdin.readline()
for s in socks:
    s.close()
print("closed", flush=True)
"""


def _write_stunnel_conf(bed: Testbed, name: str, body: str) -> Path:
    path = bed.workdir / f"stunnel-{name}.conf"
    path.write_text(f"foreground = yes\npid =\ndebug = 3\noutput = {bed.workdir}/stunnel-{name}.log\n" + body)
    return path


def _start_stunnel(bed: Testbed, client: Pod, server: Pod) -> list[subprocess.Popen[bytes]]:
    from ambient.identity.ca import LocalCA

    ca = LocalCA.load_or_create(bed.ca_dir)
    files: dict[str, tuple[Path, Path]] = {}
    for who in ("client", "server"):
        bundle = ca.issue(f"spiffe://cluster.local/ns/mesh/sa/stunnel-{who}")
        cert, key = bed.workdir / f"st-{who}.crt", bed.workdir / f"st-{who}.key"
        cert.write_bytes(bundle.chain_bytes())
        key.write_bytes(bundle.key_pem)
        os.chmod(key, 0o600)
        files[who] = (cert, key)
    root = bed.ca_dir / "root-cert.pem"
    common = "sslVersionMin = TLSv1.3\nverifyChain = yes\nCAfile = {root}\ncert = {cert}\nkey = {key}\n"
    srv = _write_stunnel_conf(bed, "server", "".join(
        f"[{n}]\naccept = {server.ip}:{acc}\nconnect = 127.0.0.1:{dst}\n"
        + common.format(root=root, cert=files["server"][0], key=files["server"][1])
        for n, acc, dst in (("iperf", STUNNEL_IPERF[1], IPERF_PORT), ("echo", STUNNEL_ECHO[1], ECHO_PORT),
                            ("http", STUNNEL_HTTP[1], HTTP_PORT))))
    cli = _write_stunnel_conf(bed, "client", "".join(
        f"[{n}]\nclient = yes\naccept = 127.0.0.1:{acc}\nconnect = {server.ip}:{dst}\n"
        + common.format(root=root, cert=files["client"][0], key=files["client"][1])
        for n, acc, dst in (("iperf", STUNNEL_IPERF[0], STUNNEL_IPERF[1]), ("echo", STUNNEL_ECHO[0], STUNNEL_ECHO[1]),
                            ("http", STUNNEL_HTTP[0], STUNNEL_HTTP[1]))))
    procs = [
        bed.spawn(ns, ["stunnel4", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for ns, conf in ((server.netns, srv), (client.netns, cli))
    ]
    time.sleep(0.5)
    return procs  # `ip netns exec` execs stunnel4: these pids are the stunnel processes themselves


def _iperf(pod: Pod, ip: str, port: int, seconds: int) -> float:
    out = subprocess.run(
        ["ip", "netns", "exec", pod.netns, "iperf3", "-c", ip, "-p", str(port), "-t", str(seconds), "-J"],
        capture_output=True, text=True, timeout=seconds + 30,
    )
    doc = json.loads(out.stdout)
    if "error" in doc:
        raise RuntimeError(f"iperf3 from {pod.name} to {ip}:{port}: {doc['error']}")
    return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9


def _tree_pids(procs: list[ProxyProcess] | list[subprocess.Popen[bytes]]) -> list[int]:
    return [p for pp in procs for p in process_tree(pp.proc.pid if isinstance(pp, ProxyProcess) else pp.pid)]


def _cpu_seconds(procs: list[ProxyProcess] | list[subprocess.Popen[bytes]]) -> float:
    """User + system CPU of the processes and their descendants (workers included)."""
    return cpu_seconds(_tree_pids(procs))


def _rss_kib(procs: list[ProxyProcess]) -> int:
    total = 0
    for pid in _tree_pids(procs):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _idle_memory(bed: Testbed, pod: Pod, ip: str, port: int, proxies: list[ProxyProcess], n: int) -> dict[str, Any]:
    """KiB per held idle meshed connection and node proxy (the proxies' RSS growth / n / proxies) and the
    share of the growth returned after close."""
    before = _rss_kib(proxies)
    argv = ["ip", "netns", "exec", pod.netns, sys.executable, "-c", _HOLDER, str(n), ip, str(port)]
    holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        line = holder.stdout.readline().strip()
        if line != "held":
            raise RuntimeError(f"idle connection holder in {pod.name}: {line!r} {holder.stderr.read()[-300:]!r}"
                               if holder.stderr else line)
        time.sleep(1.0)  # the proxies' last reads/writes settle
        held = _rss_kib(proxies)
        holder.stdin.write("close\n")
        holder.stdin.flush()
        if holder.stdout.readline().strip() != "closed":
            raise RuntimeError(f"idle connection holder in {pod.name} did not close its connections")
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # The proxies see the FINs and end the streams (1-2 s for 10,000), the pools close their spare HBONE
    # connections a second after their last stream, and the relay census hands the heap back TRIM_DELAY
    # after the last relay ended: measure once all of that is done.
    time.sleep(IDLE_SETTLE)
    after = _rss_kib(proxies)
    grown = max(held - before, 0)
    return {"per_connection_per_proxy_kib": grown / n / len(proxies),
            "returned_share": (held - after) / grown if grown else 1.0,
            "rss_kib_before_held_after": f"{before}, {held}, {after}"}


def _aggregate(pairs: list[tuple[Pod, str]], port: int, seconds: int, streams_each: int) -> float:
    """Gb/s received over all `pairs` at once, each pair with `streams_each` parallel iperf3 streams."""
    procs = [
        subprocess.Popen(["ip", "netns", "exec", pod.netns, "iperf3", "-c", ip, "-p", str(port), "-t", str(seconds),
                          "-P", str(streams_each), "-J"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for pod, ip in pairs
    ]
    total = 0.0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 30)
        doc = json.loads(out)
        if "error" in doc:
            raise RuntimeError(f"iperf3 (aggregate): {doc['error']}")
        total += float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9
    return total


def _latency(pod: Pod, ip: str, port: int, rate: int, seconds: float) -> dict[str, float]:
    sock = pod_socket(pod)
    sock.settimeout(10)
    sock.connect((ip, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = os.urandom(1024)
    buf = bytearray(1024)
    samples: list[float] = []
    interval = 1.0 / rate
    start = time.perf_counter()
    n = 0
    try:
        while time.perf_counter() - start < seconds:
            due = start + n * interval
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            t0 = time.perf_counter()
            sock.sendall(payload)
            got = 0
            while got < 1024:
                k = sock.recv_into(memoryview(buf)[got:])
                if not k:
                    raise ConnectionError("echo closed")
                got += k
            samples.append((time.perf_counter() - t0) * 1000)
            n += 1
    finally:
        sock.close()
    samples.sort()
    return {
        "requests": len(samples),
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
    }


def _start_http(bed: Testbed, pod: Pod) -> None:
    """The harness's HTTP server (1 KB responses) in `pod`, on HTTP_PORT; waits until it listens."""
    argv = [sys.executable, "-m", "ambient.bench.httpserver", "--host", "0.0.0.0", "--port", str(HTTP_PORT),
            "--max-seconds", "600"]
    proc = bed.spawn(pod.netns, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        probe = subprocess.run(["ip", "netns", "exec", pod.netns, "ss", "-Htln", f"sport = :{HTTP_PORT}"],
                               capture_output=True, text=True, timeout=10)
        if probe.stdout.strip():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"bench HTTP server in {pod.name} exited ({proc.returncode})")
        time.sleep(0.1)
    raise RuntimeError(f"bench HTTP server in {pod.name} not listening on {HTTP_PORT} after 20s")


def _conn_rate(pod: Pod, ip: str, port: int, seconds: float, concurrency: int = CONN_CONCURRENCY) -> dict[str, Any]:
    """New connections/s from inside `pod`: CONN_CONCURRENCY clients, each doing one HTTP/1.1 request with
    `Connection: close` per connection. With `wrk` (C, epoll; the tool the reference suggests) when it is
    installed: a Python client costs ~280 µs of CPU per connection on the same 2 cores as the proxies,
    which then measured the client as much as the path. Else the harness's asyncio load generator."""
    if shutil.which("wrk"):
        return _wrk_conn_rate(pod, ip, port, seconds, concurrency)
    argv = ["ip", "netns", "exec", pod.netns, sys.executable, "-m", "ambient.bench.loadgen", "connect",
            "--host", ip, "--port", str(port), "--duration", str(seconds), "--concurrency", str(concurrency)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    try:
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise RuntimeError(f"load generator in {pod.name}: unreadable output {out.stdout[-300:]!r} "
                           f"{out.stderr[-300:]!r}") from exc
    result["tool"] = "ambient.bench.loadgen"
    return result


def _wrk_conn_rate(pod: Pod, ip: str, port: int, seconds: float, concurrency: int) -> dict[str, Any]:
    argv = ["ip", "netns", "exec", pod.netns, "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
            "-H", "Connection: close", f"http://{ip}:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", out.stdout)
    if rate is None:
        raise RuntimeError(f"wrk in {pod.name}: unreadable output {out.stdout[-300:]!r} {out.stderr[-300:]!r}")
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out.stdout)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    errors = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    errors += int(non2xx.group(1)) if non2xx else 0
    return {"per_second": float(rate.group(1)), "errors": errors, "tool": "wrk"}


def run_bench(seconds: int = 5, rate: int = 500, workdir: str | None = None,
              idle_connections: int = IDLE_CONNECTIONS) -> dict[str, Any]:
    """Build the testbed, measure, tear down. Returns the figures (and their ratios)."""
    with bench_testbed("prf", workdir) as bed:
        bed.create({1: [("client", "client"), ("client-plain", "default"), ("client2", "client"),
                        ("local-client", "client"), ("local-client2", "client"), ("local-server", "server"),
                        ("local-server2", "server")],
                    2: [("server", "server"), ("server-plain", "default"), ("server2", "server")]})
        # As the baselines' namespaces (bench.nsenv): a wide port range and TIME_WAIT ports reused, so the
        # thousands of connections of one figure do not slow the connect() of the next one's (in the pod
        # that closed them first, ~2 ms per connect past ~14,000 TIME_WAIT sockets), whatever the path.
        for pod in bed.pods:
            sh("ip", "netns", "exec", pod.netns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000",
               "net.ipv4.tcp_tw_reuse=1")
        client, server = bed.pod("client"), bed.pod("server")
        cplain, splain = bed.pod("client-plain"), bed.pod("server-plain")
        client2, server2 = bed.pod("client2"), bed.pod("server2")
        for pod in (server, splain):
            bed.spawn(pod.netns, ["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL)
            start_echo(bed, pod, [ECHO_PORT])
            _start_http(bed, pod)
        _start_http(bed, server2)
        bed.spawn(server2.netns, ["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL)
        # same node: both ends of 2 pod pairs behind node 1's proxy alone (one node proxy, 2 cores)
        local = [(bed.pod("local-client"), bed.pod("local-server")),
                 (bed.pod("local-client2"), bed.pod("local-server2"))]
        for _, srv in local:
            bed.spawn(srv.netns, ["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL)
        local_pairs = [(cli, srv.ip) for cli, srv in local]

        def same_node() -> tuple[float, float]:
            """4 streams between the 2 same-node pairs, median of the rounds; node 1's proxy cores used."""
            c0, t0 = _cpu_seconds(proxies[:1]), time.monotonic()
            rounds = [_aggregate(local_pairs, IPERF_PORT, max(1, seconds // 2), 2) for _ in range(THROUGHPUT_ROUNDS)]
            return statistics.median(rounds), (_cpu_seconds(proxies[:1]) - c0) / (time.monotonic() - t0)
        proxies = [bed.start_proxy(1, env=_PROXY_ENV), bed.start_proxy(2, env=_PROXY_ENV)]
        stunnels = _start_stunnel(bed, cplain, splain)
        time.sleep(0.5)
        out: dict[str, Any] = {"throughput_gbps": {}, "latency": {}, "connections_per_s": {}}
        # Rounds alternating between the paths, median per path: a burst from a neighbour on this shared
        # machine then hits every path instead of deciding one path's figure.
        paths = {"direct": (cplain, splain.ip, IPERF_PORT), "stunnel": (cplain, "127.0.0.1", STUNNEL_IPERF[0]),
                 "mesh": (client, server.ip, IPERF_PORT)}
        rounds: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(THROUGHPUT_ROUNDS):
            for name, (pod, ip, port) in paths.items():
                rounds[name].append(_iperf(pod, ip, port, max(1, seconds // 2)))
        out["throughput_gbps"] = {name: statistics.median(values) for name, values in rounds.items()}
        # 4 streams between 2 pod pairs (2 each) at once, rounds, median: the aggregate the proxies carry
        aggregate = [_aggregate([(client, server.ip), (client2, server2.ip)], IPERF_PORT, max(1, seconds // 2), 2)
                     for _ in range(THROUGHPUT_ROUNDS)]
        out["aggregate_throughput_gbps"] = {"mesh 4 streams 2 pod pairs": statistics.median(aggregate)}
        local_1, local_cores_1 = same_node()
        out["latency"]["direct"] = _latency(cplain, splain.ip, ECHO_PORT, rate, seconds)
        st0 = _cpu_seconds(stunnels)
        out["latency"]["stunnel"] = _latency(cplain, "127.0.0.1", STUNNEL_ECHO[0], rate, seconds)
        st_cpu = _cpu_seconds(stunnels) - st0
        st_reqs = out["latency"]["stunnel"]["requests"]
        out["stunnel_cores_per_1000_rps"] = st_cpu / seconds / (st_reqs / seconds / 1000)
        cpu0 = _cpu_seconds(proxies)
        out["latency"]["mesh"] = _latency(client, server.ip, ECHO_PORT, rate, seconds)
        cpu = _cpu_seconds(proxies) - cpu0
        reqs = out["latency"]["mesh"]["requests"]
        out["mesh_proxy_cpu_seconds_per_1000_requests"] = cpu / reqs * 1000
        out["mesh_proxy_cores_per_1000_rps"] = cpu / seconds / (reqs / seconds / 1000)
        conns: dict[str, dict[str, Any]] = {
            "direct": _conn_rate(cplain, splain.ip, HTTP_PORT, 3),
            "stunnel": _conn_rate(cplain, "127.0.0.1", STUNNEL_HTTP[0], 3),
            "mesh": _conn_rate(client, server.ip, HTTP_PORT, 3),
        }
        out["connections_per_s"] = {k: v["per_second"] for k, v in conns.items()}
        out["connection_errors"] = {k: v["errors"] for k, v in conns.items()}
        # Capacity: the same with enough concurrent clients to keep the path busy (the goal's figure).
        capacity: dict[str, dict[str, Any]] = {
            "direct": _conn_rate(cplain, splain.ip, HTTP_PORT, 3, CAPACITY_CONCURRENCY),
            "stunnel": _conn_rate(cplain, "127.0.0.1", STUNNEL_HTTP[0], 3, CAPACITY_CONCURRENCY),
            "mesh": _conn_rate(client, server.ip, HTTP_PORT, 3, CAPACITY_CONCURRENCY),
        }
        # Every core: the same node proxies as WORKERS processes each (AMBIENT_ZTUNNEL_WORKERS=auto), on
        # the second pod pair (fresh: no TIME_WAIT left by the figures above), 8 clients first as above.
        for pp in proxies:
            pp.terminate()
        for pp in proxies:
            pp.proc.wait(timeout=30)
        proxies = [bed.start_proxy(n, env={**_PROXY_ENV, "AMBIENT_ZTUNNEL_WORKERS": str(WORKERS)}, tag="-w")
                   for n in (1, 2)]
        workers = f"mesh {WORKERS} workers"
        aggregate_w = [_aggregate([(client, server.ip), (client2, server2.ip)], IPERF_PORT, max(1, seconds // 2),
                                  2) for _ in range(THROUGHPUT_ROUNDS)]
        local_w, local_cores_w = same_node()
        warm = _conn_rate(client2, server2.ip, HTTP_PORT, 3)
        capacity[workers] = _conn_rate(client2, server2.ip, HTTP_PORT, 3, CAPACITY_CONCURRENCY)
        out["connections_per_s"][workers] = warm["per_second"]
        out["connection_errors"][workers] = warm["errors"]
        # first in the dict: the goals read the first aggregate / capacity mesh figure
        out["aggregate_throughput_gbps"] = {
            f"{workers} 4 streams 2 pod pairs": statistics.median(aggregate_w),
            "mesh 1 process 4 streams 2 pod pairs": statistics.median(aggregate),
        }
        # one node proxy carrying both ends (same node): does it use more than one core with workers?
        out["extra_figures"] = [
            {"name": f"one node proxy, both ends (same node), 4 streams, {workers}", "value": local_w,
             "unit": "Gb/s", "baseline": "the same, 1 process", "baseline_value": local_1},
            {"name": f"one node proxy, both ends (same node), cores used, {workers}", "value": local_cores_w,
             "unit": "cores", "better": "higher", "baseline": "the same, 1 process", "baseline_value": local_cores_1},
        ]
        capacity = {k: capacity[k] for k in ("direct", "stunnel", workers, "mesh")}
        out["capacity_connections_per_s"] = {k: v["per_second"] for k, v in capacity.items()}
        out["connection_errors"].update({f"{k} capacity": v["errors"] for k, v in capacity.items()})
        # Last: 10,000 connections held and closed leave the pods' netns with thousands of TIME_WAIT
        # sockets, which halved the connection capacity measured after them.
        if idle_connections:
            out["idle"] = _idle_memory(bed, client, server.ip, HTTP_PORT, proxies, idle_connections)
        t, lat = out["throughput_gbps"], out["latency"]
        out["ratios"] = {
            "mesh_vs_stunnel_throughput": t["mesh"] / t["stunnel"],
            "mesh_added_p99_vs_stunnel_added_p99": (lat["mesh"]["p99_ms"] - lat["direct"]["p99_ms"])
            / max(1e-6, lat["stunnel"]["p99_ms"] - lat["direct"]["p99_ms"]),
            "mesh_vs_stunnel_connections": out["connections_per_s"]["mesh"]
            / max(1e-6, out["connections_per_s"]["stunnel"]),
            "mesh_vs_stunnel_cpu_ratio": out["mesh_proxy_cores_per_1000_rps"]
            / max(1e-6, out["stunnel_cores_per_1000_rps"]),
            "mesh_aggregate_4_streams_vs_1": statistics.median(aggregate_w) / t["mesh"],
            "mesh_1_process_aggregate_4_streams_vs_1": statistics.median(aggregate) / t["mesh"],
            "mesh_same_node_4_streams_workers_vs_1_process": local_w / max(1e-6, local_1),
            "mesh_workers_vs_1_process_capacity": capacity[workers]["per_second"]
            / max(1e-6, capacity["mesh"]["per_second"]),
        }
        out["conditions"] = {"iperf_seconds": max(1, seconds // 2), "iperf_rounds": THROUGHPUT_ROUNDS,
                             "latency_rate_rps": rate, "payload_bytes": 1024,
                             "connection_concurrency": CONN_CONCURRENCY,
                             "capacity_concurrency": CAPACITY_CONCURRENCY,
                             "aggregate_rounds_gbps": ", ".join(f"{v:.2f}" for v in aggregate),
                             "aggregate_rounds_gbps_workers": ", ".join(f"{v:.2f}" for v in aggregate_w),
                             "node_proxy_workers": WORKERS,
                             "idle_connections": idle_connections,
                             "connection_client": conns["mesh"].get("tool", "")}
        return out


def run_idle(n: int = IDLE_CONNECTIONS, rounds: int = 1, workdir: str | None = None) -> dict[str, Any]:
    """The idle-memory figure alone (~30 s instead of the section's minutes): a client pod on node 1, the
    HTTP server pod on node 2, both node proxies with the section's settings, then `rounds` x
    `_idle_memory` (a second round shows whether the first one's memory is reused or leaked), each with
    the proxies' RSS per process before / held / after."""
    with bench_testbed("idl", workdir) as bed:
        bed.create({1: [("client", "client")], 2: [("server", "server")]})
        for pod in bed.pods:
            sh("ip", "netns", "exec", pod.netns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000",
               "net.ipv4.tcp_tw_reuse=1")
        client, server = bed.pod("client"), bed.pod("server")
        _start_http(bed, server)
        proxies = [bed.start_proxy(1, env=_PROXY_ENV), bed.start_proxy(2, env=_PROXY_ENV)]
        out: dict[str, Any] = {"rounds": []}
        for _ in range(rounds):
            result = _idle_memory(bed, client, server.ip, HTTP_PORT, proxies, n)
            result["rss_kib_after_per_process"] = {f"node{pp.node}": _rss_kib([pp]) for pp in proxies}
            out["rounds"].append(result)
        return out


def main() -> None:
    """`python -m ambient.bench.ztunnel [--idle-only [N]]`: the whole bench, or just the idle-memory step."""
    if len(sys.argv) > 1 and sys.argv[1] == "--idle-only":
        n = int(sys.argv[2]) if len(sys.argv) > 2 else IDLE_CONNECTIONS
        root_main("node proxy idle-memory", lambda: run_idle(n, rounds=2))
        return
    root_main("node proxy", run_bench)


if __name__ == "__main__":
    main()
