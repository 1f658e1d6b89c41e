"""`ambient prometheus-targets`: loopback forwarders to every metrics endpoint of the local cluster and a
Prometheus scrape config pointing at them (bring your own Prometheus / Grafana).

The components live in network namespaces the machine has no route to, so each metrics endpoint gets a
forwarder on 127.0.0.1:<port> (`cluster.portforward`): node proxies (node netns, 127.0.0.1:15020) and the
pods serving the same admin endpoint (127.0.0.1:15020 in their netns), told apart by who manages them
(`component_of`): waypoints carry `gateway.istio.io/managed: istio.io-mesh-controller`; ingress gateways
either `gateway.istio.io/managed: istio.io-gateway-controller` (a Gateway API Gateway of class `istio`; it
carries `gateway.networking.k8s.io/gateway-name` too, like a waypoint) or `istio: ingressgateway` (the
classic one). The command writes into `--out`:

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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ambient.cli.context import state

METRICS_PORT = 15020
MANAGED_LABEL = "gateway.istio.io/managed"
WAYPOINT_MANAGER = "istio.io-mesh-controller"
INGRESS_MANAGER = "istio.io-gateway-controller"
# the pods that may serve metrics (one list call each); `component_of` decides what each one is
POD_SELECTORS = (f"{MANAGED_LABEL}={WAYPOINT_MANAGER}", f"{MANAGED_LABEL}={INGRESS_MANAGER}", "istio=ingressgateway")


def component_of(labels: dict[str, str]) -> str | None:
    """The `component` label of a pod's metrics endpoint: waypoint, ingressgateway, or None (not ours)."""
    managed = labels.get(MANAGED_LABEL)
    if managed == WAYPOINT_MANAGER:
        return "waypoint"
    if managed == INGRESS_MANAGER or labels.get("istio") == "ingressgateway":
        return "ingressgateway"
    return None


@dataclass(frozen=True)
class Endpoint:
    """A metrics endpoint inside the cluster and its labels."""

    netns: str
    ip: str
    port: int
    labels: tuple[tuple[str, str], ...]


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


def discover(layout: Any, client: Any) -> list[Endpoint]:
    from ambient.cluster import layout as L

    out = [Endpoint(L.node_netns_name(layout.name, i + 1), "127.0.0.1", METRICS_PORT,
                    (("cluster", layout.name), ("component", "ztunnel"), ("node", node.name)))
           for i, node in enumerate(layout.nodes)]
    seen: set[str] = set()
    for selector in POD_SELECTORS:
        pods, _ = client.list("Pod", None, label_selector=selector)
        for pod in pods:
            status, meta = pod.get("status") or {}, pod["metadata"]
            component = component_of(meta.get("labels") or {})
            if status.get("phase") != "Running" or not status.get("podIP") or component is None:
                continue
            if meta["uid"] in seen:  # matched by two selectors (an ingress Gateway labelled istio=ingressgateway)
                continue
            seen.add(meta["uid"])
            out.append(Endpoint(L.pod_netns_name(layout.name, meta["uid"]), "127.0.0.1", METRICS_PORT,
                                (("cluster", layout.name), ("component", component),
                                 ("namespace", meta.get("namespace", "")), ("pod", meta["name"]))))
    return out


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
    from ambient.cluster import portforward as pf
    from ambient.core import process

    st = state(ctx)
    layout = L.load_layout(st.socket_path.parent)
    client = st.client()
    out.mkdir(parents=True, exist_ok=True)
    targets_file = (out / "targets.json").absolute()
    _write(out / "prometheus.yml", scrape_config(targets_file, interval))

    async def main(_shutdown: Any) -> None:
        forwarders: dict[Endpoint, tuple[pf.PortForwarder, int]] = {}
        async with asyncio.TaskGroup() as tasks:
            first = True
            while True:
                found = await asyncio.to_thread(discover, layout, client)
                for ep in found:
                    if ep in forwarders:
                        continue
                    target = pf.Target(ep.netns, ep.ip, ep.port, dict(ep.labels).get("pod", ep.netns))

                    async def resolve(t: pf.Target = target) -> pf.Target:
                        return t

                    fwd = pf.PortForwarder(0, resolve, log=lambda _msg: None)
                    port = await fwd.start()
                    forwarders[ep] = (fwd, port)
                    tasks.create_task(fwd.serve_forever())
                gone = [ep for ep in forwarders if ep not in found]
                for ep in gone:
                    fwd, _port = forwarders.pop(ep)
                    if fwd._server is not None:
                        fwd._server.close()
                _write(targets_file, json.dumps(file_sd([(ep, p) for ep, (_f, p) in forwarders.items()]), indent=2))
                if first:
                    sys.stdout.write(f"{len(forwarders)} metrics endpoints forwarded; scrape config "
                                     f"{(out / 'prometheus.yml').absolute()} (Ctrl-C to stop)\n")
                    sys.stdout.flush()
                    first = False
                await asyncio.sleep(refresh)

    process.run(main)


def register(root: typer.Typer) -> None:
    root.command("prometheus-targets")(prometheus_targets_command)
