"""The waypoint answers and forwards as Istio's Envoy waypoint does (loopback topology, real HBONE):

- the HTTP/1.1 status line carries Envoy's reason phrase;
- request headers per Envoy's connection manager with Istio's waypoint settings (`use_remote_address:
  false`): `x-request-id` generated (UUID4) when missing and kept when present, never added to the
  response; `x-forwarded-proto: http` when missing; `x-forwarded-for` untouched;
- `istio_requests_total` names the owning workloads (`workload_name`), and a denied request keeps its
  `destination_service`;
- a CUSTOM AuthorizationPolicy without an extension provider denies only the requests its rules match;
  AUDIT policies change nothing and are named in the access line.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import h11
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ambient.bench.loopback import loopback
from ambient.runtime.accesslog import parse_fields

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("fast_paths")]  # fast paths on and off

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def policy(name: str, action: str, rules: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}], "action": action,
                     "rules": rules, **spec}}


async def raw_exchange(stream: Any, request: bytes) -> tuple[bytes, int, dict[str, str], bytes]:
    """Send one raw HTTP/1.1 request; (status line, status, headers, body) of the answer."""
    await stream.write(request)
    buf = bytearray()
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    status, headers, body = 0, {}, bytearray()
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            data = await stream.read()
            buf += data
            conn.receive_data(data)
        elif isinstance(ev, h11.Response):
            status, headers = ev.status_code, {k.decode(): v.decode() for k, v in ev.headers}
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            return bytes(buf).split(b"\r\n", 1)[0], status, headers, bytes(body)
        else:
            raise AssertionError(f"unexpected {ev!r}")


def get(path: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: reviews.shop.svc.cluster.local", *extra, "", ""]
    return "\r\n".join(lines).encode()


async def test_status_line_reason_phrase_like_envoy() -> None:
    async with loopback([policy("deny-admin", "DENY", [{"to": [{"operation": {"paths": ["/admin"]}}]}])]) as lb:
        stream = await lb.open()
        line, status, _, _ = await raw_exchange(stream, get("/reviews/1"))
        assert (line, status) == (b"HTTP/1.1 200 OK", 200)
        line, status, _, body = await raw_exchange(stream, get("/admin"))
        assert (line, body) == (b"HTTP/1.1 403 Forbidden", b"RBAC: access denied\n")
        line, _, _, _ = await raw_exchange(stream, get("/status/503"))
        assert line == b"HTTP/1.1 503 Service Unavailable"
        stream.close()


async def test_request_id_and_forwarded_headers_like_envoy(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ambient.waypoint.access")
    async with loopback() as lb:
        stream = await lb.open()
        _, status, headers, body = await raw_exchange(stream, get("/a"))
        seen = json.loads(body)["headers"]
        assert status == 200
        assert UUID4.fullmatch(seen["x-request-id"]), seen
        assert seen["x-forwarded-proto"] == "http"
        assert "x-forwarded-for" not in seen  # use_remote_address: false -> Envoy does not append
        assert "x-request-id" not in headers  # not returned (always_set_request_id_in_response is off)
        _, _, _, body2 = await raw_exchange(stream, get("/b"))
        assert json.loads(body2)["headers"]["x-request-id"] != seen["x-request-id"]  # one per request
        # what the client sent is kept and forwarded as is
        _, _, _, body = await raw_exchange(stream, get(
            "/c", "X-Request-Id: my-id-1", "X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https"))
        seen = json.loads(body)["headers"]
        assert (seen["x-request-id"], seen["x-forwarded-for"], seen["x-forwarded-proto"]) == (
            "my-id-1", "203.0.113.7", "https")
        stream.close()
    # the access line names the id the backend saw (Istio's Envoy access log has %REQ(X-REQUEST-ID)%)
    logged = [parse_fields(r.getMessage()).get("request_id") for r in caplog.records
              if r.name == "ambient.waypoint.access"]
    assert logged[-1] == "my-id-1" and logged[0] is not None and UUID4.fullmatch(logged[0])


def _requests(lb: Any) -> list[dict[str, str]]:
    families = {f.name: f for f in text_string_to_metric_families(lb.metrics.exposition().decode())}
    return [s.labels | {"value": str(s.value)} for s in families["istio_requests"].samples
            if s.name == "istio_requests_total"]


async def test_metrics_name_owning_workloads_and_denied_requests_keep_their_service() -> None:
    async with loopback([policy("deny-admin", "DENY", [{"to": [{"operation": {"paths": ["/admin"]}}]}])]) as lb:
        stream = await lb.open()
        assert (await raw_exchange(stream, get("/reviews/1")))[1] == 200
        assert (await raw_exchange(stream, get("/admin")))[1] == 403
        stream.close()
        series = _requests(lb)
        ok = [s for s in series if s["response_code"] == "200"]
        denied = [s for s in series if s["response_code"] == "403"]
        assert ok and denied
        # pods curl-1 / reviews-v*-pod; their workloads (Deployments) curl / reviews-v*
        assert {s["source_workload"] for s in series} == {"curl"}
        assert ok[0]["destination_workload"] in ("reviews-v1", "reviews-v2")
        assert denied[0]["destination_service"] == "reviews.shop.svc.cluster.local"
        assert denied[0]["destination_service_name"] == "reviews"
        assert denied[0]["destination_service_namespace"] == "shop"
        assert "_created" not in lb.metrics.exposition().decode()


async def test_custom_without_provider_denies_only_what_it_matches_and_audit_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ambient.waypoint.access")
    objects = [
        policy("ext-authz", "CUSTOM", [{"to": [{"operation": {"paths": ["/admin*"]}}]}], provider={"name": "opa"}),
        policy("audit-writes", "AUDIT", [{"to": [{"operation": {"methods": ["POST"]}}]}]),
    ]
    async with loopback(objects) as lb:
        stream = await lb.open()
        assert (await raw_exchange(stream, get("/admin/users")))[1] == 403
        assert (await raw_exchange(stream, get("/reviews/1")))[1] == 200  # outside the CUSTOM rules
        post = b"POST /reviews HTTP/1.1\r\nHost: reviews.shop.svc.cluster.local\r\nContent-Length: 2\r\n\r\nhi"
        assert (await raw_exchange(stream, post))[1] == 200  # AUDIT never denies
        stream.close()
        assert not any("admin" in a for a, _ in lb.backend_seen)
    lines = [parse_fields(r.getMessage()) for r in caplog.records if r.name == "ambient.waypoint.access"]
    by_path = {(ln.get("http.method"), ln.get("http.path")): ln for ln in lines}
    assert by_path[("GET", "/admin/users")]["response_flags"] == "RBAC"
    assert by_path[("POST", "/reviews")]["audit"] == "shop/audit-writes"
    assert "audit" not in by_path[("GET", "/reviews/1")]
