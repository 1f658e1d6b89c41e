"""Where the control plane reads objects from: one interface, the local cluster API behind it now.

Role: `ObjectSource` is list + watch per kind with Kubernetes semantics (a list returns a resourceVersion;
a watch from it streams ADDED/MODIFIED/DELETED/BOOKMARK; a too-old version fails with 410 Gone).
`reflect()` keeps a consumer in sync with one kind: list -> replace, then watch -> events, re-list on 410,
reconnect with backoff when the source is unavailable. A Kubernetes source can implement the same Protocol.

Invariants: the consumer sees a full `replace` after every (re)list, so deletions missed while
disconnected are never lost; backoff grows 0.1 s -> 5 s and resets after a successful list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

from ambient.api.client import AsyncApiClient, WatchEvent
from ambient.api.errors import ApiError, GoneError, UnavailableError
from ambient.core.backoff import Backoff

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class ObjectSource(Protocol):
    async def list(self, kind: str) -> tuple[list[Obj], str]: ...

    def watch(self, kind: str, resource_version: str) -> AsyncIterator[WatchEvent]: ...


class ApiObjectSource:
    """The local cluster API server (over its Unix socket)."""

    def __init__(self, socket_path: Path | str, *, watch_timeout: float = 300.0) -> None:
        self._client = AsyncApiClient(socket_path)
        self._watch_timeout = watch_timeout

    async def aclose(self) -> None:
        await self._client.aclose()

    async def list(self, kind: str) -> tuple[list[Obj], str]:
        return await self._client.list(kind)

    def watch(self, kind: str, resource_version: str) -> AsyncIterator[WatchEvent]:
        return self._client.watch(kind, resource_version=resource_version, timeout=self._watch_timeout)

    async def write_status(self, kind: str, namespace: str, name: str, patch: Obj) -> None:
        await self._client.patch(kind, name, namespace, patch, status=True)


async def reflect(
    source: ObjectSource,
    kind: str,
    on_replace: Callable[[str, list[Obj]], None],
    on_event: Callable[[str, WatchEvent], None],
    *,
    synced: asyncio.Event | None = None,
) -> None:
    """Keep a consumer in sync with `kind` forever (cancel to stop)."""
    backoff = Backoff(0.1, 5.0)
    while True:
        try:
            items, rv = await source.list(kind)
        except (UnavailableError, OSError) as exc:
            delay = backoff.next()
            log.warning("listing %s failed (%s); retrying in %.1fs", kind, exc, delay)
            await asyncio.sleep(delay)
            continue
        backoff.reset()
        on_replace(kind, items)
        if synced is not None:
            synced.set()
        try:
            while True:  # a watch ends at its server-side timeout: resume from the last version seen
                stream = source.watch(kind, rv)
                async with contextlib.aclosing(stream):  # type: ignore[type-var]
                    async for event in stream:
                        if event.resource_version:
                            rv = event.resource_version
                        if event.type != "BOOKMARK":
                            on_event(kind, event)
        except GoneError:
            log.info("watch of %s expired at %s; re-listing", kind, rv)
        except (UnavailableError, OSError) as exc:
            log.warning("watch of %s lost (%s); re-listing in %.1fs", kind, exc, backoff.current)
            await asyncio.sleep(backoff.current)
        except ApiError as exc:
            log.warning("watch of %s failed (%s); re-listing in %.1fs", kind, exc, backoff.current)
            await asyncio.sleep(backoff.current)
