"""Heap handed back after a burst of relayed connections ended (once per burst, not per connection)."""

from __future__ import annotations

import asyncio

import pytest

from ambient.ztunnel import copy
from helpers import eventually


async def test_trim_once_after_a_burst_falls_to_a_quarter(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(copy, "TRIM_DELAY", 0.01)
    monkeypatch.setattr(copy, "_malloc_trim", lambda: trims.append(1))
    census = copy.RelayCensus()
    loop = asyncio.get_running_loop()
    for _ in range(copy.TRIM_AFTER_RELAYS):
        census.enter()
    for _ in range(copy.TRIM_AFTER_RELAYS // 2):
        census.leave(loop)  # half left: still busy, nothing scheduled
    await asyncio.sleep(0.05)
    assert trims == []
    for _ in range(copy.TRIM_AFTER_RELAYS // 2):
        census.leave(loop)
    await eventually(lambda: census.trims == 1, timeout=5, what="one trim after the burst")
    assert trims == [1] and census.peak == 0  # the next burst is measured from here


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
