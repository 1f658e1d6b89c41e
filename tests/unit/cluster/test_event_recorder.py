"""The components' event recorder: never blocks or raises in the emitter, writes repeats as patches, drops
what the API does not take, and creates again an Event the server no longer has."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from store_client import StoreClient

from ambient.api import events as ev
from ambient.api.errors import NotFoundError, UnavailableError
from ambient.api.store import Store
from ambient.cluster.controllers import ControllerManager
from ambient.cluster.events import EventRecorder

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"}}


class FakeApi:
    def __init__(self) -> None:
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.down = False
        self.stall: asyncio.Event | None = None

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create")
        if self.stall is not None:
            await self.stall.wait()
        if self.down:
            raise UnavailableError("the API server is not answering")
        self.events[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = dict(obj)
        return obj

    async def patch(self, kind: str, name: str, namespace: str | None, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("patch")
        if self.down:
            raise UnavailableError("the API server is not answering")
        key = (namespace or "default", name)
        if key not in self.events:
            raise NotFoundError(f'events "{name}" not found')
        self.events[key].update(patch)
        return self.events[key]


async def test_repeats_become_one_event_with_a_count() -> None:
    api = FakeApi()
    rec = EventRecorder(api, "kubelet", "node-1")
    for _ in range(3):
        rec.event(POD, ev.WARNING, "BackOff", "Back-off restarting failed container app in pod web_shop(u-1)",
                  ev.container_path("app"))
    rec.event(POD, ev.NORMAL, "Started", "Started container app", ev.container_path("app"))
    await rec.drain()
    assert api.calls == ["create", "patch", "patch", "create"]
    backoff = next(e for e in api.events.values() if e["reason"] == "BackOff")
    assert backoff["count"] == 3 and backoff["involvedObject"]["fieldPath"] == "spec.containers{app}"
    assert backoff["source"] == {"component": "kubelet", "host": "node-1"} and backoff["type"] == "Warning"


async def test_the_emitter_never_waits_and_a_full_queue_drops() -> None:
    api = FakeApi()
    api.stall = asyncio.Event()  # the API hangs
    rec = EventRecorder(api, "kubelet", max_queued=5)
    async with asyncio.TaskGroup() as tg:
        writer = tg.create_task(rec.run())
        for i in range(20):  # returns at once every time, though nothing is written
            rec.event(POD, ev.NORMAL, "Created", f"Created container: c{i}")
        assert rec.dropped >= 14
        api.stall.set()
        await rec.flush()
        writer.cancel()
    assert len(api.events) == 20 - rec.dropped
    assert len({name for _, name in api.events}) == len(api.events)  # unique names within one instant
    rec.event(None, ev.NORMAL, "Odd", "not an object")  # type: ignore[arg-type]  # never raises
    assert rec.dropped == 20 - len(api.events) + 1


async def test_api_down_drops_and_a_later_repeat_carries_the_count() -> None:
    api = FakeApi()
    rec = EventRecorder(api, "kubelet")
    api.down = True
    rec.event(POD, ev.WARNING, "Unhealthy", "Liveness probe failed: timeout")
    await rec.drain()
    assert rec.dropped == 1 and not api.events
    api.down = False
    rec.event(POD, ev.WARNING, "Unhealthy", "Liveness probe failed: timeout")
    await rec.drain()
    (event,) = api.events.values()
    assert event["count"] == 2


async def test_an_expired_event_is_created_again() -> None:
    api = FakeApi()
    rec = EventRecorder(api, "kubelet")
    rec.event(POD, ev.WARNING, "Unhealthy", "Readiness probe failed: x")
    await rec.drain()
    api.events.clear()  # expired on the server
    rec.event(POD, ev.WARNING, "Unhealthy", "Readiness probe failed: x")
    await rec.drain()
    assert api.calls == ["create", "patch", "create"]
    (event,) = api.events.values()
    assert event["count"] == 2


# ----------------------------------------------------------------------------- the controllers' events


async def test_the_scheduler_and_the_deployment_controller_record_their_events(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    cm = ControllerManager(StoreClient(store))
    template = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "command": ["x"]}]}}
    deploy = store.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": template}})
    await cm.reconcile_once()  # the pod is created; no node is Ready: it cannot be scheduled
    await cm.reconcile_once()
    store.patch("Node", "node-1", None, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                status=True)
    await cm.reconcile_once()
    store.patch("Deployment", "web", "default", {"spec": {"replicas": 0}})
    await cm.reconcile_once()
    for recorder in (cm.scheduler_events, cm.deployment_events):
        await recorder.drain()
    (pod_name,) = {e["involvedObject"]["name"] for e in store.list("Event", "default")[0]
                   if e["involvedObject"]["kind"] == "Pod"}
    seen = {(e["involvedObject"]["kind"], e["reason"], e["message"], e["source"]["component"], e["count"])
            for e in store.list("Event", "default")[0]}
    assert seen == {
        ("Pod", "FailedScheduling", "0/1 nodes are available: 1 node(s) were not Ready.", "default-scheduler", 1),
        ("Pod", "Scheduled", f"Successfully assigned default/{pod_name} to node-1", "default-scheduler", 1),
        ("Deployment", "SuccessfulCreate", f"Created pod: {pod_name}", "deployment-controller", 1),
        ("Deployment", "SuccessfulDelete", f"Deleted pod: {pod_name}", "deployment-controller", 1),
    }
    about_deploy = next(e for e in store.list("Event", "default")[0] if e["involvedObject"]["kind"] == "Deployment")
    assert about_deploy["involvedObject"]["uid"] == deploy["metadata"]["uid"]
    assert about_deploy["involvedObject"]["apiVersion"] == "apps/v1"
    store.close()
