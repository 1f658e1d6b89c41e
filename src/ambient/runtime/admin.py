"""The node proxy's three HTTP endpoints (protocols.md section 1), as aiohttp applications.

- admin (15000, localhost): `/` (index), `/config_dump` (JSON: workloads, services, policies, certificates,
  workloadState), `/logging` (POST `?level=debug|info|warning|error` changes the root log level; GET shows it),
  `/quitquitquit` (POST: starts a graceful drain and exit).
- metrics (15020): `/metrics` and `/stats/prometheus` (Prometheus text format).
- readiness (15021): `GET /healthz/ready` -> 200 `ready\n` once every startup task is done, else
  500 `not ready, pending: <tasks>`.

The apps only read through the narrow callables they are given; they never reach into proxy internals.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR, "off": logging.CRITICAL + 10}


class Readiness:
    """Startup tasks that must finish before the proxy reports ready (e.g. "state", "certificates")."""

    def __init__(self, *pending: str) -> None:
        self._pending: set[str] = set(pending)

    def add(self, task: str) -> None:
        self._pending.add(task)

    def done(self, task: str) -> None:
        self._pending.discard(task)

    @property
    def pending(self) -> list[str]:
        return sorted(self._pending)

    @property
    def ready(self) -> bool:
        return not self._pending


def readiness_app(readiness: Readiness) -> web.Application:
    async def ready(_: web.Request) -> web.Response:
        if readiness.ready:
            return web.Response(text="ready\n")
        return web.Response(status=500, text=f"not ready, pending: {', '.join(readiness.pending)}\n")

    app = web.Application()
    app.router.add_get("/healthz/ready", ready)
    return app


def metrics_app(exposition: Callable[[], bytes | Awaitable[bytes]]) -> web.Application:
    app = web.Application()
    add_metrics_routes(app, exposition)
    return app


def add_metrics_routes(app: web.Application, exposition: Callable[[], bytes | Awaitable[bytes]]) -> None:
    """`/metrics` and `/stats/prometheus` on `app` (a worker serves them beside its admin routes)."""

    async def metrics(_: web.Request) -> web.Response:
        body = exposition()
        if inspect.isawaitable(body):
            body = await body
        return web.Response(body=body, content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/stats/prometheus", metrics)


def admin_app(
    config_dump: Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]], quit_: Callable[[], Awaitable[None] | None]
) -> web.Application:
    async def index(_: web.Request) -> web.Response:
        return web.Response(
            text="ambient node proxy admin\n  /config_dump\n  /logging?level=<level> (POST)\n  /quitquitquit (POST)\n"
        )

    async def dump(_: web.Request) -> web.Response:
        doc = config_dump()
        if inspect.isawaitable(doc):
            doc = await doc
        return web.Response(text=json.dumps(doc, indent=2, default=str), content_type="application/json")

    async def logging_level(request: web.Request) -> web.Response:
        root = logging.getLogger()
        if request.method == "POST":
            name = request.query.get("level", "").lower()
            if name not in LEVELS:
                return web.Response(status=400, text=f"unknown level {name!r}; one of: {', '.join(LEVELS)}\n")
            root.setLevel(LEVELS[name])
        return web.Response(text=f"current log level is {logging.getLevelName(root.level).lower()}\n")

    async def quit_handler(_: web.Request) -> web.Response:
        result = quit_()
        if result is not None:
            await result
        return web.Response(text="OK\n")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/config_dump", dump)
    app.router.add_route("*", "/logging", logging_level)
    app.router.add_post("/quitquitquit", quit_handler)
    return app
