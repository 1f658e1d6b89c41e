"""Cancelling an `AsyncApiClient` watch (how every component stops its informers) while an event is arriving,
under uvloop as the proxies run: the event loop reports nothing.

The event bytes are made to wait in the watch socket while the reading task is cancelled (the loop is
blocked in between), so the cancelled read and the data it was waiting for meet in the same loop pass -
the moment a stopping waypoint's Pod watch sees its own pod being deleted. A Unix-socket stream that
registers `future.set_result` as the socket's reader leaves it registered until a later pass and has it
fire on the cancelled future ("Exception in callback ... Future.set_result ... InvalidStateError").
The API server runs on its own thread; every address is a Unix socket under the test's directory."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop

from ambient.api.client import ApiClient, AsyncApiClient
from ambient.api.server import serve_in_thread

pytestmark = pytest.mark.timeout(60)
ROUNDS = 5


def _account(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": "shop"}}


def test_a_watch_cancelled_while_its_event_arrives_leaves_the_loop_clean(tmp_path: Path) -> None:
    with serve_in_thread(tmp_path) as server, ApiClient(server.socket_path) as sync_api:
        sync_api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})

        async def main() -> list[dict[str, Any]]:
            loop = asyncio.get_running_loop()
            reported: list[dict[str, Any]] = []
            loop.set_exception_handler(lambda _loop, context: reported.append(context))
            async with AsyncApiClient(server.socket_path) as api:
                async def follow(streaming: asyncio.Event) -> None:
                    async for _event in api.watch("ServiceAccount", "shop"):
                        streaming.set()

                for i in range(ROUNDS):
                    streaming = asyncio.Event()
                    reader = asyncio.create_task(follow(streaming))
                    await api.create(_account(f"first-{i}"))
                    await asyncio.wait_for(streaming.wait(), 20)  # the watch is blocked reading its socket
                    sync_api.create(_account(f"second-{i}"))  # the server thread sends the event...
                    time.sleep(0.2)  # noqa: ASYNC251 - the loop blocked on purpose: the bytes wait, unread, in the socket
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
                    # a round trip needs the loop to poll its sockets again: a stale reader would fire there
                    await api.get("ServiceAccount", f"second-{i}", "shop")
            return reported

        reported = uvloop.run(main())
    assert reported == [], [c.get("message") for c in reported]
