"""The local cluster's metrics endpoints and loopback forwarders to them: what `ambient prometheus-targets`
writes into a scrape config and what `ambient dashboard` scrapes for its sources table.

The components live in network namespaces the machine has no route to (the cluster is hermetic: no link or
route is ever added for this), so each endpoint is reached through a `portforward.PortForwarder` on
127.0.0.1:<ephemeral port> that carries every connection into the endpoint's netns.

- `discover` (blocking: one API list per selector): the node proxies (their node's netns, 127.0.0.1:15020,
  one per node of the layout) and the Running pods serving the same admin endpoint (127.0.0.1:15020 in their
  netns), told apart by who manages them (`component_of`): waypoints carry `gateway.istio.io/managed:
  istio.io-mesh-controller`; ingress gateways either `gateway.istio.io/managed: istio.io-gateway-controller`
  (a Gateway API Gateway of class `istio`; it carries `gateway.networking.k8s.io/gateway-name` too, like a
  waypoint) or `istio: ingressgateway` (the classic one);
- `Forwarders.sync(found)`: one forwarder per endpoint found, started once and kept while the endpoint is
  found, stopped when it is not (a waypoint deleted); `close` (or leaving `async with`) stops them all.

Invariants: forwarders listen on loopback only (`PortForwarder`); a forwarder's listener is closed when its
endpoint is no longer found or its owner stops (its port is free then); the target is fixed per endpoint
(a pod's netns is named by its uid: a replaced pod is a new endpoint); a forwarder's last connection failure
is kept (`Forwarders.last_error`) so a scraper can say why a scrape got no answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ambient.cluster import layout as L
from ambient.cluster import portforward as pf

METRICS_PORT = 15020
MANAGED_LABEL = "gateway.istio.io/managed"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
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
    """A metrics endpoint inside the cluster and its (Prometheus) labels: `cluster`, `component`, and `node`
    or `namespace` / `pod`. `name` is what the access logs call the component (`ztunnel-<node>`, `waypoint
    <ns>/<gateway>`, `ingressgateway <ns>/<gateway>`): shown, not a label, not part of its identity."""

    netns: str
    ip: str
    port: int
    labels: tuple[tuple[str, str], ...]
    name: str = field(default="", compare=False)

    def label(self, key: str) -> str:
        return dict(self.labels).get(key, "")


def discover(layout: Any, client: Any) -> list[Endpoint]:
    """Every metrics endpoint of the cluster: node proxies first (layout order), then the pods."""
    out = [Endpoint(L.node_netns_name(layout.name, i + 1), "127.0.0.1", METRICS_PORT,
                    (("cluster", layout.name), ("component", "ztunnel"), ("node", node.name)),
                    name=f"ztunnel-{node.name}")
           for i, node in enumerate(layout.nodes)]
    seen: set[str] = set()
    for selector in POD_SELECTORS:
        pods, _ = client.list("Pod", None, label_selector=selector)
        for pod in pods:
            status, meta = pod.get("status") or {}, pod["metadata"]
            labels = meta.get("labels") or {}
            component = component_of(labels)
            if status.get("phase") != "Running" or not status.get("podIP") or component is None:
                continue
            if meta["uid"] in seen:  # matched by two selectors (an ingress Gateway labelled istio=ingressgateway)
                continue
            seen.add(meta["uid"])
            ns = meta.get("namespace", "")
            out.append(Endpoint(L.pod_netns_name(layout.name, meta["uid"]), "127.0.0.1", METRICS_PORT,
                                (("cluster", layout.name), ("component", component),
                                 ("namespace", ns), ("pod", meta["name"])),
                                name=f"{component} {ns}/{labels.get(GATEWAY_NAME_LABEL) or meta['name']}"))
    return out


@dataclass
class _Forward:
    forwarder: pf.PortForwarder
    port: int
    last_error: str = ""


class Forwarders:
    """Loopback forwarders to a changing set of endpoints (use from one event loop)."""

    def __init__(self) -> None:
        self._open: dict[Endpoint, _Forward] = {}

    @property
    def ports(self) -> dict[Endpoint, int]:
        """The local port (127.0.0.1) of each endpoint forwarded now."""
        return {ep: f.port for ep, f in self._open.items()}

    def last_error(self, ep: Endpoint) -> str:
        """Why the endpoint's forwarder last failed to carry a connection ("" after one it carried)."""
        f = self._open.get(ep)
        return f.last_error if f is not None else ""

    async def sync(self, found: Iterable[Endpoint]) -> dict[Endpoint, int]:
        """Forward every endpoint of `found` (a new one gets its listener now), stop the others; the ports."""
        wanted = list(dict.fromkeys(found))
        for ep in wanted:
            if ep not in self._open:
                await self._start(ep)
        for ep in [ep for ep in self._open if ep not in set(wanted)]:
            self._open.pop(ep).forwarder.close()
        return self.ports

    def close(self) -> None:
        """Stop every forwarder (their ports are free once this returns)."""
        while self._open:
            self._open.popitem()[1].forwarder.close()

    async def __aenter__(self) -> Forwarders:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    async def _start(self, ep: Endpoint) -> None:
        target = pf.Target(ep.netns, ep.ip, ep.port, ep.label("pod") or ep.name or ep.netns)

        async def resolve() -> pf.Target:
            return target

        def log(msg: str) -> None:
            # PortForwarder says "Handling connection ..." of a carried connection, else why one failed
            entry = self._open.get(ep)
            if entry is not None:
                entry.last_error = "" if msg.startswith("Handling connection") else msg

        fwd = pf.PortForwarder(0, resolve, log=log)
        self._open[ep] = _Forward(fwd, await fwd.start())  # start_server: it accepts from now on
