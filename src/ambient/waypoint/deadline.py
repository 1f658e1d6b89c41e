"""A reusable timeout for the I/O waits of one connection: `asyncio.timeout`'s behaviour without a timer per wait.

Every keep-alive request waits on its connections several times (the next request head, the response write,
the backend's answer), each bounded by a timeout of minutes. `asyncio.timeout` costs a timer (created, then
cancelled) and two coroutines per wait, a noticeable part of the waypoint's CPU per request. An `IoDeadline`
belongs to one connection direction and keeps at most one timer: a wait only moves the deadline, and a timer
that fires before the current deadline is re-armed at it (deadlines only move later as time passes, so the
timer is re-armed about once per timeout period instead of created per wait).

Invariants (the same as `asyncio.timeout`'s):
- `with deadline.within(seconds):` bounds the code inside to `seconds` from its entry: when they pass, the
  entering task is cancelled and the scope raises `TimeoutError` (unless another cancellation is pending,
  which then wins as CancelledError); `seconds <= 0` expires at the next event-loop pass. The timer fires at
  the deadline itself, never earlier (an early timer only re-arms).
- One scope at a time per `IoDeadline`; a scope entered while another is active (another task reading the
  same connection, a nested wait) falls back to `asyncio.timeout`, so concurrent use is never wrong, only
  slower. The scope is a synchronous context manager: it must be entered in the task that awaits inside it.
- `close()` cancels the pending timer (a closed connection holds no timer); a timer left behind by a
  connection that was not closed fires once, finds no scope and does nothing (it holds no connection).
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any


class IoDeadline:
    """One connection direction's timeout (see module doc)."""

    __slots__ = ("_armed_at", "_cancelling", "_expired", "_handle", "_loop", "_task", "_when")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0  # when the pending timer fires
        self._when = 0.0  # the active scope's deadline
        self._task: asyncio.Task[Any] | None = None  # the active scope's task (None: no scope)
        self._cancelling = 0
        self._expired = False

    def within(self, seconds: float) -> IoDeadline | _Fallback:
        """This deadline as a scope of `seconds` (enter it with `with`)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._task is not None:  # busy: a scope of its own (see module doc)
            return _Fallback(seconds)
        self._when = loop.time() + seconds
        return self

    def __enter__(self) -> IoDeadline:
        # with the loop given, current_task skips get_running_loop (a getpid() system call on Python 3.11)
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("IoDeadline should be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._expired = False
        if self._handle is None or self._armed_at > self._when:
            if self._handle is not None:
                self._handle.cancel()
            assert self._loop is not None
            self._armed_at = self._when
            self._handle = self._loop.call_at(self._when, self._fire)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        task, self._task = self._task, None
        if self._expired:
            self._expired = False
            assert task is not None
            if task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def _fire(self) -> None:
        self._handle = None
        task = self._task
        if task is None:  # no scope: the next one arms a timer again
            return
        assert self._loop is not None
        if self._loop.time() < self._when:  # the deadline moved on since this timer was set
            self._armed_at = self._when
            self._handle = self._loop.call_at(self._when, self._fire)
            return
        self._expired = True
        task.cancel()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _Fallback:
    """`asyncio.timeout` behind the synchronous scope interface: for a scope entered while another is active."""

    __slots__ = ("_cancelling", "_expired", "_handle", "_seconds", "_task")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._expired = False

    def __enter__(self) -> _Fallback:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("IoDeadline should be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        loop = asyncio.get_running_loop()
        self._handle = loop.call_at(loop.time() + self._seconds, self._fire)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._handle.cancel()
        if self._expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def _fire(self) -> None:
        self._expired = True
        self._task.cancel()
