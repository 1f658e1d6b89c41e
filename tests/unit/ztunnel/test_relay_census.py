"""Heap handed back after a burst of relayed connections ended (once per burst, not per connection)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import pytest

from ambient.ztunnel import copy


class FakeLoop:
    """Records `call_later` instead of running a timer: the test fires the callback itself, and the census's
    clock (`time.monotonic`, patched) moves to the callback's due time."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[float, Callable[[], None]]] = []
        self.now = 1000.0

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        self.scheduled.append((self.now + delay, callback))
        return object()

    def fire(self) -> None:
        due, callback = self.scheduled.pop(0)
        self.now = max(self.now, due)
        callback()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeLoop:
    loop = FakeLoop()
    monkeypatch.setattr(copy.time, "monotonic", lambda: loop.now)
    return loop


def _census_loop(fake: FakeLoop) -> tuple[copy.RelayCensus, FakeLoop, asyncio.AbstractEventLoop]:
    return copy.RelayCensus(), fake, cast(asyncio.AbstractEventLoop, fake)


def test_trim_once_after_a_burst_falls_to_a_quarter(monkeypatch: pytest.MonkeyPatch, fake: FakeLoop) -> None:
    trims: list[int] = []
    monkeypatch.setattr(copy, "_malloc_trim", lambda: trims.append(1))
    census, fake, loop = _census_loop(fake)
    for _ in range(copy.TRIM_AFTER_RELAYS):
        census.enter()
    for _ in range(copy.TRIM_AFTER_RELAYS // 2):
        census.leave(loop)  # half left: still busy, nothing scheduled
    assert fake.scheduled == [] and trims == []
    for _ in range(copy.TRIM_AFTER_RELAYS // 2):
        census.leave(loop)
    assert [due - fake.now for due, _ in fake.scheduled] == [copy.TRIM_DELAY]  # once per burst, not per connection
    fake.fire()
    assert trims == [1] and census.trims == 1 and census.peak == 0  # the next burst is measured from here


def test_no_trim_when_the_relays_came_back_before_the_timer(monkeypatch: pytest.MonkeyPatch, fake: FakeLoop) -> None:
    trims: list[int] = []
    monkeypatch.setattr(copy, "_malloc_trim", lambda: trims.append(1))
    census, fake, loop = _census_loop(fake)
    for _ in range(copy.TRIM_AFTER_RELAYS):
        census.enter()
    for _ in range(copy.TRIM_AFTER_RELAYS):
        census.leave(loop)
    for _ in range(copy.TRIM_AFTER_RELAYS // 2):
        census.enter()  # busy again when the timer fires
    fake.fire()
    assert trims == [] and census.trims == 0 and census.peak == copy.TRIM_AFTER_RELAYS


def test_trim_waits_for_the_bursts_last_relay(monkeypatch: pytest.MonkeyPatch, fake: FakeLoop) -> None:
    """Relays still ending when the timer fires push the trim back: it runs TRIM_DELAY after the last one
    (after what that relay's end frees later, e.g. its HBONE connection), still once."""
    trims: list[int] = []
    monkeypatch.setattr(copy, "_malloc_trim", lambda: trims.append(1))
    census, fake, loop = _census_loop(fake)
    for _ in range(copy.TRIM_AFTER_RELAYS):
        census.enter()
    for _ in range(copy.TRIM_AFTER_RELAYS - 1):
        census.leave(loop)
    fake.now += copy.TRIM_DELAY - 1.0
    census.leave(loop)  # the last one, just before the timer
    fake.fire()
    assert trims == [] and len(fake.scheduled) == 1  # re-armed, not trimmed under the last relay's feet
    fake.fire()
    assert trims == [1] and census.trims == 1 and fake.now - 1000.0 == copy.TRIM_DELAY * 2 - 1.0


async def test_small_bursts_never_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy, "TRIM_DELAY", 0.0)
    census = copy.RelayCensus()
    loop = asyncio.get_running_loop()
    for _ in range(10):
        census.enter()
    for _ in range(10):
        census.leave(loop)
    assert census._handle is None and census.trims == 0


def test_allocator_tuning_applies_on_glibc() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert copy.tune_allocator() is True
