"""The node proxy composed in-process (shared mode, loopback only, no root): static state + local CA,
admin over a Unix socket, HBONE CONNECT validation, fail-closed outbound, and /quitquitquit."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import httpx
import pytest

from ambient.hbone.client import HboneClient
from ambient.hbone.errors import HboneStatusError
from ambient.ztunnel.app import App, AppOptions
from ambient.ztunnel.certs import LocalCaSource
from ambient.ztunnel.settings import Ports, Settings
from ambient.ztunnel.static_config import StaticStateSource

STATE = """
workloads:
- {uid: w1, name: web, namespace: shop, workloadIps: [127.0.0.5], protocol: HBONE, serviceAccount: web}
policies:
- {name: deny-all, namespace: other, scope: Namespace, action: Deny, rules: [[[{destinationPorts: [1]}]]]}
"""


async def test_app_shared_mode_in_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "state.yaml").write_text(STATE)
    admin = tmp_path / "admin.sock"
    settings = Settings(
        mode="shared", serve_http=False, admin_socket=str(admin), mark=None, transparent_inbound=False,
        ports=Ports(outbound=0, inbound_plaintext=0, inbound=0), shared_host="127.0.0.1", source_wait=0.1,
        drain_deadline=1.0,
    )
    certs = LocalCaSource.from_dir(tmp_path / "ca")
    app = App(settings, StaticStateSource(tmp_path / "state.yaml"), certs, AppOptions())
    caplog.set_level(logging.INFO)
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(app.run())
        for _ in range(500):
            if app.shared is not None and app.shared.listening.is_set():
                break
            await asyncio.sleep(0.01)
        assert app.shared is not None and app.readiness.ready
        ports = {c: p for c, _h, p in app.shared.addresses}
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(admin)), timeout=5) as http:
            dump = (await http.get("http://zt/config_dump")).json()
            assert set(dump) == {"workloads", "services", "policies", "certificates", "workloadState"}
            assert [w["uid"] for w in dump["workloads"]] == ["w1"]
            assert dump["certificates"][0]["identity"] == "spiffe://cluster.local/ns/shop/sa/web"

            # HBONE: a loopback authority is refused with 400 before anything is dialled
            bundle = await certs.fetch("spiffe://cluster.local/ns/shop/sa/curl")
            async with HboneClient() as client:
                with pytest.raises(HboneStatusError) as err:
                    await client.connect(bundle, ("127.0.0.5", ports["inbound"]),
                                         ["spiffe://cluster.local/ns/shop/sa/web"], "127.0.0.5:8080")
                assert err.value.status == 400

            # outbound that was not redirected: reset at once (never forwarded back into ourselves)
            reader, writer = await asyncio.open_connection("127.0.0.1", ports["outbound"])
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 5)
            writer.close()

            assert (await http.post("http://zt/quitquitquit")).status_code == 200
        await asyncio.wait_for(run, 5)
    text = caplog.text
    assert "listener established" in text and "connection failed" in text
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ports["outbound"]), timeout=1).close()
