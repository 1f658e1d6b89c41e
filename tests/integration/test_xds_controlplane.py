"""End to end in-process: the real API server -> ControlPlane (TLS gRPC) -> two xDS clients + the CA."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from ambient.api.client import AsyncApiClient
from ambient.api.server import ApiServer
from ambient.controlplane import proxy_status
from ambient.controlplane.app import ControlPlane
from ambient.controlplane.ca_server import node_token_path
from ambient.identity.ca_client import CaClient, CaRequestError
from ambient.state.store import StateStore
from ambient.xds.client import XdsClient, node_id
from helpers import eventually

pytestmark = pytest.mark.timeout(90)


def node(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


def pod(name: str, node_name: str, sa: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "nodeName": node_name,
            "serviceAccountName": sa,
            "containers": [{"name": "c", "image": "x", "command": ["sleep", "1"]}],
        },
    }


async def test_pod_appears_in_two_proxies_and_ca_refuses_foreign_node(tmp_path: Path) -> None:
    api_srv = ApiServer(tmp_path, bookmark_interval=0.5)
    await api_srv.start()
    try:
        async with AsyncApiClient(api_srv.socket_path) as api:
            for n in ("node-1", "node-2"):
                await api.create(node(n))
            await api.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": "default", "labels": {"istio.io/dataplane-mode": "ambient"}},
                }
            )
            cp = ControlPlane(tmp_path, "127.0.0.1:0")
            async with asyncio.TaskGroup() as tg:
                cp_task = tg.create_task(cp.run())
                await asyncio.wait_for(cp.ready.wait(), 20)
                root = cp.root_cert_path.read_bytes()
                addr = f"127.0.0.1:{cp.port}"
                token1 = node_token_path(tmp_path, "node-1").read_text().strip()
                token2 = node_token_path(tmp_path, "node-2").read_text().strip()
                stores = [StateStore(), StateStore()]
                clients = [
                    XdsClient(
                        addr,
                        stores[i].take_writer(),
                        node=node_id(f"172.18.0.{11 + i}", f"zt{i}", "istio-system"),
                        token=tok,
                        root_cert=root,
                    )
                    for i, tok in enumerate((token1, token2))
                ]
                tasks = [tg.create_task(c.run()) for c in clients]
                for c in clients:
                    await asyncio.wait_for(c.ready.wait(), 20)

                created = await api.create(pod("web", "node-1", "web-sa"))
                created["status"] = {
                    "phase": "Running",
                    "podIP": "10.244.1.7",
                    "podIPs": [{"ip": "10.244.1.7"}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
                await api.update_status(created)
                uid = created["metadata"]["uid"]
                await eventually(lambda: all(s.current.workload(uid) is not None for s in stores), timeout=15.0)
                w = stores[1].current.workload(uid)
                assert w is not None and w.in_mesh and w.service_account == "web-sa" and w.node == "node-1"
                assert str(w.addresses[0]) == "10.244.1.7"

                # The CA (same gRPC port, TLS) issues web-sa to node-1 and refuses it to node-2.
                async with CaClient(addr, token=token1, root_cert=root) as ca1:
                    bundle = await ca1.fetch("spiffe://cluster.local/ns/default/sa/web-sa")
                    assert bundle.identity.service_account == "web-sa"
                async with CaClient(addr, token=token2, root_cert=root) as ca2:
                    with pytest.raises(CaRequestError) as err:
                        await ca2.fetch("spiffe://cluster.local/ns/default/sa/web-sa")
                    assert err.value.code == "PERMISSION_DENIED" and "node-2" in err.value.message

                # proxy-status over the admin socket
                status = await asyncio.to_thread(proxy_status.fetch, tmp_path)
                assert {p["node_id"] for p in status["proxies"]} == {c.node for c in clients}
                rows = proxy_status.rows(status)
                assert len(rows) == 2 and all("SYNCED" in r[2] for r in rows), rows
                assert status["certificates_issued"] == 1

                await api.delete("pods", "web", "default")
                await eventually(lambda: all(s.current.workload(uid) is None for s in stores), timeout=15.0)
                for t in [*tasks, cp_task]:
                    t.cancel()
    finally:
        await api_srv.stop()


async def test_xds_refuses_a_proxy_without_a_valid_token(tmp_path: Path) -> None:
    api_srv = ApiServer(tmp_path, bookmark_interval=0.5)
    await api_srv.start()
    try:
        cp = ControlPlane(tmp_path, "127.0.0.1:0")
        async with asyncio.TaskGroup() as tg:
            cp_task = tg.create_task(cp.run())
            await asyncio.wait_for(cp.ready.wait(), 20)
            client = XdsClient(
                f"127.0.0.1:{cp.port}",
                StateStore().take_writer(),
                node="ztunnel~1.2.3.4~z.x~x.svc",
                token="forged",
                root_cert=cp.root_cert_path.read_bytes(),
                backoff_min=0.05,
            )
            t = tg.create_task(client.run())
            await eventually(lambda: "UNAUTHENTICATED" in client.last_error, timeout=15.0)
            assert "not valid for any node" in client.last_error
            assert not client.ready.is_set()
            async with AsyncApiClient(api_srv.socket_path) as api:
                def get_only(name: str) -> dict:
                    return {
                        "apiVersion": "security.istio.io/v1",
                        "kind": "AuthorizationPolicy",
                        "metadata": {"name": name, "namespace": "default"},
                        "spec": {
                            "selector": {"matchLabels": {"app": "web"}},
                            "action": "ALLOW",
                            "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}],
                        },
                    }

                def status_seen(name: str) -> bool:
                    """The control plane's index has the written status (it came back on its own watch)."""
                    obj = cp.index.get("AuthorizationPolicy", "default", name) or {}
                    return bool((obj.get("status") or {}).get("conditions"))

                await api.create(get_only("get-only"))
                await eventually(lambda: status_seen("get-only"), timeout=10.0, what="the status written and seen")
                obj = await api.get("AuthorizationPolicy", "get-only", "default")
                conditions = obj["status"]["conditions"]
                assert conditions[0]["type"] == "ZtunnelAccepted"
                assert conditions[0]["status"] == "False" and conditions[0]["reason"] == "UnsupportedValue"
                assert conditions[0]["message"].startswith("more restrictive than requested")
                # Written once, not rewritten on its own watch event: a later policy's status is written
                # (the status loop ran again after that event) while this one's resourceVersion stays.
                version = obj["metadata"]["resourceVersion"]
                await api.create(get_only("get-only-2"))
                await eventually(lambda: status_seen("get-only-2"), timeout=10.0, what="the second policy's status")
                again = await api.get("AuthorizationPolicy", "get-only", "default")
                assert again["metadata"]["resourceVersion"] == version
                assert cp.index.status_pending == {}
            async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(cp.admin_socket))) as h:
                resp = await h.get("http://cp/healthz")
                assert resp.status_code == 200
                policies = json.loads((await h.get("http://cp/policies")).text)
                assert policies[0]["name"] == "get-only" and "to.operation.methods" in policies[0]["message"]
            t.cancel()
            cp_task.cancel()
    finally:
        await api_srv.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_control_plane_outage_keeps_state_and_certificates(tmp_path: Path) -> None:
    """Proxies keep their state and valid certificates through a control plane restart, then resync."""
    from datetime import UTC, datetime, timedelta

    from ambient.ztunnel.xds_source import ControlPlaneSource

    api_srv = ApiServer(tmp_path, bookmark_interval=0.5)
    await api_srv.start()
    try:
        async with AsyncApiClient(api_srv.socket_path) as api:
            await api.create(node("node-1"))
            await api.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": "default", "labels": {"istio.io/dataplane-mode": "ambient"}},
                }
            )
            created = await api.create(pod("web", "node-1", "web-sa"))
            created["status"] = {
                "phase": "Running",
                "podIP": "10.244.1.7",
                "conditions": [{"type": "Ready", "status": "True"}],
            }
            await api.update_status(created)
            listen = f"127.0.0.1:{free_port()}"

            def start_cp() -> ControlPlane:
                return ControlPlane(tmp_path, listen, max_ttl=timedelta(seconds=6))

            cp = start_cp()
            async with asyncio.TaskGroup() as tg:
                cp_task = tg.create_task(cp.run())
                await asyncio.wait_for(cp.ready.wait(), 20)
                token_path = node_token_path(tmp_path, "node-1")
                source = ControlPlaneSource(
                    listen,
                    node="node-1",
                    node_id=node_id("172.18.0.11", "zt", "istio-system"),
                    token=lambda: token_path.read_text().strip(),
                    root_cert=cp.root_cert_path.read_bytes(),
                )
                store = StateStore()
                ready = asyncio.Event()
                src_task = tg.create_task(source.run(store.take_writer(), ready.set))
                await asyncio.wait_for(ready.wait(), 20)
                ident = "spiffe://cluster.local/ns/default/sa/web-sa"
                await eventually(lambda: source.certs.cached(ident) is not None, timeout=15.0)  # fetched ahead
                first = source.certs.cached(ident)
                assert first is not None

                cp_task.cancel()  # outage
                await eventually(lambda: source.client is not None and not source.client.connected, timeout=15.0)
                serials = {first.serial_number}
                # Past the half-life renewals fail; the still-valid certificate is kept and served.
                refresh_at = datetime.fromisoformat(source.certs.snapshot()[0]["next_refresh"])
                while datetime.now(UTC) < refresh_at + timedelta(seconds=0.6):
                    bundle = source.certs.cached(ident)
                    assert bundle is not None and bundle.is_valid_at()
                    serials.add(bundle.serial_number)
                    assert store.current.workload(created["metadata"]["uid"]) is not None
                    await asyncio.sleep(0.1)
                assert source.certs.cached(ident) is not None
                assert "UNAVAILABLE" in source.certs.snapshot()[0]["last_error"]  # a renewal did fail
                late = await api.create(pod("late", "node-1", "late-sa"))
                late["status"] = {
                    "phase": "Running",
                    "podIP": "10.244.1.8",
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
                await api.update_status(late)

                cp2 = start_cp()  # same state dir: same CA root and tokens
                cp_task2 = tg.create_task(cp2.run())
                await asyncio.wait_for(cp2.ready.wait(), 20)
                await eventually(lambda: store.current.workload(late["metadata"]["uid"]) is not None, timeout=30)
                late_id = "spiffe://cluster.local/ns/default/sa/late-sa"
                await eventually(lambda: source.certs.cached(late_id) is not None, timeout=15.0)
                await eventually(
                    lambda: (b := source.certs.cached(ident)) is not None and b.serial_number not in serials, timeout=10
                )
                src_task.cancel()
                cp_task2.cancel()
    finally:
        await api_srv.stop()
