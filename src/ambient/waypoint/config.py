"""Where the waypoint's L7 config comes from: routes (HTTPRoute, GRPCRoute, TCPRoute, VirtualService),
DestinationRules, targetRef AuthorizationPolicies and RequestAuthentications, ReferenceGrants, the
labels of Pods (for DestinationRule subsets: the workload state carries no labels), and the Secrets of the
waypoint's own namespace (DestinationRule `tls.credentialName`, read when a connection is opened).

The waypoint reads its config through `L7Source` (`.current` -> an immutable `L7Config`), so the proxy
does not care whether objects came from a static YAML file (`StaticL7Source`, tests and standalone use) or
from the cluster API (`ApiL7Source`: one `api.informer.inform` per kind; one writer).

Static file (`--static FILE`): YAML, one or more documents. A document with `kind` is a Kubernetes object
(the kinds above; other kinds are ignored); a document with `workloads` / `services` /
`policies` keys is workload state in the node proxy's static shape (`ambient.state.static`), so one file
can describe a whole standalone waypoint.

Invariants: conversion happens before publication, a bad object is logged and skipped (one broken
route must not take every route down), and a published `L7Config` is never mutated (a route rule's
weighted-round-robin balancer is the one piece of state inside it). A Pod event replaces only the pod
labels, a Secret event only the Secrets (so a rotated certificate is seen by the next connection opened,
without re-parsing routes). `ApiL7Source` watches Secrets of its own namespace only: Istio reads a
`credentialName` in the namespace of the proxy using it, and a waypoint has no business holding the rest.
A route rule using something the waypoint does not implement (ExtensionRef, CORS, backendRef filters;
VirtualService directResponse, delegate, ...) is kept, answers 500, and is named in a warning (once per
distinct message).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from ambient.api.client import WatchEvent
from ambient.api.informer import INITIAL_BACKOFF, MAX_BACKOFF, inform
from ambient.core.backoff import Backoff
from ambient.l7.errors import L7Error
from ambient.l7.filters import SUPPORTED_FILTERS
from ambient.l7.gateway_routes import (
    ReferenceGrant,
    TcpRoute,
    parse_grpc_route,
    parse_reference_grant,
    parse_tcp_route,
)
from ambient.l7.request_auth import RequestAuthentication, parse_request_authentication
from ambient.l7.routing import HttpRoute, parse_http_route
from ambient.l7.virtual_service import DestinationRule, parse_destination_rule, parse_virtual_service
from ambient.state.store import StateDelta
from ambient.waypoint.errors import ConfigError
from ambient.waypoint.l7authz import L7Policy, parse_policy

log = logging.getLogger(__name__)
# Pods: only their labels are kept, for DestinationRule subsets (the workload state has no labels)
KINDS = ("HTTPRoute", "AuthorizationPolicy", "VirtualService", "DestinationRule", "RequestAuthentication", "GRPCRoute",
         "TCPRoute", "ReferenceGrant", "Pod", "Secret")
# kinds whose events replace one field of the published config instead of re-parsing every object
_SIDE_KINDS = ("Pod", "Secret")


@dataclass(frozen=True)
class L7Config:
    routes: tuple[HttpRoute, ...] = ()
    policies: tuple[L7Policy, ...] = ()
    version: str = ""
    destination_rules: tuple[DestinationRule, ...] = ()
    pod_labels: Mapping[tuple[str, str], Mapping[str, str]] = field(default_factory=dict)  # (ns, name) -> labels
    request_auths: tuple[RequestAuthentication, ...] = ()
    tcp_routes: tuple[TcpRoute, ...] = ()
    reference_grants: tuple[ReferenceGrant, ...] = ()
    # (namespace, name) -> Secret object, as the API returns it (data base64); contents are never logged
    secrets: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)

    def secret_lookup(self, namespace: str) -> Callable[[str], Mapping[str, Any] | None]:
        """Secrets of `namespace` by name (`ambient.tls.credentials.SecretLookup`)."""
        return lambda name: self.secrets.get((namespace, name))

    @classmethod
    def from_objects(cls, objects: Iterable[Mapping[str, Any]], version: str = "") -> L7Config:
        routes: list[HttpRoute] = []
        policies: list[L7Policy] = []
        rules: list[DestinationRule] = []
        labels: dict[tuple[str, str], Mapping[str, str]] = {}
        auths: list[RequestAuthentication] = []
        tcp: list[TcpRoute] = []
        grants: list[ReferenceGrant] = []
        secrets: dict[tuple[str, str], Mapping[str, Any]] = {}
        for obj in objects:
            kind = obj.get("kind")
            try:
                if kind == "Secret":
                    meta = obj.get("metadata") or {}
                    secrets[(str(meta.get("namespace") or "default"), str(meta.get("name")))] = obj
                elif kind == "Pod":
                    meta = obj.get("metadata") or {}
                    labels[(str(meta.get("namespace") or "default"), str(meta.get("name")))] = meta.get("labels") or {}
                elif kind == "VirtualService":
                    vs = parse_virtual_service(obj)
                    for problem in vs.problems:
                        _warn_once(f"waypoint: VirtualService {vs.route.key}: {problem}")
                    routes.append(vs.route)
                elif kind == "GRPCRoute":
                    grpc = parse_grpc_route(obj)
                    _warn_unsupported(grpc)
                    routes.append(grpc)
                elif kind == "TCPRoute":
                    tcp.append(parse_tcp_route(obj))
                elif kind == "ReferenceGrant":
                    grants.append(parse_reference_grant(obj))
                elif kind == "DestinationRule":
                    rules.append(parse_destination_rule(obj))
                elif kind == "RequestAuthentication":
                    ra = parse_request_authentication(obj)
                    if ra.targets:  # selector ones are for sidecars, which this mesh does not have
                        auths.append(ra)
                elif kind == "HTTPRoute":
                    route = parse_http_route(obj)
                    _warn_unsupported(route)
                    routes.append(route)
                elif kind == "AuthorizationPolicy":
                    policy = parse_policy(obj)
                    if policy.targets:  # selector policies are the node proxy's (L4)
                        policies.append(policy)
            except (ConfigError, L7Error, KeyError, TypeError, ValueError) as exc:
                meta = obj.get("metadata") or {}
                log.error("waypoint: skipping %s %s/%s: %s", kind, meta.get("namespace"), meta.get("name"), exc)
        return cls(tuple(routes), tuple(policies), version, tuple(rules), labels, tuple(auths), tuple(tcp),
                   tuple(grants), secrets)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message in _warned:
        return
    if len(_warned) > 4096:
        _warned.clear()
    _warned.add(message)
    log.warning("%s", message)


def _warn_unsupported(route: HttpRoute) -> None:
    """Say which filters of `route` this waypoint does not implement (their rules answer 500), once per
    message: a config is rebuilt on every watch event, the log should not repeat itself each time."""
    for ri, rule in enumerate(route.rules):
        if rule.filters is None or not rule.filters.unsupported:
            continue
        message = (f"waypoint: HTTPRoute {route.key} rules[{ri}] uses {', '.join(rule.filters.unsupported)}, not "
                   f"supported by this waypoint (supported filters: {', '.join(SUPPORTED_FILTERS)}); requests "
                   "matching that rule are answered 500")
        if message in _warned:
            continue
        if len(_warned) > 4096:  # bounded: after that, repeat rather than grow
            _warned.clear()
        _warned.add(message)
        log.warning("%s", message)


class L7Source(Protocol):
    @property
    def current(self) -> L7Config: ...


class StaticL7Source:
    def __init__(self, config: L7Config | None = None) -> None:
        self._config = config or L7Config()

    @property
    def current(self) -> L7Config:
        return self._config

    def set(self, config: L7Config) -> None:
        self._config = config


def load_static(path: str | Path) -> tuple[L7Config, StateDelta | None]:
    """Read a static file: (L7 config, workload state or None)."""
    p = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d]
    except OSError as exc:
        raise ConfigError(f"cannot read waypoint config {p}: {exc.strerror}", hint="check the path") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    objects: list[Mapping[str, Any]] = []
    state: StateDelta | None = None
    for doc in docs:
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{p}: every document must be a mapping")
        if doc.get("kind") == "List":
            objects.extend(doc.get("items") or ())
        elif "kind" in doc:
            objects.append(doc)
        elif set(doc) & {"workloads", "services", "policies"}:
            from ambient.state.static import load_state

            state = load_state(dict(doc))
        else:
            raise ConfigError(f"{p}: a document is neither a Kubernetes object nor workload state",
                              hint="objects need `kind`; state needs `workloads` / `services`")
    return L7Config.from_objects(objects), state


class ApiL7Source:
    """The objects of `KINDS` from the cluster API (`AsyncApiClient`), kept current; Secrets of `namespace`
    (the waypoint's) only.

    Run `await source.run()` in a task of the owner's TaskGroup; `ready` is set after the first full list.
    """

    def __init__(self, client: Any, *, namespace: str = "default", retry_delay: float = INITIAL_BACKOFF) -> None:
        self._client = client
        self.namespace = namespace
        self._objects: dict[str, dict[tuple[str, str], Mapping[str, Any]]] = {k: {} for k in KINDS}
        self._config = L7Config()
        self.ready = asyncio.Event()
        self._listed: set[str] = set()  # kinds listed at least once: ready when all are
        self._retry = retry_delay

    @property
    def current(self) -> L7Config:
        return self._config

    def _publish(self, kind: str | None = None) -> None:
        if kind in _SIDE_KINDS:  # only labels or Secrets changed: keep the parsed routes (and balancers' state)
            side = L7Config.from_objects(self._objects[kind].values())
            self._config = dataclasses.replace(self._config, pod_labels=side.pod_labels) if kind == "Pod" else \
                dataclasses.replace(self._config, secrets=side.secrets)
            return
        objs = [o for kind in KINDS for o in self._objects[kind].values()]
        self._config = L7Config.from_objects(objs)

    @staticmethod
    def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        return str(meta.get("namespace") or ""), str(meta.get("name") or "")

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for kind in KINDS:
                tg.create_task(inform(self._client, kind, self._replace, self._on_event,
                                      namespace=self.namespace if kind == "Secret" else None,
                                      backoff=Backoff(self._retry, max(self._retry, MAX_BACKOFF)),
                                      what=f"{kind} (waypoint)"))

    def _replace(self, kind: str, items: list[dict[str, Any]]) -> None:
        self._objects[kind] = {self._key(o): o for o in items}
        self._listed.add(kind)
        self._publish(kind)
        if self._listed == set(KINDS):
            self.ready.set()

    def _on_event(self, kind: str, event: WatchEvent) -> None:
        key = self._key(event.object)
        if event.type == "DELETED":
            self._objects[kind].pop(key, None)
        else:
            self._objects[kind][key] = event.object
        self._publish(kind)
