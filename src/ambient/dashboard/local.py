"""The dashboard's sources on the local cluster: one row per node proxy and per waypoint / ingress gateway pod,
of the shape a Kubernetes install's rows have (`model.source_row`), so the page draws both alike.

- which: the metrics endpoints `ambient prometheus-targets` forwards (`cluster.metrics_targets.discover`:
  one node proxy per node of the layout, the Running pods managed as waypoints or ingress gateways), found
  again every `refresh` seconds; a discovery that fails (the API server down) keeps the last endpoints and
  adds a `discovery` row with the reason;
- access log: the component's file under `<state>/logs` as the `LogSource` reads it (`ztunnel-<node>.log`; a
  pod's `pods/<ns>_<pod>_<container>.log`, summed over its containers): state `reading`, or `missing` while
  the file does not exist; the access lines read from it so far;
- metrics: each endpoint's 15020 through its loopback forwarder (`metrics_targets.Forwarders`), scraped
  (`/stats/prometheus`) every `refresh` seconds into `model.metrics_summary`; a scrape that fails marks the
  row `down` with the reason (the forwarder's own, e.g. the pod's netns is gone, when it had one) and keeps
  the last summary (`metrics=False`: `off`, no forwarder).

Invariants: forwarders listen on 127.0.0.1 only and are closed when `run` ends (the dashboard stopping
cancels it); rows are built from what was last scraped (`rows`, pure), so a page never waits on a scrape and
a failing endpoint is a row, never an error of the page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from ambient.cluster import metrics_targets as mt
from ambient.core.errors import AmbientError
from ambient.dashboard.model import source_row
from ambient.dashboard.scrape import SCRAPE_TIMEOUT, metrics_url, scrape
from ambient.dashboard.server import LogSource


@dataclass
class Metrics:
    """What the last scrape of one endpoint found."""

    state: str = "starting"  # starting | up | down | off
    detail: str = ""
    summary: dict[str, float] | None = None


def label(ep: mt.Endpoint) -> str:
    """The row's name: what the access logs call the component, and its pod (as on Kubernetes)."""
    pod = ep.label("pod")
    return f"{ep.name} ({ep.label('namespace')}/{pod})" if pod else ep.name


def log_files(ep: mt.Endpoint, log_dir: Path, files: Iterable[Path]) -> tuple[list[Path], str]:
    """The endpoint's access log files among `files` (what the LogSource reads), and where they are expected."""
    pod = ep.label("pod")
    if not pod:  # a node proxy: the supervisor's log of its process
        want = log_dir / f"{ep.name}.log"
        return [f for f in files if f == want], str(want)
    prefix = f"{ep.label('namespace')}_{pod}_"  # pods/<ns>_<pod>_<container>.log (names have no "_")
    return ([f for f in files if f.parent == log_dir / "pods" and f.name.startswith(prefix)],
            str(log_dir / "pods" / f"{prefix}*.log"))


def rows(found: Iterable[mt.Endpoint], log_dir: Path, files: Iterable[Path], lines_read: dict[Path, int],
         metrics: dict[mt.Endpoint, Metrics], discovery_error: str = "") -> list[dict[str, Any]]:
    """The sources rows (pure): discovery's failure first, then node proxies, then pods, by name."""
    files = list(files)
    out = [source_row("discovery", "error", detail=discovery_error)] if discovery_error else []
    for ep in sorted(found, key=lambda e: (e.label("component") != "ztunnel", label(e))):
        mine, expected = log_files(ep, log_dir, files)
        m = metrics.get(ep) or Metrics()
        out.append(source_row(
            label(ep), "reading" if mine else "missing", kind=ep.label("component"),
            detail=", ".join(map(str, mine)) if mine else f"no access log yet at {expected}",
            lines=sum(lines_read.get(f, 0) for f in mine), metrics_state=m.state, metrics_detail=m.detail,
            metrics=m.summary))
    return out


class LocalSource:
    """The local cluster's source rows; `run` keeps them current (discovery, forwarders, scrapes)."""

    def __init__(self, layout: Any, client: Any, logs: LogSource, *, refresh: float = 5.0, metrics: bool = True,
                 discover: Callable[[Any, Any], list[mt.Endpoint]] = mt.discover) -> None:
        self.layout = layout
        self.client = client
        self.logs = logs
        self.refresh = refresh
        self.metrics = metrics
        self._discover = discover
        self._found: list[mt.Endpoint] = []
        self._discovery_error = ""
        self._metrics: dict[mt.Endpoint, Metrics] = {}

    def status(self) -> list[dict[str, Any]]:
        """The rows now (the page's `sources`); the LogSource was polled just before (server.build_app)."""
        return rows(self._found, self.logs.log_dir, self.logs.files(), self.logs.lines_read, self._metrics,
                    self._discovery_error)

    def found(self, endpoints: list[mt.Endpoint]) -> None:
        """Take a discovery's endpoints: rows for the new ones, none for the gone ones."""
        self._found = list(endpoints)
        for ep in endpoints:
            self._metrics.setdefault(ep, Metrics() if self.metrics else Metrics("off"))
        for ep in [ep for ep in self._metrics if ep not in set(endpoints)]:
            del self._metrics[ep]

    async def run(self) -> None:
        """Discover, forward and scrape every `refresh` seconds until cancelled; the forwarders close then."""
        timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)
        # one connection per scrape (no keep-alive): each scrape goes through the forwarder into the netns
        # anew, so a failure is this moment's reason
        async with mt.Forwarders() as forwarders, aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as http:
            while True:
                try:
                    endpoints = await asyncio.to_thread(self._discover, self.layout, self.client)
                except (AmbientError, OSError) as exc:  # keep the last endpoints; say why they may be stale
                    self._discovery_error = f"listing the waypoint and gateway pods failed: {exc}"
                else:
                    self._discovery_error = ""
                    self.found(endpoints)
                if self.metrics:
                    ports = await forwarders.sync(self._found)
                    await asyncio.gather(*(self._scrape(http, forwarders, ep, port) for ep, port in ports.items()))
                await asyncio.sleep(self.refresh)

    async def _scrape(self, http: aiohttp.ClientSession, forwarders: mt.Forwarders, ep: mt.Endpoint,
                      port: int) -> None:
        m = self._metrics.get(ep)
        if m is None:
            return
        url = metrics_url(port)
        try:
            summary = await scrape(http, port)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:  # ValueError: a body that is not text
            why = forwarders.last_error(ep)
            m.state = "down"
            m.detail = f"scrape of {url} failed: {exc or type(exc).__name__}" + (f" ({why})" if why else "")
            return
        m.summary = summary
        m.state, m.detail = "up", f"via 127.0.0.1:{port}"
