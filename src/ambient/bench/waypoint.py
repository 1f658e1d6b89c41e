"""Loopback benchmark of the waypoint (for `make bench`; never a timed test).

Same process, same event loop, same HTTP app for both paths, `concurrency` keep-alive HTTP/1.1 clients:
- direct:   client --HBONE--> backend node proxy (HboneServer) --TCP--> app
- waypoint: client --HBONE--> waypoint --HBONE (pooled keep-alive connections)--> backend --TCP--> app
Reports requests/s, p50/p99 latency and the process CPU per request; the difference of the two CPU
figures is the waypoint's own cost, given as cores per 1,000 req/s (goal: <= 0.25).

Worker processes (AMBIENT_WAYPOINT_WORKERS) cannot show in that design: client, node proxy, waypoint and
backend share one process and one core. `measure_processes` runs the waypoint as its own processes
(`python -m ambient.waypoint` on loopback, 1 process and `auto`), the clients in `CLIENT_PROCS` processes of
their own (each connection its own HBONE connection, so the kernel spreads them over the waypoint's
SO_REUSEPORT listeners) and the backend node proxy + app in the bench process, and compares each with the
same processes without the waypoint (clients straight to the backend). The waypoint's CPU is its whole
process tree's (primary + workers, from /proc) over the measured window: its cost per request needs no
subtraction. Rounds alternate the three modes; the figures are per-mode medians.
Run `python -m ambient.bench.waypoint [seconds] [concurrency]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambient.bench.loopback import REVIEWS_VIP, Loopback, loopback
from ambient.bench.nsenv import cpu_seconds, process_environ, process_tree

REQUEST = b"GET /bench HTTP/1.1\r\nHost: reviews.shop.svc.cluster.local\r\n\r\n"


class _Rates:
    """Requests/s and latency percentiles (ms) of a measured window (`requests`, `seconds`, `latencies`)."""

    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else 0.0


@dataclass
class Result(_Rates):
    label: str
    requests: int
    seconds: float
    cpu: float
    latencies: list[float]

    @property
    def cpu_per_request_ms(self) -> float:
        return self.cpu / max(self.requests, 1) * 1000

    def line(self) -> str:
        return (f"{self.label:9s} {self.rps:8.0f} req/s  p50 {self.pct(0.5):6.2f} ms  p99 {self.pct(0.99):6.2f} ms  "
                f"cpu {self.cpu_per_request_ms:.3f} ms/req")


async def _read_response(stream: object, buf: bytearray) -> None:
    """Read one response with a Content-Length body (the loopback app always sends one)."""
    while True:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = bytes(buf[:head_end]).lower()
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            total = head_end + 4 + length
            if len(buf) >= total:
                del buf[:total]
                return
        data = await stream.read()  # type: ignore[attr-defined]
        if not data:
            raise ConnectionError("closed mid-response")
        buf += data


async def _run(lb: Loopback, label: str, via_waypoint: bool, seconds: float, concurrency: int,
               authority: str | None = None, request: bytes = REQUEST) -> Result:
    authority = authority or (f"{REVIEWS_VIP}:80" if via_waypoint else "127.0.0.11:8080")
    latencies: list[float] = []
    count = 0

    async def worker(deadline: float) -> None:
        nonlocal count
        stream = await lb.open(authority, via_waypoint=via_waypoint)
        buf = bytearray()
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                await stream.write(request)
                await _read_response(stream, buf)
                latencies.append(time.perf_counter() - t0)
                count += 1
        finally:
            stream.close()

    # warm-up (connections, TLS contexts), then the measured run
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker(time.perf_counter() + 0.3))
    latencies.clear()
    count = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker(t0 + seconds))
    return Result(label, count, time.perf_counter() - t0, time.process_time() - cpu0, latencies)


async def measure(seconds: float = 3.0, concurrency: int = 8) -> tuple[Result, Result]:
    async with loopback() as lb:
        direct = await _run(lb, "direct", False, seconds, concurrency)
        via = await _run(lb, "waypoint", True, seconds, concurrency)
    return direct, via


PLAIN_VIP = "10.96.0.11"  # reviews-v1: no L7 config, the plain waypoint path


def istio_objects() -> tuple[list[dict[str, Any]], bytes]:
    """A VirtualService (header match + 80/20 subsets), a DestinationRule (subsets, connection pool,
    outlier detection), a RequestAuthentication (inline RS256 JWKS) and an AuthorizationPolicy requiring the
    token's principal, all for Service `reviews`; and a request carrying a valid token."""
    import json as _json

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = _json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = _json.dumps({"keys": [{**jwk, "kid": "k", "alg": "RS256"}]})
    now = int(time.time())
    token = jwt.encode({"iss": "bench@ambient", "sub": "client", "iat": now, "exp": now + 3600}, key,
                       algorithm="RS256", headers={"kid": "k"})
    meta = {"namespace": "shop"}
    service = [{"kind": "Service", "group": "", "name": "reviews"}]
    objects: list[dict[str, Any]] = [
        {"kind": "Pod", "metadata": {"name": f"reviews-{v}-pod", "namespace": "shop", "labels": {"version": v}}}
        for v in ("v1", "v2")]
    objects += [
        {"kind": "DestinationRule", "metadata": {"name": "reviews", **meta}, "spec": {
            "host": "reviews", "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")],
            "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 1000},
                                                 "http": {"http1MaxPendingRequests": 1000}},
                              "outlierDetection": {"consecutive5xxErrors": 5, "baseEjectionTime": "30s"}}}},
        {"kind": "VirtualService", "metadata": {"name": "reviews", **meta}, "spec": {"hosts": ["reviews"], "http": [
            {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
             "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 80},
                       {"destination": {"host": "reviews", "subset": "v2"}, "weight": 20}]}]}},
        {"kind": "RequestAuthentication", "metadata": {"name": "jwt", **meta}, "spec": {
            "targetRefs": service, "jwtRules": [{"issuer": "bench@ambient", "jwks": jwks}]}},
        {"kind": "AuthorizationPolicy", "metadata": {"name": "require-jwt", **meta}, "spec": {
            "targetRefs": service, "action": "ALLOW",
            "rules": [{"from": [{"source": {"requestPrincipals": ["bench@ambient/client"]}}]}]}},
    ]
    request = REQUEST.replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    return objects, request


async def measure_istio(seconds: float = 3.0, concurrency: int = 8) -> tuple[Result, Result, Result]:
    """direct, plain waypoint (a Service without L7 config) and the waypoint with VirtualService +
    DestinationRule + JWT on the path, in the same loopback and run."""
    objects, request = istio_objects()
    async with loopback(objects) as lb:
        direct = await _run(lb, "direct", False, seconds, concurrency)
        plain = await _run(lb, "waypoint", True, seconds, concurrency, f"{PLAIN_VIP}:80")
        istio = await _run(lb, "vs+dr+jwt", True, seconds, concurrency, f"{REVIEWS_VIP}:80", request)
    return direct, plain, istio


# -- the waypoint as its own processes (AMBIENT_WAYPOINT_WORKERS) ------------------------------------------

CLIENT_PROCS = 2  # load generator processes
PROC_CONNECTIONS = 16  # keep-alive clients in all, each on its own HBONE connection
WEB_VIP = "10.96.0.50"
WP_ID = "spiffe://cluster.local/ns/shop/sa/waypoint"
WEB_ID = "spiffe://cluster.local/ns/shop/sa/web"
CURL_ID = "spiffe://cluster.local/ns/shop/sa/curl"
WP_REQUEST = b"GET /bench HTTP/1.1\r\nHost: web.shop.svc.cluster.local\r\n\r\n"
BODY = b"x" * 64
CLIENT_CODE = "import sys; from ambient.bench.waypoint import client_main; client_main(sys.argv[1])"


def standalone_state(app_port: int) -> str:
    """The standalone waypoint's state: Service `web` (VIP 10.96.0.50:80) -> one pod on 127.0.0.1:`app_port`."""
    return textwrap.dedent(f"""\
        workloads:
        - uid: web-1
          name: web-1
          namespace: shop
          workloadIps: [127.0.0.1]
          protocol: HBONE
          serviceAccount: web
          services: {{"shop/web.shop.svc.cluster.local": {{80: {app_port}}}}}
        services:
        - name: web
          namespace: shop
          hostname: web.shop.svc.cluster.local
          vips: ["{WEB_VIP}"]
          ports: [{{servicePort: 80, targetPort: {app_port}}}]
          waypoint: {{destination: shop/waypoint.shop.svc.cluster.local}}
        """)


async def _keepalive_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A keep-alive HTTP/1.1 app: a 64-byte body for every GET."""
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _client_load(spec: dict[str, Any]) -> dict[str, Any]:
    """In a client process: `connections` keep-alive clients, each with its own HboneClient (its own TCP
    connection), warm up until `start_at`, then count requests until `start_at + seconds` (wall clock)."""
    from ambient.hbone.client import HboneClient
    from ambient.identity.ca import LocalCA

    certs = LocalCA.load_or_create(Path(spec["ca_dir"])).issue(CURL_ID)
    addr = (spec["host"], int(spec["port"]))
    start_at, end_at = float(spec["start_at"]), float(spec["start_at"]) + float(spec["seconds"])
    latencies: list[float] = []
    count = 0

    async def one() -> None:
        nonlocal count
        async with HboneClient() as client:
            stream = await client.connect(certs, addr, {spec["identity"]}, spec["authority"])
            buf = bytearray()
            try:
                while (now := time.time()) < end_at:
                    t0 = time.perf_counter()
                    await stream.write(WP_REQUEST)
                    await _read_response(stream, buf)
                    if now >= start_at:
                        latencies.append(time.perf_counter() - t0)
                        count += 1
            finally:
                stream.close()

    cpu0 = time.process_time()
    async with asyncio.TaskGroup() as tg:
        for _ in range(int(spec["connections"])):
            tg.create_task(one())
    return {"requests": count, "latencies": latencies, "cpu": time.process_time() - cpu0}


def client_main(spec_json: str) -> None:
    """Entry of a load generator process (`python -c ... client_main(SPEC)`): writes its result as JSON to
    the spec's `out` file (a file, not a pipe: the result holds every latency)."""
    spec = json.loads(spec_json)
    try:
        import uvloop

        result = uvloop.run(_client_load(spec))
    except ImportError:  # pragma: no cover
        result = asyncio.run(_client_load(spec))
    Path(spec["out"]).write_text(json.dumps(result))


@dataclass
class ProcRound(_Rates):
    mode: str  # "direct", or the AMBIENT_WAYPOINT_WORKERS value
    processes: int  # waypoint processes (0 for direct)
    requests: int
    seconds: float
    waypoint_cpu: float  # CPU seconds of the waypoint's process tree over the window
    latencies: list[float]

    @property
    def cores_per_1000(self) -> float:
        """The waypoint's cores per 1,000 req/s (= its CPU ms per request)."""
        return self.waypoint_cpu / max(self.requests, 1) * 1000

    @property
    def cores_used(self) -> float:
        return self.waypoint_cpu / self.seconds


async def _start_waypoint(workers: str, static: Path, ca_dir: Path, backend_port: int,
                          ) -> tuple[asyncio.subprocess.Process, int, int]:
    """A waypoint on 127.0.0.1 with AMBIENT_WAYPOINT_WORKERS=`workers`, once every process listens:
    (process, HBONE port, processes)."""
    from ambient.runtime.workers import get_unix
    from ambient.waypoint.workers import parse_workers

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "AMBIENT_WAYPOINT_WORKERS": workers}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ambient.waypoint", "--static", str(static), "--ca-dir", str(ca_dir),
        "--listen", "127.0.0.1:0", "--namespace", "shop", "--hbone-port", str(backend_port), "--drain", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env, start_new_session=True)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    if not line.startswith("waypoint listening on"):
        raise RuntimeError(f"waypoint did not start: {line!r}")
    port = int(line.split()[3].rsplit(":", 1)[1])
    count = parse_workers(workers)
    deadline = time.monotonic() + 30
    while count > 1:  # until every worker listens: the primary's merged dump says so
        admins = [a for p in process_tree(proc.pid) if (a := process_environ(p).get("AMBIENT_WAYPOINT_WORKER_ADMIN"))]
        if admins:
            with contextlib.suppress(Exception):
                dump = json.loads(await get_unix(str(Path(admins[0]).parent / "0.sock"), "/config_dump"))
                procs = dump["workers"]["processes"]
                if len(procs) == count and all(v.get("listen") for v in procs.values()):
                    break
        if time.monotonic() > deadline:
            raise RuntimeError("waypoint workers did not all listen within 30s")
        await asyncio.sleep(0.1)
    return proc, port, count


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _proc_round(mode: str, ca_dir: Path, static: Path, backend_port: int, app_port: int,
                      seconds: float, connections: int) -> ProcRound:
    wp: asyncio.subprocess.Process | None = None
    processes = 0
    if mode == "direct":
        host, port, identity, authority = "127.0.0.1", backend_port, WEB_ID, f"127.0.0.1:{app_port}"
    else:
        wp, port, processes = await _start_waypoint(mode, static, ca_dir, backend_port)
        host, identity, authority = "127.0.0.1", WP_ID, f"{WEB_VIP}:80"
    try:
        start_at = time.time() + 2.0  # interpreters started and connections warm by then
        per = [connections // CLIENT_PROCS + (i < connections % CLIENT_PROCS) for i in range(CLIENT_PROCS)]
        outs = [ca_dir.parent / f"client-{i}.json" for i in range(len(per))]
        clients = [await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT_CODE,
            json.dumps({"ca_dir": str(ca_dir), "host": host, "port": port, "identity": identity, "out": str(o),
                        "authority": authority, "connections": n, "start_at": start_at, "seconds": seconds}),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE) for n, o in zip(per, outs, strict=True)]
        tree = process_tree(wp.pid) if wp is not None else []
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = cpu_seconds(tree)
        await asyncio.sleep(max(0.0, start_at + seconds - time.time()))
        cpu = cpu_seconds(tree) - cpu0
        results = []
        for c, o in zip(clients, outs, strict=True):
            _out, err = await asyncio.wait_for(c.communicate(), 60)
            if c.returncode != 0:
                raise RuntimeError(f"load generator failed: {err.decode()[-800:]}")
            results.append(json.loads(o.read_text()))
            o.unlink()
    finally:
        if wp is not None:
            await _stop(wp)
    latencies = [x for r in results for x in r["latencies"]]
    return ProcRound(mode, processes, sum(r["requests"] for r in results), seconds, cpu, latencies)


async def measure_processes(seconds: float = 3.0, connections: int = PROC_CONNECTIONS, rounds: int = 3,
                            modes: tuple[str, ...] = ("direct", "1", "auto")) -> dict[str, list[ProcRound]]:
    """Rounds of every mode (alternating, so a noisy neighbour hits them alike): mode -> its rounds."""
    from ambient.hbone.pipe import TcpByteStream
    from ambient.hbone.protocol import ConnectRequest
    from ambient.hbone.server import Accept, Decision, HboneServer
    from ambient.identity.ca import LocalCA
    from ambient.tls.verify import PeerIdentity

    out: dict[str, list[ProcRound]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="wpbench") as tmp:
        ca_dir = Path(tmp) / "ca"
        ca = LocalCA.load_or_create(ca_dir)
        app = await asyncio.start_server(_keepalive_app, "127.0.0.1", 0)
        app_port = app.sockets[0].getsockname()[1]

        async def backend_handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
            return Accept(upstream=await TcpByteStream.connect("127.0.0.1", app_port))

        async with app, HboneServer(socket.create_server(("127.0.0.1", 0)), ca.issue(WEB_ID),
                                    backend_handler) as backend:
            static = Path(tmp) / "waypoint.yaml"
            static.write_text(standalone_state(app_port))
            for _ in range(rounds):
                for mode in modes:
                    out[mode].append(await _proc_round(mode, ca_dir, static, backend.address[1], app_port,
                                                       seconds, connections))
    return out


def process_figures(rounds: dict[str, list[ProcRound]]) -> list[dict[str, Any]]:
    """Figures of `measure_processes`: per-mode medians (pure)."""
    def med(mode: str, f: Any) -> float:
        return statistics.median(f(r) for r in rounds[mode])

    direct = med("direct", lambda r: r.rps)
    figs: list[dict[str, Any]] = [
        {"name": "without waypoint (own processes)", "value": direct, "unit": "req/s",
         "note": f"{CLIENT_PROCS} client processes -> backend node proxy"}]
    single: dict[str, float] = {}
    for mode in [m for m in rounds if m != "direct"]:
        n = max(r.processes for r in rounds[mode])
        label = "1 process" if mode == "1" else f"workers={mode} ({n} process{'es' if n > 1 else ''})"
        rps, cpu = med(mode, lambda r: r.rps), med(mode, lambda r: r.cores_per_1000)
        rps_fig: dict[str, Any] = {"name": f"through waypoint, {label}", "value": rps, "unit": "req/s",
                                   "baseline": "without waypoint (own processes)", "baseline_value": direct}
        cpu_fig: dict[str, Any] = {"name": f"waypoint CPU per 1,000 req/s, {label} (process tree)", "value": cpu,
                                   "unit": "cores", "better": "lower",
                                   "note": "the waypoint's process tree (primary + workers), from /proc"}
        if single:
            cpu_fig.update(baseline="waypoint CPU per 1,000 req/s, 1 process (process tree)",
                           baseline_value=single["cpu"])
        figs += [rps_fig,
                 {"name": f"through waypoint p99, {label}", "value": med(mode, lambda r: r.pct(0.99)), "unit": "ms",
                  "better": "lower", "baseline": "without waypoint p99 (own processes)",
                  "baseline_value": med("direct", lambda r: r.pct(0.99))},
                 cpu_fig,
                 {"name": f"waypoint cores used, {label}", "value": med(mode, lambda r: r.cores_used),
                  "unit": "cores", "note": "waypoint process-tree CPU seconds per second of the run"}]
        if mode == "1":
            single = {"rps": rps, "cpu": cpu}
        elif single:
            figs.append({"name": f"waypoint req/s, {label} / 1 process", "value": rps / single["rps"],
                         "unit": "x", "note": "medians of the rounds"})
    return figs


def run(quick: bool = False) -> dict[str, Any]:
    """For `make bench` (`components.waypoint_run` calls it): the loopback figures (one process, as
    before) and the waypoint as its own processes, 1 and `auto` (median of the rounds)."""
    import logging

    access = logging.getLogger("ambient.waypoint.access")
    access.setLevel(logging.INFO)
    access.addHandler(logging.NullHandler())
    access.propagate = False
    seconds, concurrency = (1.0 if quick else 3.0), 8
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    direct, via = runner(measure(seconds, concurrency))
    figs: list[dict[str, Any]] = [
        {"name": "without waypoint", "value": direct.rps, "unit": "req/s"},
        {"name": "through waypoint", "value": via.rps, "unit": "req/s", "baseline": "without waypoint",
         "baseline_value": direct.rps},
    ]
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        figs.append({"name": f"through waypoint {label}", "value": via.pct(q), "unit": "ms", "better": "lower",
                     "baseline": f"without waypoint {label}", "baseline_value": direct.pct(q)})
        figs.append({"name": f"added {label}", "value": via.pct(q) - direct.pct(q), "unit": "ms", "better": "lower"})
    figs.append({"name": "waypoint CPU per 1,000 req/s", "value": via.cpu_per_request_ms - direct.cpu_per_request_ms,
                 "unit": "cores", "better": "lower", "note": "process CPU per request, waypoint minus direct"})
    direct, plain, istio = runner(measure_istio(seconds, concurrency))
    figs += [
        {"name": "waypoint with VS+DR+JWT", "value": istio.rps, "unit": "req/s",
         "baseline": "plain waypoint (same run)", "baseline_value": plain.rps},
        {"name": "VS+DR+JWT added p99", "value": istio.pct(0.99) - plain.pct(0.99), "unit": "ms", "better": "lower",
         "note": "p99 with a VirtualService, DestinationRule and JWT check minus the plain waypoint's, same run"},
        {"name": "waypoint with VS+DR+JWT CPU per 1,000 req/s",
         "value": istio.cpu_per_request_ms - direct.cpu_per_request_ms, "unit": "cores", "better": "lower",
         "baseline": "plain waypoint CPU per 1,000 req/s (same run)",
         "baseline_value": plain.cpu_per_request_ms - direct.cpu_per_request_ms,
         "note": "process CPU per request, waypoint minus direct"},
    ]
    proc_rounds = 1 if quick else 3
    per_mode = runner(measure_processes(seconds, PROC_CONNECTIONS, proc_rounds))
    figs += process_figures(per_mode)
    return {
        "figures": figs,
        "conditions": {
            "seconds_each": seconds,
            "concurrency": concurrency,
            "where": "loopback, one process, closed loop keep-alive HTTP/1.1",
            "own processes": f"waypoint as its own process(es), {CLIENT_PROCS} client processes with "
                             f"{PROC_CONNECTIONS} keep-alive HBONE connections, backend in the bench process; "
                             f"{proc_rounds} alternating rounds, medians; {len(os.sched_getaffinity(0))} cores, "
                             "shared with the load generators and the backend",
            "own-process rounds, req/s (waypoint cores per 1,000 req/s)": " | ".join(
                f"{mode}: " + ", ".join(f"{r.rps:.0f}" + (f" ({r.cores_per_1000:.3f})" if r.processes else "")
                                        for r in results) for mode, results in per_mode.items()),
        },
    }


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--processes"]:  # only the waypoint as its own processes: [seconds] [rounds]
        seconds = float(args[1]) if len(args) > 1 else 3.0
        rounds = int(args[2]) if len(args) > 2 else 3
        per_mode = asyncio.run(measure_processes(seconds, PROC_CONNECTIONS, rounds))
        for mode, results in per_mode.items():
            print(mode, " ".join(f"{r.rps:.0f} req/s {r.cores_per_1000:.3f} cores/1k {r.cores_used:.2f} cores"
                                 for r in results))
        for fig in process_figures(per_mode):
            print(f"{fig['name']}: {fig['value']:.3f} {fig['unit']}"
                  + (f" (vs {fig['baseline']}: {fig['baseline_value']:.3f})" if "baseline" in fig else ""))
        return
    seconds = float(args[0]) if args else 3.0
    concurrency = int(args[1]) if len(args) > 1 else 8
    # access lines are formatted as in production (then dropped: terminal I/O is not the waypoint's cost)
    import logging

    access = logging.getLogger("ambient.waypoint.access")
    access.setLevel(logging.INFO)
    access.addHandler(logging.NullHandler())
    access.propagate = False
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    direct, via = asyncio.run(measure(seconds, concurrency))
    print(f"loopback, one process, {concurrency} keep-alive clients, {seconds:.0f}s each")
    print(direct.line())
    print(via.line())
    added = via.cpu_per_request_ms - direct.cpu_per_request_ms
    print(f"added latency p50 {via.pct(0.5) - direct.pct(0.5):+.2f} ms, p99 {via.pct(0.99) - direct.pct(0.99):+.2f} ms")
    print(f"waypoint CPU: {added:.3f} ms/request = {added:.2f} cores per 1,000 req/s")
    direct, plain, istio = asyncio.run(measure_istio(seconds, concurrency))
    print("with a VirtualService + DestinationRule + JWT check on the path (same run):")
    for r in (direct, plain, istio):
        print(r.line())
    extra = istio.cpu_per_request_ms - plain.cpu_per_request_ms
    print(f"vs+dr+jwt: p99 {istio.pct(0.99) - plain.pct(0.99):+.2f} ms over the plain waypoint; waypoint CPU "
          f"{istio.cpu_per_request_ms - direct.cpu_per_request_ms:.2f} cores per 1,000 req/s "
          f"({extra:+.2f} over the plain waypoint)")
    if statistics.mean(via.latencies or [0]) == 0:  # pragma: no cover
        sys.exit(1)


if __name__ == "__main__":
    main()
