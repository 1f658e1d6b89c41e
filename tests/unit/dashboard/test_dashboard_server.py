"""The dashboard server's log window (a trace lives as long as any of its lines) and its SSE loop's shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from ambient.dashboard import server
from ambient.dashboard.server import LogSource, build_app

TID = "4bf92f3577b34da6a3ce929d0e0e4736"


def _line(time: str, direction: str) -> str:
    return (f"{time}\tinfo\taccess\tconnection complete\tsrc.addr=10.244.1.2:1 direction=\"{direction}\" "
            f"bytes_sent=1 bytes_recv=2 duration=\"1ms\" route=\"hbone\" trace_id={TID}\n")


def test_expiring_an_old_line_keeps_the_trace_of_its_newer_lines(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "ztunnel-node-1.log").write_text(_line("2026-12-06T04:00:00.000000Z", "outbound")
                                                 + _line("2026-12-06T04:00:50.000000Z", "inbound"))
    now = 1796529600.0 + 65  # 2026-12-06T04:01:05Z: the first line is 65 s old, the second 15 s
    monkeypatch.setattr(server.time, "time", lambda: now)
    source = LogSource(tmp_path, window=60.0)
    assert source.poll() == 2
    assert [e.direction for e in source.entries] == ["inbound"]
    assert [e.direction for e in source.all_by_trace[TID]] == ["inbound"]
    now += 60  # and once the last line expires, the trace goes
    source.poll()
    assert TID not in source.all_by_trace


def test_a_full_window_drops_the_oldest_line_from_the_trace_index(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "ztunnel-node-1.log").write_text("".join(
        _line(f"2026-12-06T04:00:0{i}.000000Z", "outbound").replace(TID, f"{i:032x}") for i in range(3)))
    monkeypatch.setattr(server.time, "time", lambda: 1796529600.0 + 10)
    source = LogSource(tmp_path, window=60.0, max_entries=2)
    source.poll()
    assert sorted(source.all_by_trace) == [f"{1:032x}", f"{2:032x}"]


def test_the_event_stream_is_cancellable(tmp_path: Path, monkeypatch: Any) -> None:
    """A cancelled SSE handler (server shutdown) must end cancelled, not return as if the page left."""
    writes: list[bytes] = []
    first = asyncio.Event()

    class FakeResponse:
        def __init__(self, **_kw: Any) -> None:
            pass

        async def prepare(self, _request: Any) -> None:
            pass

        async def write(self, data: bytes) -> None:
            writes.append(data)
            first.set()

    monkeypatch.setattr(web, "StreamResponse", FakeResponse)
    app = build_app(LogSource(tmp_path), interval=30.0)
    [route] = [r for r in app.router.routes() if r.resource is not None and r.resource.canonical == "/events"
                and r.method == "GET"]

    async def main() -> bool:
        handler: Any = route.handler
        task: asyncio.Task[Any] = asyncio.create_task(handler(object()))
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        await asyncio.wait([task], timeout=5)
        return task.cancelled()

    assert asyncio.run(main()) is True
    assert writes and writes[0].startswith(b"event: snapshot\n")


def test_a_trace_from_the_page_shows_the_dns_answer_that_gave_its_destination(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from ambient.runtime.accesslog import ConnectionRecord, DnsAnswerRecord, format_dns, format_text

    t0 = 1796529600.0
    dns = format_dns(DnsAnswerRecord("10.244.1.2:41000", "curl", "client", "A", "web.demo.svc.cluster.local",
                                     "success", ("10.96.0.20",), "Service demo/web", "NOERROR", 0.0003), now=t0)
    rec = ConnectionRecord("outbound", src_addr="10.244.1.2:50000", src_workload="curl", src_namespace="client",
                           dst_addr="10.244.2.7:15008", dst_hbone_addr="10.244.2.7:80", route="hbone",
                           original="10.96.0.20:80", trace_id=TID, bytes_sent=10, bytes_recv=20)
    rec.started, rec.ended = 0.0, 0.01
    (tmp_path / "ztunnel-node-1.log").write_text(dns + "\n" + format_text(rec, now=t0 + 0.5) + "\n")
    monkeypatch.setattr(server.time, "time", lambda: t0 + 5)

    async def scenario() -> dict[str, Any]:
        async with TestClient(TestServer(build_app(LogSource(tmp_path, window=60.0)))) as client:
            resp = await client.get(f"/api/trace/{TID}")
            assert resp.status == 200
            return dict(await resp.json())

    doc = asyncio.run(scenario())
    assert any("web.demo.svc.cluster.local" in str(hop) for hop in doc["hops"]), doc
