"""`python -m ambient.waypoint`: run one waypoint proxy process (the composition root of the package).

    python -m ambient.waypoint (--static FILE --ca-dir DIR | --xds ADDR --root-cert FILE [--token-file FILE])
        [--listen 0.0.0.0:15008] [--name waypoint] [--namespace default] [--service-account waypoint]
        [--api-socket PATH] [--hbone-port 15008] [--metrics 0.0.0.0:15020] [--ready 0.0.0.0:15021] [--drain 5]

- Identity: a certificate for `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, either issued
  in-process by the local CA in `--ca-dir` (created if absent), or - with `--xds` - requested from the
  control plane's CA (`CreateCertificate`, no impersonation) with the pod's token (`--token-file`, default
  env `AMBIENT_TOKEN_FILE`); renewed at half its lifetime either way.
- Workload/service state: with `--xds`, followed from the control plane (delta ADS, node id
  `waypoint~<POD_IP>~<POD_NAME>.<ns>~<ns>.svc.cluster.local`); else the `workloads`/`services` document
  of `--static`. L7 config: HTTPRoutes and AuthorizationPolicies of `--static`, or followed live from the
  cluster API with `--api-socket`.
- Ready (`--ready`, GET /healthz/ready) once the certificate, the xDS state and the L7 config arrived.
- Prints `waypoint listening on <ip>:<port>` on stdout once serving (port 0 picks a free port).
- SIGTERM/SIGINT: stop accepting at once, let live tunnels run up to `--drain` seconds, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ambient.core.errors import AmbientError

log = logging.getLogger("ambient.waypoint")

TOKEN_ENV = "AMBIENT_TOKEN_FILE"  # = controlplane.pod_tokens.TOKEN_ENV (not imported: keep start-up light)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ambient.waypoint", description="Run an ambient waypoint (L7 proxy).")
    p.add_argument("--static", type=Path, help="YAML: HTTPRoutes, AuthorizationPolicies and/or workload state")
    p.add_argument("--ca-dir", type=Path, help="local CA directory (root-cert.pem, root-key.pem)")
    p.add_argument("--xds", help="control plane address (xDS + CA), e.g. 172.18.0.3:15012")
    p.add_argument("--root-cert", type=Path, help="mesh root certificate (PEM) to verify the control plane")
    p.add_argument("--token-file", type=Path, default=os.environ.get(TOKEN_ENV) or None,
                   help=f"bearer token for the control plane (default: ${TOKEN_ENV})")
    p.add_argument("--server-name", default="istiod.istio-system.svc", help="control plane TLS server name")
    p.add_argument("--listen", type=_addr, default=("0.0.0.0", 15008), help="HBONE listen address")
    p.add_argument("--name", default="waypoint", help="the waypoint's Gateway name")
    p.add_argument("--namespace", default="default", help="the waypoint's namespace")
    p.add_argument("--service-account", default="waypoint")
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--hbone-port", type=int, default=15008, help="HBONE port of the endpoints' node proxies")
    p.add_argument("--api-socket", type=Path, help="follow HTTPRoutes/AuthorizationPolicies from this cluster API")
    p.add_argument("--metrics", type=_addr, help="Prometheus endpoint address (e.g. 0.0.0.0:15020)")
    p.add_argument("--ready", type=_addr, help="readiness endpoint address (e.g. 0.0.0.0:15021)")
    p.add_argument("--drain", type=float, default=5.0, help="seconds live tunnels may run after SIGTERM")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    if args.xds is None and args.ca_dir is None:
        p.error("one of --ca-dir (local CA) or --xds (control plane) is required")
    if args.xds is not None and args.root_cert is None:
        p.error("--xds needs --root-cert (the mesh root that signed the control plane's certificate)")
    return args


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


def node_id(namespace: str, name: str) -> str:
    """The xDS node id of a waypoint pod (from the pod's env, as the kubelet sets it)."""
    ip = os.environ.get("POD_IP") or os.environ.get("INSTANCE_IP") or "0.0.0.0"
    pod = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or name
    return f"waypoint~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"


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


async def _serve_app(app: Any, addr: tuple[str, int], stack: Any) -> None:
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.TCPSite(runner, addr[0], addr[1], reuse_port=True).start()


async def run(args: argparse.Namespace) -> None:
    from contextlib import AsyncExitStack

    from ambient.hbone.client import HboneClient
    from ambient.hbone.server import HboneServer
    from ambient.identity.ca import LocalCA
    from ambient.runtime.admin import Readiness, metrics_app, readiness_app
    from ambient.state.store import StateStore
    from ambient.waypoint.config import ApiL7Source, L7Source, StaticL7Source, load_static
    from ambient.waypoint.server import Waypoint, WaypointSettings
    from ambient.waypoint.telemetry import WaypointMetrics

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

        root = args.root_cert.read_bytes()
        token_file = args.token_file

        def token() -> str | None:
            # Re-read on every call: the kubelet re-mints it when the container restarts.
            return token_file.read_text().strip() if token_file is not None else None

        ca_client = CaClient(args.xds, token=token, root_cert=root, server_name=args.server_name)
        client_ = ca_client
        manager = CertificateManager(lambda ident: client_.fetch(ident, impersonate=False))
        certs = _ManagedCerts(manager, identity)
        xds = XdsClient(args.xds, writer, node=node_id(args.namespace, args.name), token=token, root_cert=root,
                        server_name=args.server_name)
    else:
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
        l7 = ApiL7Source(api)
    metrics = WaypointMetrics()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sock = socket.create_server(args.listen, backlog=128, reuse_port=True,
                                family=socket.AF_INET6 if ":" in args.listen[0] else socket.AF_INET)
    async with AsyncExitStack() as stack, asyncio.TaskGroup() as tg:
        background = []
        if xds is not None and manager is not None and ca_client is not None:
            stack.push_async_callback(ca_client.aclose)
            background += [tg.create_task(manager.run(), name="certificates"),
                           tg.create_task(xds.run(), name="xds")]
            # Serve nothing before the waypoint has its identity and the mesh state (it would answer 503s);
            # a SIGTERM meanwhile still ends the process at once.
            if not await _unless_stopped(certs.first(), stop):
                for task in background:
                    task.cancel()
                return
            log.info("certificate for %s issued by the control plane CA %s", identity, args.xds)
            readiness.done("certificate")
            if not await _unless_stopped(xds.ready.wait(), stop):
                for task in background:
                    task.cancel()
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
        server = await stack.enter_async_context(HboneServer(sock, certs, waypoint.handle_connect))
        if args.metrics is not None:
            await _serve_app(metrics_app(metrics.exposition), args.metrics, stack)
        if args.ready is not None:
            await _serve_app(readiness_app(readiness), args.ready, stack)
        follower = None
        if isinstance(l7, ApiL7Source):
            follower = tg.create_task(l7.run())
            await l7.ready.wait()
        readiness.done("config")
        host, port = server.address[:2]
        print(f"waypoint listening on {host}:{port} as {identity}", flush=True)
        await stop.wait()
        log.info("waypoint: draining for up to %.1fs", args.drain)
        await server.drain(args.drain)
        if follower is not None:
            follower.cancel()
        for task in background:
            task.cancel()
        if api is not None:
            await api.aclose()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s\t%(levelname)s\t%(name)s\t%(message)s")
    # access lines carry their own timestamp and level (the node proxy's format): print them as they are
    access = logging.getLogger("ambient.waypoint.access")
    plain = logging.StreamHandler(sys.stderr)
    plain.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(plain)
    access.propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call drowns the useful ones
    try:
        asyncio.run(run(args))
    except AmbientError as exc:
        sys.stderr.write(f"error: {exc.message}\n" + (f"hint: {exc.hint}\n" if exc.hint else ""))
        sys.exit(1)


if __name__ == "__main__":
    main()
