"""DestinationRule traffic policy resolution, circuit breaker admission and outlier ejection."""

from __future__ import annotations

import asyncio

import pytest

from ambient.l7.traffic_policy import UNLIMITED, ConnectionPool, OutlierDetection, resolve
from ambient.waypoint.breakers import CircuitBreaker, OutlierDetector
from ambient.waypoint.errors import UpstreamError


def test_resolve_subset_over_top_and_port_level_over_policy() -> None:
    top = {"connectionPool": {"tcp": {"maxConnections": 10}},
           "outlierDetection": {"consecutive5xxErrors": 3, "baseEjectionTime": "1m"},
           "portLevelSettings": [{"port": {"number": 9080}, "connectionPool": {"tcp": {"maxConnections": 2}}}]}
    assert resolve(top, None, 80).pool.max_connections == 10
    assert resolve(top, None, 9080).pool.max_connections == 2
    sub = {"connectionPool": {"http": {"http1MaxPendingRequests": 1}}}
    p = resolve(top, sub, 80)
    # the section is taken whole from the most specific place: no maxConnections from the top level
    assert (p.pool.max_connections, p.pool.max_pending) == (UNLIMITED, 1)
    assert p.outlier == OutlierDetection(3, 0, 10.0, 60.0, 10)
    assert resolve({}, None, 80).outlier is None and not resolve({}, None, 80).pool.limited


async def test_breaker_admits_queues_and_overflows() -> None:
    b = CircuitBreaker(ConnectionPool(max_connections=1, max_pending=1))
    await b.acquire()  # in flight
    waiter = asyncio.create_task(b.acquire())  # queued
    await asyncio.sleep(0)
    with pytest.raises(UpstreamError) as exc:
        await b.acquire()
    assert exc.value.flags == "UO" and exc.value.status == 503
    assert not waiter.done()
    b.release()  # the queued one gets the slot
    await asyncio.wait_for(waiter, 1)
    assert (b.active, b.requests) == (1, 1)
    b.release()
    assert (b.active, b.requests) == (0, 0)


async def test_cancelled_waiter_leaves_the_queue() -> None:
    b = CircuitBreaker(ConnectionPool(max_connections=1, max_pending=1))
    await b.acquire()
    waiter = asyncio.create_task(b.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    another = asyncio.create_task(b.acquire())  # the queue has room again
    await asyncio.sleep(0)
    b.release()
    await asyncio.wait_for(another, 1)
    b.release()
    assert (b.active, b.requests) == (0, 0)


async def test_max_requests_overflows() -> None:
    b = CircuitBreaker(ConnectionPool(max_requests=1))
    await b.acquire()
    with pytest.raises(UpstreamError):
        await b.acquire()


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_outlier_ejects_for_base_time_times_ejections_and_returns() -> None:
    clock = Clock()
    d = OutlierDetector(OutlierDetection(consecutive_5xx=2, base_ejection=10, max_ejection_percent=100), clock)
    assert not d.report("a", 500, 2)
    assert not d.report("a", 200, 2)  # a success resets the count
    assert not d.report("a", 500, 2)
    assert d.report("a", 503, 2) and d.ejected("a")
    clock.now = 9.9
    assert d.ejected("a")
    clock.now = 10.1
    assert not d.ejected("a")
    d.report("a", 500, 2)
    assert d.report("a", 500, 2)
    clock.now = 10.1 + 19.9
    assert d.ejected("a")  # second ejection: twice as long


def test_outlier_respects_max_ejection_percent_but_always_allows_one() -> None:
    d = OutlierDetector(OutlierDetection(consecutive_5xx=1, max_ejection_percent=10), Clock())
    assert d.report("a", 500, 2)  # one may always be ejected
    assert not d.report("b", 500, 2)  # a second would be 100% > 10%


def test_balancer_round_robin_least_request_and_consistent_hash() -> None:
    import random

    from ambient.waypoint.breakers import Balancer

    b = Balancer()
    rng = random.Random(3)
    hosts = ["a", "b", "c"]
    picks = [b.choose(("svc", 80, ""), hosts, "ROUND_ROBIN", None, rng) for _ in range(6)]
    assert picks[:3] == picks[3:] and sorted(picks[:3]) == [0, 1, 2]
    b.in_flight["a"] = 5
    b.in_flight["b"] = 5
    assert all(b.choose(("svc", 80, ""), ["a", "c"], "LEAST_REQUEST", None, rng) == 1 for _ in range(10))
    same = {b.choose(("svc", 80, ""), hosts, "", "user-1", rng) for _ in range(10)}
    assert len(same) == 1
    spread = {b.choose(("svc", 80, ""), hosts, "", f"user-{i}", rng) for i in range(50)}
    assert spread == {0, 1, 2}
    # removing another endpoint does not move a key whose endpoint stays
    chosen = hosts[b.choose(("svc", 80, ""), hosts, "", "user-7", rng)]
    removed = next(h for h in hosts if h != chosen)
    rest = [h for h in hosts if h != removed]
    assert rest[b.choose(("svc", 80, ""), rest, "", "user-7", rng)] == chosen
