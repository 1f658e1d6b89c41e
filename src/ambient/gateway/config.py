"""What one ingress gateway serves, followed from the cluster API: its Gateway (listeners), the HTTPRoutes
attached to it, the TLS Secrets of its HTTPS listeners and the Services its routes name.

`GatewayConfig.build` is pure (objects in, an immutable config out); `ApiConfigSource` keeps the objects
current with one informer per kind (`ambient.api.informer.inform`) and publishes a new config on every
change. A route that cannot be parsed is logged and skipped (one broken route must not take the others
down); a listener whose certificate is unusable is left out and its reason kept (`problems`). Secrets are
read by `ambient.tls.credentials` (Istio's keys: `tls.crt` / `tls.key`, or `cert` / `key`); their contents
are never logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ambient.api.client import WatchEvent
from ambient.api.informer import inform
from ambient.l7.errors import L7Error
from ambient.l7.gateway_routing import AttachedRoute, Listener, gateway_parents
from ambient.l7.routing import HttpRoute, WeightedRoundRobin, parse_http_route
from ambient.tls.credentials import key_pair, secret_data
from ambient.tls.errors import CredentialError

log = logging.getLogger("ambient.gateway.config")

Obj = dict[str, Any]
KINDS = ("Gateway", "HTTPRoute", "Secret", "Service")
CLASSIC_KINDS = ("IstioGateway", "VirtualService", "Secret", "Service")


@dataclass(frozen=True)
class Certificate:
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class GatewayConfig:
    listeners: tuple[Listener, ...] = ()
    routes: tuple[AttachedRoute, ...] = ()
    certificates: Mapping[str, Certificate] = field(default_factory=dict)  # listener name -> certificate
    services: Mapping[tuple[str, str], Obj] = field(default_factory=dict)  # (ns, name) -> Service
    problems: Mapping[str, str] = field(default_factory=dict)  # listener name -> why it is not served
    # listener name -> (namespace, name) of the Gateway it belongs to (classic mode: several Istio Gateways
    # may select one gateway pod); absent: the gateway's own Gateway
    owners: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def build(cls, gateway: Obj | None, routes: Iterable[Obj], secrets: Mapping[tuple[str, str], Obj],
              services: Mapping[tuple[str, str], Obj]) -> GatewayConfig:
        if gateway is None:
            return cls(services=dict(services))
        ns = str((gateway.get("metadata") or {}).get("namespace") or "default")
        listeners: list[Listener] = []
        certs: dict[str, Certificate] = {}
        problems: dict[str, str] = {}
        for item in (gateway.get("spec") or {}).get("listeners") or []:
            name, proto = str(item.get("name")), str(item.get("protocol") or "")
            listener = Listener(name, int(item.get("port") or 0), proto, item.get("hostname"))
            if proto not in ("HTTP", "HTTPS"):
                problems[name] = f"protocol {proto} is not supported"
                continue
            if proto == "HTTPS":
                cert = _certificate(item, ns, secrets)
                if isinstance(cert, str):
                    problems[name] = cert
                    continue
                certs[name] = cert
            listeners.append(listener)
        attached: list[AttachedRoute] = []
        for obj in routes:
            parents = gateway_parents(obj)
            if not parents:
                continue
            try:
                attached.append(AttachedRoute(_exact_shares(parse_http_route(obj)), parents))
            except (L7Error, KeyError, TypeError, ValueError) as exc:
                meta = obj.get("metadata") or {}
                log.warning("HTTPRoute %s/%s skipped: %s", meta.get("namespace"), meta.get("name"), exc)
        return cls(tuple(listeners), tuple(attached), certs, dict(services), problems)


def _exact_shares(route: HttpRoute) -> HttpRoute:
    """Weighted backends picked by smooth weighted round robin (exact shares over every window of the
    weights' sum, as the VirtualService translation does) rather than at random."""
    from dataclasses import replace

    rules = tuple(replace(r, balancer=WeightedRoundRobin([b.weight for b in r.backends]))
                  if len(r.backends) > 1 and r.balancer is None else r for r in route.rules)
    return replace(route, rules=rules)


def build_classic(gateways: Iterable[Obj], pod_labels: Mapping[str, str], pod_namespace: str,
                  virtual_services: Iterable[Obj], secrets: Mapping[tuple[str, str], Obj],
                  services: Mapping[tuple[str, str], Obj]) -> GatewayConfig:
    """The config of a classic Istio ingress pod (pure): the servers of every networking.istio.io Gateway
    whose `selector` matches the pod's labels become listeners (one per host; `*` is any host), HTTPS with
    the `tls.credentialName` Secret of the pod's namespace (tls.mode SIMPLE); the VirtualServices naming
    such a Gateway in `gateways` (`name` in their namespace, or `namespace/name`) are its routes, their
    `hosts` the hostnames they serve (`*`: any), routed with their http rules in order."""
    from dataclasses import replace

    from ambient.l7.gateway_routing import GatewayParent
    from ambient.l7.virtual_service import parse_virtual_service

    listeners: list[Listener] = []
    certs: dict[str, Certificate] = {}
    problems: dict[str, str] = {}
    owners: dict[str, tuple[str, str]] = {}
    selected: set[tuple[str, str]] = set()
    for gw in gateways:
        gw_ns, gw_name = _key(gw)
        spec = gw.get("spec") or {}
        selector = spec.get("selector") or {}
        if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
            continue
        selected.add((gw_ns, gw_name))
        for si, server in enumerate(spec.get("servers") or []):
            port = server.get("port") or {}
            proto = str(port.get("protocol") or "").upper()
            tls = server.get("tls") or {}
            for host in server.get("hosts") or ["*"]:
                bare = str(host).split("/", 1)[-1]
                name = f"{gw_ns}/{gw_name}/{port.get('name') or si}/{bare}"
                listener = Listener(name, int(port.get("number") or 0), proto, None if bare == "*" else bare)
                owners[name] = (gw_ns, gw_name)
                if proto not in ("HTTP", "HTTPS"):
                    problems[name] = f"protocol {proto} is not supported"
                    continue
                if proto == "HTTPS":
                    if tls.get("mode") != "SIMPLE" or not tls.get("credentialName"):
                        problems[name] = "an HTTPS server needs tls.mode SIMPLE and a credentialName"
                        continue
                    cert = _certificate({"tls": {"certificateRefs": [{"name": tls["credentialName"]}]}},
                                        pod_namespace, secrets)
                    if isinstance(cert, str):
                        problems[name] = cert
                        continue
                    certs[name] = cert
                listeners.append(listener)
    attached: list[AttachedRoute] = []
    for vs in virtual_services:
        vs_ns, vs_name = _key(vs)
        spec = vs.get("spec") or {}
        parents = []
        for ref in spec.get("gateways") or []:
            ns, _, name = str(ref).rpartition("/")
            key = (ns or vs_ns, name)
            if key in selected:
                parents.append(GatewayParent(key[1], key[0]))
        if not parents:
            continue
        try:
            parsed = parse_virtual_service(vs).route
        except (L7Error, KeyError, TypeError, ValueError) as exc:
            log.warning("VirtualService %s/%s skipped: %s", vs_ns, vs_name, exc)
            continue
        hostnames = tuple(str(h) for h in spec.get("hosts") or () if str(h) != "*")
        attached.append(AttachedRoute(replace(parsed, parents=(), hostnames=hostnames), tuple(parents)))
    return GatewayConfig(tuple(listeners), tuple(attached), certs, dict(services), problems, owners)


def _certificate(listener: Obj, ns: str, secrets: Mapping[tuple[str, str], Obj]) -> Certificate | str:
    refs = (listener.get("tls") or {}).get("certificateRefs") or []
    if not refs:
        return "an HTTPS listener needs tls.certificateRefs"
    ref = refs[0]
    key = (str(ref.get("namespace") or ns), str(ref.get("name")))
    secret = secrets.get(key)
    what = f"certificate Secret {key[0]}/{key[1]}"
    if secret is None:
        return f"{what} not found"
    try:
        pair = key_pair(secret_data(secret, what), what)
    except CredentialError as exc:
        return exc.message
    return Certificate(pair.cert_pem, pair.key_pem)


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


class ApiConfigSource:
    """Follows the objects of one Gateway `namespace/name` and publishes a `GatewayConfig` per change."""

    def __init__(self, client: Any, name: str, namespace: str,
                 on_change: Callable[[GatewayConfig], None] | None = None,
                 classic_labels: Mapping[str, str] | None = None) -> None:
        """`classic_labels`: the pod's labels, for a classic Istio ingress (Istio Gateways select it by
        them and VirtualServices bind to those Gateways); None for a Gateway API gateway `namespace/name`."""
        self.client = client
        self.name, self.namespace = name, namespace
        self.classic_labels = classic_labels
        self.kinds = CLASSIC_KINDS if classic_labels is not None else KINDS
        self.current = GatewayConfig()
        self.ready = asyncio.Event()
        self._objs: dict[str, dict[tuple[str, str], Obj]] = {k: {} for k in self.kinds}
        self._listed: set[str] = set()
        self._on_change = on_change

    def _publish(self) -> None:
        if self.classic_labels is not None:
            self.current = build_classic(self._objs["IstioGateway"].values(), self.classic_labels, self.namespace,
                                         self._objs["VirtualService"].values(), self._objs["Secret"],
                                         self._objs["Service"])
        else:
            gateway = self._objs["Gateway"].get((self.namespace, self.name))
            self.current = GatewayConfig.build(gateway, self._objs["HTTPRoute"].values(), self._objs["Secret"],
                                               self._objs["Service"])
        if len(self._listed) == len(self.kinds):
            self.ready.set()
        if self._on_change is not None:
            self._on_change(self.current)

    def _replace(self, kind: str, items: list[Obj]) -> None:
        self._objs[kind] = {_key(o): o for o in items}
        self._listed.add(kind)
        self._publish()

    def _event(self, kind: str, event: WatchEvent) -> None:
        if event.type == "DELETED":
            self._objs[kind].pop(_key(event.object), None)
        else:
            self._objs[kind][_key(event.object)] = event.object
        self._publish()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for kind in self.kinds:
                ns = self.namespace if kind in ("Gateway", "Secret") else None
                tg.create_task(inform(self.client, kind, self._replace, self._event, namespace=ns))
