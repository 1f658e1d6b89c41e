"""Waypoint end to end on loopback: client -> HBONE -> waypoint -> HBONE -> backend HBONE server -> HTTP app.

Asserts routing per HTTPRoute (weighted split, header match), L7 DENY -> 403 `RBAC: access denied`, the
backend seeing the waypoint's identity (not the client's), keep-alive, HTTP/2 prior knowledge, L4
passthrough for a TCP port, telemetry (access log line, istio_requests_total)."""

from __future__ import annotations

import json
import logging
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from ambient.bench.loopback import CLIENT_ID, ECHO_VIP, GRPC_VIP, WAYPOINT_ID, loopback
from ambient.hbone.errors import HboneStatusError
from helpers import Http1Client

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("fast_paths")]  # fast paths on and off


def route(name: str, rules: list[dict[str, Any]], created: str = "2024-01-01T00:00:00Z") -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "shop", "creationTimestamp": created},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 80}],
                     "rules": rules}}


def policy(name: str, action: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}], "action": action,
                     "rules": rules}}


SPLIT = route("split", [
    {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
     "backendRefs": [{"name": "reviews-v2", "port": 80}]},
    {"backendRefs": [{"name": "reviews-v1", "port": 80, "weight": 90},
                     {"name": "reviews-v2", "port": 80, "weight": 10}]},
])
DENY_ADMIN = policy("deny-admin", "DENY", [{"to": [{"operation": {"paths": ["/admin*"]}}]}])


async def test_routes_per_httproute_and_backend_sees_waypoint_identity() -> None:
    async with loopback([SPLIT]) as lb:
        stream = await lb.open()
        c = Http1Client(stream)
        status, headers, body = await c.request("/reviews/1", {"x-canary": "yes"})
        assert status == 200 and headers["x-version"] == "v2"
        assert json.loads(body)["path"] == "/reviews/1"
        # keep-alive: the same tunnel carries the next requests, routed by weight
        versions = [(await c.request("/reviews/2"))[1]["x-version"] for _ in range(30)]
        assert versions.count("v1") > versions.count("v2")
        stream.close()
        # the backend's node proxy saw the waypoint's certificate and the endpoint authority
        assert lb.backend_seen and all(peer == WAYPOINT_ID for _, peer in lb.backend_seen)
        assert {auth for auth, _ in lb.backend_seen} <= {"127.0.0.11:8080", "127.0.0.12:8080"}
        assert CLIENT_ID not in {peer for _, peer in lb.backend_seen}


async def test_l7_deny_returns_403_and_other_paths_work(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ambient.waypoint.access")
    async with loopback([DENY_ADMIN]) as lb:
        stream = await lb.open()
        c = Http1Client(stream)
        status, _, body = await c.request("/admin/users")
        assert (status, body) == (403, b"RBAC: access denied\n")
        # the path is normalised before policy: encoded / dotted variants are denied too
        assert (await c.request("/x/../%61dmin"))[0] == 403
        status, _, body = await c.request("/reviews", method="POST", body=b"hello")
        assert status == 200 and json.loads(body)["body"] == 5
        stream.close()
        assert not any(a for a, _ in lb.backend_seen if "admin" in a)
    lines = [r.getMessage() for r in caplog.records if r.name == "ambient.waypoint.access"]
    assert any("http.status=403" in ln and "response_flags=RBAC" in ln and "response_code_details="
               "rbac_access_denied_matched_policy[ns[shop]-policy[deny-admin]]" in ln for ln in lines)
    assert any(f'src.identity="{CLIENT_ID}"' in ln and "http.status=200" in ln for ln in lines)
    text = lb.metrics.exposition().decode()
    assert 'istio_requests_total{' in text and 'response_code="403"' in text and 'reporter="waypoint"' in text


async def test_http2_prior_knowledge_through_waypoint() -> None:
    async with loopback([SPLIT, DENY_ADMIN]) as lb:
        stream = await lb.open()
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        sids = {}
        for path, extra in (("/a", [("x-canary", "yes")]), ("/admin", []), ("/b", [("x-canary", "yes")])):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                    (":authority", "reviews.shop.svc.cluster.local"), *extra], end_stream=True)
            sids[sid] = path
        await stream.write(conn.data_to_send())
        results: dict[str, tuple[int, bytes]] = {}
        bodies: dict[int, bytearray] = {s: bytearray() for s in sids}
        statuses: dict[int, int] = {}
        while len(results) < len(sids):
            data = await stream.read()
            assert data, "waypoint closed the HTTP/2 connection early"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    statuses[ev.stream_id] = int(dict(ev.headers)[":status"])  # type: ignore[index]
                elif isinstance(ev, h2.events.DataReceived):
                    bodies[ev.stream_id] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    results[sids[ev.stream_id]] = (statuses[ev.stream_id], bytes(bodies[ev.stream_id]))
            await stream.write(conn.data_to_send())
        stream.close()
    assert results["/admin"] == (403, b"RBAC: access denied\n")
    assert results["/a"][0] == 200 and json.loads(results["/a"][1])["version"] == "v2"
    assert json.loads(results["/b"][1])["path"] == "/b"


async def test_tcp_port_passes_through_at_l4_and_l4_policy_applies() -> None:
    echo_policy: dict[str, Any] = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                   "metadata": {"name": "echo-allow", "namespace": "shop"},
                   "spec": {"targetRefs": [{"kind": "Service", "name": "echo"}], "action": "ALLOW",
                            "rules": [{"from": [{"source": {"principals": [CLIENT_ID[len("spiffe://"):]]}}]}]}}
    async with loopback([echo_policy]) as lb:
        stream = await lb.open(f"{ECHO_VIP}:9000")
        await stream.write(b"not http at all\x00\x01")
        await stream.write_eof()
        got = bytearray()
        while data := await stream.read():
            got += data
        stream.close()
        assert bytes(got) == b"not http at all\x00\x01"
        assert ("127.0.0.13:9000", WAYPOINT_ID) in lb.backend_seen
        # an HTTP-only ALLOW cannot match TCP traffic: the CONNECT is refused
        lb.set_objects([{**echo_policy, "spec": {**echo_policy["spec"], "rules": [
            {"to": [{"operation": {"methods": ["GET"]}}]}]}}])
        with pytest.raises(HboneStatusError) as info:
            await lb.open(f"{ECHO_VIP}:9000")
        assert info.value.status == 401


async def test_unknown_destination_and_no_matching_rule() -> None:
    only_v1 = route("only", [{"matches": [{"path": {"type": "Exact", "value": "/only"}}],
                              "backendRefs": [{"name": "reviews-v1", "port": 80}]}])
    async with loopback([only_v1]) as lb:
        with pytest.raises(HboneStatusError) as info:
            await lb.open("10.96.9.9:80")
        assert info.value.status == 503
        # a known service that does not use this waypoint: refused, the waypoint is not an open relay
        with pytest.raises(HboneStatusError) as info:
            await lb.open("10.96.0.40:80")
        assert info.value.status == 400
        # pod-addressed traffic to a workload without this waypoint: refused too
        with pytest.raises(HboneStatusError) as info:
            await lb.open("127.0.0.11:8080")
        assert info.value.status == 400
        stream = await lb.open()
        c = Http1Client(stream)
        assert (await c.request("/only"))[1]["x-version"] == "v1"
        assert (await c.request("/other"))[0] == 404
        stream.close()


async def test_retry_on_status_codes() -> None:
    retry = route("retry", [{"backendRefs": [{"name": "reviews-v1", "port": 80}],
                             "retry": {"attempts": 2, "backoff": "1ms", "codes": [503]}}])
    async with loopback([retry]) as lb:
        stream = await lb.open()
        c = Http1Client(stream)
        status, _, _ = await c.request("/status/503")
        stream.close()
        assert status == 503
        # 1 try + 2 retries reached the backend
        assert sum(1 for a, _ in lb.backend_seen if a == "127.0.0.11:8080") == 3


async def test_grpc_over_http2_keeps_trailers_and_te() -> None:
    async with loopback() as lb:
        stream = await lb.open(f"{GRPC_VIP}:50051")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        got: dict[int, dict[str, Any]] = {}
        for i in range(3):  # sequential calls reuse the pooled upstream HTTP/2 connection
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "POST"), (":path", "/pkg.Svc/Call"), (":scheme", "http"),
                                    (":authority", "grpc.shop.svc.cluster.local:50051"),
                                    ("content-type", "application/grpc"), ("te", "trailers")])
            conn.send_data(sid, b"\x00\x00\x00\x00\x03abc" + bytes([i]), end_stream=True)
            await stream.write(conn.data_to_send())
            got[sid] = {"data": b""}
            while "end" not in got[sid]:
                data = await stream.read()
                assert data
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        got[sid]["headers"] = dict(ev.headers)
                    elif isinstance(ev, h2.events.DataReceived):
                        got[sid]["data"] += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.TrailersReceived):
                        got[sid]["trailers"] = dict(ev.headers)
                    elif isinstance(ev, h2.events.StreamEnded):
                        got[sid]["end"] = True
                await stream.write(conn.data_to_send())
        stream.close()
        for i, call in enumerate(got.values()):
            assert call["headers"][":status"] == "200" and call["headers"]["x-te"] == "trailers"
            assert call["data"] == b"\x00\x00\x00\x00\x03abc" + bytes([i])
            assert call["trailers"] == {"grpc-status": "0", "grpc-message": "ok"}
        # one upstream tunnel carried all three calls (pooled HTTP/2 connection)
        assert [a for a, _ in lb.backend_seen].count("127.0.0.14:50051") == 1
        text = lb.metrics.exposition().decode()
        assert 'request_protocol="grpc"' in text


async def test_request_timeout_gives_504_and_connection_stays_usable() -> None:
    slow = route("slow", [{"backendRefs": [{"name": "reviews-v1", "port": 80}],
                           "timeouts": {"request": "200ms"}}])
    async with loopback([slow]) as lb:
        stream = await lb.open()
        c = Http1Client(stream)
        status, _, body = await c.request("/delay/3000")
        assert (status, body) == (504, b"upstream request timeout\n")
        status, headers, _ = await c.request("/delay/10")
        assert status == 200 and headers["x-version"] == "v1"
        stream.close()
        text = lb.metrics.exposition().decode()
        assert 'response_code="504"' in text and 'response_flags="UT"' in text
        assert "istio_request_duration_milliseconds_bucket{" in text


async def test_workload_addressed_traffic_through_a_workload_waypoint() -> None:
    gw_policy = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                 "metadata": {"name": "gw-deny", "namespace": "shop"},
                 "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                          "name": "waypoint"}],
                          "action": "DENY", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}}
    async with loopback([SPLIT, DENY_ADMIN, gw_policy]) as lb:
        stream = await lb.open("127.0.0.12:8080")
        c = Http1Client(stream)
        status, headers, _ = await c.request("/admin")  # Service-targeted policies do not apply
        assert status == 200 and headers["x-version"] == "v2"
        assert (await c.request("/x", method="DELETE"))[0] == 403  # Gateway-targeted ones do
        stream.close()
        assert ("127.0.0.12:8080", WAYPOINT_ID) in lb.backend_seen
