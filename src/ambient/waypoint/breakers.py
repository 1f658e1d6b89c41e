"""The waypoint's per-upstream circuit breakers and outlier detection (DestinationRule `connectionPool` and
`outlierDetection`), as Envoy applies them for Istio.

`CircuitBreaker` (one per upstream cluster: Service, port, subset) admits a request to an upstream
exchange: while fewer than `max_connections` exchanges are in flight it goes at once; otherwise it waits
in a queue of at most `max_pending` requests (HTTP/1.1 uses one connection per request in flight, so busy
connections are the exchanges in flight); beyond that, or beyond `max_requests` concurrent requests, it
is refused: the waypoint answers 503 with response flag UO (Envoy's upstream overflow). A waiter gets the
first slot released, in arrival order; a cancelled waiter leaves the queue.

`OutlierDetector` (one per upstream cluster) counts consecutive 5xx answers (and connection failures) per
endpoint; at `consecutive_5xx` (or `consecutive_gateway` 502/503/504 / failures) the endpoint is ejected for
`base_ejection` x the number of times it was ejected, unless that would eject more than
`max_ejection_percent` of the endpoints (one may always be ejected). An ejected endpoint gets no
requests until its time is over, unless every endpoint is ejected (Envoy's panic mode routes to all).
Any non-5xx answer resets the endpoint's count. State is bounded by the endpoints seen.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ambient.l7.traffic_policy import ConnectionPool, OutlierDetection
from ambient.waypoint.errors import UpstreamError

_MAX_CLUSTERS = 4096


class CircuitBreaker:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.active = 0  # exchanges in flight
        self.requests = 0  # requests admitted (in flight or queued)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def _overflow(self, what: str) -> UpstreamError:
        return UpstreamError(f"upstream connect error or disconnect/reset before headers. reset reason: overflow "
                             f"({what})", status=503, flags="UO")

    async def acquire(self) -> None:
        if self.requests >= self.pool.max_requests:
            raise self._overflow("max requests")
        if self.active < self.pool.max_connections and not self._waiters:
            self.active += 1
            self.requests += 1
            return
        if len(self._waiters) >= self.pool.max_pending:
            raise self._overflow("max pending requests")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.requests += 1
        try:
            await fut  # resolved by release(), which hands its slot over (active unchanged)
        except BaseException:
            self.requests -= 1
            if fut.done() and not fut.cancelled():
                self._release_slot()  # the slot was handed to us as we were cancelled: pass it on
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.requests -= 1
        self._release_slot()

    def _release_slot(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.active -= 1


@dataclass
class _Host:
    failures: int = 0
    gateway_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0


class OutlierDetector:
    def __init__(self, settings: OutlierDetection, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._hosts: dict[str, _Host] = {}

    def ejected(self, host: str) -> bool:
        h = self._hosts.get(host)
        return h is not None and h.ejected_until > self._clock()

    def report(self, host: str, status: int, endpoints: int) -> bool:
        """Record an answer (status 503 for a connection failure) from `host`, one of `endpoints` endpoints
        of the cluster; True when this ejected it."""
        h = self._hosts.get(host)
        if h is None:
            if len(self._hosts) > 4 * max(endpoints, 64):  # endpoints come and go: forget the healthy ones
                self._hosts = {k: v for k, v in self._hosts.items() if v.ejections}
            h = self._hosts[host] = _Host()
        if status < 500:
            h.failures = h.gateway_failures = 0
            return False
        s = self.settings
        h.failures += 1
        h.gateway_failures = h.gateway_failures + 1 if status in (502, 503, 504) else 0
        trip = (s.consecutive_5xx > 0 and h.failures >= s.consecutive_5xx) or (
            s.consecutive_gateway > 0 and h.gateway_failures >= s.consecutive_gateway)
        now = self._clock()
        if not trip or h.ejected_until > now:
            return False
        ejected = sum(1 for o in self._hosts.values() if o.ejected_until > now)
        if ejected >= 1 and (ejected + 1) * 100 > s.max_ejection_percent * max(endpoints, 1):
            return False
        h.ejections += 1
        h.ejected_until = now + s.base_ejection * h.ejections
        h.failures = h.gateway_failures = 0
        return True


class Breakers:
    """The breakers and detectors of every upstream cluster, created on first use with the cluster's current
    settings (a changed DestinationRule replaces them)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._breakers: dict[tuple[str, int, str], CircuitBreaker] = {}
        self._outliers: dict[tuple[str, int, str], OutlierDetector] = {}

    def breaker(self, key: tuple[str, int, str], pool: ConnectionPool) -> CircuitBreaker | None:
        if not pool.limited:
            self._breakers.pop(key, None)
            return None
        b = self._breakers.get(key)
        if b is None or b.pool != pool:
            if len(self._breakers) > _MAX_CLUSTERS:
                self._breakers = {k: v for k, v in self._breakers.items() if v.requests}
            b = self._breakers[key] = CircuitBreaker(pool)
        return b

    def outlier(self, key: tuple[str, int, str], settings: OutlierDetection | None) -> OutlierDetector | None:
        if settings is None:
            self._outliers.pop(key, None)
            return None
        d = self._outliers.get(key)
        if d is None or d.settings != settings:
            if len(self._outliers) > _MAX_CLUSTERS:
                self._outliers.clear()
            d = self._outliers[key] = OutlierDetector(settings, self._clock)
        return d


def _hrw(key: str, host: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\0{host}".encode(), digest_size=8).digest(), "big")


class Balancer:
    """DestinationRule `loadBalancer` over the usable endpoints of one cluster (their host keys, stable
    order): ROUND_ROBIN (a counter per cluster), LEAST_REQUEST (Envoy's power of two choices on requests in
    flight), RANDOM, and `consistentHash` on a header or the source IP (rendezvous hashing: the same key
    keeps its endpoint, and only the keys of a removed endpoint move). Returns an index into `hosts`."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, int, str], int] = {}
        self.in_flight: collections.Counter[str] = collections.Counter()

    def choose(self, cluster: tuple[str, int, str], hosts: list[str], simple: str, hash_key: str | None,
               rng: random.Random) -> int:
        if len(hosts) == 1:
            return 0
        if hash_key is not None:
            return max(range(len(hosts)), key=lambda i: _hrw(hash_key, hosts[i]))
        if simple == "ROUND_ROBIN":
            if len(self._counters) > _MAX_CLUSTERS:
                self._counters.clear()
            n = self._counters.get(cluster, rng.randrange(len(hosts)))  # random start, as Envoy
            self._counters[cluster] = n + 1
            return n % len(hosts)
        if simple in ("LEAST_REQUEST", "LEAST_CONN"):
            a, b = rng.sample(range(len(hosts)), 2)
            return a if self.in_flight[hosts[a]] <= self.in_flight[hosts[b]] else b
        return rng.randrange(len(hosts))
