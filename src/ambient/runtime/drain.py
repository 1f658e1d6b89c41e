"""The one drain primitive every listener of the node proxy uses.

Shape (reliability.md "Drain"): `start()` closes the listeners at once (new connections are refused);
connections already accepted keep running until they finish or until the deadline; then they are cut
(their tasks cancelled, which resets the sockets). A per-pod proxy drains the same way when its pod is
deleted, and the whole process drains on SIGTERM / `/quitquitquit`.

Invariants:
- `Drain` never creates tasks: connection tasks belong to their listener's TaskGroup; `Drain` only
  watches them (done-callbacks) and cancels the survivors at the deadline.
- `start()` is idempotent; `run()` returns once every watched task is done (at the latest shortly
  after the deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

log = logging.getLogger("ambient.runtime.drain")


class Drain:
    """Tracks the live connection tasks of one or more listeners and drains them."""

    def __init__(self, name: str, deadline: float) -> None:
        self.name = name
        self.deadline = deadline
        self._closers: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._started = asyncio.Event()
        self.started_at: float | None = None

    @property
    def draining(self) -> bool:
        return self._started.is_set()

    @property
    def active(self) -> int:
        return len(self._tasks)

    def on_start(self, closer: Callable[[], None]) -> None:
        """Register a listener closer, run at `start()` (at once if already draining)."""
        if self.draining:
            closer()
        else:
            self._closers.append(closer)

    def watch(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        self._empty.clear()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._empty.set()

    def start(self) -> None:
        if self.draining:
            return
        self.started_at = time.monotonic()
        self._started.set()
        closers, self._closers = self._closers, []
        for closer in closers:
            try:
                closer()
            except Exception:  # one broken closer must not keep the other listeners open
                log.exception("drain %s: closing a listener failed", self.name)

    async def wait_started(self) -> None:
        await self._started.wait()

    def remaining(self) -> float:
        if self.started_at is None:
            return self.deadline
        return max(0.0, self.deadline - (time.monotonic() - self.started_at))

    async def run(self) -> int:
        """Start draining (if not yet), wait for connections up to the deadline, cut the rest.
        Returns how many connections were cut."""
        self.start()
        if self._tasks:
            log.info("drain %s: waiting up to %.1fs for %d connection(s)", self.name, self.remaining(), self.active)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.remaining()):
                    await self._empty.wait()
        survivors = list(self._tasks)
        for task in survivors:
            task.cancel()
        if survivors:
            log.info("drain %s: deadline reached, closing %d connection(s)", self.name, len(survivors))
            await asyncio.wait(survivors, timeout=1.0)
        return len(survivors)
