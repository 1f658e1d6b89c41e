"""The node agent's `pluginevent.sock`: the HTTP endpoint the chained CNI plugin calls on every pod ADD.

Role: `POST /cmdadd` with `{Netns, PodName, PodNamespace, PodUID, IPs}` (aiohttp over a Unix socket in the
node's run dir). The handler only parses and delegates to an injected `on_cmdadd` coroutine; it answers
200 when that returns (the pod's redirection rules are in place and its node proxy acknowledged it) and
500 with the reason otherwise, so the
plugin fails the CNI ADD and the runtime retries the sandbox (fail closed). `GET /healthz` answers 200.

Invariants:
- Never 200 unless `on_cmdadd` returned: any exception (including a bug) is a 500, never a pod that runs
  uncaptured.
- The socket file is replaced on start (a stale one from a killed agent) and removed on stop; mode 0600,
  only root (the CNI runtime) may ask us to capture pods.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ambient.cni.agent_plan import CmdAdd, CmdAddParseError, parse_cmdadd
from ambient.core.errors import AmbientError

log = logging.getLogger("ambient.cni.agent")

PLUGIN_EVENT_SOCKET = "pluginevent.sock"
OnCmdAdd = Callable[[CmdAdd], Awaitable[dict[str, Any]]]


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


class PluginEventServer:
    """`async with PluginEventServer(path, on_cmdadd):` serves until the block ends."""

    def __init__(self, path: str | os.PathLike[str], on_cmdadd: OnCmdAdd) -> None:
        self.path = Path(path)
        self._on_cmdadd = on_cmdadd
        self._runner: web.AppRunner | None = None
        self.requests = 0

    async def _cmdadd(self, request: web.Request) -> web.Response:
        self.requests += 1
        try:
            body = await request.json()
            event = parse_cmdadd(body)
        except (ValueError, CmdAddParseError) as e:
            log.warning("cmdadd: bad request: %s", e)
            return _json(400, {"error": f"bad /cmdadd request: {e}"})
        try:
            result = await self._on_cmdadd(event)
        except AmbientError as e:
            log.error("cmdadd %s: refusing the pod (CNI ADD fails, the runtime retries): %s", event.ref, e)
            return _json(500, {"error": e.message, "hint": e.hint or ""})
        except Exception as e:  # a bug must still fail closed, with the reason visible to the runtime
            log.exception("cmdadd %s: unexpected error", event.ref)
            return _json(500, {"error": f"node agent internal error: {type(e).__name__}: {e}"})
        return _json(200, result)

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def __aenter__(self) -> PluginEventServer:
        app = web.Application()
        app.router.add_post("/cmdadd", self._cmdadd)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
        try:
            site = web.UnixSite(runner, str(self.path))
            await site.start()
            os.chmod(self.path, 0o600)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("listening for CNI plugin events on %s", self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
