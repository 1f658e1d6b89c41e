"""Waiting helpers shared by every test suite (importable as `helpers`: tests/ is on pytest's path).

One argument order everywhere: `(check, timeout, what)`. `check` is polled until it returns a truthy value,
which is returned; an exception raised by `check` counts as "not yet" (states converge through transient
errors) and the last value or exception is named in the failure. Use these to wait for a positive signal;
never assert that something did not happen after a fixed sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _failure(timeout: float, what: str, last: Any) -> AssertionError:
    return AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def wait_for(check: Callable[[], T | None], timeout: float = 30.0, what: str = "the condition", *,
             interval: float = 0.1) -> T:
    """Poll `check` from synchronous code (threads, subprocesses, clusters) until it is truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last  # type: ignore[no-any-return]
        if time.monotonic() >= deadline:
            raise _failure(timeout, what, last)
        time.sleep(interval)


async def eventually(check: Callable[[], T | None], timeout: float = 10.0, what: str = "the condition", *,  # noqa: ASYNC109
                     interval: float = 0.02) -> T:
    """Poll `check` from a coroutine (state of in-process servers and fakes) until it is truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last  # type: ignore[no-any-return]
        if loop.time() >= deadline:
            raise _failure(timeout, what, last)
        await asyncio.sleep(interval)
