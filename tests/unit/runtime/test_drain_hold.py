"""runtime.drain.Drain: holds, cutters and a zero deadline (what the HBONE server's drain relies on)."""

from __future__ import annotations

import asyncio
import time

from ambient.runtime.drain import Drain


async def test_hold_keeps_the_drain_open_without_live_work() -> None:
    drain = Drain("t", deadline=5.0)
    drain.hold(0.3)
    started = time.monotonic()
    assert await drain.run() == 0
    assert 0.25 <= time.monotonic() - started < 2.0


async def test_work_arriving_during_a_hold_is_waited_for() -> None:
    drain = Drain("t", deadline=5.0)
    drain.hold(0.2)
    finished = asyncio.Event()

    async def late_stream() -> None:
        await asyncio.sleep(0.4)
        finished.set()

    async def arrive() -> None:
        await asyncio.sleep(0.1)  # inside the hold: e.g. a handed-off connection's first CONNECT
        drain.watch(asyncio.create_task(late_stream()))

    arriving = asyncio.create_task(arrive())
    assert await drain.run() == 0
    assert finished.is_set()
    await arriving


async def test_deadline_zero_cuts_at_once_and_runs_the_cutters() -> None:
    drain = Drain("t", deadline=0.0)
    cut: list[str] = []
    drain.on_cut(lambda: cut.append("connections closed"))
    task = asyncio.create_task(asyncio.sleep(30))
    drain.watch(task)
    started = time.monotonic()
    assert await drain.run() == 1
    assert time.monotonic() - started < 1.5
    assert task.cancelled() and cut == ["connections closed"]
