"""Shared test fixtures.

Tests marked `root` need root (network namespaces, iptables, nftables); elsewhere they are skipped with
a visible reason. Every async test runs with the `no_leaked_tasks` check (added at collection): it fails a
test that leaves asyncio tasks running (every task must be owned by a TaskGroup).
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Iterator

import pytest

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if (isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj)
                and "no_leaked_tasks" not in item.fixturenames):
            item.fixturenames.insert(0, "no_leaked_tasks")  # set up first, checked after every other teardown
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root: creates network namespaces and firewall rules")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["fast", "plain"])
def fast_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test with the library fast paths on, then off (AMBIENT_FAST_PATHS=0: h2 / h11 public APIs only)."""
    from ambient.core import fastpaths

    monkeypatch.setenv(fastpaths.SETTING, "1" if request.param == "fast" else "0")
    fastpaths.reset()
    yield request.param
    fastpaths.reset()


@pytest.fixture
async def no_leaked_tasks() -> object:
    """Fail an async test that leaves tasks behind (every task must be owned by a TaskGroup)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        yield None
        return
    before = asyncio.all_tasks(loop)
    yield None
    leaked = [t for t in asyncio.all_tasks(loop) - before if not t.done() and t is not asyncio.current_task()]
    if leaked:  # tasks being cancelled or closing (a stream server's handlers) get a moment to finish
        await asyncio.wait(leaked, timeout=1.0)
        leaked = [t for t in leaked if not t.done()]
    for t in leaked:
        t.cancel()
    assert not leaked, f"test leaked asyncio tasks: {leaked}"
