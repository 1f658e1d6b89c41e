"""What the waypoint keeps between requests (per connection and L7 config: the applicable policies and the
default route; per state snapshot: backend Services and their endpoints) never outlives a change: the next
request on the same keep-alive connection sees a new AuthorizationPolicy, a new route and new endpoints."""

from __future__ import annotations

import dataclasses
import random
import uuid
from typing import Any

import pytest
from test_waypoint_pool import DENY_ADMIN, get

from ambient.bench.loopback import NS, REVIEWS_VIP, build_state, loopback
from ambient.state.store import view_of
from ambient.waypoint.server import uuid4_text

pytestmark = pytest.mark.timeout(60)

ALL_TO_V2 = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "to-v2", "namespace": NS, "creationTimestamp": "2024-01-01T00:00:00Z"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 80}],
                      "rules": [{"backendRefs": [{"name": "reviews-v2", "port": 80}]}]}}


async def versions(stream: Any, buf: bytearray, n: int) -> set[str]:
    out = set()
    for i in range(n):
        status, body = await get(stream, buf, f"/v/{i}")
        assert status == 200 and isinstance(body, dict)
        out.add(body["version"])
    return out


async def test_config_changes_reach_the_next_request_on_the_same_connection() -> None:
    async with loopback() as lb:
        stream = await lb.open(f"{REVIEWS_VIP}:80")
        buf = bytearray()
        assert (await get(stream, buf, "/admin/x"))[0] == 200
        assert await versions(stream, buf, 30) == {"v1", "v2"}
        lb.set_objects([DENY_ADMIN])  # a policy now applies to the connection's Service
        assert await get(stream, buf, "/admin/x") == (403, b"RBAC: access denied\n")
        lb.set_objects([DENY_ADMIN, ALL_TO_V2])  # a route now attaches to it
        assert await versions(stream, buf, 10) == {"v2"}
        lb.set_objects([])  # both gone again
        assert (await get(stream, buf, "/admin/x"))[0] == 200
        assert await versions(stream, buf, 30) == {"v1", "v2"}
        stream.close()


async def test_a_state_change_reaches_the_next_request_on_the_same_connection() -> None:
    async with loopback() as lb:
        stream = await lb.open(f"{REVIEWS_VIP}:80")
        buf = bytearray()
        assert await versions(stream, buf, 30) == {"v1", "v2"}
        before = build_state()
        reviews = f"{NS}/reviews.{NS}.svc.cluster.local"
        # reviews-v1's pod leaves Service reviews: a new snapshot, as a state delta publishes one
        workloads = [dataclasses.replace(wl, services={k: v for k, v in wl.services.items() if k != reviews})
                     if wl.name == "reviews-v1-pod" else wl for wl in before.workloads()]
        after = view_of(workloads, list(before.services()))
        lb.waypoint._state = lambda: after
        assert await versions(stream, buf, 20) == {"v2"}
        lb.waypoint._state = lambda: before
        assert await versions(stream, buf, 30) == {"v1", "v2"}
        stream.close()


def test_request_ids_are_the_uuid4_text_of_the_same_random_bits() -> None:
    rng = random.Random(11)
    for bits in [0, 2**128 - 1, *(rng.getrandbits(128) for _ in range(5000))]:
        assert uuid4_text(bits) == str(uuid.UUID(int=bits, version=4))
