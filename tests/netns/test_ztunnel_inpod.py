"""Root, in-process: the in-pod manager creates the listeners inside the pod netns it is handed, replaces a
pod's proxy when its netns changes, and drains pods missing from a ZDS snapshot."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator

import pytest

from ambient.hbone.client import HboneClient
from ambient.identity.ca import LocalCA
from ambient.inpod.netns import open_netns
from ambient.inpod.zds_codec import WorkloadInfo
from ambient.state.store import StateStore
from ambient.ztunnel.app import build_pod_proxy
from ambient.ztunnel.certs import LocalCaSource
from ambient.ztunnel.inpod import InpodManager
from ambient.ztunnel.metrics import ProxyMetrics
from ambient.ztunnel.proxy import ProxyCore
from ambient.ztunnel.settings import Settings
from ambient.ztunnel.telemetry import AccessLog, Connections, Telemetry

pytestmark = pytest.mark.root


@pytest.fixture
def two_netns() -> Iterator[tuple[str, str]]:
    names = [f"zti-{os.getpid()}-{k}" for k in (1, 2)]
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True, capture_output=True)
            subprocess.run(["ip", "-n", n, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield names[0], names[1]
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def _listening(ns: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hntl"], capture_output=True, text=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


async def test_add_replace_and_snapshot_prune(two_netns: tuple[str, str]) -> None:
    ns1, ns2 = two_netns
    core = ProxyCore(Settings(drain_deadline=0.5), StateStore(), LocalCaSource(LocalCA.create()), HboneClient(),
                     Telemetry(ProxyMetrics(), AccessLog(), Connections()))
    info = WorkloadInfo("web", "shop", "web")
    async with asyncio.TaskGroup() as tg:
        mgr = InpodManager(core, tg, lambda ctx, drain: build_pod_proxy(ctx, drain))
        fd1 = open_netns(f"/var/run/netns/{ns1}")
        try:
            await mgr.on_add("u1", info, fd1)
        finally:
            os.close(fd1)  # the manager keeps its own dup
        assert {15001, 15006, 15008} <= await asyncio.to_thread(_listening, ns1)
        first = mgr.pods["u1"]
        fd2 = open_netns(f"/var/run/netns/{ns2}")
        try:
            await mgr.on_add("u1", info, fd2)  # a new netns for the same pod: replace
        finally:
            os.close(fd2)
        await asyncio.wait_for(first.task, 5)  # the old proxy drained and stopped
        assert await asyncio.to_thread(_listening, ns1) == set()
        assert {15001, 15006, 15008} <= await asyncio.to_thread(_listening, ns2)
        second = mgr.pods["u1"]
        await mgr.on_snapshot_done(frozenset())  # not in the agent's snapshot: drained
        await asyncio.wait_for(second.task, 5)
        assert mgr.pods == {} and await asyncio.to_thread(_listening, ns2) == set()
    await core.hbone.close()
