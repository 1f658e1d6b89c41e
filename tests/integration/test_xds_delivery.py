"""Delta ADS delivery semantics over real gRPC on 127.0.0.1, driven by a raw client where the wire matters:
NACKs by error_detail alone, policies before the workloads naming them, named (on-demand) subscriptions
answered with the resource or a removal, and a fast re-sync after a control-plane outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from ambient.controlplane.xds_server import ResourceCache, XdsServer
from ambient.protocol.gen.istio.security import authorization_pb2 as sec
from ambient.protocol.gen.istio.workload import workload_pb2 as wl
from ambient.protocol.xds import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    AggregatedDiscoveryServiceStub,
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
)
from ambient.state.store import StateStore
from ambient.xds.client import XdsClient
from helpers import eventually

pytestmark = pytest.mark.timeout(60)
NODE = "ztunnel~10.0.0.1~zt.istio-system~istio-system.svc.cluster.local"


async def start(cache: ResourceCache, port: int = 0) -> tuple[XdsServer, grpc.aio.Server, int]:
    xds = XdsServer(cache)
    srv = grpc.aio.server()
    xds.register(srv)
    port = srv.add_insecure_port(f"127.0.0.1:{port}")
    await srv.start()
    return xds, srv, port


@pytest.fixture
async def served() -> AsyncIterator[tuple[ResourceCache, XdsServer, str]]:
    cache = ResourceCache()
    xds, srv, port = await start(cache)
    try:
        yield cache, xds, f"127.0.0.1:{port}"
    finally:
        await srv.stop(grace=0)


class Raw:
    """A hand-driven delta ADS stream."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.call = AggregatedDiscoveryServiceStub(self.channel).DeltaAggregatedResources()

    async def send(self, type_url: str, **kwargs: object) -> None:
        req = DeltaDiscoveryRequest(type_url=type_url, **kwargs)  # type: ignore[arg-type]
        req.node.id = NODE
        await self.call.write(req)

    async def read(self, timeout: float = 5.0) -> DeltaDiscoveryResponse:  # noqa: ASYNC109
        resp = await asyncio.wait_for(self.call.read(), timeout)
        assert isinstance(resp, DeltaDiscoveryResponse), resp
        return resp

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


def pod(uid: str, ip: bytes, *policies: str) -> wl.Address:
    return wl.Address(workload=wl.Workload(uid=uid, name=uid, namespace="shop", addresses=[ip],
                                           authorization_policies=list(policies)))


def allow(name: str) -> sec.Authorization:
    return sec.Authorization(name=name, namespace="shop", scope=sec.WORKLOAD_SELECTOR, action=sec.ALLOW)


async def test_error_detail_with_code_zero_is_a_nack(served: tuple[ResourceCache, XdsServer, str]) -> None:
    cache, xds, address = served
    cache.apply(ADDRESS_TYPE_URL, {"u1": pod("u1", b"\x0a\x00\x00\x01")})
    raw = Raw(address)
    try:
        await raw.send(ADDRESS_TYPE_URL)
        first = await raw.read()
        await raw.send(ADDRESS_TYPE_URL, response_nonce=first.nonce)  # ACK
        await eventually(lambda: xds.status()[0]["types"][ADDRESS_TYPE_URL]["synced"])
        cache.apply(ADDRESS_TYPE_URL, {"u2": pod("u2", b"\x0a\x00\x00\x02")})
        second = await raw.read()
        nack = DeltaDiscoveryRequest(type_url=ADDRESS_TYPE_URL, response_nonce=second.nonce)
        nack.error_detail.message = "workload u2: bad address"  # code left 0, as ztunnel sends it
        await raw.call.write(nack)
        await eventually(lambda: xds.status()[0]["types"][ADDRESS_TYPE_URL]["nacks"] == 1)
        st = xds.status()[0]["types"][ADDRESS_TYPE_URL]
        assert st["acked_version"] == first.system_version_info != second.system_version_info
        assert st["synced"] is False and st["nacked_version"] == second.system_version_info
        assert st["last_nack"] == "workload u2: bad address"
        # a later ACK clears the NACKED state
        cache.apply(ADDRESS_TYPE_URL, {"u2": None})
        third = await raw.read()
        await raw.send(ADDRESS_TYPE_URL, response_nonce=third.nonce)
        await eventually(lambda: xds.status()[0]["types"][ADDRESS_TYPE_URL]["synced"])
        assert xds.status()[0]["types"][ADDRESS_TYPE_URL]["nacked_version"] == ""
    finally:
        await raw.close()


async def test_a_policy_is_sent_before_the_workload_that_names_it_and_removed_after(
    served: tuple[ResourceCache, XdsServer, str],
) -> None:
    cache, _, address = served
    raw = Raw(address)
    try:
        await raw.send(ADDRESS_TYPE_URL)
        await raw.send(AUTHORIZATION_TYPE_URL)
        assert {(await raw.read()).type_url for _ in range(2)} == {ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL}
        # the control plane's pipeline applies Addresses, then Authorizations, in one flush
        cache.apply(ADDRESS_TYPE_URL, {"u1": pod("u1", b"\x0a\x00\x00\x01", "shop/allow-curl")})
        cache.apply(AUTHORIZATION_TYPE_URL, {"shop/allow-curl": allow("allow-curl")})
        got = [await raw.read(), await raw.read()]
        assert [(r.type_url, [x.name for x in r.resources]) for r in got] == [
            (AUTHORIZATION_TYPE_URL, ["shop/allow-curl"]), (ADDRESS_TYPE_URL, ["u1"])]
        # deleting it: the workload stops naming it first, then the policy goes
        cache.apply(ADDRESS_TYPE_URL, {"u1": pod("u1", b"\x0a\x00\x00\x01")})
        cache.apply(AUTHORIZATION_TYPE_URL, {"shop/allow-curl": None})
        got = [await raw.read(), await raw.read()]
        assert [(r.type_url, [x.name for x in r.resources], list(r.removed_resources)) for r in got] == [
            (ADDRESS_TYPE_URL, ["u1"], []), (AUTHORIZATION_TYPE_URL, [], ["shop/allow-curl"])]
    finally:
        await raw.close()


async def test_on_demand_names_are_answered_with_the_resource_or_a_removal(
    served: tuple[ResourceCache, XdsServer, str],
) -> None:
    cache, _, address = served
    cache.apply(ADDRESS_TYPE_URL, {"u1": pod("u1", bytes([10, 244, 1, 2])), "u3": pod("u3", bytes([10, 244, 1, 3]))})
    raw = Raw(address)
    try:
        # ztunnel with on-demand: subscribe and unsubscribe the wildcard in one request ("nothing yet")
        await raw.send(ADDRESS_TYPE_URL, resource_names_subscribe=["*"], resource_names_unsubscribe=["*"])
        first = await raw.read()
        assert list(first.resources) == [] and list(first.removed_resources) == []
        await raw.send(ADDRESS_TYPE_URL, response_nonce=first.nonce)
        await raw.send(ADDRESS_TYPE_URL, resource_names_subscribe=["/10.244.1.2", "/10.244.9.9"])
        answer = await raw.read()
        assert [(r.name, list(r.aliases)) for r in answer.resources] == [("u1", ["/10.244.1.2"])]
        assert list(answer.removed_resources) == ["/10.244.9.9"]  # nothing has it: said so, not silence
        # the unknown name appears later: pushed; an unrelated change is not; a subscribed one is
        cache.apply(ADDRESS_TYPE_URL, {"u9": pod("u9", bytes([10, 244, 9, 9]))})
        assert [r.name for r in (await raw.read()).resources] == ["u9"]
        cache.apply(ADDRESS_TYPE_URL, {"u3": pod("u3", bytes([10, 244, 1, 3]), "shop/x")})
        cache.apply(ADDRESS_TYPE_URL, {"u1": pod("u1", bytes([10, 244, 1, 2]), "shop/x")})
        assert [r.name for r in (await raw.read()).resources] == ["u1"]
        cache.apply(ADDRESS_TYPE_URL, {"u1": None})
        assert list((await raw.read()).removed_resources) == ["u1"]
    finally:
        await raw.close()


async def test_unresolved_names_are_watched_within_a_bound() -> None:
    cache = ResourceCache()
    xds = XdsServer(cache, max_unresolved_names=1)
    srv = grpc.aio.server()
    xds.register(srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    raw = Raw(f"127.0.0.1:{port}")
    try:
        await raw.send(ADDRESS_TYPE_URL, resource_names_subscribe=["*"], resource_names_unsubscribe=["*"])
        await raw.read()
        await raw.send(ADDRESS_TYPE_URL, resource_names_subscribe=["/10.244.1.1", "/10.244.1.2"])
        answer = await raw.read()
        assert sorted(answer.removed_resources) == ["/10.244.1.1", "/10.244.1.2"]  # both answered
        assert xds.status()[0]["types"][ADDRESS_TYPE_URL]["names_refused"] == 1
        cache.apply(ADDRESS_TYPE_URL, {"b": pod("b", bytes([10, 244, 1, 2]))})  # the unwatched one
        cache.apply(ADDRESS_TYPE_URL, {"a": pod("a", bytes([10, 244, 1, 1]))})
        assert [r.name for r in (await raw.read()).resources] == ["a"]
    finally:
        await raw.close()
        await srv.stop(grace=0)


async def test_resync_within_two_seconds_of_the_control_plane_serving_again() -> None:
    cache = ResourceCache()
    cache.apply(ADDRESS_TYPE_URL, {"u1": pod("u1", b"\x0a\x00\x00\x01")})
    _, srv, port = await start(cache)
    store = StateStore()
    client = XdsClient(f"127.0.0.1:{port}", store.take_writer(), node=NODE)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(client.run())
        await asyncio.wait_for(client.ready.wait(), 10)
        await srv.stop(grace=0)
        # a long outage: an uncapped exponential back-off would now wait many seconds between dials
        await asyncio.sleep(5.5)
        cache.apply(AUTHORIZATION_TYPE_URL, {"shop/deny": allow("deny")})  # changed meanwhile
        _, srv2, _ = await start(cache, port)
        serving = time.monotonic()
        try:
            await eventually(lambda: store.current.policy("shop/deny") is not None, timeout=10)
            took = time.monotonic() - serving
            print(f"\nre-sync {took:.2f}s after the control plane served again")
            assert took < 2.0, took
        finally:
            task.cancel()
            await srv2.stop(grace=0)
