"""The node proxy's per-connection fast path: decisions cached per (pair, state version) and never reused
across a state change, random endpoint picks never cached, the non-resolving connect, and the cheaper
access-log rendering producing the same bytes."""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ambient.hbone.errors import HboneConnectError
from ambient.hbone.protocol import ConnectRequest, format_authority, make_traceparent, parse_authority
from ambient.hbone.server import Accept, Reject
from ambient.runtime.accesslog import (
    CONNECTION_FIELDS,
    ConnectionRecord,
    _quote,
    format_failed,
    format_text,
    parse_fields,
    timestamp,
)
from ambient.state import route
from ambient.state.static import load_state_file
from ambient.state.store import StateStore, StateWriter
from ambient.ztunnel import inbound, outbound, proxy
from ambient.ztunnel.admission import Admission
from ambient.ztunnel.errors import UpstreamError
from ambient.ztunnel.metrics import ProxyMetrics
from ambient.ztunnel.proxy import LocalSockets, PodContext, SharedScope, ViewMemo, connect_socket
from ambient.ztunnel.settings import Settings
from ambient.ztunnel.telemetry import AccessLog, Connections, Telemetry

STATE = """
workloads:
- {uid: client, name: client, namespace: shop, workloadIps: [127.0.0.1], protocol: HBONE, serviceAccount: curl}
- {uid: web1, name: web-1, namespace: shop, workloadIps: [10.0.0.5], protocol: HBONE, serviceAccount: web,
   services: {shop/web.shop.svc.cluster.local: [{servicePort: 80, targetPort: 8080}]}}
- {uid: web2, name: web-2, namespace: shop, workloadIps: [10.0.0.6], protocol: HBONE, serviceAccount: web,
   services: {shop/web.shop.svc.cluster.local: [{servicePort: 80, targetPort: 8080}]}}
services:
- {name: web, namespace: shop, hostname: web.shop.svc.cluster.local, vips: [10.96.0.10], ports: {80: 8080}}
"""
DENY = """
policies:
- {name: deny-curl, namespace: shop, scope: Namespace, action: DENY,
   rules: [[[{principals: [cluster.local/ns/shop/sa/curl]}]]]}
"""
CURL = "spiffe://cluster.local/ns/shop/sa/curl"


def _apply(writer: StateWriter, tmp_path: Path, text: str) -> None:
    path = tmp_path / "state.yaml"
    path.write_text(text)
    writer.apply(load_state_file(path))


class _Lines(AccessLog):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def _emit(self, level: int, line: str) -> None:
        self.lines.append(line)

    def failed(self, *, src_addr: str, dst_addr: str, direction: Any, error: str) -> None:
        self.lines.append(format_failed(src_addr=src_addr, dst_addr=dst_addr, direction=direction, error=error))


def _ctx(store: StateStore, **core: Any) -> tuple[PodContext, _Lines]:
    access = _Lines()
    tel = Telemetry(ProxyMetrics(), access, Connections())
    settings = Settings(mode="shared", mark=None, transparent_inbound=False, source_wait=0)
    core.setdefault("admission", Admission(settings.admission_limits))
    fake_core = SimpleNamespace(settings=settings, state=store, telemetry=tel, view=lambda: store.current, **core)
    scope = SharedScope(frozenset({"client", "web1", "web2"}))
    return PodContext(fake_core, scope, LocalSockets()), access  # type: ignore[arg-type]


def _counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


# -------------------------------------------------------------------------------------------- ViewMemo


def test_view_memo_is_per_view_and_bounded() -> None:
    memo = ViewMemo(limit=2)
    v1, v2 = object(), object()
    t1 = memo.table(v1)
    t1["a"] = 1
    assert memo.table(v1) is t1
    assert memo.table(v2) == {}  # a new state: nothing computed from the old one survives
    assert memo.table(v1) == {}
    t = memo.table(v1)
    t["a"], t["b"] = 1, 2
    assert memo.table(v1) == {}  # full: emptied


# ------------------------------------------------------------------------------------ inbound (15008)


async def test_inbound_verdict_cached_per_state_and_reevaluated_on_policy_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore()
    writer = store.take_writer()
    _apply(writer, tmp_path, STATE)
    ctx, access = _ctx(store)
    evaluations = _counting(monkeypatch, inbound, "evaluate")
    app_socks: list[socket.socket] = []

    async def connect_app(_ctx: Any, _src: Any, _target: Any) -> socket.socket:
        a, b = socket.socketpair()
        app_socks.extend((a, b))
        return a

    monkeypatch.setattr(inbound, "_connect_app", connect_app)
    handle = inbound.hbone_handler(ctx)
    peer = SimpleNamespace(uri=CURL)

    def request(port: int) -> ConnectRequest:
        return ConnectRequest("10.0.0.5:8080", "10.0.0.5", 8080, {}, ("10.0.0.5", 15008), ("10.0.0.9", port))

    first = await handle(request(40001), peer)  # type: ignore[arg-type]
    second = await handle(request(40002), peer)  # type: ignore[arg-type]
    assert isinstance(first, Accept) and isinstance(second, Accept)
    assert len(evaluations) == 1  # one evaluation for the pair under this state
    for decision in (first, second):
        assert decision.upstream is not None
        decision.upstream.close()  # never served: logged as orphaned, counted
    assert [parse_fields(ln)["src.addr"] for ln in access.lines] == ["10.0.0.9:40001", "10.0.0.9:40002"]

    _apply(writer, tmp_path, STATE + DENY)  # new state: the cached ALLOW must not be reused
    third = await handle(request(40003), peer)  # type: ignore[arg-type]
    assert isinstance(third, Reject) and third.status == 401
    assert len(evaluations) == 2
    fields = parse_fields(access.lines[-1])
    assert fields["error"] == "connection closed due to policy rejection: denied by policy shop/deny-curl"
    assert fields["src.identity"] == CURL and fields["dst.workload"] == "web-1"
    assert fields["dst.service"] == "web.shop.svc.cluster.local"

    # a different peer identity is a different key: evaluated on its own
    other = await handle(request(40004), SimpleNamespace(uri="spiffe://cluster.local/ns/shop/sa/other"))  # type: ignore[arg-type]
    assert isinstance(other, Accept) and len(evaluations) == 3
    assert other.upstream is not None
    other.upstream.close()
    for s in app_socks:
        s.close()


async def test_inbound_bad_authority_rejected_every_time(tmp_path: Path) -> None:
    store = StateStore()
    _apply(store.take_writer(), tmp_path, STATE)
    ctx, access = _ctx(store)
    handle = inbound.hbone_handler(ctx)
    req = ConnectRequest("10.0.0.6:8080", "10.0.0.6", 8080, {}, ("10.0.0.5", 15008), ("10.0.0.9", 1))
    for _ in range(2):
        decision = await handle(req, SimpleNamespace(uri=CURL))  # type: ignore[arg-type]
        assert isinstance(decision, Reject) and decision.status == 400
    assert len(access.lines) == 2 and all("connection failed" in ln for ln in access.lines)


# ----------------------------------------------------------------------------------- outbound (15001)


class _FailingHbone:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def connect(self, bundle: Any, dst: Any, expected: Any, authority: str, headers: Any, **kw: Any) -> Any:
        self.calls.append((dst, tuple(expected), authority, dict(headers), kw.get("source_ip")))
        raise HboneConnectError("test: no peer")


class _Certs:
    async def fetch(self, identity: str) -> str:
        return identity


async def _outbound_once(ctx: PodContext, monkeypatch: pytest.MonkeyPatch, dst: tuple[str, int]) -> None:
    monkeypatch.setattr(outbound.so, "original_dst", lambda _s: dst)
    server = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        conn.setblocking(False)
        await outbound.serve_outbound(ctx, conn)
        client.close()
    finally:
        server.close()


async def test_outbound_decision_cached_per_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore()
    writer = store.take_writer()
    _apply(writer, tmp_path, STATE)
    hbone = _FailingHbone()
    ctx, access = _ctx(store, hbone=hbone, certs=_Certs())
    decisions = _counting(monkeypatch, route, "decide_outbound")
    for _ in range(3):
        await _outbound_once(ctx, monkeypatch, ("10.0.0.5", 8080))
    assert len(decisions) == 1  # a workload address: deterministic, decided once
    assert len(hbone.calls) == 3
    dst, expected, authority, headers, source_ip = hbone.calls[0]
    assert dst == ("10.0.0.5", 15008) and authority == "10.0.0.5:8080" and source_ip is None
    assert expected == ("spiffe://cluster.local/ns/shop/sa/web",)
    assert headers["forwarded"].startswith('for="127.0.0.1:') and "service.name=client" in headers["baggage"]
    fields = parse_fields(access.lines[-1])
    assert fields["dst.identity"] == "spiffe://cluster.local/ns/shop/sa/web"
    assert fields["dst.hbone_addr"] == "10.0.0.5:8080" and fields["src.identity"] == CURL
    assert fields["error"] == "test: no peer"
    text = ctx.core.telemetry.metrics.exposition().decode()
    opened = [ln for ln in text.splitlines() if ln.startswith("istio_tcp_connections_opened_total{")]
    closed = [ln for ln in text.splitlines() if ln.startswith("istio_tcp_connections_closed_total{")]
    assert len(opened) == len(closed) == 1  # one series: the cached labels are the same values
    assert opened[0].endswith(" 3.0") and closed[0].endswith(" 3.0") and 'response_flags="CONNECT"' in closed[0]
    assert 'destination_principal="spiffe://cluster.local/ns/shop/sa/web"' in opened[0]

    _apply(writer, tmp_path, STATE.replace("serviceAccount: web,\n   services: {shop/web.shop.svc.cluster.local: "
                                           "[{servicePort: 80, targetPort: 8080}]}}\n- {uid: web2",
                                           "serviceAccount: web-v2}\n- {uid: web2", 1))
    await _outbound_once(ctx, monkeypatch, ("10.0.0.5", 8080))
    assert len(decisions) == 2  # the state changed: decided again, with the new identity
    assert hbone.calls[-1][1] == ("spiffe://cluster.local/ns/shop/sa/web-v2",)


async def test_outbound_random_endpoint_pick_is_never_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore()
    _apply(store.take_writer(), tmp_path, STATE)
    hbone = _FailingHbone()
    ctx, _ = _ctx(store, hbone=hbone, certs=_Certs())
    decisions = _counting(monkeypatch, route, "decide_outbound")
    for _ in range(40):
        await _outbound_once(ctx, monkeypatch, ("10.96.0.10", 80))  # the Service: two endpoints
    assert len(decisions) == 40
    assert {c[0] for c in hbone.calls} == {("10.0.0.5", 15008), ("10.0.0.6", 15008)}  # still spread


def test_tracking_random_notes_draws() -> None:
    rng = outbound._TrackingRandom()
    assert not rng.used
    rng.choices([1, 2], weights=[1, 1])
    assert rng.used
    rng.used = False
    rng.choice([1, 2, 3])
    assert rng.used


# ------------------------------------------------------------------------------------------- connect


async def test_connect_socket_connects_and_reports_refusal() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    sock = socket.socket()
    sock.setblocking(False)
    await connect_socket(sock, ("127.0.0.1", port))
    assert sock.getpeername() == ("127.0.0.1", port)
    sock.close()
    server.close()
    refused = socket.socket()
    refused.setblocking(False)
    with pytest.raises(OSError) as err:
        await connect_socket(refused, ("127.0.0.1", port))
    assert err.value.errno == errno.ECONNREFUSED
    refused.close()


async def test_dial_maps_refusal_and_timeout_to_upstream_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore()
    ctx, _ = _ctx(store)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.close()
    with pytest.raises(UpstreamError, match="Connection refused"):
        await ctx.dial(ip_address("127.0.0.1"), port)
    server = socket.create_server(("127.0.0.1", 0))
    accepted = await ctx.dial(ip_address("127.0.0.1"), server.getsockname()[1])
    assert accepted.getpeername() == server.getsockname()
    accepted.close()
    server.close()

    async def never(_sock: socket.socket, _addr: tuple[str, int]) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(proxy, "connect_socket", never)
    ctx.core.settings = Settings(mode="shared", mark=None, upstream_connect_timeout=0.1)  # type: ignore[misc]
    with pytest.raises(UpstreamError, match=r"timed out after 0\.1s"):
        await asyncio.wait_for(ctx.dial(ip_address("127.0.0.1"), 9), 5)


# ----------------------------------------------------------------------------------- access-log render


@pytest.mark.parametrize("now", [0.0, 1.5, 1_700_000_000.0, 1_700_000_000.999_999_7, 1_795_000_000.123_456])
def test_timestamp_matches_strftime(now: float) -> None:
    want = datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert timestamp(now) == want


@pytest.mark.parametrize("value", ["spiffe://td/ns/a/sa/b", 'q"uo\\te\n', "é \u2028 \x00", ""])
def test_quote_is_json_dumps(value: str) -> None:
    assert _quote(value) == json.dumps(value)


def test_format_text_fields_and_order() -> None:
    rec = ConnectionRecord(direction="inbound", src_addr="10.0.0.9:1", src_identity=CURL, dst_addr="10.0.0.5:15008",
                           dst_workload="web-1", bytes_sent=3, error='boom "x"', started=0.0, ended=0.25)
    line = format_text(rec, now=0.0)
    assert line == (
        '1970-01-01T00:00:00.000000Z\terror\taccess\tconnection complete\tsrc.addr=10.0.0.9:1 '
        f'src.identity="{CURL}" dst.addr=10.0.0.5:15008 dst.workload="web-1" direction="inbound" bytes_sent=3 '
        'bytes_recv=0 duration="250ms" error="boom \\"x\\""'
    )


# ----------------------------------------------------------------------------------------- protocol


def test_cached_authority_helpers_still_validate() -> None:
    assert parse_authority("10.0.0.1:80") == parse_authority("10.0.0.1:80") == ("10.0.0.1", 80)
    for _ in range(2):  # failures are never cached as successes
        with pytest.raises(Exception, match="bad authority"):
            parse_authority("10.0.0.1:0")
    assert format_authority("fd00:0::1", 80) == "[fd00::1]:80"
    with pytest.raises(ValueError):
        format_authority("10.0.0.1", 0)
    with pytest.raises(ValueError):
        format_authority("nope", 80)
    tp = make_traceparent()
    parts = tp.split("-")
    assert [len(p) for p in parts] == [2, 32, 16, 2] and parts[0] == parts[3] == "00"
    assert make_traceparent() != tp


def test_format_text_same_as_rendering_every_field() -> None:
    """The cached rendering of the connection's ends gives the bytes the plain field walk gives."""
    import random

    rng = random.Random(7)
    choices = ["", "x", "web-1", 'we"ird', "spiffe://td/ns/a/sa/b", "10.0.0.1:80", "é"]
    for i in range(300):
        rec = ConnectionRecord(
            direction=rng.choice(["inbound", "outbound"]),  # type: ignore[arg-type]
            **{attr: rng.choice(choices) for _n, attr, _q in CONNECTION_FIELDS if attr != "direction"},
            bytes_sent=rng.choice([0, 5, 10**9]), bytes_recv=rng.choice([0, 7]), error=rng.choice(["", "boom"]),
            started=0.0, ended=i / 1000,
        )
        body = " ".join(f"{n}={json.dumps(str(v))}" if q else f"{n}={v}" for n, v, q in rec.fields())
        want = f"{timestamp(1.0)}\t{'error' if rec.error else 'info'}\taccess\tconnection complete\t{body}"
        assert format_text(rec, now=1.0) == want


async def test_outbound_passthrough_plan_cached_and_proxied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore()
    _apply(store.take_writer(), tmp_path, STATE)
    ctx, access = _ctx(store, hbone=_FailingHbone(), certs=_Certs())
    decisions = _counting(monkeypatch, route, "decide_outbound")
    upstream = socket.create_server(("127.0.0.2", 0))  # an address the mesh does not know
    upstream.setblocking(False)
    dst = upstream.getsockname()
    monkeypatch.setattr(outbound.so, "original_dst", lambda _s: dst)
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        for _ in range(2):
            client = socket.create_connection(listener.getsockname())
            conn, _ = listener.accept()
            conn.setblocking(False)
            serving = asyncio.create_task(outbound.serve_outbound(ctx, conn))
            up, _ = await loop.sock_accept(upstream)
            await loop.sock_sendall(up, b"hi")
            up.close()
            client.setblocking(False)
            assert await asyncio.wait_for(loop.sock_recv(client, 16), 5) == b"hi"
            client.close()
            await asyncio.wait_for(serving, 5)
    finally:
        listener.close()
        upstream.close()
    assert len(decisions) == 1
    fields = parse_fields(access.lines[-1])
    assert fields["dst.addr"] == f"{dst[0]}:{dst[1]}" and fields["bytes_recv"] == "2" and "error" not in fields
    assert fields["src.workload"] == "client" and "dst.identity" not in fields
