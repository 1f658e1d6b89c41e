"""The cluster components' event recorder: Kubernetes Events written without ever holding up the emitter.

Role: the kubelet, the scheduler and the Deployment controller call `EventRecorder.event(obj, type, reason,
message)` where Kubernetes' components record an Event; `ambient.api.events.Correlator` decides whether it is
a new Event, a repeat (count + 1) or held back by the spam filter, and one background task writes it.

Invariants:
- `event()` never blocks, never raises and never awaits: it puts the occurrence on a bounded queue
  (`MAX_QUEUED`, client-go's 1000) and returns; a full queue drops the occurrence (logged at debug level).
- One writer per recorder: `run()`, a task of the owning component's TaskGroup (no task of its own: a
  component that never runs it, a unit test calling one reconcile pass, only fills the bounded queue);
  `drain()` writes what is queued inline (a component's last words at shutdown).
- A failed write (API down, timeout, refused) is dropped with a debug log, never retried in a loop: Events
  are best-effort, and the next repeat carries the true count anyway. A patch of an Event the server no
  longer has (expired, evicted) creates it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ambient.api import events as ev
from ambient.api.errors import AlreadyExistsError, NotFoundError

log = logging.getLogger("ambient.cluster.events")

MAX_QUEUED = 1000


class EventRecorder:
    """Records Events as `component` (the source; `host`: the node, for the kubelet) through `client`
    (an `AsyncApiClient` or anything with its `create`/`patch`)."""

    def __init__(self, client: Any, component: str, host: str | None = None, *,
                 correlator: ev.Correlator | None = None, max_queued: int = MAX_QUEUED) -> None:
        self.client = client
        self.component = component
        self.host = host
        self.correlator = correlator or ev.Correlator()
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_queued)
        self.dropped = 0
        self._last_ns = 0
        self.written = 0

    def event(self, obj: dict[str, Any], event_type: str, reason: str, message: str,
              field_path: str | None = None) -> None:
        """Record that `reason` happened to `obj` (an API object, or an ObjectReference-shaped dict with
        `kind`/`metadata`); fire and forget."""
        try:
            self._last_ns = max(time.time_ns(), self._last_ns + 1)  # unique names, even within one clock tick
            occurrence = ev.new_event(ev.reference(obj, field_path), event_type, reason, message, self.component,
                                      self.host, self._last_ns / 1e9, self._last_ns)
            self._queue.put_nowait(occurrence)
        except asyncio.QueueFull:
            self.dropped += 1
            log.debug("event queue full: dropped %s %s", reason, message)
        except Exception as exc:  # recording must never break the component that records
            self.dropped += 1
            log.debug("event %s not recorded: %s", reason, exc)

    async def flush(self, within: float = 5.0) -> None:
        """Wait until every queued occurrence was handled (tests)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), within)

    async def run(self) -> None:
        """Write queued occurrences until cancelled (run it in the component's TaskGroup)."""
        while True:
            await self._handle(await self._queue.get())

    async def drain(self) -> None:
        """Write what is queued now, inline."""
        while not self._queue.empty():
            await self._handle(self._queue.get_nowait())

    async def _handle(self, occurrence: dict[str, Any]) -> None:
        try:
            await self._write(self.correlator.observe(occurrence))
        except Exception as exc:  # the API is down or refused it: best effort, dropped
            self.dropped += 1
            log.debug("event %s/%s not written: %s", occurrence["metadata"]["namespace"],
                      occurrence["metadata"]["name"], exc)
        finally:
            self._queue.task_done()

    async def _write(self, decision: ev.Decision) -> None:
        if decision.action == "skip":
            return
        if decision.action == "patch":
            assert decision.patch is not None
            try:
                await self.client.patch("Event", decision.name, decision.namespace, decision.patch)
                self.correlator.written(decision)
                self.written += 1
                return
            except NotFoundError:
                self.correlator.forget(decision)  # expired or evicted: written again below
        try:
            await self.client.create(decision.event)
        except AlreadyExistsError:
            pass  # written by an earlier attempt whose answer was lost
        self.correlator.written(decision)
        self.written += 1
