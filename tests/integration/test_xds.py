"""Delta ADS over real gRPC on 127.0.0.1: server (controlplane.xds_server) + client (ztunnel.xds_client)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from ambient.controlplane.app import Pipeline
from ambient.controlplane.index import MeshIndex
from ambient.controlplane.xds_server import ResourceCache, XdsServer
from ambient.protocol.gen.istio.security import authorization_pb2 as sec
from ambient.protocol.gen.istio.workload import workload_pb2 as wl
from ambient.protocol.xds import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    AggregatedDiscoveryServiceStub,
    DeltaDiscoveryRequest,
)
from ambient.state.store import StateStore
from ambient.xds.client import XdsClient, node_id
from helpers import eventually

pytestmark = pytest.mark.timeout(60)


@dataclass
class Server:
    cache: ResourceCache
    xds: XdsServer
    address: str
    grpc: grpc.aio.Server


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    cache = ResourceCache()
    xds = XdsServer(cache)
    srv = grpc.aio.server()
    xds.register(srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        yield Server(cache, xds, f"127.0.0.1:{port}", srv)
    finally:
        await srv.stop(grace=0)


def workload(uid: str, ip: bytes, name: str = "w") -> wl.Address:
    return wl.Address(workload=wl.Workload(uid=uid, name=name, namespace="default", addresses=[ip]))


def service(name: str, vip: bytes) -> wl.Address:
    host = f"{name}.default.svc.cluster.local"
    return wl.Address(
        service=wl.Service(name=name, namespace="default", hostname=host, addresses=[wl.NetworkAddress(address=vip)])
    )


async def test_client_sees_adds_and_removals(server: Server) -> None:
    server.cache.apply(ADDRESS_TYPE_URL, {"u1": workload("u1", b"\x0a\x00\x00\x01")})
    store = StateStore()
    client = XdsClient(server.address, store.take_writer(), node=node_id("10.0.0.9", "zt", "istio-system"))
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(client.run())
        await asyncio.wait_for(client.ready.wait(), 10)
        assert store.current.workload("u1") is not None
        # add a service + a policy, remove the workload
        server.cache.apply(ADDRESS_TYPE_URL, {"default/s.default.svc.cluster.local": service("s", b"\x0a\x60\x00\x01")})
        server.cache.apply(
            AUTHORIZATION_TYPE_URL, {"default/p": sec.Authorization(name="p", namespace="default", action=sec.DENY)}
        )
        await eventually(lambda: store.current.policy("default/p") is not None)
        await eventually(lambda: store.current.service("default/s.default.svc.cluster.local") is not None)
        server.cache.apply(ADDRESS_TYPE_URL, {"u1": None})
        await eventually(lambda: store.current.workload("u1") is None)
        status = server.xds.status()
        assert len(status) == 1 and status[0]["node_id"] == client.node
        assert status[0]["types"][ADDRESS_TYPE_URL]["synced"]
        task.cancel()


async def test_nack_is_logged_and_not_resent(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    """A client NACKs (bad address bytes); the server logs it and does not push that version again."""
    bad = wl.Address(workload=wl.Workload(uid="bad", addresses=[b"\x01\x02\x03"]))
    server.cache.apply(ADDRESS_TYPE_URL, {"bad": bad})
    async with grpc.aio.insecure_channel(server.address) as ch:
        call = AggregatedDiscoveryServiceStub(ch).DeltaAggregatedResources()
        req = DeltaDiscoveryRequest(type_url=ADDRESS_TYPE_URL)
        req.node.id = "ztunnel~10.0.0.1~zt.istio-system~istio-system.svc.cluster.local"
        with caplog.at_level(logging.WARNING, logger="ambient.controlplane.xds_server"):
            await call.write(req)
            resp = await asyncio.wait_for(call.read(), 5)
            assert [r.name for r in resp.resources] == ["bad"]
            nack = DeltaDiscoveryRequest(type_url=ADDRESS_TYPE_URL, response_nonce=resp.nonce)
            nack.error_detail.code = 3
            nack.error_detail.message = "address of 3 bytes"
            await call.write(nack)
            # No re-send of the same version: nothing arrives ...
            async with asyncio.TaskGroup() as tg:
                pending = tg.create_task(call.read())
                done, _ = await asyncio.wait({pending}, timeout=0.5)
                assert not done
                assert any("NACK" in r.message and "address of 3 bytes" in r.message for r in caplog.records)
                st = server.xds.status()[0]["types"][ADDRESS_TYPE_URL]
                assert st["nacks"] == 1 and st["last_nack"] == "address of 3 bytes"
                # ... until something changes: then only the change is sent.
                server.cache.apply(ADDRESS_TYPE_URL, {"u2": workload("u2", b"\x0a\x00\x00\x02")})
                resp2 = await asyncio.wait_for(pending, 5)
            assert [r.name for r in resp2.resources] == ["u2"]
        call.cancel()


async def test_real_client_nacks_bad_resource_and_keeps_state(server: Server) -> None:
    server.cache.apply(ADDRESS_TYPE_URL, {"u1": workload("u1", b"\x0a\x00\x00\x01")})
    store = StateStore()
    client = XdsClient(server.address, store.take_writer(), node="ztunnel~1.1.1.1~a.b~b.svc.cluster.local")
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(client.run())
        await asyncio.wait_for(client.ready.wait(), 10)
        server.cache.apply(
            ADDRESS_TYPE_URL,
            {
                "u3": workload("u3", b"\x0a\x00\x00\x03"),
                "bad": wl.Address(workload=wl.Workload(uid="bad", addresses=[b"\x01"])),
            },
        )
        await eventually(lambda: server.xds.status()[0]["types"][ADDRESS_TYPE_URL]["nacks"] == 1)
        assert client.types[ADDRESS_TYPE_URL].nacks == 1
        assert store.current.workload("u3") is None  # the whole response was refused
        assert store.current.workload("u1") is not None
        task.cancel()


async def test_reconnect_with_initial_versions_gets_only_the_diff(server: Server) -> None:
    for i in range(20):
        server.cache.apply(ADDRESS_TYPE_URL, {f"u{i}": workload(f"u{i}", bytes([10, 0, 0, i + 1]))})
    store = StateStore()
    client = XdsClient(server.address, store.take_writer(), node="ztunnel~1.1.1.1~a.b~b.svc.cluster.local")
    received: list[int] = []
    client.on_applied = lambda t, n: received.append(n) if t == ADDRESS_TYPE_URL else None
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(client.run())
        await asyncio.wait_for(client.ready.wait(), 10)
        assert received == [20]
        # Control plane goes away; changes happen meanwhile; it comes back on the same port.
        port = server.address.rsplit(":", 1)[1]
        await server.grpc.stop(grace=0)
        await eventually(lambda: not client.connected)
        assert len(list(store.current.workloads())) == 20  # last state kept while disconnected
        server.cache.apply(ADDRESS_TYPE_URL, {"u0": None, "u1": workload("u1", b"\x0a\x00\x01\x01", name="changed")})
        server.cache.apply(ADDRESS_TYPE_URL, {"new": workload("new", b"\x0a\x00\x02\x01")})
        xds2 = XdsServer(server.cache)  # a fresh server (a restarted control plane) over the same content
        srv2 = grpc.aio.server()
        xds2.register(srv2)
        srv2.add_insecure_port(f"127.0.0.1:{port}")
        await srv2.start()
        try:
            await eventually(lambda: store.current.workload("new") is not None, timeout=20)
            await eventually(lambda: store.current.workload("u0") is None)
            assert store.current.workload("u1").name == "changed"  # type: ignore[union-attr]
            # exactly 1 changed + 1 new + 1 removal were sent, not the 20 unchanged
            assert received[-1] == 3, received
            assert len(list(store.current.workloads())) == 20
        finally:
            task.cancel()
            await srv2.stop(grace=0)


async def test_many_clients_and_pipeline_from_index(server: Server) -> None:
    index = MeshIndex()
    pipe = Pipeline(index, server.cache)
    stores = [StateStore() for _ in range(8)]
    clients = [
        XdsClient(server.address, s.take_writer(), node=f"ztunnel~10.0.0.{i}~z{i}.istio-system~x")
        for i, s in enumerate(stores)
    ]
    pod = {
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-web", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-1"},
        "status": {"podIP": "10.244.1.5", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(c.run()) for c in clients] + [tg.create_task(pipe.run())]
        for c in clients:
            await asyncio.wait_for(c.ready.wait(), 10)
        index.upsert("Pod", pod)
        pipe.mark_dirty()
        await eventually(lambda: all(s.current.workload("uid-web") is not None for s in stores))
        index.delete("Pod", pod)
        pipe.mark_dirty()
        await eventually(lambda: all(s.current.workload("uid-web") is None for s in stores))
        assert len(server.xds.status()) == 8
        for t in tasks:
            t.cancel()
