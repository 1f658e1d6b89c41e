"""The local cluster's sources rows: one per node proxy and waypoint / gateway pod, its access log file and
lines, its metrics scraped through a loopback forwarder (here the forwarder's dial into the netns is a fake
metrics server on loopback), of the same shape as a Kubernetes install's rows; a scrape or a discovery that
fails is a row saying why."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ambient.cluster import metrics_targets as mt
from ambient.cluster import portforward as pf
from ambient.core.errors import AmbientError
from ambient.dashboard.kubernetes import Kubectl, KubeSource
from ambient.dashboard.local import LocalSource, Metrics, rows
from ambient.dashboard.server import EntryStore, LogSource
from helpers import eventually

LINE = ("2026-12-06T04:00:00.000000Z\tinfo\taccess\tconnection complete\tsrc.addr=10.244.1.2:1 "
        'direction="outbound" bytes_sent=1 bytes_recv=2 duration="1ms" route="hbone"\n')


def _ztunnel(node: str) -> mt.Endpoint:
    return mt.Endpoint(f"amb-c-{node}", "127.0.0.1", 15020, (("cluster", "c"), ("component", "ztunnel"),
                                                             ("node", node)), name=f"ztunnel-{node}")


def _pod(component: str, ns: str, pod: str, gateway: str) -> mt.Endpoint:
    return mt.Endpoint(f"amb-c-pod-{pod}", "127.0.0.1", 15020, (("cluster", "c"), ("component", component),
                                                                ("namespace", ns), ("pod", pod)),
                       name=f"{component} {ns}/{gateway}")


def test_rows_name_each_component_its_log_file_lines_and_metrics(tmp_path: Path) -> None:
    (tmp_path / "ztunnel-node-1.log").write_text(LINE * 3 + "not an access line\n")
    (tmp_path / "pods").mkdir()
    (tmp_path / "pods" / "demo_waypoint-5d8f_istio-proxy.log").write_text(LINE)
    (tmp_path / "pods" / "demo_waypoint-5d8f_debug.log").write_text(LINE)
    (tmp_path / "pods" / "demo_waypoint-5d8f9_istio-proxy.log").write_text(LINE * 5)  # another pod's
    logs = LogSource(tmp_path)
    logs.poll()
    zt1, zt2 = _ztunnel("node-1"), _ztunnel("node-2")
    wp, gw = _pod("waypoint", "demo", "waypoint-5d8f", "waypoint"), _pod("ingressgateway", "demo", "gw-1", "gw")
    summary = {"connections_opened": 4.0, "connections_open": 1.0, "bytes": 9.0, "requests": 0.0, "refusals": 0.0}
    metrics = {zt1: Metrics("up", "via 127.0.0.1:4001", summary), wp: Metrics("down", "scrape failed: reset")}
    got = rows([gw, wp, zt2, zt1], tmp_path, logs.files(), logs.lines_read, metrics, "the API server is down")
    assert [(r["source"], r["kind"], r["state"], r["lines"], r["metrics_state"]) for r in got] == [
        ("discovery", "", "error", 0, ""),
        ("ztunnel-node-1", "ztunnel", "reading", 3, "up"),
        ("ztunnel-node-2", "ztunnel", "missing", 0, "starting"),  # no log yet, not scraped yet
        ("ingressgateway demo/gw (demo/gw-1)", "ingressgateway", "missing", 0, "starting"),
        ("waypoint demo/waypoint (demo/waypoint-5d8f)", "waypoint", "reading", 2, "down"),
    ]
    assert got[0]["detail"] == "the API server is down"
    assert got[1]["detail"] == str(tmp_path / "ztunnel-node-1.log") and got[1]["metrics"] == summary
    assert got[2]["detail"] == f"no access log yet at {tmp_path / 'ztunnel-node-2.log'}"
    assert got[3]["detail"] == f"no access log yet at {tmp_path / 'pods' / 'demo_gw-1_*.log'}"
    assert got[4]["metrics_detail"] == "scrape failed: reset" and got[4]["metrics"] is None


def test_local_rows_have_the_shape_of_kubernetes_rows(tmp_path: Path) -> None:
    """The page draws both with one code path: the same keys."""
    kube = KubeSource(Kubectl("kubectl"), EntryStore()).status()  # nothing discovered: a discovery row
    local = rows([_ztunnel("node-1")], tmp_path, [], {}, {}, "down")
    assert kube and len(local) == 2
    assert {frozenset(r) for r in kube} == {frozenset(r) for r in local}


METRICS = """# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{{reporter="source"}} {opened}
istio_tcp_sent_bytes_total{{reporter="source"}} 10
"""


async def test_each_endpoint_is_scraped_through_its_forwarder_and_a_failure_is_a_down_row(
        tmp_path: Path, monkeypatch: Any) -> None:
    opened = {"n": 1}

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text=METRICS.format(opened=opened["n"]))

    app = web.Application()
    app.router.add_get("/stats/prometheus", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server_port = runner.addresses[0][1]
    real_connect = asyncio.open_connection

    async def connect(target: pf.Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # the netns dial of the forwarder: node-1's endpoint is the fake server, node-2's netns is gone
        if target.netns == "amb-c-node-1":
            return await real_connect("127.0.0.1", server_port)
        raise pf.PortForwardError(f"pod network namespace {target.netns} does not exist")

    monkeypatch.setattr(pf, "connect_target", connect)
    found: list[Any] = [[_ztunnel("node-1"), _ztunnel("node-2")]]

    def discover(_layout: Any, _client: Any) -> list[mt.Endpoint]:
        if isinstance(found[0], Exception):
            raise found[0]
        return list(found[0])

    logs = LogSource(tmp_path)
    source = LocalSource(object(), object(), logs, refresh=0.05, discover=discover)

    def row(name: str, state: str) -> dict[str, Any] | None:
        r = next((r for r in source.status() if r["source"] == name), None)
        return r if r is not None and r["metrics_state"] == state else None

    task = asyncio.create_task(source.run())
    try:
        up = await eventually(lambda: row("ztunnel-node-1", "up"), 10, "node-1's metrics scraped")
        assert up["metrics"]["connections_opened"] == 1 and up["metrics"]["bytes"] == 10
        port = int(re.fullmatch(r"via 127\.0\.0\.1:(\d+)", up["metrics_detail"])[1])  # type: ignore[index]
        opened["n"] = 5
        await eventually(lambda: (r := row("ztunnel-node-1", "up")) and r["metrics"]["connections_opened"] == 5,
                         10, "the grown count")
        down = await eventually(lambda: row("ztunnel-node-2", "down"), 10, "node-2's scrape failure")
        assert "amb-c-node-2 does not exist" in down["metrics_detail"], down
        # a failed discovery keeps the endpoints and says why; a healed one drops the row
        found[0] = AmbientError("API server unavailable")
        bad = await eventually(lambda: next((r for r in source.status() if r["source"] == "discovery"), None),
                               10, "the discovery row")
        assert "API server unavailable" in bad["detail"] and row("ztunnel-node-1", "up")
        found[0] = [_ztunnel("node-1")]
        await eventually(lambda: [r["source"] for r in source.status()] == ["ztunnel-node-1"], 10,
                         "node-2 gone, discovery healed")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await runner.cleanup()
    with pytest.raises(OSError):  # the forwarder closed with the source
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
