"""`IoDeadline`: `asyncio.timeout`'s behaviour (expiry as TimeoutError, another cancellation wins, the deadline
counted from the scope's entry) with one reusable timer per connection direction."""

from __future__ import annotations

import asyncio

import pytest

from ambient.waypoint.deadline import IoDeadline

pytestmark = pytest.mark.timeout(30)


async def test_a_wait_past_its_deadline_raises_timeout_error() -> None:
    d = IoDeadline()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError), d.within(0.05):
        await asyncio.Event().wait()
    assert loop.time() - t0 >= 0.05  # never earlier than the deadline
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    d.close()


async def test_a_wait_that_ends_in_time_returns_and_the_deadline_is_reusable() -> None:
    d = IoDeadline()
    for _ in range(3):
        with d.within(5):
            await asyncio.sleep(0)
    # the long timer left armed does not stop a shorter scope expiring
    with pytest.raises(TimeoutError), d.within(0.02):
        await asyncio.Event().wait()
    d.close()


async def test_an_early_timer_is_re_armed_at_the_moved_deadline() -> None:
    """The first scope arms a timer at its deadline; a later scope with a later deadline keeps it, and when it
    fires early the scope is not cut: it expires at its own deadline."""
    d = IoDeadline()
    loop = asyncio.get_running_loop()
    with d.within(0.05):
        pass
    t0 = loop.time()
    with pytest.raises(TimeoutError), d.within(0.2):
        await asyncio.Event().wait()
    assert loop.time() - t0 >= 0.2
    d.close()


async def test_zero_seconds_expires_at_the_next_loop_pass() -> None:
    d = IoDeadline()
    with pytest.raises(TimeoutError), d.within(0):
        await asyncio.Event().wait()
    d.close()


async def test_a_scope_entered_while_another_is_active_gets_its_own_timer() -> None:
    d = IoDeadline()
    inner_timed_out = asyncio.Event()

    async def other() -> None:
        with pytest.raises(TimeoutError), d.within(0.02):
            await asyncio.Event().wait()
        inner_timed_out.set()

    with d.within(10):
        task = asyncio.create_task(other())
        await inner_timed_out.wait()  # the busy deadline's fallback expired on its own, the outer did not
        await task
    d.close()


async def test_another_cancellation_wins_over_the_timeout() -> None:
    d = IoDeadline()
    entered = asyncio.Event()

    async def waiter() -> None:
        with d.within(10):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(waiter())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    d.close()


async def test_expiry_with_a_pending_outer_cancel_stays_cancelled_error() -> None:
    d = IoDeadline()
    entered = asyncio.Event()

    async def waiter() -> None:
        with d.within(0.01):
            entered.set()
            try:
                await asyncio.Event().wait()
            finally:
                asyncio.current_task().cancel()  # type: ignore[union-attr]  # an outer cancel arrives too
                await asyncio.sleep(0.05)

    task = asyncio.create_task(waiter())
    await entered.wait()
    with pytest.raises(asyncio.CancelledError):
        await task
    d.close()


async def test_close_cancels_the_pending_timer() -> None:
    d = IoDeadline()
    with d.within(60):
        pass
    assert d._handle is not None
    d.close()
    assert d._handle is None


def test_outside_a_task_is_refused() -> None:
    async def enter() -> None:
        d = IoDeadline()
        scope = d.within(1)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def outside() -> None:  # a plain callback: no current task
            try:
                with scope:
                    pass
            except RuntimeError as exc:
                fut.set_result(None) if "task" in str(exc) else fut.set_exception(exc)

        loop.call_soon(outside)
        await fut

    asyncio.run(enter())
