"""Control plane benchmark (not a timed test): `python -m ambient.bench.controlplane [workloads] [services]`.

Role: measure, in one process over real gRPC on 127.0.0.1, (1) translation of N pods / M services,
(2) initial sync time of one node proxy's xDS client (connect -> ready) and the memory its state store
holds, (3) p50/p99 time from an object change in the index to its application in the proxy's store
(includes the 10 ms coalescing debounce), (4) certificates issued per second through the gRPC CA
(client CSR generation included, 16 concurrent requests).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc

from ambient.controlplane.app import Pipeline
from ambient.controlplane.ca_server import CaServicer, CertificateAuthority, NodeTokens
from ambient.controlplane.index import MeshIndex
from ambient.controlplane.xds_server import ResourceCache, XdsServer
from ambient.identity.ca import LocalCA
from ambient.identity.ca_client import CaClient
from ambient.protocol.gen.istio.security import authorization_pb2 as sec
from ambient.protocol.gen.istio.workload import workload_pb2 as wl
from ambient.protocol.xds import ADDRESS_TYPE_URL
from ambient.state import convert
from ambient.state.model import Workload
from ambient.state.store import StateChange, StateDelta, StateStore
from ambient.xds.client import XdsClient


def _pod(i: int, services: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"pod-{i}",
            "namespace": f"ns-{i % 10}",
            "uid": f"uid-{i}",
            "labels": {"app": f"svc-{i % services}", "version": "v1"},
        },
        "spec": {"nodeName": f"node-{i % 2 + 1}", "serviceAccountName": f"sa-{i % 100}"},
        "status": {
            "podIP": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _service(j: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"svc-{j}", "namespace": f"ns-{j % 10}"},
        "spec": {
            "clusterIP": f"10.96.{(j >> 8) & 255}.{j & 255}",
            "selector": {"app": f"svc-{j}"},
            "ports": [{"port": 80, "targetPort": 8080}],
        },
    }


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def _store_memory(index: MeshIndex) -> int:
    """Bytes retained by a StateStore holding every resource (converted like the xDS client does)."""
    addresses = [wl.Address.FromString(a.SerializeToString()) for a in index.addresses.values()]
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        store = StateStore()
        values = [convert.address(a) for a in addresses]
        store.take_writer().apply(
            StateDelta(
                workloads=tuple(v for v in values if isinstance(v, Workload)),
                services=tuple(v for v in values if not isinstance(v, Workload)),  # type: ignore[misc]
                policies=tuple(
                    convert.authorization(sec.Authorization.FromString(p.SerializeToString()))
                    for p in index.authorizations.values()
                ),
            )
        )
        del values
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
        assert store.current is not None
        return used
    finally:
        tracemalloc.stop()


async def _run(workloads: int, services: int, changes: int, certs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"workloads": workloads, "services": services}
    index = MeshIndex()
    cache = ResourceCache()
    pipeline = Pipeline(index, cache)
    for ns in range(10):
        index.upsert("Namespace", {"metadata": {"name": f"ns-{ns}", "labels": {"istio.io/dataplane-mode": "ambient"}}})
    t0 = time.perf_counter()
    index.replace("Service", [_service(j) for j in range(services)])
    index.replace("Pod", [_pod(i, services) for i in range(workloads)])
    pipeline.flush()
    out["translate_s"] = round(time.perf_counter() - t0, 3)

    with tempfile.TemporaryDirectory() as tmp:
        ca = LocalCA.load_or_create(Path(tmp) / "ca")
        tokens = NodeTokens(tmp)
        token = tokens.ensure("node-1")
        authority = CertificateAuthority(ca, tokens, index.node_service_accounts, max_ttl=timedelta(hours=1))
        server = grpc.aio.server(options=[("grpc.max_send_message_length", 256 * 1024 * 1024)])
        XdsServer(cache).register(server)
        CaServicer(authority).register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            store = StateStore()
            applied: dict[str, float] = {}
            arrived = asyncio.Event()

            def on_change(change: StateChange) -> None:
                now = time.perf_counter()
                for uid in change.workloads_upserted:
                    applied[uid] = now
                arrived.set()

            store.subscribe(on_change)
            client = XdsClient(f"127.0.0.1:{port}", store.take_writer(), node="ztunnel~10.0.0.1~zt.istio-system~x")
            async with asyncio.TaskGroup() as tg:
                t1 = time.perf_counter()
                client_task = tg.create_task(client.run())
                await asyncio.wait_for(client.ready.wait(), 300)
                out["initial_sync_s"] = round(time.perf_counter() - t1, 3)
                out["client_resources"] = len(list(store.current.workloads())) + len(list(store.current.services()))
                pipe_task = tg.create_task(pipeline.run())
                latencies = []
                for k in range(changes):
                    i = (k * 7919) % workloads
                    pod = _pod(i, services)
                    pod["metadata"]["labels"]["version"] = f"v{k + 2}"
                    uid = pod["metadata"]["uid"]
                    applied.pop(uid, None)
                    start = time.perf_counter()
                    index.upsert("Pod", pod)
                    pipeline.mark_dirty()
                    while uid not in applied:
                        arrived.clear()
                        await arrived.wait()
                    latencies.append((applied[uid] - start) * 1000)
                out["change_p50_ms"] = round(statistics.median(latencies), 2)
                out["change_p99_ms"] = round(_pct(latencies, 0.99), 2)
                client_task.cancel()
                pipe_task.cancel()

            for i in range(16):  # identities the CA will accept for node-1
                index.upsert("Pod", {**_pod(i * 2, services)})
            index.flush()
            sas = sorted(index.node_service_accounts("node-1"))
            async with CaClient(f"127.0.0.1:{port}", token=token) as ca_client:
                sem = asyncio.Semaphore(16)

                async def one(n: int) -> None:
                    ns, sa = sas[n % len(sas)]
                    async with sem:
                        await ca_client.fetch(f"spiffe://cluster.local/ns/{ns}/sa/{sa}")

                t2 = time.perf_counter()
                async with asyncio.TaskGroup() as tg:
                    for n in range(certs):
                        tg.create_task(one(n))
                out["certs_per_s"] = round(certs / (time.perf_counter() - t2), 1)
        finally:
            await server.stop(grace=0)
    out["client_store_mb"] = round(_store_memory(index) / 1e6, 1)
    out["cache_addresses"] = cache.count(ADDRESS_TYPE_URL)
    return out


def run(workloads: int = 10_000, services: int = 1_000, *, changes: int = 200, certs: int = 300) -> dict[str, Any]:
    """Run the benchmark in a fresh event loop; returns the figures (see module docstring)."""
    return asyncio.run(_run(workloads, services, changes, certs))


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    result = run(*args)
    for key, value in result.items():
        print(f"{key:>18}: {value}")
