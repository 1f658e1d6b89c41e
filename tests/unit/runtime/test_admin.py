"""Admin, metrics and readiness endpoints answer like the reference proxy's."""

from __future__ import annotations

import logging

from aiohttp.test_utils import TestClient, TestServer

from ambient.runtime.admin import Readiness, admin_app, metrics_app, readiness_app


async def test_readiness_lists_pending_tasks_then_ready() -> None:
    readiness = Readiness("state", "certificates")
    async with TestClient(TestServer(readiness_app(readiness), host="127.0.0.1")) as client:
        resp = await client.get("/healthz/ready")
        assert resp.status == 500
        assert await resp.text() == "not ready, pending: certificates, state\n"
        readiness.done("state")
        readiness.done("certificates")
        resp = await client.get("/healthz/ready")
        assert (resp.status, await resp.text()) == (200, "ready\n")


async def test_metrics_paths_serve_exposition() -> None:
    async with TestClient(TestServer(metrics_app(lambda: b"x_total 1\n"), host="127.0.0.1")) as client:
        for path in ("/metrics", "/stats/prometheus"):
            resp = await client.get(path)
            assert resp.status == 200 and await resp.text() == "x_total 1\n"


async def test_admin_config_dump_logging_and_quit() -> None:
    quits: list[bool] = []
    app = admin_app(lambda: {"workloads": [], "services": []}, lambda: quits.append(True))
    root = logging.getLogger()
    old = root.level
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            assert (await (await client.get("/config_dump")).json()) == {"workloads": [], "services": []}
            resp = await client.post("/logging?level=debug")
            assert "debug" in await resp.text() and root.level == logging.DEBUG
            assert (await client.post("/logging?level=loud")).status == 400
            assert (await client.post("/quitquitquit")).status == 200
            assert quits == [True]
    finally:
        root.setLevel(old)
