"""Shared test fixtures.

Tests marked `root` need root (network namespaces, iptables, nftables); elsewhere they are skipped with
a visible reason. The `no_leaked_tasks` fixture fails an async test using it that leaves asyncio tasks running.
"""

from __future__ import annotations

import asyncio
import os

import pytest

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root: creates network namespaces and firewall rules")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


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
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks(loop) - before if not t.done() and t is not asyncio.current_task()]
    for t in leaked:
        t.cancel()
    assert not leaked, f"test leaked asyncio tasks: {leaked}"
