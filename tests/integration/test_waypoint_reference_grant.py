"""ReferenceGrant at the waypoint on loopback: an HTTPRoute in another namespace that sends to a Service of
namespace shop is answered 500 (nothing forwarded) until a ReferenceGrant in shop allows it."""

from __future__ import annotations

import json

import pytest

from ambient.bench.loopback import loopback
from helpers import Http1Client

pytestmark = pytest.mark.timeout(60)

ROUTE = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
         "metadata": {"name": "from-ops", "namespace": "ops", "creationTimestamp": "2024-01-01T00:00:00Z"},
         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "namespace": "shop", "port": 80}],
                  "rules": [{"backendRefs": [{"name": "reviews-v2", "namespace": "shop", "port": 80}]}]}}
GRANT = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
         "metadata": {"name": "ops-routes", "namespace": "shop"},
         "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "ops"}],
                  "to": [{"group": "", "kind": "Service"}]}}


async def test_cross_namespace_backend_needs_a_reference_grant() -> None:
    async with loopback([ROUTE]) as lb:
        c = Http1Client(await lb.open())
        status, _, body = await c.request("/")
        assert status == 500 and b"no ReferenceGrant in namespace shop" in body
        assert lb.backend_seen == []
        lb.set_objects([ROUTE, GRANT])
        status, _, body = await c.request("/")
        assert status == 200 and json.loads(body)["version"] == "v2"
        c.stream.close()
