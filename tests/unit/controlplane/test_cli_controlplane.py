"""`ambient controlplane --source local` (the default): serves a local cluster's API server, mints per-node tokens,
answers /healthz on its admin socket once synced, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest

from ambient.api.client import AsyncApiClient
from ambient.api.server import ApiServer
from ambient.controlplane.ca_server import node_token_path

pytestmark = pytest.mark.timeout(60)


async def test_local_mode_serves_the_cluster_at_state_dir(tmp_path: Path) -> None:
    api = ApiServer(tmp_path)
    await api.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path / "controlplane.log"
    try:
        async with AsyncApiClient(api.socket_path) as client:
            await client.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "ambient"), "controlplane", "--state-dir", str(tmp_path),
                "--listen", f"127.0.0.1:{port}", stdout=log_file, stderr=log_file)
        try:
            admin = tmp_path / "controlplane-admin.sock"
            status = 0
            for _ in range(300):
                if admin.exists():
                    transport = httpx.AsyncHTTPTransport(uds=str(admin))
                    async with httpx.AsyncClient(transport=transport) as h:
                        try:
                            status = (await h.get("http://cp/healthz")).status_code
                        except httpx.TransportError:
                            status = 0
                    if status == 200:
                        break
                await asyncio.sleep(0.05)
            assert status == 200, log_path.read_text()
            assert node_token_path(tmp_path, "node-1").read_text().strip()  # local mode mints node tokens
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        await api.stop()
