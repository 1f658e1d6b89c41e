"""What one ingress gateway serves, followed from the cluster API: its Gateway (listeners), the HTTPRoutes
attached to it, the TLS Secrets of its HTTPS listeners and the Services its routes name.

`GatewayConfig.build` is pure (objects in, an immutable config out); `ApiConfigSource` keeps the objects
current with one informer per kind (`ambient.api.informer.inform`) and publishes a new config on every
change. A route that cannot be parsed is logged and skipped (one broken route must not take the others
down); a listener whose certificate is unusable is left out and its reason kept (`problems`). Secret
contents are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ambient.api.client import WatchEvent
from ambient.api.informer import inform
from ambient.l7.errors import L7Error
from ambient.l7.gateway_routing import AttachedRoute, Listener, gateway_parents
from ambient.l7.routing import parse_http_route

log = logging.getLogger("ambient.gateway.config")

Obj = dict[str, Any]
KINDS = ("Gateway", "HTTPRoute", "Secret", "Service")


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
                attached.append(AttachedRoute(parse_http_route(obj), parents))
            except (L7Error, KeyError, TypeError, ValueError) as exc:
                meta = obj.get("metadata") or {}
                log.warning("HTTPRoute %s/%s skipped: %s", meta.get("namespace"), meta.get("name"), exc)
        return cls(tuple(listeners), tuple(attached), certs, dict(services), problems)


def _certificate(listener: Obj, ns: str, secrets: Mapping[tuple[str, str], Obj]) -> Certificate | str:
    refs = (listener.get("tls") or {}).get("certificateRefs") or []
    if not refs:
        return "an HTTPS listener needs tls.certificateRefs"
    ref = refs[0]
    key = (str(ref.get("namespace") or ns), str(ref.get("name")))
    secret = secrets.get(key)
    if secret is None:
        return f"certificate Secret {key[0]}/{key[1]} not found"
    data = secret.get("data") or {}
    try:
        return Certificate(base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"]))
    except (KeyError, ValueError):
        return f"certificate Secret {key[0]}/{key[1]} has no usable tls.crt and tls.key"


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


class ApiConfigSource:
    """Follows the objects of one Gateway `namespace/name` and publishes a `GatewayConfig` per change."""

    def __init__(self, client: Any, name: str, namespace: str,
                 on_change: Callable[[GatewayConfig], None] | None = None) -> None:
        self.client = client
        self.name, self.namespace = name, namespace
        self.current = GatewayConfig()
        self.ready = asyncio.Event()
        self._objs: dict[str, dict[tuple[str, str], Obj]] = {k: {} for k in KINDS}
        self._listed: set[str] = set()
        self._on_change = on_change

    def _publish(self) -> None:
        gateway = self._objs["Gateway"].get((self.namespace, self.name))
        self.current = GatewayConfig.build(gateway, self._objs["HTTPRoute"].values(), self._objs["Secret"],
                                           self._objs["Service"])
        if len(self._listed) == len(KINDS):
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
            for kind in KINDS:
                ns = self.namespace if kind in ("Gateway", "Secret") else None
                tg.create_task(inform(self.client, kind, self._replace, self._event, namespace=ns))
