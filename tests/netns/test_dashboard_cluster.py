"""`ambient dashboard` in a real browser, against a real local cluster ("dsh1"): headless Chromium (Debian
package `chromium`, driven through its DevTools protocol over a websocket) loads the page, the test sends
requests from a meshed client to a meshed web Service on the other node, and the page shows the edge and
the connection rows within 5 s; a click on a row shows that connection's trace. The sources table has a row
per node proxy (its access log read, its metrics scraped through a loopback forwarder into the node's netns)
whose connections-opened count grows with that traffic. Every request the page made went to the dashboard
itself (no external asset). A screenshot is kept as an artifact
(`<tmp>/dashboard.png`, and `$AMBIENT_ARTIFACTS_DIR/dashboard.png` when set).

Traffic goes only to loopback and to addresses inside the cluster's own network namespaces.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cluster_fixtures import create_client_and_web, local_cluster

from ambient.cluster import layout as L
from helpers import stop_process, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.root, pytest.mark.timeout(300),
              pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/bootstrap.sh installs it)")]

CLUSTER = "dsh1"
NS = "dsh"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--remote-debugging-port=0", "--window-size=1400,1000"]


@dataclass
class Env:
    layout: L.ClusterLayout
    api: Any
    state: Path
    client: dict[str, Any]
    vip: str
    url: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    dash: subprocess.Popen[str] | None = None
    with local_cluster(CLUSTER, tmp_path_factory.mktemp(CLUSTER), 2) as (layout, api, state):
        try:
            client = create_client_and_web(api, layout, NS)
            vip = wait_for(lambda: api.get("Service", "web", NS)["spec"].get("clusterIP"), 30, "web VIP")
            dash = subprocess.Popen([sys.executable, "-m", "ambient", "-c", CLUSTER, "--state-dir", str(state),
                                     "dashboard", "--port", "0", "--no-open", "--refresh", "1"],
                                    stdout=subprocess.PIPE, text=True)
            assert dash.stdout is not None
            line = dash.stdout.readline()
            m = re.search(r"http://127\.0\.0\.1:\d+/", line)
            assert m, line
            yield Env(layout, api, state, client, vip, m.group(0))
        finally:
            if dash is not None:
                dash.terminate()
                dash.wait(10)


class Page:
    """A minimal DevTools protocol client for one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._id = 0
        self.requests: list[str] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        my = self._id
        await self.ws.send_json({"id": my, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 30)
            if msg.get("method") == "Network.requestWillBeSent":
                self.requests.append(msg["params"]["request"]["url"])
            if msg.get("id") == my:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return dict(msg.get("result") or {})

    async def eval(self, expression: str) -> Any:
        res = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res.get("result", {}).get("value")

    async def until(self, expression: str, within: float, what: str) -> Any:
        deadline = time.monotonic() + within
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within}s waiting for {what}")
            await asyncio.sleep(0.1)


def _curl(env: Env) -> str:
    netns = L.pod_netns_name(CLUSTER, env.client["metadata"]["uid"])
    out = subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", "-m", "5", f"http://{env.vip}/"],
                         capture_output=True, text=True, timeout=30, check=False)
    return out.stdout


def test_dashboard_shows_live_edges_rows_and_traces_in_chromium(env: Env, tmp_path: Path) -> None:
    wait_for(lambda: _curl(env) == "hi", timeout=60, what="the mesh serves client -> web")
    profile = tmp_path / "profile"
    chrome = subprocess.Popen([str(CHROMIUM), *CHROME_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert chrome.stderr is not None
        devtools = ""
        deadline = time.monotonic() + 30
        while not devtools and time.monotonic() < deadline:
            line = chrome.stderr.readline()
            if m := re.search(r"ws://127\.0\.0\.1:(\d+)/", line):
                devtools = m.group(1)
        assert devtools, "chromium printed no DevTools address"
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{devtools}/json/list", timeout=10).read())
        page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        png = asyncio.run(_drive(env, page_ws))
        (tmp_path / "dashboard.png").write_bytes(png)
        if artifacts := os.environ.get("AMBIENT_ARTIFACTS_DIR"):
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            (Path(artifacts) / "dashboard.png").write_bytes(png)
    finally:
        stop_process(chrome)


async def _drive(env: Env, page_ws: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.ws_connect(page_ws, max_msg_size=0) as ws:
        page = Page(ws)
        await page.call("Network.enable")
        await page.call("Page.enable")
        await page.call("Page.navigate", url=env.url)
        await page.until("document.getElementById('status') && "
                         "document.getElementById('status').textContent.startsWith('live')", 20, "the live stream")
        await page.until("document.querySelectorAll('#policies tr.policy').length > 0", 15, "the policies")
        assert "web-allow" in await page.eval("document.getElementById('policies').textContent")
        # the sources table: one row per node proxy, its log read and its metrics up; the connections opened
        # (column "connections opened / open") summed over the node proxies, before the traffic below
        proxies = ("[...document.querySelectorAll(\"#sources tr.source[data-source^='ztunnel-']\")]"
                   ".map(r => [...r.cells].map(c => c.textContent))")
        cells = await page.until(f"(rs => rs.length === 2 && rs.every(c => c[1] === 'reading' && c[3] === 'up') "
                                 f"&& rs)({proxies})", 30, "two node proxy rows with their log read and metrics up")
        assert sorted(c[0] for c in cells) == ["ztunnel-node-1", "ztunnel-node-2"], cells
        opened = f"{proxies}.reduce((n, c) => n + parseInt(c[4].split(' / ')[0]), 0)"
        before = await page.eval(opened)  # counters only grow: an older scrape is a lower bound
        loop = asyncio.get_running_loop()
        sent = time.monotonic()
        for _ in range(3):
            assert await loop.run_in_executor(None, functools.partial(_curl, env)) == "hi"
        edge = f"g.edge[data-src='{NS}/client'][data-dst='{NS}/web']"
        await page.until(f"!!document.querySelector(\"{edge}\") && "
                         "document.querySelectorAll('#connections tr.conn').length >= 3", 5 + (time.monotonic() - sent),
                         "the edge and the connection rows")
        assert time.monotonic() - sent < 5 + 3, "the page took longer than 5 s after the traffic"
        await page.until(f"{opened} >= {before} + 3", 15, "the node proxies' connections opened counting the traffic")
        label = await page.eval(f"document.querySelector(\"{edge}\").textContent")
        assert "conn" in label, label
        title = await page.eval(f"document.querySelector(\"{edge} title\").textContent")
        assert f"spiffe://cluster.local/ns/{NS}/sa/default" in title, title
        await page.eval("document.querySelector('#connections tr.conn').click()")
        trace = await page.until("(t => t.includes('destination-proxy') && t)(document.getElementById('trace')"
                                 ".textContent)", 10, "the trace of the clicked connection")
        assert "allowed by policy dsh/web-allow" in trace, trace
        shot = await page.call("Page.captureScreenshot", format="png")
        png = base64.b64decode(shot["data"])
        assert png.startswith(b"\x89PNG")
        await page.eval("1")  # collect the last network events
        outside = [u for u in page.requests if not (u.startswith(env.url) or u.startswith(("about:", "data:")))]
        assert page.requests and not outside, page.requests
        return png


PROMETHEUS = shutil.which("prometheus")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    return json.loads(urllib.request.urlopen(url, timeout=10).read())


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (scripts/bootstrap.sh installs it)")
def test_a_real_prometheus_scrapes_every_component(env: Env, tmp_path: Path) -> None:
    """Node proxies, a waypoint and a Gateway API ingress gateway (which carries the gateway-name label too,
    yet is labelled ingressgateway), through `ambient prometheus-targets`' loopback forwarders."""
    base = [sys.executable, "-m", "ambient", "-c", CLUSTER, "--state-dir", str(env.state)]
    run = subprocess.run([*base, "waypoint", "apply", "-n", NS, "--wait", "--timeout", "60"], capture_output=True,
                         text=True, timeout=90, check=False)
    assert run.returncode == 0, run.stderr
    env.api.create({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                    "metadata": {"name": "ingress", "namespace": NS},
                    "spec": {"gatewayClassName": "istio", "listeners": [{"name": "http", "port": 8080,
                                                                         "protocol": "HTTP"}]}})
    out = tmp_path / "prom"
    fwd = subprocess.Popen([*base, "prometheus-targets", "--out", str(out), "--interval", "1s", "--refresh", "1"],
                           stdout=subprocess.PIPE, text=True)
    prom: subprocess.Popen[bytes] | None = None
    prom_log = (tmp_path / "prometheus.log").open("wb")
    try:
        assert fwd.stdout is not None and "metrics endpoints forwarded" in fwd.stdout.readline()

        def groups() -> list[dict[str, Any]] | None:
            doc = json.loads((out / "targets.json").read_text())
            comps = sorted(g["labels"]["component"] for g in doc)
            return doc if comps == ["ingressgateway", "waypoint", "ztunnel", "ztunnel"] else None

        wait_for(groups, timeout=60, what="targets for two node proxies, the waypoint and the ingress gateway")
        port = _free_port()
        prom = subprocess.Popen([str(PROMETHEUS), f"--config.file={out / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=prom_log)
        api = f"http://127.0.0.1:{port}/api/v1"

        def all_up() -> list[dict[str, Any]] | None:
            active = _get_json(f"{api}/targets")["data"]["activeTargets"]
            return active if len(active) == 4 and all(t["health"] == "up" for t in active) else None

        active = wait_for(all_up, timeout=60, what="four targets up in Prometheus")
        assert {t["labels"]["component"] for t in active} == {"ztunnel", "waypoint", "ingressgateway"}
        assert _curl(env) == "hi"  # a connection for the node proxies to count

        def opened() -> list[dict[str, Any]] | None:
            q = urllib.parse.quote("istio_tcp_connections_opened_total")
            result = _get_json(f"{api}/query?query={q}")["data"]["result"]
            return result or None

        series = wait_for(opened, timeout=30, what="istio_tcp_connections_opened_total scraped")
        assert any(s["metric"].get("component") == "ztunnel" for s in series), series
    finally:
        for p in (prom, fwd):
            if p is not None:
                stop_process(p)
        prom_log.close()


def test_a_waypoints_upstream_edge_runs_as_the_waypoint(env: Env) -> None:
    """web uses the namespace's waypoint: the dashboard's waypoint -> web edge shows the waypoint's identity
    (not the client's) and the bytes the destination node proxy counted."""
    base = [sys.executable, "-m", "ambient", "-c", CLUSTER, "--state-dir", str(env.state)]
    run = subprocess.run([*base, "waypoint", "apply", "-n", NS, "--wait", "--timeout", "60"], capture_output=True,
                         text=True, timeout=90, check=False)
    assert run.returncode == 0, run.stderr
    env.api.patch("Service", "web", NS, {"metadata": {"labels": {"istio.io/use-waypoint": "waypoint"}}})
    waypoint_id = f"spiffe://cluster.local/ns/{NS}/sa/waypoint"

    def edge() -> dict[str, Any] | None:
        if _curl(env) != "hi":  # the switch to the waypoint may take a moment to reach the client's proxy
            return None
        snap = _get_json(f"{env.url}api/snapshot")
        edges = [e for e in snap["edges"] if e["src"] == f"{NS}/waypoint" and e["dst"] == f"{NS}/web"]
        return edges[0] if edges and edges[0]["bytes_recv"] > 0 else None

    up = wait_for(edge, timeout=60, what="a waypoint -> web edge with the destination proxy's bytes")
    assert up["identities"] == [waypoint_id], up
    assert up["bytes_sent"] > 0 and up["count"] >= 1, up
    snap = _get_json(f"{env.url}api/snapshot")
    waypoints = [n["id"] for n in snap["nodes"] if n["kind"] == "waypoint"]
    assert waypoints == [f"{NS}/waypoint"], snap["nodes"]

    def waypoint_row() -> dict[str, Any] | None:  # its pod's source row: log lines read, metrics through a forwarder
        rows = [r for r in _get_json(f"{env.url}api/snapshot")["sources"]
                if r["source"].startswith(f"waypoint {NS}/waypoint ({NS}/waypoint-")]
        return rows[0] if rows and rows[0]["metrics_state"] == "up" and rows[0]["metrics"]["requests"] >= 1 else None

    row = wait_for(waypoint_row, timeout=30, what="the waypoint's source row with its requests counted")
    assert row["kind"] == "waypoint" and row["state"] == "reading" and row["lines"] >= 1, row
    assert re.fullmatch(r"via 127\.0\.0\.1:\d+", row["metrics_detail"]), row
