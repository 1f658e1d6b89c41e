"""A ZDS Del says only the uid: the node proxy's log must not claim the pod was deleted (it may only have
left the mesh), and the pod's proxy drains."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from ambient.runtime.drain import Drain
from ambient.ztunnel.inpod import InpodManager, PodProxy
from ambient.ztunnel.proxy import PodScope


def test_del_logs_removed_or_deleted_and_drains(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[InpodManager, Drain]:
        manager = InpodManager(cast(Any, None), cast(Any, None), cast(Any, None))
        drain = Drain("pod shop/web", 2.0)
        manager.pods["uid-1"] = PodProxy("uid-1", PodScope("uid-1", "web", "shop", "default"),
                                         cast(Any, None), 42, -1, cast(Any, None), drain, cast(Any, None))
        await manager.on_del("uid-1")
        await manager.on_del("uid-2")  # never served here
        return manager, drain

    with caplog.at_level(logging.INFO, logger="ambient.ztunnel.inpod"):
        manager, drain = asyncio.run(scenario())
    assert drain.draining and manager.pods == {}
    text = caplog.text
    assert "pod shop/web (uid uid-1) removed from the mesh or deleted: draining its proxy (deadline 2.0s)" in text
    assert "pod uid uid-2 removed from the mesh or deleted: not served by this proxy" in text
    assert " deleted: draining" not in text.replace("or deleted: draining", "")
