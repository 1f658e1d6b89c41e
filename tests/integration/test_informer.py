"""The informer and the reconciler (`ambient.api.informer`) against the real API server, in-process.

The one place the list+watch behaviour is tested: resume after a server-side watch timeout without a re-list,
bookmarks advancing the version but never reaching the consumer, a broken connection resumed with back-off,
410 Gone answered by a re-list whose replace drops what was deleted meanwhile, and the reconciler coalescing
bursts of marks into few passes and surviving a failing pass.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ambient.api.client import AsyncApiClient, WatchEvent
from ambient.api.errors import ConflictError
from ambient.api.informer import Reconciler, inform
from ambient.api.server import serve_in_thread
from ambient.api.store import Store
from ambient.core.backoff import Backoff
from helpers import eventually

Obj = dict[str, Any]


def namespace(name: str, **labels: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels)}}


class CountingSource:
    """An `AsyncApiClient` that counts lists and watches and asks for short server-side watch timeouts."""

    def __init__(self, client: AsyncApiClient, watch_timeout: float | None = None) -> None:
        self.client = client
        self.watch_timeout = watch_timeout
        self.lists = 0
        self.watches: list[str | None] = []

    async def list(self, kind: str, **selectors: Any) -> tuple[list[Obj], str]:
        self.lists += 1
        return await self.client.list(kind, **selectors)

    def watch(self, kind: str, **kwargs: Any) -> AsyncIterator[WatchEvent]:
        self.watches.append(kwargs.get("resource_version"))
        return self.client.watch(kind, timeout=self.watch_timeout, **kwargs)


class View:
    """A consumer: the informer's view of one kind, and what it was told."""

    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.replaces = 0
        self.events: list[str] = []

    def on_replace(self, kind: str, items: list[Obj]) -> None:
        self.replaces += 1
        self.objects = {o["metadata"]["name"]: o for o in items}

    def on_event(self, kind: str, event: WatchEvent) -> None:
        self.events.append(event.type)
        name = event.object["metadata"]["name"]
        if event.type == "DELETED":
            self.objects.pop(name, None)
        else:
            self.objects[name] = event.object


async def test_watch_timeout_resumes_without_relist_and_bookmarks_stay_internal(tmp_path: Path) -> None:
    with serve_in_thread(tmp_path, bookmark_interval=0.2) as server:
        async with AsyncApiClient(server.socket_path) as client, asyncio.TaskGroup() as tg:
            await client.create(namespace("before"))
            source = CountingSource(client, watch_timeout=1)
            view = View()
            synced = asyncio.Event()
            task = tg.create_task(inform(source, "Namespace", view.on_replace, view.on_event, synced=synced,
                                         label_selector="team=a"))
            await asyncio.wait_for(synced.wait(), 10)
            assert view.objects == {}  # the label selector reached the list
            await eventually(lambda: len(source.watches) >= 3, timeout=15, what="the watch resumed twice")
            await client.create(namespace("after", team="a"))
            other = await client.create(namespace("other", team="b"))
            await eventually(lambda: "after" in view.objects, what="an event after resuming reached the view")
            other_rv = int(other["metadata"]["resourceVersion"])
            # "other" never reaches this watch (selector), but bookmarks carry the version past it
            await eventually(lambda: max(int(v or 0) for v in source.watches) >= other_rv, timeout=15,
                             what="a watch resumed from a bookmark's version")
            assert source.lists == 1, "a watch that ended by its timeout must resume, not re-list"
            assert "BOOKMARK" not in view.events and "other" not in view.objects
            task.cancel()


async def test_disconnect_backs_off_resumes_and_410_relists(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ambient.api.informer")
    view = View()
    synced = asyncio.Event()
    async with AsyncApiClient(tmp_path / "apiserver.sock", timeout=5) as client, asyncio.TaskGroup() as tg:
        with serve_in_thread(tmp_path, bookmark_interval=0.2, max_events=5):
            for name in ("keep", "gone"):
                await client.create(namespace(name))
            source = CountingSource(client)
            task = tg.create_task(inform(source, "Namespace", view.on_replace, view.on_event, synced=synced,
                                         backoff=Backoff(0.05, 0.4)))
            await asyncio.wait_for(synced.wait(), 10)
            assert {"keep", "gone"} <= set(view.objects)
        # The server is gone: the watch breaks and resuming fails, with growing delays.
        await eventually(lambda: len(re.findall(r"watch of Namespace lost", caplog.text)) >= 4,
                         what="the informer retried a few times")
        delays = [float(d) for d in re.findall(r"watch of Namespace lost .* in ([0-9.]+)s", caplog.text)]
        assert delays[:4] == [0.05, 0.1, 0.2, 0.4]
        # Meanwhile the store moves on past what it keeps: "gone" is deleted, many writes are compacted away.
        store = Store(tmp_path, max_events=5)
        try:
            store.delete("Namespace", "gone")
            for i in range(12):
                store.create(namespace(f"n{i}"))
        finally:
            store.close()
        with serve_in_thread(tmp_path, bookmark_interval=0.2, max_events=5):
            await eventually(lambda: view.replaces == 2, what="the 410 on resuming forced a re-list")
            assert "gone" not in view.objects and {"keep", "n11"} <= set(view.objects)
            assert source.lists == 2
            await client.create(namespace("later"))
            await eventually(lambda: "later" in view.objects, what="watching again after the re-list")
            assert "DELETED" not in view.events  # the deletion was learnt from the re-list, not an event
        task.cancel()


async def test_reconciler_coalesces_marks_and_survives_failures() -> None:
    calls: list[int] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def reconcile() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            started.set()
            await release.wait()  # marks arriving during a pass make exactly one more pass
        elif len(calls) == 3:
            raise RuntimeError("boom")
        elif len(calls) == 4:
            raise ConflictError("changed meanwhile")

    rec = Reconciler(reconcile, name="test pass", resync=60, retry_delay=0.05, immediate_retry=(ConflictError,))
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(rec.run())
        await asyncio.wait_for(started.wait(), 5)
        for _ in range(50):
            rec.mark()
        release.set()
        await eventually(lambda: len(calls) == 2, what="one pass for the 50 marks")
        # a mark: pass 3 fails -> retried, pass 4 conflicts -> retried at once, pass 5 succeeds
        rec.mark()
        await eventually(lambda: len(calls) == 5, what="five passes")
        assert rec.failures == 1
        rec.mark("kind", copy.deepcopy({}))  # usable as an informer callback
        await eventually(lambda: len(calls) == 6, what="one pass per later mark")
        task.cancel()
    assert len(calls) == 6


class FlakySource:
    """A source whose watch first answers garbage (a ValueError from parsing), then one event, then waits."""

    def __init__(self) -> None:
        self.watches = 0

    async def list(self, kind: str, **selectors: Any) -> tuple[list[Obj], str]:
        return [], "1"

    async def watch(self, kind: str, **kwargs: Any) -> AsyncIterator[WatchEvent]:
        self.watches += 1
        if self.watches == 1:
            raise ValueError("malformed watch event")
        yield WatchEvent("ADDED", {"metadata": {"name": "x", "resourceVersion": "2"}})
        await asyncio.Event().wait()


async def test_a_malformed_stream_is_resumed_and_a_consumer_error_propagates() -> None:
    source, view = FlakySource(), View()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(inform(source, "Namespace", view.on_replace, view.on_event, backoff=Backoff(0.01, 0.1)))
        await eventually(lambda: "x" in view.objects, what="the event after the malformed stream")
        task.cancel()

    def broken(kind: str, event: WatchEvent) -> None:
        raise RuntimeError("consumer bug")

    with pytest.raises(RuntimeError, match="consumer bug"):
        await asyncio.wait_for(inform(FlakySource(), "Namespace", view.on_replace, broken,
                                      backoff=Backoff(0.01, 0.1)), 10)
