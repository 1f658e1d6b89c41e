"""DestinationRule connectionPool and outlierDetection at the waypoint, end to end on loopback (Istio's
circuit-breaking task): with maxConnections 1 and http1MaxPendingRequests 1, 20 concurrent slow requests
get some 503 with response flag UO and the rest 200; an endpoint that fails is ejected (no request reaches
it for baseEjectionTime) and gets requests again after."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest

from ambient.bench.loopback import loopback
from helpers import Http1Client

pytestmark = pytest.mark.timeout(60)

META = {"namespace": "shop", "creationTimestamp": "2024-01-01T00:00:00Z"}


def dr(policy: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "reviews", **META},
            "spec": {"host": "reviews", "trafficPolicy": policy}}


async def test_connection_pool_overflow_is_503_uo() -> None:
    pool = dr({"connectionPool": {"tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1}}})
    async with loopback([pool]) as lb:
        clients = [Http1Client(await lb.open()) for _ in range(20)]
        answers = await asyncio.gather(*(c.request("/delay/300") for c in clients))
        codes = [status for status, _, _ in answers]
        assert set(codes) == {200, 503} and 2 <= codes.count(200) <= 4, codes
        overflow = next(body for status, _, body in answers if status == 503)
        assert b"overflow" in overflow
        assert 'response_flags="UO"' in lb.metrics.exposition().decode()
        # the breaker let go of every slot: requests go through again, one after the other
        c = Http1Client(await lb.open())
        assert [(await c.request("/"))[0] for _ in range(3)] == [200, 200, 200]
        for cl in (*clients, c):
            cl.stream.close()


async def test_outlier_detection_ejects_a_failing_endpoint_then_sends_to_it_again() -> None:
    outlier = dr({"outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "1s",
                                       "maxEjectionPercent": 100}})
    async with loopback([outlier]) as lb:
        with socket.socket() as s:  # a port nothing listens on: v2's app is down
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        good = lb.apps["127.0.0.12"]
        lb.apps["127.0.0.12"] = dead
        c = Http1Client(await lb.open())
        statuses = []
        for _ in range(40):  # random picks: v2 is hit (and fails) within a few requests
            status, _, _ = await c.request("/")
            statuses.append(status)
            if status == 503:
                break
        assert statuses[-1] == 503, statuses
        ejected_at = time.monotonic()
        lb.apps["127.0.0.12"] = good  # v2 is back, but ejected: nothing goes to it until its time is over
        seen = []
        while time.monotonic() - ejected_at < 0.8:
            status, _, body = await c.request("/")
            assert status == 200
            seen.append(json.loads(body)["version"])
        assert set(seen) == {"v1"} and len(seen) >= 5, seen
        await asyncio.sleep(max(0.0, 1.2 - (time.monotonic() - ejected_at)))
        again = []
        for _ in range(40):
            status, _, body = await c.request("/")
            again.append(json.loads(body)["version"])
            if again[-1] == "v2":
                break
        assert again[-1] == "v2", again
        c.stream.close()


async def test_load_balancer_round_robin_and_consistent_hash() -> None:
    async with loopback([dr({"loadBalancer": {"simple": "ROUND_ROBIN"}})]) as lb:
        c = Http1Client(await lb.open())
        seen = [json.loads((await c.request("/"))[2])["version"] for _ in range(6)]
        assert seen[0::2] == [seen[0]] * 3 and seen[1::2] == [seen[1]] * 3 and seen[0] != seen[1], seen
        lb.set_objects([dr({"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}})])
        by_user: dict[str, set[str]] = {}
        for i in range(40):
            user = f"user-{i % 8}"
            _, _, body = await c.request("/", {"x-user": user})
            by_user.setdefault(user, set()).add(json.loads(body)["version"])
        assert all(len(v) == 1 for v in by_user.values()), by_user  # each user sticks to one endpoint
        assert set().union(*by_user.values()) == {"v1", "v2"}  # and the users spread over both
        c.stream.close()


async def test_max_requests_per_connection_closes_the_upstream_connection() -> None:
    async with loopback([dr({"connectionPool": {"http": {"maxRequestsPerConnection": 2}}})]) as lb:
        c = Http1Client(await lb.open())
        for _ in range(8):
            assert (await c.request("/"))[0] == 200
        c.stream.close()
        # every upstream connection served 2 requests (at most 2 endpoints with a connection half used)
        assert 4 <= len(lb.backend_seen) <= 5, lb.backend_seen
