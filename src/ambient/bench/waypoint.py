"""Loopback benchmark of the waypoint (for `make bench`; never a timed test).

Same process, same event loop, same HTTP app for both paths, `concurrency` keep-alive HTTP/1.1 clients:
- direct:   client --HBONE--> backend node proxy (HboneServer) --TCP--> app
- waypoint: client --HBONE--> waypoint --HBONE (pooled keep-alive connections)--> backend --TCP--> app
Reports requests/s, p50/p99 latency and the process CPU per request; the difference of the two CPU
figures is the waypoint's own cost, given as cores per 1,000 req/s (goal: <= 0.25).
Run `python -m ambient.bench.waypoint [seconds] [concurrency]`.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from ambient.bench.loopback import REVIEWS_VIP, Loopback, loopback

REQUEST = b"GET /bench HTTP/1.1\r\nHost: reviews.shop.svc.cluster.local\r\n\r\n"


@dataclass
class Result:
    label: str
    requests: int
    seconds: float
    cpu: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else 0.0

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


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
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
