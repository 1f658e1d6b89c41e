"""Waypoint config sources: the static file (objects + state) and the API follower (list + watch)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ambient.api.client import WatchEvent
from ambient.api.errors import GoneError
from ambient.waypoint.config import ApiL7Source, L7Config, load_static
from ambient.waypoint.errors import ConfigError
from helpers import eventually

ROUTE = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
         "metadata": {"name": "r", "namespace": "shop"},
         "spec": {"parentRefs": [{"kind": "Service", "name": "reviews"}], "rules": [{"backendRefs": [{"name": "v1"}]}]}}
TARGETED = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "l7", "namespace": "shop"},
            "spec": {"targetRefs": [{"kind": "Service", "name": "reviews"}], "action": "DENY",
                     "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}}
SELECTOR = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "l4", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "action": "ALLOW"}}


def test_from_objects_keeps_routes_and_targeted_policies_only() -> None:
    bad = {"kind": "HTTPRoute", "metadata": {"name": "bad", "namespace": "shop"},
           "spec": {"rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "(["}}]}]}}
    cfg = L7Config.from_objects([ROUTE, TARGETED, SELECTOR, bad, {"kind": "Service", "metadata": {"name": "s"}}])
    assert [r.key for r in cfg.routes] == ["shop/r"]  # the broken route is skipped, not fatal
    assert [p.key for p in cfg.policies] == ["shop/l7"]


def test_load_static_objects_and_state(tmp_path: Path) -> None:
    f = tmp_path / "wp.yaml"
    f.write_text(
        "services:\n- {name: reviews, namespace: shop, hostname: reviews.shop.svc.cluster.local, vips: [10.96.0.10]}\n"
        "---\n"
        "kind: List\nitems:\n- kind: HTTPRoute\n  metadata: {name: r, namespace: shop}\n"
        "  spec: {parentRefs: [{kind: Service, name: reviews}], rules: [{}]}\n"
    )
    cfg, state = load_static(f)
    assert [r.key for r in cfg.routes] == ["shop/r"]
    assert state is not None and [s.name for s in state.services] == ["reviews"]


@pytest.mark.parametrize("text", ["- just\n- a list\n", "foo: bar\n", "a: [\n"])
def test_load_static_rejects_bad_documents(tmp_path: Path, text: str) -> None:
    f = tmp_path / "wp.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError):
        load_static(f)


def test_load_static_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_static(tmp_path / "nope.yaml")


class FakeApi:
    """list() returns the initial objects; watch() replays queued events; None breaks the watch (connection
    lost: resumed from the last version), "gone" answers 410 (the source must re-list); otherwise it blocks."""

    def __init__(self) -> None:
        self.items: dict[str, list[dict[str, Any]]] = {"HTTPRoute": [ROUTE], "AuthorizationPolicy": [],
                                                       "VirtualService": [], "DestinationRule": [], "Pod": [],
                                                       "RequestAuthentication": [], "GRPCRoute": [], "TCPRoute": [],
                                                       "ReferenceGrant": [], "Secret": []}
        self.events: dict[str, asyncio.Queue[WatchEvent | str | None]] = {k: asyncio.Queue() for k in self.items}
        self.lists = 0
        self.watched_from: list[str | None] = []
        self.namespaces: dict[str, str | None] = {}  # kind -> the namespace it was listed in (None: all)

    async def list(self, kind: str, namespace: str | None = None) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        self.namespaces[kind] = namespace
        return list(self.items[kind]), "1"

    async def watch(self, kind: str, resource_version: str | None = None,
                    namespace: str | None = None) -> AsyncIterator[WatchEvent]:
        self.watched_from.append(resource_version)
        while True:
            ev = await self.events[kind].get()
            if ev is None:
                raise ConnectionError("watch broke")
            if ev == "gone":
                raise GoneError("too old")
            assert isinstance(ev, WatchEvent)
            yield ev


async def test_api_source_lists_then_follows_watch_events() -> None:
    api = FakeApi()
    source = ApiL7Source(api, retry_delay=0.01)

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(source.run())
        await asyncio.wait_for(source.ready.wait(), 5)
        assert [r.key for r in source.current.routes] == ["shop/r"]
        api.events["AuthorizationPolicy"].put_nowait(WatchEvent("ADDED", TARGETED))
        await eventually(lambda: len(source.current.policies) == 1)
        api.events["HTTPRoute"].put_nowait(WatchEvent("BOOKMARK", {"metadata": {"resourceVersion": "5"}}))
        api.events["HTTPRoute"].put_nowait(WatchEvent("DELETED", ROUTE))
        await eventually(lambda: not source.current.routes)
        # the watch breaks: the config is kept and the watch resumed from the bookmark's version, no re-list
        lists = api.lists
        api.events["HTTPRoute"].put_nowait(None)
        await eventually(lambda: api.watched_from.count("5") == 1, what="the watch resumed from version 5")
        assert api.lists == lists and not source.current.routes
        # 410: the source re-lists (which brings the route back)
        api.events["HTTPRoute"].put_nowait("gone")
        await eventually(lambda: api.lists > lists and len(source.current.routes) == 1)
        assert [p.key for p in source.current.policies] == ["shop/l7"]
        task.cancel()


async def test_pod_events_update_labels_without_reparsing_routes() -> None:
    api = FakeApi()
    source = ApiL7Source(api, retry_delay=0.01)
    pod = {"kind": "Pod", "metadata": {"name": "p", "namespace": "shop", "labels": {"version": "v1"}}}
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(source.run())
        await asyncio.wait_for(source.ready.wait(), 5)
        route = source.current.routes[0]
        api.events["Pod"].put_nowait(WatchEvent("ADDED", pod))
        await eventually(lambda: source.current.pod_labels.get(("shop", "p")) == {"version": "v1"})
        assert source.current.routes[0] is route  # the same parsed route (and its balancer's state)
        task.cancel()


async def test_secrets_of_the_waypoint_namespace_update_without_reparsing_routes() -> None:
    api = FakeApi()
    source = ApiL7Source(api, namespace="egress", retry_delay=0.01)
    secret = {"kind": "Secret", "metadata": {"name": "client", "namespace": "egress"}, "data": {"cert": "Qw=="}}
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(source.run())
        await asyncio.wait_for(source.ready.wait(), 5)
        # Istio reads a credentialName in the proxy's own namespace: the waypoint lists no other Secrets
        assert api.namespaces["Secret"] == "egress" and api.namespaces["HTTPRoute"] is None
        route = source.current.routes[0]
        api.events["Secret"].put_nowait(WatchEvent("ADDED", secret))
        await eventually(lambda: source.current.secret_lookup("egress")("client") == secret)
        assert source.current.routes[0] is route
        rotated = {**secret, "data": {"cert": "RA=="}}
        api.events["Secret"].put_nowait(WatchEvent("MODIFIED", rotated))
        await eventually(lambda: source.current.secret_lookup("egress")("client") == rotated)
        api.events["Secret"].put_nowait(WatchEvent("DELETED", rotated))
        await eventually(lambda: source.current.secret_lookup("egress")("client") is None)
        task.cancel()
