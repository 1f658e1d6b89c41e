"""TCPRoute at the waypoint on loopback: connections to a TCP Service port are split between its
backendRefs by weight (here the TCP echo and an HTTP app, told apart by what comes back)."""

from __future__ import annotations

import pytest

from ambient.bench.loopback import ECHO_VIP, loopback

pytestmark = pytest.mark.timeout(60)

ROUTE = {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
         "metadata": {"name": "echo", "namespace": "shop", "creationTimestamp": "2024-01-01T00:00:00Z"},
         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 9000}],
                  "rules": [{"backendRefs": [{"name": "echo", "port": 9000, "weight": 3},
                                             {"name": "reviews-v1", "port": 80, "weight": 1}]}]}}
PROBE = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"


async def test_tcp_route_splits_connections_by_weight() -> None:
    async with loopback([ROUTE]) as lb:
        seen = []
        for _ in range(8):
            stream = await lb.open(f"{ECHO_VIP}:9000")
            await stream.write(PROBE)
            got = await stream.read()
            seen.append("echo" if got.startswith(b"GET /") else "http" if got.startswith(b"HTTP/1.1") else repr(got))
            stream.close()
        assert seen.count("echo") == 6 and seen.count("http") == 2, seen
