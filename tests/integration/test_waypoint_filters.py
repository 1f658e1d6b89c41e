"""HTTPRoute filters end to end on loopback: client -> HBONE -> waypoint -> HBONE -> backend proxy -> HTTP app.

The loopback app answers with what it received (path, headers), so each test asserts what the backend saw:
RequestHeaderModifier changes reach it, ResponseHeaderModifier changes reach the client, a RequestRedirect is
answered 30x by the waypoint with the right Location and never reaches a backend, URLRewrite changes the path
and Host the backend sees; a rule with an unsupported filter answers 500 and is named in a warning."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from ambient.bench.loopback import loopback
from helpers import Http1Client

pytestmark = pytest.mark.timeout(60)


def route(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "shop", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 80}],
                     "rules": rules}}


V1 = [{"name": "reviews-v1", "port": 80}]
FILTERS = route("filters", [
    {"matches": [{"path": {"type": "PathPrefix", "value": "/headers"}}], "backendRefs": V1, "filters": [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {
            "set": [{"name": "X-Env", "value": "prod"}], "add": [{"name": "X-Added", "value": "yes"}],
            "remove": ["X-Secret"]}},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
            "set": [{"name": "X-Version", "value": "hidden"}], "add": [{"name": "X-Served-By", "value": "waypoint"}],
            "remove": ["Content-Type"]}},
    ]},
    {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}], "filters": [
        {"type": "RequestRedirect", "requestRedirect": {
            "scheme": "https", "hostname": "new.example.com", "statusCode": 301,
            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
    {"matches": [{"path": {"type": "PathPrefix", "value": "/moved"}}], "filters": [
        {"type": "RequestRedirect", "requestRedirect": {}}]},  # 302 to the same place on the service port
    {"matches": [{"path": {"type": "PathPrefix", "value": "/api/v1"}}], "backendRefs": V1, "filters": [
        {"type": "URLRewrite", "urlRewrite": {
            "hostname": "internal.reviews", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}]},
    {"matches": [{"path": {"type": "PathPrefix", "value": "/mirror"}}], "backendRefs": V1, "filters": [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "reviews-v2", "port": 80}}}]},
    {"backendRefs": V1},  # everything else: no filters
])


async def test_header_modifiers_reach_backend_and_client() -> None:
    async with loopback([FILTERS]) as lb:
        c = Http1Client(await lb.open())
        status, headers, body = await c.request("/headers/x", {"x-env": "dev", "x-secret": "s3cr3t", "x-keep": "1"})
        seen = json.loads(body)
        assert status == 200
        # request side: set replaced the client's value, add added, remove removed, others untouched
        assert seen["headers"]["x-env"] == "prod" and seen["headers"]["x-added"] == "yes"
        assert "x-secret" not in seen["headers"] and seen["headers"]["x-keep"] == "1"
        # response side: the app's x-version replaced, content-type removed, a header added
        assert headers["x-version"] == "hidden" and headers["x-served-by"] == "waypoint"
        assert "content-type" not in headers and int(headers["content-length"]) == len(body)
        # a rule without filters on the same route and connection: nothing changed
        status, headers, body = await c.request("/plain", {"x-secret": "s3cr3t"})
        assert status == 200 and headers["x-version"] == "v1" and headers["content-type"] == "application/json"
        assert json.loads(body)["headers"]["x-secret"] == "s3cr3t" and "x-served-by" not in headers
        c.stream.close()


async def test_redirect_is_answered_by_the_waypoint_and_never_reaches_a_backend() -> None:
    async with loopback([FILTERS]) as lb:
        c = Http1Client(await lb.open())
        status, headers, body = await c.request("/old/items/7?page=2")
        assert (status, body) == (301, b"")
        assert headers["location"] == "https://new.example.com/new/items/7?page=2"
        status, headers, body = await c.request("/moved/here")
        assert (status, body) == (302, b"")
        # scheme and host of the request; the service port (80) is the scheme's default, so left out
        assert headers["location"] == "http://reviews.shop.svc.cluster.local/moved/here"
        c.stream.close()
        assert lb.backend_seen == []  # no tunnel to any endpoint was opened
        text = lb.metrics.exposition().decode()
        assert 'response_code="301"' in text and 'response_code="302"' in text


async def test_prefix_rewrite_changes_path_and_host_the_backend_sees() -> None:
    async with loopback([FILTERS]) as lb:
        c = Http1Client(await lb.open())
        status, _, body = await c.request("/api/v1/users/7?x=1")
        seen = json.loads(body)
        assert status == 200 and seen["version"] == "v1"
        assert seen["path"] == "/v2/users/7?x=1"
        assert seen["headers"]["host"] == "internal.reviews"
        status, _, body = await c.request("/api/v1")
        assert json.loads(body)["path"] == "/v2"
        c.stream.close()


async def test_unsupported_filter_answers_500_and_is_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ambient.waypoint.config")
    extension = route("extension-only", [{"backendRefs": V1, "filters": [
        {"type": "ExtensionRef", "extensionRef": {"group": "example.test", "kind": "Filter", "name": "f"}}]}])
    async with loopback([extension]) as lb:
        c = Http1Client(await lb.open())
        status, _, body = await c.request("/anything")
        assert status == 500
        assert b"HTTPRoute shop/extension-only" in body and b"ExtensionRef" in body and b"not supported" in body
        c.stream.close()
        assert lb.backend_seen == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("HTTPRoute shop/extension-only rules[0]" in w and "ExtensionRef" in w for w in warnings)


async def test_request_mirror_copies_the_request_and_ignores_the_answer() -> None:
    mirror = route("mirror", [{"backendRefs": V1, "filters": [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "reviews-v2", "port": 80}}}]}])
    async with loopback([mirror]) as lb:
        c = Http1Client(await lb.open())
        for _ in range(3):
            status, _, body = await c.request("/copied", method="POST", body=b"payload")
            assert status == 200 and json.loads(body)["version"] == "v1" and json.loads(body)["body"] == 7
        c.stream.close()
        await asyncio.sleep(0.2)  # the shadow requests finish on their own, after the answers
        assert sum(1 for authority, _ in lb.backend_seen if authority.startswith("127.0.0.12")) >= 1


async def test_filters_over_http2() -> None:
    async with loopback([FILTERS]) as lb:
        stream = await lb.open()
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        sids = {}
        for path in ("/headers/h2", "/old/a", "/api/v1/b"):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                    (":authority", "reviews.shop.svc.cluster.local"), ("x-secret", "1")],
                              end_stream=True)
            sids[sid] = path
        await stream.write(conn.data_to_send())
        heads: dict[int, dict[str, str]] = {}
        bodies: dict[int, bytearray] = {s: bytearray() for s in sids}
        done: set[int] = set()
        while len(done) < len(sids):
            data = await stream.read()
            assert data, "waypoint closed the HTTP/2 connection early"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    heads[ev.stream_id] = dict(ev.headers)  # type: ignore[arg-type]
                elif isinstance(ev, h2.events.DataReceived):
                    bodies[ev.stream_id] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    done.add(ev.stream_id)
            await stream.write(conn.data_to_send())
        stream.close()
    by_path = {sids[s]: (heads[s], bytes(bodies[s])) for s in sids}
    h, b = by_path["/headers/h2"]
    assert h[":status"] == "200" and h["x-version"] == "hidden" and h["x-served-by"] == "waypoint"
    assert "x-secret" not in json.loads(b)["headers"]
    h, b = by_path["/old/a"]
    assert (h[":status"], h["location"], b) == ("301", "https://new.example.com/new/a", b"")
    h, b = by_path["/api/v1/b"]
    assert json.loads(b)["path"] == "/v2/b" and json.loads(b)["headers"]["host"] == "internal.reviews"
