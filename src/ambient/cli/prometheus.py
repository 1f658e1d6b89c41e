"""`ambient prometheus-targets`: loopback forwarders to every metrics endpoint of the local cluster and a
Prometheus scrape config pointing at them (bring your own Prometheus / Grafana).

The components live in network namespaces the machine has no route to, so each metrics endpoint gets a
forwarder on 127.0.0.1:<port> (`cluster.metrics_targets`, which `ambient dashboard` shares): node proxies
(node netns, 127.0.0.1:15020) and the pods serving the same admin endpoint (127.0.0.1:15020 in their
netns), told apart by who manages them (`component_of`): waypoints carry `gateway.istio.io/managed:
istio.io-mesh-controller`; ingress gateways either `gateway.istio.io/managed: istio.io-gateway-controller`
(a Gateway API Gateway of class `istio`; it carries `gateway.networking.k8s.io/gateway-name` too, like a
waypoint) or `istio: ingressgateway` (the classic one). The command writes into `--out`:

- `targets.json`: Prometheus file-based service discovery (`file_sd_configs`), one group per endpoint with
  labels `cluster`, `component` (ztunnel, waypoint, ingressgateway), `node` or `namespace` / `pod`;
  rewritten (atomically) when waypoints come and go, every `--refresh` seconds;
- `prometheus.yml`: a complete config with one job (`ambient`) reading that file.

Run `prometheus --config.file=<out>/prometheus.yml` beside it. It serves until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ambient.cli.context import state

if TYPE_CHECKING:
    from ambient.cluster.metrics_targets import Endpoint

# Endpoint discovery and the forwarders are the cluster's (`cluster.metrics_targets`: `ambient dashboard`
# scrapes the same endpoints). Its names stay importable from here, loaded on first use: importing the
# command module at CLI start-up must not import asyncio (the CLI's start-up time rule).
_SHARED = ("INGRESS_MANAGER", "MANAGED_LABEL", "METRICS_PORT", "POD_SELECTORS", "WAYPOINT_MANAGER", "Endpoint",
           "component_of", "discover")


def __getattr__(name: str) -> Any:
    if name in _SHARED:
        from ambient.cluster import metrics_targets

        return getattr(metrics_targets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def file_sd(forwarded: list[tuple[Endpoint, int]]) -> list[dict[str, Any]]:
    """The file_sd document: one target group per forwarded endpoint (127.0.0.1:<local port>)."""
    return [{"targets": [f"127.0.0.1:{port}"], "labels": dict(ep.labels)}
            for ep, port in sorted(forwarded, key=lambda f: f[0].labels)]


def scrape_config(targets_file: Path, interval: str = "15s") -> str:
    """A complete prometheus.yml with one job reading `targets_file` (YAML written by hand: a JSON subset)."""
    doc = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{
            "job_name": "ambient",
            "metrics_path": "/metrics",
            "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
        }],
    }
    return json.dumps(doc, indent=2) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prometheus_targets_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Directory for targets.json and prometheus.yml.", file_okay=False)]
    = Path("ambient-prometheus"),
    interval: Annotated[str, typer.Option(help="Scrape interval written in prometheus.yml.")] = "15s",
    refresh: Annotated[float, typer.Option(help="Seconds between discoveries of new waypoints.")] = 5.0,
) -> None:
    """Forward every metrics endpoint of the local cluster to loopback and write a Prometheus scrape config."""
    import asyncio

    from ambient.cluster import layout as L
    from ambient.cluster import metrics_targets as mt
    from ambient.core import process

    st = state(ctx)
    layout = L.load_layout(st.socket_path.parent)
    client = st.client()
    out.mkdir(parents=True, exist_ok=True)
    targets_file = (out / "targets.json").absolute()
    _write(out / "prometheus.yml", scrape_config(targets_file, interval))

    async def main(_shutdown: Any) -> None:
        first = True
        async with mt.Forwarders() as forwarders:  # closed (their ports freed) when the command stops
            while True:
                found = await asyncio.to_thread(mt.discover, layout, client)
                ports = await forwarders.sync(found)
                _write(targets_file, json.dumps(file_sd(list(ports.items())), indent=2))
                if first:
                    sys.stdout.write(f"{len(ports)} metrics endpoints forwarded; scrape config "
                                     f"{(out / 'prometheus.yml').absolute()} (Ctrl-C to stop)\n")
                    sys.stdout.flush()
                    first = False
                await asyncio.sleep(refresh)

    process.run(main)


def register(root: typer.Typer) -> None:
    root.command("prometheus-targets")(prometheus_targets_command)
