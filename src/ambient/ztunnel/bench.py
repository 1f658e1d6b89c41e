"""Benchmarks of the node proxy in real network namespaces (root; not a timed test). `make bench` calls
`run_bench()`; `python -m ambient.ztunnel.bench` prints the JSON.

Side by side on one node pair (testbed.py): pods outside the mesh talk directly ("direct"), through a
stunnel mTLS pair ("stunnel", the C baseline a user would otherwise use), and enrolled pods talk through
both node proxies ("mesh"):
- throughput: iperf3 -t 5, one stream;
- latency: 1 KB request / 1 KB response on one keep-alive connection at a fixed rate, p50 / p99, and the
  node proxies' CPU per 1,000 requests;
- new connections per second (connect, 1-byte echo, close; a few client threads).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ambient.ztunnel.testbed import Pod, ProxyProcess, Testbed, pod_socket, start_echo

IPERF_PORT = 5201
ECHO_PORT = 8080
STUNNEL_IPERF = (15201, 16201)  # client-side accept on loopback, server-side accept on the pod IP
STUNNEL_ECHO = (18080, 18443)


def _write_stunnel_conf(bed: Testbed, name: str, body: str) -> Path:
    path = bed.workdir / f"stunnel-{name}.conf"
    path.write_text(f"foreground = yes\npid =\ndebug = 3\noutput = {bed.workdir}/stunnel-{name}.log\n" + body)
    return path


def _start_stunnel(bed: Testbed, client: Pod, server: Pod) -> None:
    from ambient.identity.ca import LocalCA

    ca = LocalCA.load_or_create(bed.ca_dir)
    files: dict[str, tuple[Path, Path]] = {}
    for who in ("client", "server"):
        bundle = ca.issue(f"spiffe://cluster.local/ns/h10/sa/stunnel-{who}")
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
        for n, acc, dst in (("iperf", STUNNEL_IPERF[1], IPERF_PORT), ("echo", STUNNEL_ECHO[1], ECHO_PORT))))
    cli = _write_stunnel_conf(bed, "client", "".join(
        f"[{n}]\nclient = yes\naccept = 127.0.0.1:{acc}\nconnect = {server.ip}:{dst}\n"
        + common.format(root=root, cert=files["client"][0], key=files["client"][1])
        for n, acc, dst in (("iperf", STUNNEL_IPERF[0], STUNNEL_IPERF[1]), ("echo", STUNNEL_ECHO[0], STUNNEL_ECHO[1]))))
    bed.spawn(server.netns, ["stunnel4", str(srv)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bed.spawn(client.netns, ["stunnel4", str(cli)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)


def _iperf(pod: Pod, ip: str, port: int, seconds: int) -> float:
    out = subprocess.run(
        ["ip", "netns", "exec", pod.netns, "iperf3", "-c", ip, "-p", str(port), "-t", str(seconds), "-J"],
        capture_output=True, text=True, timeout=seconds + 30,
    )
    doc = json.loads(out.stdout)
    if "error" in doc:
        raise RuntimeError(f"iperf3 from {pod.name} to {ip}:{port}: {doc['error']}")
    return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9


def _cpu_seconds(procs: list[ProxyProcess]) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pp in procs:
        fields = Path(f"/proc/{pp.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
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


_CONN_LOOP = """
import socket, sys, time
ip, port, until = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n = 0
while time.time() < until:
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((ip, port)); s.sendall(b"x")
        if s.recv(1) == b"x":
            n += 1
    except OSError:
        pass
    finally:
        s.close()
print(n)
"""


def _conn_rate(bed: Testbed, pod: Pod, ip: str, port: int, seconds: float, clients: int = 3) -> float:
    """New connections per second from `clients` client processes inside `pod` (one process per client
    so the measurement is not bounded by one interpreter's GIL)."""
    start = time.time() + 1.0  # let every process start before the clock runs
    until = start + seconds
    procs = [
        bed.spawn(pod.netns, [sys.executable, "-c", _CONN_LOOP, ip, str(port), str(until)], stdout=subprocess.PIPE)
        for _ in range(clients)
    ]
    total = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 30)
        total += int(out.strip() or 0)
    return total / seconds


def run_bench(seconds: int = 5, rate: int = 500, workdir: str | None = None) -> dict[str, Any]:
    """Build the testbed, measure, tear down. Returns the figures (and their ratios)."""
    base = Path(workdir or tempfile.mkdtemp(prefix="h10-bench-"))
    bed = Testbed(f"h10-b{os.getpid()}", base)
    try:
        bed.create({1: [("client", "client"), ("client-plain", "default")],
                    2: [("server", "server"), ("server-plain", "default")]})
        client, server = bed.pod("client"), bed.pod("server")
        cplain, splain = bed.pod("client-plain"), bed.pod("server-plain")
        for pod in (server, splain):
            bed.spawn(pod.netns, ["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL)
            start_echo(bed, pod, [ECHO_PORT])
        proxies = [bed.start_proxy(1), bed.start_proxy(2)]
        _start_stunnel(bed, cplain, splain)
        time.sleep(0.5)
        out: dict[str, Any] = {"throughput_gbps": {}, "latency": {}, "connections_per_s": {}}
        out["throughput_gbps"]["direct"] = _iperf(cplain, splain.ip, IPERF_PORT, seconds)
        out["throughput_gbps"]["stunnel"] = _iperf(cplain, "127.0.0.1", STUNNEL_IPERF[0], seconds)
        out["throughput_gbps"]["mesh"] = _iperf(client, server.ip, IPERF_PORT, seconds)
        out["latency"]["direct"] = _latency(cplain, splain.ip, ECHO_PORT, rate, seconds)
        out["latency"]["stunnel"] = _latency(cplain, "127.0.0.1", STUNNEL_ECHO[0], rate, seconds)
        cpu0 = _cpu_seconds(proxies)
        out["latency"]["mesh"] = _latency(client, server.ip, ECHO_PORT, rate, seconds)
        cpu = _cpu_seconds(proxies) - cpu0
        reqs = out["latency"]["mesh"]["requests"]
        out["mesh_proxy_cpu_seconds_per_1000_requests"] = cpu / reqs * 1000
        out["mesh_proxy_cores_per_1000_rps"] = cpu / seconds / (reqs / seconds / 1000)
        out["connections_per_s"]["direct"] = _conn_rate(bed, cplain, splain.ip, ECHO_PORT, 3)
        out["connections_per_s"]["mesh"] = _conn_rate(bed, client, server.ip, ECHO_PORT, 3)
        t, lat = out["throughput_gbps"], out["latency"]
        out["ratios"] = {
            "mesh_vs_stunnel_throughput": t["mesh"] / t["stunnel"],
            "mesh_added_p99_vs_stunnel_added_p99": (lat["mesh"]["p99_ms"] - lat["direct"]["p99_ms"])
            / max(1e-6, lat["stunnel"]["p99_ms"] - lat["direct"]["p99_ms"]),
        }
        out["conditions"] = {"iperf_seconds": seconds, "latency_rate_rps": rate, "payload_bytes": 1024}
        return out
    finally:
        bed.destroy()
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("the node proxy benchmark needs root (network namespaces)")
    print(json.dumps(run_bench(), indent=2))


if __name__ == "__main__":
    main()
