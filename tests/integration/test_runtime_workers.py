"""Worker processes (`runtime.workers`): started with their index, restarted when they die, stopped with
SIGTERM (then SIGKILL past the grace), and gone when their primary is killed (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ambient.bench.nsenv import process_gone
from ambient.runtime.workers import WORKER_INDEX_ENV, Workers, worker_index
from helpers import eventually, wait_for

# A worker: writes "<index> <pid>" to DIR/<index>.<pid>, then sleeps; SIGTERM exits at once unless IGNORE.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    d = sys.argv[1]
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    i = os.environ["AMBIENT_WORKER_INDEX"]
    open(os.path.join(d, f"{i}.{os.getpid()}"), "w").write(os.environ.get("EXTRA", ""))
    time.sleep(600)
""")


def _seen(d: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for p in d.iterdir():
        i, pid = p.name.split(".")
        out.setdefault(i, []).append(int(pid))
    return out


def test_index_from_the_environment() -> None:
    assert worker_index({}) == 0
    assert worker_index({WORKER_INDEX_ENV: "3"}) == 3


async def test_workers_start_restart_and_stop(tmp_path: Path) -> None:
    workers = Workers("test", 3, env_for=lambda i: {"EXTRA": f"w{i}"},
                      argv=[sys.executable, "-c", CHILD, str(tmp_path)])
    task = asyncio.create_task(workers.run())
    try:
        seen = await eventually(lambda: (s := _seen(tmp_path)) and set(s) == {"1", "2"} and s, 20, "2 workers")
        assert (tmp_path / f"1.{seen['1'][0]}").read_text() == "w1"
        assert workers.alive(1) and workers.alive(2)
        os.kill(seen["1"][0], signal.SIGKILL)
        await eventually(lambda: len(_seen(tmp_path).get("1", [])) == 2 and workers.alive(1), 20, "worker 1 back")
        assert workers.restarts == {1: 1, 2: 0}
        pids = list(workers.pids.values())
        await workers.stop(grace=5)
        assert all(process_gone(p) for p in pids)
        await asyncio.wait_for(task, 10)  # supervisors return once stopping
    finally:
        task.cancel()


async def test_a_worker_ignoring_sigterm_is_killed_after_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IGNORE_TERM", "1")
    workers = Workers("test", 2, argv=[sys.executable, "-c", CHILD, str(tmp_path)])
    task = asyncio.create_task(workers.run())
    try:
        await eventually(lambda: "1" in _seen(tmp_path), 20, "worker started")
        pid = workers.pids[1]
        await workers.stop(grace=0.5)
        assert process_gone(pid)
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()


PRIMARY = textwrap.dedent("""
    import asyncio, sys
    from ambient.runtime.workers import Workers
    async def main():
        await Workers("test", 2, argv=[sys.executable, "-c", sys.argv[2], sys.argv[1]]).run()
    asyncio.run(main())
""")


def test_workers_exit_when_their_primary_is_killed(tmp_path: Path) -> None:
    primary = subprocess.Popen([sys.executable, "-c", PRIMARY, str(tmp_path), CHILD])
    try:
        seen = wait_for(lambda: _seen(tmp_path).get("1"), 20, "the worker started")
        primary.kill()
        primary.wait(10)
        wait_for(lambda: process_gone(seen[0]), 20, "the worker exited with its primary")
    finally:
        primary.kill()
