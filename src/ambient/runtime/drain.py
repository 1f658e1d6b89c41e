"""The one drain primitive of the project: the node proxy's listeners and the HBONE server (so the
waypoint too) drain with it.

Shape (reliability.md "Drain"): `start()` closes the listeners at once (new connections are refused);
connections already accepted keep running until they finish or until the deadline; then they are cut
(their tasks cancelled, which resets the sockets). A per-pod proxy drains the same way when its pod is
deleted, and the whole process drains on SIGTERM / `/quitquitquit`. `hold(seconds)` keeps the drain
open a little even without live work (the HBONE server's handoff grace: connections taken from the
listen queue at close may still send their first CONNECT).

Invariants:
- `Drain` never creates tasks: connection tasks belong to their listener's TaskGroup; `Drain` only
  watches them (done-callbacks) and cancels the survivors at the deadline.
- `start()` is idempotent; `run()` returns once every watched task is done and no hold is pending (at
  the latest shortly after the deadline; at once, cutting everything, with a deadline of 0).
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
        self._cutters: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._started = asyncio.Event()
        self.started_at: float | None = None
        self._hold_until = 0.0  # time.monotonic() before which run() does not finish early

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

    def on_cut(self, cutter: Callable[[], None]) -> None:
        """Register what to close when the deadline cuts the survivors (e.g. their connections), run right
        after their tasks are cancelled and before waiting for them."""
        self._cutters.append(cutter)

    def hold(self, seconds: float) -> None:
        """Keep `run()` waiting (within the deadline) for `seconds` from now even when nothing is watched."""
        self._hold_until = max(self._hold_until, time.monotonic() + seconds)

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
        remaining = self.remaining()
        if remaining > 0 and (self._tasks or self._hold_until > time.monotonic()):
            log.info("drain %s: waiting up to %.1fs for %d connection(s)", self.name, remaining, self.active)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._quiet()
        survivors = list(self._tasks)
        for task in survivors:
            task.cancel()
        for cutter in self._cutters:
            try:
                cutter()
            except Exception:  # the other cutters still run
                log.exception("drain %s: cutting connections failed", self.name)
        if survivors:
            log.info("drain %s: deadline reached, closing %d connection(s)", self.name, len(survivors))
            await asyncio.wait(survivors, timeout=1.0)
        return len(survivors)

    async def _quiet(self) -> None:
        """Return once nothing is watched and no hold is pending."""
        while True:
            await self._empty.wait()
            wait = self._hold_until - time.monotonic()
            if wait <= 0:
                return
            await asyncio.sleep(wait)
