"""Inbound admission control of the node proxy (per-source / per-proxy concurrency, early resets per source
across connections), the HBONE handler's refusals before any dial, the CONNECT authority statuses that
match ztunnel, and the bounded spare-socket pool of in-pod proxies."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Reject
from ambient.state.static import load_state_file
from ambient.state.store import StateStore
from ambient.ztunnel import inbound
from ambient.ztunnel.admission import EARLY_RESETS, PROXY_LIMIT, SOURCE_LIMIT, Admission, Limits, LogGate
from ambient.ztunnel.errors import ConfigError
from ambient.ztunnel.metrics import ProxyMetrics
from ambient.ztunnel.proxy import CURRENT_STREAM, LocalSockets, NetnsSockets, PodContext, SharedScope
from ambient.ztunnel.settings import Settings
from ambient.ztunnel.telemetry import AccessLog, Connections, Telemetry

STATE = """
workloads:
- {uid: web1, name: web-1, namespace: shop, workloadIps: [10.0.0.5], protocol: HBONE, serviceAccount: web,
   services: {shop/web.shop.svc.cluster.local: [{servicePort: 80, targetPort: 8080}]}}
- {uid: db1, name: db-1, namespace: data, workloadIps: [10.0.0.8], protocol: HBONE, serviceAccount: db,
   services: {data/db.data.svc.cluster.local: [{servicePort: 5432, targetPort: 6432}]}}
services:
- {name: web, namespace: shop, hostname: web.shop.svc.cluster.local, vips: [10.96.0.10],
   ports: {80: 8080, 81: 15008, 82: 0}}
- {name: db, namespace: data, hostname: db.data.svc.cluster.local, vips: [10.96.0.11], ports: {5432: 5432}}
"""
CURL = "spiffe://cluster.local/ns/shop/sa/curl"


# ------------------------------------------------------------------------------------------ the decision


# (operations, expected results): "a:<src>" admit -> None or reason; "r:<src>" release; "x:<src>" early reset;
# "t:<seconds>" advance the clock
CASES: list[tuple[str, Limits, list[str], list[str | None]]] = [
    ("per source", Limits(per_source=2, total=10, early_resets=0),
     ["a:p", "a:p", "a:p", "a:q", "r:p", "a:p"], [None, None, SOURCE_LIMIT, None, None]),
    ("per proxy", Limits(per_source=5, total=2, early_resets=0),
     ["a:p", "a:q", "a:s", "r:q", "a:s"], [None, None, PROXY_LIMIT, None]),
    ("early resets across connections, then the window ends", Limits(per_source=0, total=0, early_resets=2,
                                                                     window=10),
     ["x:p", "x:p", "a:p", "x:p", "a:p", "a:q", "t:10", "a:p"], [None, EARLY_RESETS, None, None]),
    ("0 turns every limit off", Limits(per_source=0, total=0, early_resets=0),
     ["a:p"] * 3 + ["x:p"] * 5 + ["a:p"], [None] * 4),
]


@pytest.mark.parametrize(("name", "limits", "ops", "want"), CASES, ids=[c[0] for c in CASES])
def test_admission_table(name: str, limits: Limits, ops: list[str], want: list[str | None]) -> None:
    adm, now, got = Admission(limits), 0.0, []
    for op in ops:
        kind, _, arg = op.partition(":")
        if kind == "a":
            got.append(adm.admit(arg, now))
        elif kind == "r":
            adm.release(arg)
        elif kind == "x":
            adm.early_reset(arg, now)
        else:
            now += float(arg)
    assert got == want


def test_admission_tables_only_hold_active_sources() -> None:
    adm = Admission(Limits(per_source=4, total=100, early_resets=3, window=1))
    for i in range(5000):
        src = f"10.0.{i // 256}.{i % 256}"
        assert adm.admit(src, 0) is None
        adm.release(src)
        adm.early_reset(src, float(i // 2000))  # windows expire as time moves on: swept
    assert adm.total == 0 and adm.active("10.0.0.1") == 0
    assert len(adm._resets) <= 4096 + 1


def test_log_gate_one_line_per_key_per_interval() -> None:
    gate = LogGate(interval=1.0, limit=3)
    got = [gate.allow("a", t) for t in (0.0, 0.1, 0.5, 0.9)] + [gate.allow("b", 0.9), gate.allow("a", 1.2)]
    assert got == [0, None, None, None, 0, 3]  # the next line says how many were left out
    for k in ("c", "d", "e"):
        gate.allow(k, 2.0)
    assert len(gate._last) <= 3  # bounded


def test_limits_from_env() -> None:
    s = Settings.from_env({"AMBIENT_ZTUNNEL_INBOUND_MAX_PER_SOURCE": "5", "AMBIENT_ZTUNNEL_INBOUND_MAX": "0",
                           "AMBIENT_ZTUNNEL_EARLY_RESETS_PER_SOURCE": "7"})
    assert s.admission_limits == Limits(per_source=5, total=0, early_resets=7)
    assert Settings.from_env({}).admission_limits == Limits()
    with pytest.raises(ConfigError, match="AMBIENT_ZTUNNEL_INBOUND_MAX: expected a non-negative integer"):
        Settings.from_env({"AMBIENT_ZTUNNEL_INBOUND_MAX": "-1"})


# --------------------------------------------------------------------------------- the HBONE handler


def _ctx(tmp_path: Path, admission: Admission) -> tuple[PodContext, ProxyMetrics, list[str]]:
    store = StateStore()
    (tmp_path / "state.yaml").write_text(STATE)
    store.take_writer().apply(load_state_file(tmp_path / "state.yaml"))
    metrics = ProxyMetrics()
    failed: list[str] = []
    access = AccessLog()
    access.failed = lambda **kw: failed.append(kw["error"])  # type: ignore[method-assign]
    tel = Telemetry(metrics, access, Connections())
    settings = Settings(mode="shared", mark=None, transparent_inbound=False, source_wait=0)
    core = SimpleNamespace(settings=settings, state=store, telemetry=tel, view=lambda: store.current,
                           admission=admission)
    return PodContext(core, SharedScope(frozenset({"web1"})), LocalSockets()), metrics, failed  # type: ignore[arg-type]


def _refused(metrics: ProxyMetrics) -> dict[tuple[str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(metrics.exposition().decode()):
        for s in fam.samples:
            if s.name == "ambient_ztunnel_inbound_refused_total":
                out[(s.labels["protocol"], s.labels["reason"])] = s.value
    return out


def _req(src: str, authority: str = "10.0.0.5:8080") -> ConnectRequest:
    return ConnectRequest(authority, "", 0, {}, ("10.0.0.5", 15008), (src, 40000))


@pytest.fixture
def dials(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []

    async def connect_app(_ctx: Any, _src: Any, _target: Any) -> socket.socket:
        a, b = socket.socketpair()
        made.extend((a, b))
        return a

    monkeypatch.setattr(inbound, "_connect_app", connect_app)
    yield made
    for s in made:
        s.close()


@pytest.mark.parametrize(("authority", "want"), [
    ("web.shop.svc.cluster.local:80", "10.0.0.5:8080"),  # the Service's target port, on the dialled address
    ("WEB.shop.svc.cluster.local:80", "10.0.0.5:8080"),  # names are case-insensitive
    ("db.data.svc.cluster.local:5432", "10.0.0.5:5432"),  # another namespace's Service: its target port
    ("web.shop.svc.cluster.local:79", 503),  # no such Service port
    ("web.shop.svc.cluster.local:82", 503),  # named target port the local workload does not resolve
    ("web.shop.svc.cluster.local:81", 503),  # resolves to the proxy's own port: self-call
    ("nowhere.shop.svc.cluster.local:80", 503),  # unknown hostname
])
async def test_hostname_authority_resolved_like_ztunnel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, authority: str, want: str | int
) -> None:
    ctx, _, _ = _ctx(tmp_path, Admission())
    targets: list[str] = []

    async def connect_app(_ctx: Any, _src: Any, target: Any) -> socket.socket:
        targets.append(str(target))
        a, b = socket.socketpair()
        b.close()
        return a

    monkeypatch.setattr(inbound, "_connect_app", connect_app)
    decision = await inbound.hbone_handler(ctx)(_req("10.0.0.9", authority), SimpleNamespace(uri=CURL))  # type: ignore[arg-type]
    if isinstance(want, int):
        assert isinstance(decision, Reject) and decision.status == want, decision
        assert targets == []
    else:
        assert isinstance(decision, Accept) and targets == [want], decision
        assert decision.upstream is not None
        decision.upstream.close()


async def test_source_limit_refuses_with_503_before_dialling(tmp_path: Path, dials: list[socket.socket]) -> None:
    ctx, metrics, failed = _ctx(tmp_path, Admission(Limits(per_source=2, total=100, early_resets=0)))
    handle = inbound.hbone_handler(ctx)
    peer = SimpleNamespace(uri=CURL)
    first, second = [await handle(_req("10.0.0.9"), peer) for _ in range(2)]  # type: ignore[arg-type]
    assert isinstance(first, Accept) and isinstance(second, Accept)
    third = await handle(_req("10.0.0.9"), peer)  # type: ignore[arg-type]
    assert isinstance(third, Reject) and third.status == 503 and "source_limit" in third.reason
    assert len(dials) == 4  # two app dials (socketpairs), none for the refused stream
    other = await handle(_req("10.0.0.7"), peer)  # type: ignore[arg-type]
    assert isinstance(other, Accept)  # another source is not starved
    assert first.upstream is not None
    first.upstream.close()  # the server closes the guard on every path: the slot is released
    fourth = await handle(_req("10.0.0.9"), peer)  # type: ignore[arg-type]
    assert isinstance(fourth, Accept)
    assert _refused(metrics) == {("hbone", "source_limit"): 1.0}
    assert failed and "admission control (source_limit)" in failed[-1]
    for _ in range(3):  # more refusals within a second: counted, not each logged
        assert isinstance(await handle(_req("10.0.0.9"), peer), Reject)  # type: ignore[arg-type]
    assert _refused(metrics) == {("hbone", "source_limit"): 4.0} and len(failed) == 1
    for d in (second, other, fourth):
        assert isinstance(d, Accept) and d.upstream is not None
        d.upstream.close()
    assert ctx.core.admission.total == 0


async def test_early_resets_per_source_across_connections(tmp_path: Path, dials: list[socket.socket]) -> None:
    admission = Admission(Limits(per_source=0, total=0, early_resets=3, window=0.3))
    ctx, metrics, _ = _ctx(tmp_path, admission)
    handle = inbound.hbone_handler(ctx)
    peer = SimpleNamespace(uri=CURL)
    for _ in range(4):  # streams reset before their 200 (the guard closed without `serve`)
        d = await handle(_req("10.0.0.9"), peer)  # type: ignore[arg-type]
        assert isinstance(d, Accept) and d.upstream is not None
        d.upstream.close()
    dialled = len(dials)
    refused = await handle(_req("10.0.0.9"), peer)  # type: ignore[arg-type]
    assert isinstance(refused, Reject) and refused.status == 503 and "early_resets" in refused.reason
    assert len(dials) == dialled  # refused before any dial
    victim = await handle(_req("10.0.0.7"), peer)  # type: ignore[arg-type]
    assert isinstance(victim, Accept) and victim.upstream is not None
    victim.upstream.close()
    assert _refused(metrics) == {("hbone", "early_resets"): 1.0}
    # a stream the client already reset when its turn comes is never dialled, and counts too
    gone = SimpleNamespace(connection=SimpleNamespace(streams={}), stream_id=7)
    token = CURRENT_STREAM.set(gone)  # type: ignore[arg-type]
    try:
        dead = await handle(_req("10.0.0.8"), peer)  # type: ignore[arg-type]
    finally:
        CURRENT_STREAM.reset(token)
    assert isinstance(dead, Reject) and len(dials) == dialled + 2
    assert admission.total == 0 and admission._resets["10.0.0.8"].count == 1
    await asyncio.sleep(0.35)  # the window ended: admitted again
    again = await handle(_req("10.0.0.9"), peer)  # type: ignore[arg-type]
    assert isinstance(again, Accept) and again.upstream is not None
    again.upstream.close()


@pytest.mark.parametrize(("authority", "status"), [
    ("[::ffff:10.0.0.5]:8080", 400),  # IPv4-mapped: not the dialled address (ztunnel: 400)
    ("10.0.0.5:15001", 503), ("10.0.0.5:15006", 503), ("10.0.0.5:15008", 503),  # self-call (ztunnel: 503)
    ("10.0.0.6:8080", 400),
])
async def test_authority_statuses_match_ztunnel(
    tmp_path: Path, dials: list[socket.socket], authority: str, status: int
) -> None:
    ctx, _, _ = _ctx(tmp_path, Admission())
    decision = await inbound.hbone_handler(ctx)(_req("10.0.0.9", authority), SimpleNamespace(uri=CURL))  # type: ignore[arg-type]
    assert isinstance(decision, Reject) and decision.status == status, decision
    assert dials == []


# ------------------------------------------------------------------------------------ spare-socket pool


async def test_spare_pool_is_bounded_under_concurrent_dials_and_trimmed_when_idle() -> None:
    pool = NetnsSockets(None, "test")
    pool.IDLE_TRIM = 0.2
    made: list[int] = []
    real_call = pool._pool.submit

    def counting_submit(fn: Any, *a: Any) -> Any:
        def run() -> Any:
            out = fn(*a)
            if isinstance(out, list):
                made.append(len(out))
            return out

        return real_call(run)

    pool._pool.submit = counting_submit  # type: ignore[method-assign,assignment]
    try:
        socks = await asyncio.gather(*(pool.tcp_socket(socket.AF_INET) for _ in range(500)))
        assert len({s.fileno() for s in socks}) == 500
        # one refill at a time: at most one batch beyond what was used (was: a batch of 16 per caller)
        assert sum(made) <= 500 + pool.MAX_BATCH, made
        assert pool.spares <= pool.MAX_BATCH
        for s in socks:
            s.close()
        deadline = asyncio.get_running_loop().time() + 5
        while pool.spares and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 (a timer trims)
            await asyncio.sleep(0.05)
        assert pool.spares == 0  # idle: trimmed
        s = await pool.tcp_socket(socket.AF_INET)  # and refilled on demand
        s.close()
    finally:
        pool.close()


async def test_slot_released_when_the_dial_fails_unexpectedly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    admission = Admission(Limits(per_source=1, total=1, early_resets=0))
    ctx, _, _ = _ctx(tmp_path, admission)

    async def broken(_ctx: Any, _src: Any, _target: Any) -> socket.socket:
        raise RuntimeError("executor shut down")

    monkeypatch.setattr(inbound, "_connect_app", broken)
    handle = inbound.hbone_handler(ctx)
    for _ in range(2):  # the second would be refused (source_limit) if the first kept its slot
        with pytest.raises(RuntimeError):
            await handle(_req("10.0.0.9"), SimpleNamespace(uri=CURL))  # type: ignore[arg-type]
    assert admission.total == 0
