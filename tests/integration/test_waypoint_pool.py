"""The waypoint's upstream connection pool end to end on loopback (client -> waypoint -> backend proxy -> app).

Pooled keep-alive connections must not change what each request gets: routing and the endpoint pick are
per request, the L7 policy is per request, every request is logged and counted, the backend proxy sees
only the waypoint's identity, and concurrent requests never share a connection (no crossed responses)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from ambient.bench.loopback import REVIEWS_VIP, WAYPOINT_ID, loopback

pytestmark = pytest.mark.timeout(60)

SPLIT = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
         "metadata": {"name": "split", "namespace": "shop", "creationTimestamp": "2024-01-01T00:00:00Z"},
         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 80}],
                  "rules": [{"backendRefs": [{"name": "reviews-v1", "port": 80, "weight": 50},
                                             {"name": "reviews-v2", "port": 80, "weight": 50}]}]}}
DENY_ADMIN = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
              "metadata": {"name": "deny-admin", "namespace": "shop"},
              "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}], "action": "DENY",
                       "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}}


async def get(stream: Any, buf: bytearray, path: str) -> tuple[int, dict[str, Any] | bytes]:
    """One keep-alive GET; the answers here always carry Content-Length."""
    await stream.write(f"GET {path} HTTP/1.1\r\nHost: reviews.shop.svc.cluster.local\r\n\r\n".encode())
    while b"\r\n\r\n" not in buf:
        data = await stream.read()
        assert data, "closed mid-response"
        buf += data
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end]).decode("latin-1").lower()
    length = int(head.split("content-length:")[1].split("\r\n")[0])
    while len(buf) < end + 4 + length:
        data = await stream.read()
        assert data, "closed mid-body"
        buf += data
    body = bytes(buf[end + 4:end + 4 + length])
    del buf[:end + 4 + length]
    status = int(head.split()[1])
    return status, json.loads(body) if status == 200 else body


async def test_pooled_connections_keep_per_request_routing_policy_and_telemetry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ambient.waypoint.access")
    async with loopback([SPLIT, DENY_ADMIN]) as lb:
        stream = await lb.open(f"{REVIEWS_VIP}:80")
        buf = bytearray()
        versions = []
        for i in range(40):
            status, body = await get(stream, buf, f"/r/{i}")
            assert status == 200 and isinstance(body, dict) and body["path"] == f"/r/{i}"
            versions.append(body["version"])
            if i == 20:  # the policy still applies to each request on the warm pool
                assert await get(stream, buf, "/admin/x") == (403, b"RBAC: access denied\n")
        stream.close()
        assert {"v1", "v2"} <= set(versions)  # the weighted split still picks per request
        # one tunnel per endpoint carried all of them, each with the waypoint's identity
        assert sorted(a for a, _ in lb.backend_seen) == ["127.0.0.11:8080", "127.0.0.12:8080"]
        assert {peer for _, peer in lb.backend_seen} == {WAYPOINT_ID}
        text = lb.metrics.exposition().decode()
    lines = [r.getMessage() for r in caplog.records if r.name == "ambient.waypoint.access"]
    assert sum("http.status=200" in ln for ln in lines) == 40
    assert sum("http.status=403" in ln for ln in lines) == 1
    assert sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith("istio_requests_total{") and 'response_code="200"' in ln) == 40


async def test_concurrent_requests_never_share_an_upstream_connection() -> None:
    async with loopback() as lb:
        async def client(n: int) -> None:
            stream = await lb.open(f"{REVIEWS_VIP}:80")
            buf = bytearray()
            try:
                for i in range(15):
                    status, body = await get(stream, buf, f"/c{n}/{i}")
                    assert status == 200 and isinstance(body, dict) and body["path"] == f"/c{n}/{i}"
            finally:
                stream.close()

        async with asyncio.TaskGroup() as tg:
            for n in range(6):
                tg.create_task(client(n))
        # at most one connection per concurrent request and endpoint, far fewer than the 90 requests
        assert 2 <= len(lb.backend_seen) <= 12
