"""VirtualService + DestinationRule at the waypoint, end to end on loopback (client -> HBONE -> waypoint ->
HBONE -> backend app): subset routing by header (Istio's request-routing task), weighted subsets, fault
injection (abort with response flag FI, delay), a missing subset (503 NC), and an HTTPRoute on the same
Service taking precedence. The apps answer with their version, so every assertion is on what the backend
that answered was."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from ambient.bench.loopback import loopback
from helpers import Http1Client

pytestmark = pytest.mark.timeout(60)

META = {"namespace": "shop", "creationTimestamp": "2024-01-01T00:00:00Z"}
PODS = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"reviews-{v}-pod", "namespace": "shop",
                                                         "labels": {"app": "reviews", "version": v}}}
        for v in ("v1", "v2")]
DR = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "reviews", **META},
      "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                              {"name": "v2", "labels": {"version": "v2"}}]}}


def vs(http: list[dict[str, Any]], name: str = "reviews") -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name, **META},
            "spec": {"hosts": ["reviews"], "http": http}}


def dest(subset: str, weight: int | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"destination": {"host": "reviews", "subset": subset}}
    if weight is not None:
        d["weight"] = weight
    return d


ROUTING = vs([
    {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [dest("v2")]},
    {"route": [dest("v1")]},
])


async def versions(c: Http1Client, n: int, headers: dict[str, str] | None = None, path: str = "/") -> dict[str, int]:
    out: dict[str, int] = {}
    for _ in range(n):
        status, _, body = await c.request(path, headers)
        key = json.loads(body)["version"] if status == 200 else str(status)
        out[key] = out.get(key, 0) + 1
    return out


async def test_header_match_routes_to_subset_v2_and_everything_else_to_v1() -> None:
    async with loopback([ROUTING, DR, *PODS]) as lb:
        c = Http1Client(await lb.open())
        assert await versions(c, 20, {"end-user": "jason"}) == {"v2": 20}
        assert await versions(c, 20, {"end-user": "mary"}) == {"v1": 20}
        assert await versions(c, 20) == {"v1": 20}
        c.stream.close()


async def test_weighted_subsets_split_80_20() -> None:
    async with loopback([vs([{"route": [dest("v1", 80), dest("v2", 20)]}]), DR, *PODS]) as lb:
        c = Http1Client(await lb.open())
        got = await versions(c, 200)
        assert set(got) <= {"v1", "v2"} and abs(got.get("v1", 0) / 200 - 0.8) <= 0.05, got
        c.stream.close()


async def test_abort_fault_answers_some_requests_500_with_flag_fi(caplog: pytest.LogCaptureFixture) -> None:
    http = [{"route": [dest("v1")], "fault": {"abort": {"httpStatus": 500, "percentage": {"value": 50}}}}]
    caplog.set_level(logging.INFO)
    async with loopback([vs(http), DR, *PODS]) as lb:
        c = Http1Client(await lb.open())
        got = await versions(c, 200)
        assert set(got) == {"v1", "500"} and 80 <= got["500"] <= 120, got
        status, _, body = await c.request("/")
        while status != 500:
            status, _, body = await c.request("/")
        assert body == b"fault filter abort\n"
        c.stream.close()
        text = lb.metrics.exposition().decode()
        assert 'response_flags="FI"' in text and 'response_code="500"' in text
    lines = [r.getMessage() for r in caplog.records if "request complete" in r.getMessage()]
    aborted = [ln for ln in lines if "http.status=500" in ln]
    assert len(aborted) >= 80 and all("response_flags=FI" in ln for ln in aborted), aborted[:2]


async def test_delay_fault_holds_every_request_and_marks_di(caplog: pytest.LogCaptureFixture) -> None:
    http = [{"route": [dest("v1")], "fault": {"delay": {"fixedDelay": "300ms", "percentage": {"value": 100}}}}]
    async with loopback([vs(http), DR, *PODS]) as lb:
        c = Http1Client(await lb.open())
        for _ in range(3):
            start = time.monotonic()
            status, _, body = await c.request("/")
            assert status == 200 and json.loads(body)["version"] == "v1"
            assert time.monotonic() - start >= 0.3
        c.stream.close()
        assert 'response_flags="DI"' in lb.metrics.exposition().decode()


async def test_subset_no_destination_rule_defines_is_503_nc() -> None:
    async with loopback([vs([{"route": [dest("v3")]}]), DR, *PODS]) as lb:
        c = Http1Client(await lb.open())
        status, _, body = await c.request("/")
        assert status == 503 and b"subset 'v3'" in body
        c.stream.close()
        assert lb.backend_seen == []


async def test_uri_prefix_rewrite_and_first_match_order() -> None:
    http = [
        {"match": [{"uri": {"prefix": "/api"}}], "rewrite": {"uri": "/v2"}, "route": [dest("v2")]},
        {"match": [{"uri": {"prefix": "/api/special"}}], "route": [dest("v1")]},  # shadowed: order wins
        {"route": [dest("v1")]},
    ]
    async with loopback([vs(http), DR, *PODS]) as lb:
        c = Http1Client(await lb.open())
        status, _, body = await c.request("/api/special/x?q=1")
        seen = json.loads(body)
        assert status == 200 and seen["version"] == "v2" and seen["path"] == "/v2/special/x?q=1"
        c.stream.close()


async def test_httproute_on_the_same_service_takes_precedence() -> None:
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r", **META},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 80}],
                      "rules": [{"backendRefs": [{"name": "reviews-v2", "port": 80}]}]}}
    async with loopback([ROUTING, DR, route, *PODS]) as lb:
        c = Http1Client(await lb.open())
        assert await versions(c, 5) == {"v2": 5}  # the VirtualService would have sent these to v1
        c.stream.close()
