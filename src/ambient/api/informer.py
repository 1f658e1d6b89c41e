"""Informer and reconciler: the one list+watch loop and the one level-triggered reconcile loop.

Role: every component that follows the cluster API (control plane, controller-manager, kubelet, kube-proxy,
node agent, cluster DNS, waypoint) keeps in sync with it through `inform()`, and components that converge the
world towards the API's objects run their pass through a `Reconciler`.

`inform(source, kind, on_replace, on_event)` follows one kind (optionally narrowed by namespace and label /
field selectors) forever (cancel to stop):
- list -> `on_replace(kind, items)` (the consumer's whole view of the kind), then watch from the list's
  resourceVersion -> `on_event(kind, event)` per ADDED / MODIFIED / DELETED;
- every event, BOOKMARKs included, advances the version a later watch resumes from; BOOKMARKs are never
  handed to `on_event`;
- a watch that ends (its server-side timeout) is resumed from the last version at once, without a re-list;
- a watch that breaks (API unavailable, connection reset, other API errors) is resumed from the last version
  after a back-off delay;
- 410 Gone (the version is older than the server keeps) -> re-list, so deletions missed while away are never
  lost (the consumer sees a full replace);
- a list that fails is retried after a back-off delay; back-off doubles from `INITIAL_BACKOFF` to
  `MAX_BACKOFF` and starts over once a watch delivered an event or ended cleanly (a healthy stream);
- `synced` (if given) is set after the first successful list.
Errors other than `SOURCE_ERRORS` (`ApiError`, `OSError`, `ValueError` from the source) propagate: a bug in
a callback, a configuration error.

`Reconciler(reconcile, ...)` runs `reconcile()` when marked dirty (`mark()`, from any callback) or every
`resync` seconds: marks arriving while a pass runs, or within `coalesce` seconds before it, make one more pass,
never one per event (level-triggered: a pass reads the whole world, so missed or duplicated marks cost only a
pass). A failed pass is logged and retried after `retry_delay`; `immediate_retry` exception types (e.g. a write
conflict) are retried at once without a log line. `follow(source, kind, ...)` is an informer whose only effect
is to mark the reconciler dirty.

Sources: anything with `list(kind, namespace=, label_selector=, field_selector=) -> (items, resourceVersion)`
and `watch(kind, resource_version=, namespace=, label_selector=, field_selector=) -> AsyncIterator[WatchEvent]`
raising `GoneError` / `UnavailableError` (`AsyncApiClient`, the Kubernetes `KubeSource`, test fakes).
Selectors are passed only when set, so a source that lists whole kinds only needs `list(kind)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from ambient.api.client import WatchEvent
from ambient.api.errors import ApiError, GoneError
from ambient.core.backoff import Backoff
from ambient.core.errors import AmbientError

log = logging.getLogger(__name__)

Obj = dict[str, Any]

INITIAL_BACKOFF = 0.1
MAX_BACKOFF = 5.0
# What a source raises when it is unreachable or answers something malformed (retried); anything else (a
# consumer's error, a configuration error such as a kind the source does not serve) propagates.
SOURCE_ERRORS: tuple[type[Exception], ...] = (ApiError, OSError, ValueError)


class WatchSource(Protocol):
    """What `inform` needs of a source (see the module docstring for the keyword arguments it passes)."""

    async def list(self, kind: str, **selectors: Any) -> tuple[list[Obj], str]: ...

    def watch(self, kind: str, **kwargs: Any) -> AsyncIterator[WatchEvent]: ...


def _selectors(namespace: str | None, label_selector: str | None, field_selector: str | None) -> dict[str, str]:
    given = {"namespace": namespace, "label_selector": label_selector, "field_selector": field_selector}
    return {k: v for k, v in given.items() if v}


async def inform(
    source: Any,
    kind: str,
    on_replace: Callable[[str, list[Obj]], None],
    on_event: Callable[[str, WatchEvent], None],
    *,
    namespace: str | None = None,
    label_selector: str | None = None,
    field_selector: str | None = None,
    synced: asyncio.Event | None = None,
    backoff: Backoff | None = None,
    what: str | None = None,
) -> None:
    """Keep a consumer in sync with `kind` forever (cancel to stop); see the module docstring."""
    selectors = _selectors(namespace, label_selector, field_selector)
    backoff = backoff or Backoff(INITIAL_BACKOFF, MAX_BACKOFF)
    label = what or (kind if not selectors else f"{kind} ({', '.join(f'{k}={v}' for k, v in selectors.items())})")
    rv: str | None = None  # None: (re)list before watching
    while True:
        if rv is None:
            try:
                items, rv = await source.list(kind, **selectors)
            except SOURCE_ERRORS as exc:  # unreachable, or a malformed answer: retry
                delay = backoff.next()
                log.warning("listing %s failed (%s); retrying in %.3gs", label, exc, delay)
                await asyncio.sleep(delay)
                continue
            on_replace(kind, items)
            if synced is not None:
                synced.set()
        failure: Exception | None = None
        try:
            stream = source.watch(kind, resource_version=rv, **selectors)
            async with contextlib.aclosing(stream):
                while True:
                    try:
                        event = await anext(stream)
                    except StopAsyncIteration:
                        break
                    except SOURCE_ERRORS as exc:  # the source's fault; a consumer's error (below) propagates
                        failure = exc
                        break
                    backoff.reset()
                    if event.resource_version:
                        rv = event.resource_version
                    if event.type != "BOOKMARK":
                        on_event(kind, event)
        except SOURCE_ERRORS as exc:  # opening or closing the stream
            if failure is None and not isinstance(exc, ApiError | OSError):
                raise
            failure = failure or exc
        if failure is None:
            backoff.reset()  # the server ended the watch (its timeout): resume at once
        elif isinstance(failure, GoneError):
            log.info("watch of %s expired at version %s; re-listing", label, rv)
            rv = None
        else:
            delay = backoff.next()
            log.warning("watch of %s lost (%s); resuming from version %s in %.3gs", label, failure, rv, delay)
            await asyncio.sleep(delay)


class Reconciler:
    """A coalesced, level-triggered reconcile loop (see the module docstring). Run `run()` in a TaskGroup."""

    def __init__(
        self,
        reconcile: Callable[[], Awaitable[None]],
        *,
        name: str,
        resync: float,
        coalesce: float = 0.02,
        retry_delay: float = 1.0,
        immediate_retry: tuple[type[BaseException], ...] = (),
        logger: logging.Logger | None = None,
    ) -> None:
        self._reconcile = reconcile
        self.name = name
        self.resync = resync
        self.coalesce = coalesce
        self.retry_delay = retry_delay
        self.immediate_retry = immediate_retry
        self._log = logger or log
        self._dirty = asyncio.Event()
        self._dirty.set()  # the first pass runs at once
        self.passes = 0
        self.failures = 0

    def mark(self, *_: Any) -> None:
        """Ask for a pass (accepts and ignores callback arguments, so it can be an informer callback)."""
        self._dirty.set()

    async def run(self) -> None:
        """Run passes until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=self.resync)
            if self.coalesce > 0:
                await asyncio.sleep(self.coalesce)  # a burst of events makes one pass
            self._dirty.clear()
            self.passes += 1
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except self.immediate_retry:
                self._dirty.set()
            except Exception as exc:  # the loop must outlive any single bad pass
                self.failures += 1
                if isinstance(exc, AmbientError):
                    self._log.warning("%s failed: %s; retrying in %.1fs", self.name, exc, self.retry_delay)
                else:
                    self._log.exception("%s failed; retrying in %.1fs", self.name, self.retry_delay)
                await asyncio.sleep(self.retry_delay)
                self._dirty.set()

    async def follow(
        self,
        source: Any,
        kind: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> None:
        """Mark this reconciler dirty on every (re)list and change of `kind` (an informer; cancel to stop)."""
        await inform(source, kind, self.mark, self.mark, namespace=namespace, label_selector=label_selector,
                     field_selector=field_selector)
