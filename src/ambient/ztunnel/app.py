"""The node proxy's composition root: `build(settings, sources)` builds every component once, wires
them, and `App.run()` runs them in ONE TaskGroup and shuts them down in order. Entry points (`ambient
ztunnel`, the local cluster's `ambient.cluster.node_proxy`) only turn their flags into `Settings` and
`Sources`, then run `App.run` under `core.process.run` with `App.stop` as the graceful stop.

Components and what they get (narrow capabilities):
- state: a `StateStore` whose single writer is the state source: the control plane's xDS client
  (`Sources.xds`, `ztunnel.xds_source`) or a static file (`Sources.static`). Data-path code only reads
  `store.current`.
- certificates: a `CertSource`: the control plane's CA (with `Sources.xds`) or a local CA (`Sources.ca_dir`).
- data path: `ProxyCore` (settings, state, certs, HBONE client pool, telemetry) handed to each pod proxy.
- pods: `InpodManager` fed by the `ZdsClient` (inpod.zds) (in-pod mode), or one shared-mode proxy.
- HTTP: admin 15000 (+ an optional Unix socket for `ambient zc`), metrics 15020, readiness 15021
  (ready once state and certificates are in), all with SO_REUSEPORT so a new proxy can start beside an
  old one.
- workers (`settings.workers` > 1, in-pod mode): a `WorkerRelay` starts the other processes and relays
  the agent's pods to them (`ztunnel.workers`); `/metrics` and `/config_dump` add theirs up. A worker
  process (`settings.worker` set) is this same app with its ZDS client pointed at the primary, no TCP
  HTTP listeners, and admin + metrics on its private Unix socket.

Shutdown (SIGTERM/SIGINT via `core.process`, POST /quitquitquit): stop taking pods, drain every pod
proxy (listeners closed at once, connections until the deadline, then cut), close the HBONE pool, stop
HTTP, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from ambient.hbone.client import HboneClient
from ambient.identity.certs import CertBundle
from ambient.inpod.zds import DEFAULT_SOCKET_PATH, ZdsClient
from ambient.inpod.zds_codec import WorkloadInfo
from ambient.runtime.admin import Readiness, add_metrics_routes, admin_app, metrics_app, readiness_app
from ambient.runtime.drain import Drain
from ambient.state.consistency import ConsistentChanges
from ambient.state.store import StateStore, StateWriter
from ambient.ztunnel import dnsproxy
from ambient.ztunnel.certs import CertSource
from ambient.ztunnel.config_dump import build_config_dump
from ambient.ztunnel.copy import tune_allocator
from ambient.ztunnel.errors import ConfigError
from ambient.ztunnel.inbound import hbone_handler, serve_plaintext
from ambient.ztunnel.inpod import InpodManager
from ambient.ztunnel.metrics import ProxyMetrics
from ambient.ztunnel.outbound import serve_outbound
from ambient.ztunnel.proxy import ListenerSpec, PodContext, PodScope, ProxyCore, WorkloadProxy
from ambient.ztunnel.settings import Settings
from ambient.ztunnel.shared import build_shared, local_workloads
from ambient.ztunnel.telemetry import AccessLog, Connections, Telemetry
from ambient.ztunnel.workers import WorkerRelay

log = logging.getLogger("ambient.ztunnel")

WORKERS_START_WAIT = 30.0  # the primary waits this long for its workers before taking pods from the agent


@dataclass(frozen=True)
class Sources:
    """Where state and certificates come from: the control plane (`xds`: xDS + CA on one address, with a
    bearer token file and its root certificate; the node id from `instance_ip`/`pod_name`/`pod_namespace`)
    or, standalone, a `static` state file and a local CA directory (`ca_dir`)."""

    xds: str | None = None
    token_file: Path | None = None
    root_cert: Path | None = None
    static: Path | None = None
    ca_dir: Path | None = None
    instance_ip: str = ""
    pod_name: str = ""
    pod_namespace: str = "istio-system"

    def check(self) -> None:
        if self.xds is None and (self.static is None or self.ca_dir is None):
            raise ConfigError("the node proxy needs a static state file and a CA directory, or a control plane")


def build(settings: Settings, sources: Sources, options: AppOptions | None = None) -> App:
    """The node proxy for `settings`, fed from `sources` (not started: `await app.run()`)."""
    sources.check()
    tune_allocator()  # process-wide: megabyte frame buffers reused from the heap (see ztunnel.copy)
    if sources.xds is not None:
        from ambient.xds.client import node_id
        from ambient.ztunnel.xds_source import ControlPlaneSource

        tf = sources.token_file
        source = ControlPlaneSource(
            sources.xds,
            node=settings.node,
            node_id=node_id(sources.instance_ip, sources.pod_name or f"ztunnel-{settings.node}",
                            sources.pod_namespace),
            token=(lambda: tf.read_text().strip()) if tf is not None else None,
            root_cert=sources.root_cert.read_bytes() if sources.root_cert is not None else None,
        )
        return App(settings, source, source.certs, options)
    from ambient.ztunnel.certs import LocalCaSource
    from ambient.ztunnel.static_config import StaticStateSource

    assert sources.static is not None and sources.ca_dir is not None
    return App(settings, StaticStateSource(sources.static), LocalCaSource.from_dir(sources.ca_dir), options)


class StateSource(Protocol):
    async def run(self, writer: StateWriter, ready: Callable[[], None]) -> None: ...


@dataclass
class AppOptions:
    zds_socket: str = DEFAULT_SOCKET_PATH
    shared_workloads: tuple[str, ...] = ()
    cert_refresh_interval: float = 30.0


def build_pod_proxy(ctx: PodContext, drain: Drain, specs: list[ListenerSpec] | None = None,
                    server_certs: Callable[[str], Callable[[], CertBundle]] | None = None) -> WorkloadProxy:
    """The listeners and handlers of one pod (in-pod defaults) or of the shared scope."""
    settings = ctx.settings
    if specs is None:
        t = settings.transparent_inbound
        specs = [
            ListenerSpec("outbound", "0.0.0.0", settings.ports.outbound, False),
            ListenerSpec("inbound_plaintext", "0.0.0.0", settings.ports.inbound_plaintext, t),
            ListenerSpec("inbound", "0.0.0.0", settings.ports.inbound, t),
        ]
        if settings.dns_proxy:
            specs += [
                ListenerSpec("dns", "127.0.0.1", settings.ports.dns, False, freebind=True),
                ListenerSpec("dns", "127.0.0.1", settings.ports.dns, False, udp=True, freebind=True),
            ]
    if server_certs is None:
        scope = ctx.scope
        assert isinstance(scope, PodScope)
        certs = ctx.core.certs

        def pod_certs(_host: str) -> Callable[[], CertBundle]:
            def current() -> CertBundle:
                identity = scope.identity(ctx.core.view())
                bundle = certs.cached(identity)
                if bundle is None:
                    raise ConfigError(f"no certificate yet for {identity}")
                return bundle

            return current

        server_certs = pod_certs
    return WorkloadProxy(
        ctx=ctx,
        drain=drain,
        specs=specs,
        handlers={"outbound": serve_outbound, "inbound_plaintext": serve_plaintext, "dns": dnsproxy.serve_tcp},
        udp_handlers={"dns": dnsproxy.serve_udp},
        hbone_handler=hbone_handler(ctx),
        server_certs=server_certs,
    )


class App:
    def __init__(
        self, settings: Settings, state_source: StateSource, certs: CertSource, options: AppOptions | None = None
    ) -> None:
        self.options = options or AppOptions()
        if settings.worker is not None:  # a worker: pods from the primary, HTTP on a private socket only
            if settings.mode != "inpod":
                raise ConfigError("node proxy workers run in in-pod mode only")
            self.options = replace(self.options, zds_socket=settings.worker.zds_socket)
            settings = replace(settings, serve_http=False, admin_socket=settings.worker.admin_socket, workers=1)
        elif settings.workers > 1 and settings.mode != "inpod":
            raise ConfigError(f"AMBIENT_ZTUNNEL_WORKERS={settings.workers} needs in-pod mode",
                              hint="shared mode runs one process; unset AMBIENT_ZTUNNEL_WORKERS")
        self.settings = settings
        self.store = StateStore()
        self.state_source = state_source
        self.readiness = Readiness("state", "certificates")
        self.telemetry = Telemetry(ProxyMetrics(), AccessLog(settings.log_format), Connections())
        self.core = ProxyCore(settings, self.store, certs, HboneClient(), self.telemetry)
        self.manager: InpodManager | None = None
        self.shared: WorkloadProxy | None = None
        self.zds: ZdsClient | None = None
        self.relay: WorkerRelay | None = None
        self._stop = asyncio.Event()
        self._state_ready = asyncio.Event()
        self._runners: list[web.AppRunner] = []

    # -- control ---------------------------------------------------------------------------------------
    def stop(self) -> None:
        if not self._stop.is_set():
            log.info("shutdown requested: draining (deadline %.1fs)", self.settings.drain_deadline)
            self._stop.set()

    async def merged_config_dump(self) -> dict[str, Any]:
        own = self.config_dump()
        return own if self.relay is None else await self.relay.config_dump(own)

    async def merged_metrics(self) -> bytes:
        own = self.telemetry.metrics.exposition()
        return own if self.relay is None else await self.relay.metrics(own)

    def config_dump(self) -> dict[str, Any]:
        pods: dict[str, dict[str, Any]] = {}
        if self.manager is not None:
            for uid, pod in self.manager.pods.items():
                pods[uid] = {
                    "state": "Draining" if pod.drain.draining else "Up",
                    "info": {"name": pod.scope.name, "namespace": pod.scope.namespace,
                             "serviceAccount": pod.scope.service_account},
                }
        return build_config_dump(self.core.view(), self.core.certs.bundles(), pods, self.telemetry.connections)

    # -- run -------------------------------------------------------------------------------------------
    async def run(self) -> None:
        writer = self.store.take_writer()
        # live revocation, judged on a consistent view (never on a workload whose policies are half-arrived)
        unsubscribe = self.store.subscribe(ConsistentChanges(self.telemetry.connections.revoke))
        try:
            async with asyncio.TaskGroup() as tg:
                state_task = tg.create_task(self.state_source.run(writer, self._on_state_ready), name="state")
                await self._wait_state(state_task)
                self.readiness.done("certificates")  # the source is loaded; per-pod certs are fetched on add
                refresher = tg.create_task(self._refresh_certs(), name="cert-refresh")
                await self._start_http()
                pods_task = await self._start_pods(tg)
                if self.settings.worker is None:
                    log.info("node proxy ready: mode=%s node=%s workers=%d", self.settings.mode,
                             self.settings.node or "-", self.settings.workers)
                else:
                    log.info("node proxy worker %d ready: node=%s", self.settings.worker.index,
                             self.settings.node or "-")
                # Everything built at start-up (modules, state, TLS contexts) lives as long as the process:
                # move it out of the collector's generations so a full collection does not rescan it
                # while connections are being served (fewer and shorter GC pauses on the hot path).
                gc.collect()
                gc.freeze()
                await self._stop.wait()
                # shutdown, in order
                if pods_task is not None:
                    pods_task.cancel()  # stop taking pods from the agent
                if self.relay is not None:  # workers drain beside us, on their own SIGTERM
                    tg.create_task(self.relay.stop(self.settings.drain_deadline + 5.0), name="workers-stop")
                await self._drain_pods()
                state_task.cancel()
                refresher.cancel()
        finally:
            unsubscribe()
            await self.core.hbone.close()
            for runner in self._runners:
                await runner.cleanup()
            log.info("node proxy stopped")

    def _on_state_ready(self) -> None:
        self.readiness.done("state")
        self._state_ready.set()

    async def _wait_state(self, state_task: asyncio.Task[None]) -> None:
        while not self._state_ready.is_set():
            if state_task.done():
                state_task.result()
                raise ConfigError("the state source stopped before delivering any state")
            await asyncio.sleep(0.01)

    async def _start_pods(self, tg: asyncio.TaskGroup) -> asyncio.Task[None] | None:
        if self.settings.mode == "inpod":
            manager = self.manager = InpodManager(self.core, tg, lambda ctx, drain: build_pod_proxy(ctx, drain))
            on_add, on_del, on_snapshot_done = manager.on_add, manager.on_del, manager.on_snapshot_done
            if self.settings.workers > 1:
                relay = self.relay = WorkerRelay(self.settings.workers, self.options.zds_socket, manager.live)
                tg.create_task(relay.run(), name="workers")
                await relay.wait_connected(WORKERS_START_WAIT)

                async def on_add(uid: str, info: WorkloadInfo, netns_fd: int) -> None:
                    await manager.on_add(uid, info, netns_fd)
                    await relay.add(uid, info, netns_fd)

                async def on_del(uid: str) -> None:
                    await manager.on_del(uid)
                    await relay.delete(uid)

                async def on_snapshot_done(keep: frozenset[str]) -> None:
                    gone = [uid for uid in manager.pods if uid not in keep]
                    await manager.on_snapshot_done(keep)
                    for uid in gone:
                        await relay.delete(uid)

            self.zds = ZdsClient(self.options.zds_socket, on_add=on_add, on_del=on_del,
                                 on_snapshot_done=on_snapshot_done)
            log.info("in-pod mode: connecting to the node agent at %s", self.options.zds_socket)
            return tg.create_task(self.zds.run(), name="zds")
        workloads = local_workloads(self.core, self.options.shared_workloads)
        for wl in workloads:
            await self.core.certs.fetch(wl.identity)
        drain = Drain("shared", self.settings.drain_deadline)
        self.shared = build_shared(self.core, workloads, drain, build_pod_proxy)
        tg.create_task(self.shared.run(), name="shared")
        await self.shared.started
        return None

    async def _drain_pods(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        if self.manager is not None:
            tasks += self.manager.drain_all()
        if self.shared is not None:
            self.shared.drain.start()
        # the pod tasks finish by themselves (deadline, then cut); the TaskGroup waits for them
        del tasks

    async def _refresh_certs(self) -> None:
        while True:
            await asyncio.sleep(self.options.cert_refresh_interval)
            now = datetime.now(UTC)
            for bundle in list(self.core.certs.bundles()):
                if now >= bundle.refresh_at:
                    try:
                        await self.core.certs.fetch(bundle.identity.uri)
                    except Exception as exc:  # keep the current certificate until it expires
                        log.warning("certificate renewal for %s failed: %s", bundle.identity, exc)

    async def _start_http(self) -> None:
        s = self.settings
        admin = admin_app(self.merged_config_dump, self.stop)
        if s.worker is not None:  # the primary reads a worker's metrics here
            add_metrics_routes(admin, self.telemetry.metrics.exposition)
        sites: list[tuple[web.Application, str, int | None, str | None]] = []
        if s.serve_http:
            sites += [
                (admin, s.admin_host, s.ports.admin, None),
                (metrics_app(self.merged_metrics), s.stats_host, s.ports.metrics, None),
                (readiness_app(self.readiness), s.stats_host, s.ports.readiness, None),
            ]
        if s.admin_socket:
            sites.append((admin, "", None, s.admin_socket))
        runners: dict[int, web.AppRunner] = {}
        for app, host, port, path in sites:
            runner = runners.get(id(app))
            if runner is None:
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                runners[id(app)] = runner
                self._runners.append(runner)
            if path is not None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                await web.UnixSite(runner, path).start()
                log.info("admin listening on unix:%s", path)
            else:
                await web.TCPSite(runner, host, port, reuse_port=True).start()
                log.info("listener established address=%s:%d component=http", host, port)
