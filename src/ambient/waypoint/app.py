"""The waypoint's composition root: `build(settings)` wires one waypoint proxy (identity, mesh state, L7
config, HBONE server, metrics/readiness) and `App.run()` serves it until `App.stop()`, then drains.

- Identity: a certificate for `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, either issued
  in-process by the local CA in `ca_dir` (created if absent), or - with `xds` - requested from the
  control plane's CA (`CreateCertificate`, no impersonation) with the pod's token (`token_file`);
  renewed at half its lifetime either way.
- Workload/service state: with `xds`, followed from the control plane (delta ADS, node id
  `waypoint~<pod ip>~<pod name>.<ns>~<ns>.svc.cluster.local`); else the `workloads`/`services` document
  of `static`. L7 config: HTTPRoutes and AuthorizationPolicies of `static`, or followed live from the
  cluster API (`api_socket`).
- Ready (`ready`, GET /healthz/ready) once the certificate, the xDS state and the L7 config arrived.
- Prints `waypoint listening on <ip>:<port>` on stdout once serving (port 0 picks a free port).
- `stop()` (SIGTERM/SIGINT through `core.process`): stop accepting at once, let live tunnels run up to
  `drain` seconds, return. Before serving, a stop ends the start-up at once.
- Workers (`workers` > 1, AMBIENT_WAYPOINT_WORKERS): the primary binds the HBONE address first, then starts
  and supervises the other processes, which share it through SO_REUSEPORT (`waypoint.workers`); on stop
  they drain beside it and it waits for them. A worker (`worker` set) is this same app with no TCP listener
  but the shared HBONE one (bound once it can serve) and admin + metrics on its private Unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ambient.waypoint.workers import WorkerRole

log = logging.getLogger("ambient.waypoint")


@dataclass(frozen=True)
class AppSettings:
    """Everything one waypoint process needs (the entry point fills it from flags and the pod's env)."""

    static: Path | None = None
    ca_dir: Path | None = None
    xds: str | None = None
    root_cert: Path | None = None
    token_file: Path | None = None
    server_name: str = "istiod.istio-system.svc"
    listen: tuple[str, int] = ("0.0.0.0", 15008)
    name: str = "waypoint"
    namespace: str = "default"
    service_account: str = "waypoint"
    trust_domain: str = "cluster.local"
    cluster_domain: str = "cluster.local"
    hbone_port: int = 15008
    api_socket: Path | None = None
    metrics: tuple[str, int] | None = None
    ready: tuple[str, int] | None = None
    drain: float = 5.0
    pod_ip: str = "0.0.0.0"
    pod_name: str = ""
    workers: int = 1  # processes serving the HBONE address (AMBIENT_WAYPOINT_WORKERS; see waypoint.workers)
    worker: WorkerRole | None = None  # set in a worker process (by its primary, through the environment)


def build(settings: AppSettings) -> App:
    """The waypoint for `settings` (not started: `await app.run()`)."""
    from ambient.hbone.allocator import tune_allocator
    from ambient.waypoint.errors import ConfigError

    tune_allocator()  # process-wide: megabyte frame buffers reused from the heap (see hbone.allocator)

    if settings.xds is None and settings.ca_dir is None:
        raise ConfigError("the waypoint needs a local CA directory or a control plane (xds)")
    if settings.xds is not None and settings.root_cert is None:
        raise ConfigError("a control plane (xds) needs the mesh root certificate that signed it")
    return App(settings)


class _Certs:
    """The waypoint's own certificate, re-issued from the local CA at half its lifetime."""

    def __init__(self, ca: Any, identity: str) -> None:
        self._ca = ca
        self._identity = identity
        self._bundle = ca.issue(identity)

    def __call__(self) -> Any:
        if datetime.now(UTC) >= self._bundle.refresh_at:
            self._bundle = self._ca.issue(self._identity)
        return self._bundle


class _ManagedCerts:
    """The waypoint's certificate from the control plane's CA (a `CertificateManager` renews it); hands out
    the newest valid bundle, or the last one while a renewal is pending."""

    def __init__(self, manager: Any, identity: str) -> None:
        self._manager = manager
        self._identity = identity
        self._last: Any = None

    async def first(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self._last = await self._manager.get(self._identity, timeout=timeout)

    def __call__(self) -> Any:
        bundle = self._manager.cached(self._identity)
        if bundle is not None:
            self._last = bundle
        return self._last


def node_id(namespace: str, pod_ip: str, pod_name: str) -> str:
    """The xDS node id of a waypoint pod."""
    return f"waypoint~{pod_ip}~{pod_name}.{namespace}~{namespace}.svc.cluster.local"


async def _unless_stopped(aw: Any, stop: asyncio.Event) -> bool:
    """Await `aw` unless `stop` is set first (then cancel it and return False)."""
    async with asyncio.TaskGroup() as tg:
        work = tg.create_task(aw)
        stopper = tg.create_task(stop.wait())
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopped = not work.done()
        work.cancel()
        stopper.cancel()
    return not stopped


async def _serve_app(app: Any, addr: tuple[str, int] | str, stack: Any) -> None:
    """Serve `app` on a TCP address (SO_REUSEPORT) or, given a path, on a Unix socket."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    if isinstance(addr, str):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(addr)  # left by a killed predecessor of this worker
        await web.UnixSite(runner, addr).start()
    else:
        await web.TCPSite(runner, addr[0], addr[1], reuse_port=True).start()


def _listener(addr: tuple[str, int]) -> socket.socket:
    """The HBONE listening socket. SO_REUSEPORT always: a new waypoint can start beside an old one, and a
    waypoint's worker processes each bind the same address (the kernel spreads connections over them)."""
    return socket.create_server(addr, backlog=128, reuse_port=True,
                                family=socket.AF_INET6 if ":" in addr[0] else socket.AF_INET)


class App:
    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        from contextlib import AsyncExitStack

        from ambient.hbone.client import HboneClient
        from ambient.hbone.server import HboneServer
        from ambient.identity.ca import LocalCA
        from ambient.runtime.admin import Readiness, add_metrics_routes, admin_app, metrics_app, readiness_app
        from ambient.state.store import StateStore
        from ambient.waypoint.config import ApiL7Source, L7Source, StaticL7Source, load_static
        from ambient.waypoint.server import Waypoint, WaypointSettings
        from ambient.waypoint.telemetry import WaypointMetrics
        from ambient.waypoint.workers import STOP_MARGIN, WorkerPool, format_addr

        args = self.settings
        role = args.worker
        identity = f"spiffe://{args.trust_domain}/ns/{args.namespace}/sa/{args.service_account}"
        store = StateStore()
        writer = store.take_writer()
        l7: L7Source = StaticL7Source()
        readiness = Readiness("config", "certificate", "state")
        certs: Any
        xds = manager = ca_client = None
        if args.xds is not None:
            from ambient.identity.ca_client import CaClient
            from ambient.identity.manager import CertificateManager
            from ambient.xds.client import XdsClient

            assert args.root_cert is not None  # build() checked
            root = args.root_cert.read_bytes()
            token_file = args.token_file

            def token() -> str | None:
                # Re-read on every call: the kubelet re-mints it when the container restarts.
                return token_file.read_text().strip() if token_file is not None else None

            ca_client = CaClient(args.xds, token=token, root_cert=root, server_name=args.server_name)
            client_ = ca_client
            manager = CertificateManager(lambda ident: client_.fetch(ident, impersonate=False))
            certs = _ManagedCerts(manager, identity)
            xds = XdsClient(args.xds, writer, node=node_id(args.namespace, args.pod_ip, args.pod_name or args.name),
                            token=token, root_cert=root, server_name=args.server_name)
        else:
            assert args.ca_dir is not None  # build() checked
            ca = LocalCA.load_or_create(args.ca_dir, trust_domain=args.trust_domain)
            certs = _Certs(ca, identity)
            readiness.done("certificate")
        if args.static is not None:
            config, delta = load_static(args.static)
            l7 = StaticL7Source(config)
            if delta is not None and xds is None:
                writer.apply(delta)
        if xds is None:
            readiness.done("state")
        api = None
        if args.api_socket is not None:
            from ambient.api.client import AsyncApiClient

            api = AsyncApiClient(args.api_socket)
            l7 = ApiL7Source(api, namespace=args.namespace)
        metrics = WaypointMetrics()
        stop = self._stop
        # The primary binds first (a busy address fails before anything starts) and hands the bound address
        # to its workers; a worker binds only once it can serve (see waypoint.workers).
        sock = _listener(args.listen) if role is None else None
        pool = WorkerPool(args.workers, sock.getsockname()[:2]) if sock is not None and args.workers > 1 else None
        grace = args.drain + STOP_MARGIN
        server: Any = None

        def dump() -> dict[str, Any]:
            """This process's view (/config_dump on an admin socket; the primary adds its workers')."""
            return {"process": {
                "index": role.index if role is not None else 0, "pid": os.getpid(), "identity": identity,
                "ready": readiness.ready, "pending": readiness.pending,
                "workloads": len(list(store.current.workloads())), "services": len(list(store.current.services())),
                "listen": format_addr(server.address[:2]) if server is not None else "",
                "hbone_connections": server.open_connections if server is not None else 0}}

        async def merged_metrics() -> bytes:
            own = metrics.exposition()
            return own if pool is None else await pool.metrics(own)

        async def merged_dump() -> dict[str, Any]:
            own = dump()
            return own if pool is None else await pool.config_dump(own)

        async with AsyncExitStack() as stack, asyncio.TaskGroup() as tg:
            if pool is not None:
                stack.callback(pool.cleanup)  # the last thing: after every worker stopped
                tg.create_task(pool.run(), name="workers")
            background = []
            if xds is not None and manager is not None and ca_client is not None:
                stack.push_async_callback(ca_client.aclose)
                background += [tg.create_task(manager.run(), name="certificates"),
                               tg.create_task(xds.run(), name="xds")]
                # Serve nothing before the waypoint has its identity and the mesh state (it would answer 503s);
                # a SIGTERM meanwhile still ends the process at once.
                started = await _unless_stopped(certs.first(), stop)
                if started:
                    log.info("certificate for %s issued by the control plane CA %s", identity, args.xds)
                    readiness.done("certificate")
                    started = await _unless_stopped(xds.ready.wait(), stop)
                if not started:
                    for task in background:
                        task.cancel()
                    if pool is not None:
                        await pool.stop(grace)
                    return
                log.info("xDS state from %s: %d workloads, %d services", args.xds,
                         len(list(store.current.workloads())), len(list(store.current.services())))
                readiness.done("state")
            client = await stack.enter_async_context(HboneClient())
            waypoint = Waypoint(
                certs=certs, state=lambda: store.current, l7=l7, client=client, metrics=metrics,
                settings=WaypointSettings(gateway_name=args.name, gateway_namespace=args.namespace,
                                          cluster_domain=args.cluster_domain, hbone_port=args.hbone_port),
            )
            stack.push_async_callback(waypoint.aclose)
            if role is not None:  # a worker: admin + metrics on its private socket only
                admin = admin_app(dump, self.stop)
                add_metrics_routes(admin, metrics.exposition)
                await _serve_app(admin, role.admin_socket, stack)
            else:
                if pool is not None:  # beside its workers' sockets: the merged dump, and its own metrics
                    admin = admin_app(merged_dump, self.stop)
                    add_metrics_routes(admin, metrics.exposition)
                    await _serve_app(admin, pool.admin_socket(0), stack)
                if args.metrics is not None:
                    await _serve_app(metrics_app(merged_metrics), args.metrics, stack)
                if args.ready is not None:
                    await _serve_app(readiness_app(readiness), args.ready, stack)
            follower = None
            if isinstance(l7, ApiL7Source):
                follower = tg.create_task(l7.run())
                await l7.ready.wait()
            if sock is None:  # a worker joins the listener group now that it can serve
                assert role is not None
                sock = _listener(role.listen)
            server = await stack.enter_async_context(HboneServer(sock, certs, waypoint.handle_connect))
            readiness.done("config")
            host, port = server.address[:2]
            if role is None:
                print(f"waypoint listening on {host}:{port} as {identity}", flush=True)
            else:
                log.info("waypoint worker %d listening on %s:%d as %s", role.index, host, port, identity)
            await stop.wait()
            log.info("waypoint: draining for up to %.1fs", args.drain)
            if pool is not None:  # the workers drain beside us, on their own SIGTERM
                tg.create_task(pool.stop(grace), name="workers-stop")
            await server.drain(args.drain)
            if follower is not None:
                follower.cancel()
            for task in background:
                task.cancel()
            if api is not None:
                await api.aclose()
