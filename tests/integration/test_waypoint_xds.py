"""`python -m ambient.waypoint --xds ...` in-process against the real API server + ControlPlane on 127.0.0.1:
the waypoint gets its certificate from the CA with its pod token (its own identity, no local CA) and its
state over xDS, and only then reports ready."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import httpx
import pytest

from ambient.api.client import AsyncApiClient
from ambient.api.server import ApiServer
from ambient.cluster import podruntime as rt
from ambient.controlplane.app import ControlPlane
from ambient.waypoint.__main__ import parse_args, settings_from_args
from ambient.waypoint.app import build

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def ready_status(port: int) -> int:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            return (await client.get(f"http://127.0.0.1:{port}/healthz/ready")).status_code
    except httpx.HTTPError:
        return 0


def test_xds_mode_needs_a_root_certificate() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--xds", "127.0.0.1:15012"])
    with pytest.raises(SystemExit):
        parse_args(["--listen", "127.0.0.1:0"])  # neither --ca-dir nor --xds


async def test_waypoint_identity_from_ca_and_state_from_xds(tmp_path: Path) -> None:
    api_srv = ApiServer(tmp_path, bookmark_interval=0.5)
    await api_srv.start()
    try:
        async with AsyncApiClient(api_srv.socket_path) as api:
            await api.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
            await api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
            pod = await api.create({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "waypoint-abcde", "namespace": "shop",
                             "labels": {"gateway.istio.io/managed": "istio.io-mesh-controller"}},
                "spec": {"nodeName": "node-1", "serviceAccountName": "waypoint",
                         "containers": [{"name": "c", "command": ["x"]}]},
            })
            token_file = rt.write_pod_token(tmp_path, "node-1", pod)
            cp = ControlPlane(tmp_path, "127.0.0.1:0")
            ready_port = free_port()
            async with asyncio.TaskGroup() as tg:
                cp_task = tg.create_task(cp.run())
                await asyncio.wait_for(cp.ready.wait(), 20)
                args = parse_args([
                    "--xds", f"127.0.0.1:{cp.port}", "--root-cert", str(cp.root_cert_path),
                    "--token-file", str(token_file), "--listen", "127.0.0.1:0", "--name", "waypoint",
                    "--namespace", "shop", "--service-account", "waypoint", "--ready", f"127.0.0.1:{ready_port}",
                ])
                wp_task = tg.create_task(build(settings_from_args(args)).run())
                for _ in range(200):
                    if await ready_status(ready_port) == 200:
                        break
                    await asyncio.sleep(0.05)
                assert await ready_status(ready_port) == 200
                assert cp.authority.issued == 1  # its own certificate, from the control plane's CA
                proxies = cp.proxy_status()["proxies"]
                assert [p["node_id"].split("~")[0] for p in proxies] == ["waypoint"], proxies
                wp_task.cancel()
                cp_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await wp_task
    finally:
        await api_srv.stop()
