"""`python -m ambient.gateway --name GW --namespace NS --api-socket PATH [--ready 0.0.0.0:15021]
[--classic-labels k=v,... --xds ADDR --root-cert FILE [--service-account SA]]`: run one ingress gateway
(the composition root of the package).

Gateway API mode: follows the Gateway `NS/GW`, its HTTPRoutes, TLS Secrets and Services; the pod is captured
by its node proxy, which carries the traffic over HBONE. Classic mode (`--classic-labels`, the pod's
labels): follows the networking.istio.io Gateways selecting those labels and the VirtualServices bound to
them; the pod is not captured, so the gateway gets its own certificate from the control plane's CA (pod
token in `$AMBIENT_TOKEN_FILE`) and the workload state over xDS, and speaks HBONE itself, as Istio's
ingress does. Listener ports follow the config (bound and closed as Gateways change); ready on `--ready`
(GET /healthz/ready) once the config (and in classic mode certificate and state) arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from ambient.core.errors import AmbientError

log = logging.getLogger("ambient.gateway")


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def run(args: argparse.Namespace) -> None:
    from aiohttp import web

    from ambient.api.client import AsyncApiClient
    from ambient.gateway.config import ApiConfigSource
    from ambient.gateway.metrics import GatewayMetrics
    from ambient.gateway.server import Gateway
    from ambient.runtime.admin import Readiness, metrics_app, readiness_app

    classic = _labels(args.classic_labels) if args.classic_labels else None
    readiness = Readiness("config", "listeners", *(("certificate", "state") if classic is not None else ()))
    stop = asyncio.Event()
    changed = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack, asyncio.TaskGroup() as tg:
        api = await stack.enter_async_context(AsyncApiClient(args.api_socket))
        source = ApiConfigSource(api, args.name, args.namespace, lambda _cfg: changed.set(), classic_labels=classic)
        background = [tg.create_task(source.run(), name="config")]
        if args.ready is not None:
            runner = web.AppRunner(readiness_app(readiness), access_log=None, handle_signals=False)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, args.ready[0], args.ready[1], reuse_port=True).start()
        # the gateway's workload and identity, as its Deployment and ServiceAccount are named
        workload = args.name if classic is not None else f"{args.name}-istio"
        account = args.service_account if classic is not None else f"{args.name}-istio"
        metrics = GatewayMetrics(workload, args.namespace, f"spiffe://cluster.local/ns/{args.namespace}/sa/{account}")
        if args.metrics is not None:
            prom = web.AppRunner(metrics_app(metrics.exposition), access_log=None, handle_signals=False)
            await prom.setup()
            stack.push_async_callback(prom.cleanup)
            await web.TCPSite(prom, args.metrics[0], args.metrics[1], reuse_port=True).start()
        dialer = None
        if classic is not None:
            dialer = await _hbone_dialer(args, stack, tg, background, readiness)
        await source.ready.wait()
        readiness.done("config")
        gateway = Gateway(args.name, args.namespace, lambda: source.current, dialer=dialer, host=args.host,
                          metrics=metrics)
        stack.push_async_callback(gateway.aclose)
        warned: dict[str, str] = {}
        try:
            while True:
                changed.clear()
                for name, problem in source.current.problems.items():
                    if warned.get(name) != problem:
                        log.warning("gateway %s/%s: listener %s not served: %s", args.namespace, args.name, name,
                                    problem)
                warned = dict(source.current.problems)
                ports = await gateway.sync_listeners()
                if "listeners" in readiness.pending:
                    readiness.done("listeners")
                    print(f"gateway {args.namespace}/{args.name} listening on ports "
                          f"{', '.join(map(str, ports)) or '(none yet)'}", flush=True)
                waiter = asyncio.ensure_future(changed.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                if stop.is_set():
                    break
        finally:
            for task in background:
                task.cancel()


def _labels(text: str) -> dict[str, str]:
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--classic-labels: expected key=value[,key=value...], got {text!r}")
        out[key.strip()] = value.strip()
    return out


async def _hbone_dialer(args: argparse.Namespace, stack: Any, tg: asyncio.TaskGroup, background: list[Any],
                        readiness: Any) -> Any:
    """Certificate (control plane CA, pod token) + workload state (xDS) + HBONE client, for a gateway pod
    the node proxies do not capture."""
    from ambient.gateway.upstream import HboneDialer
    from ambient.hbone.client import HboneClient
    from ambient.identity.ca_client import CaClient
    from ambient.identity.manager import CertificateManager
    from ambient.state.store import StateStore
    from ambient.xds.client import XdsClient

    if args.xds is None or args.root_cert is None:
        raise SystemExit("--classic-labels needs --xds and --root-cert (the gateway speaks HBONE itself)")
    identity = f"spiffe://cluster.local/ns/{args.namespace}/sa/{args.service_account}"
    root = args.root_cert.read_bytes()
    token_file = args.token_file

    def token() -> str | None:
        return token_file.read_text().strip() if token_file is not None else None

    ca = CaClient(args.xds, token=token, root_cert=root)
    stack.push_async_callback(ca.aclose)
    manager = CertificateManager(lambda ident: ca.fetch(ident, impersonate=False))
    store = StateStore()
    pod_ip = os.environ.get("POD_IP") or os.environ.get("INSTANCE_IP") or "0.0.0.0"
    pod = os.environ.get("POD_NAME") or args.name
    xds = XdsClient(args.xds, store.take_writer(), node=f"router~{pod_ip}~{pod}.{args.namespace}~"
                    f"{args.namespace}.svc.cluster.local", token=token, root_cert=root)
    background += [tg.create_task(manager.run(), name="certificates"), tg.create_task(xds.run(), name="xds")]
    latest: list[Any] = [await manager.get(identity)]
    log.info("certificate for %s issued by the control plane CA %s", identity, args.xds)
    readiness.done("certificate")
    await xds.ready.wait()
    readiness.done("state")

    def certs() -> Any:
        bundle = manager.cached(identity)
        if bundle is not None:
            latest[0] = bundle
        return latest[0]

    def source() -> Any:
        from ipaddress import ip_address

        return store.current.workload_by_ip(ip_address(pod_ip)) if pod_ip != "0.0.0.0" else None

    client = await stack.enter_async_context(HboneClient())
    return HboneDialer(client=client, certs=certs, state=lambda: store.current, source=source)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ambient.gateway", description="Run an ambient ingress gateway.")
    p.add_argument("--name", required=True, help="the Gateway's name")
    p.add_argument("--namespace", default="default", help="the Gateway's namespace")
    p.add_argument("--api-socket", required=True, type=Path, help="the cluster API's Unix socket")
    p.add_argument("--host", default="0.0.0.0", help="address the listeners bind")
    p.add_argument("--ready", type=_addr, help="readiness endpoint address (e.g. 0.0.0.0:15021)")
    p.add_argument("--metrics", type=_addr, help="Prometheus metrics address (e.g. 0.0.0.0:15020: "
                   "/stats/prometheus)")
    p.add_argument("--classic-labels", help="classic Istio ingress: the pod's labels (k=v,...) that "
                   "networking.istio.io Gateways select")
    p.add_argument("--xds", help="control plane address (xDS + CA), classic mode")
    p.add_argument("--root-cert", type=Path, help="mesh root certificate (PEM), classic mode")
    p.add_argument("--token-file", type=Path, default=os.environ.get("AMBIENT_TOKEN_FILE") or None,
                   help="the pod's token for the control plane (default: $AMBIENT_TOKEN_FILE)")
    p.add_argument("--service-account", default="istio-ingressgateway-service-account")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s\t%(levelname)s\t%(name)s\t%(message)s")
    access = logging.getLogger("ambient.gateway.access")
    plain = logging.StreamHandler(sys.stderr)
    plain.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(plain)
    access.propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        asyncio.run(run(args))
    except AmbientError as exc:
        sys.stderr.write(f"error: {exc.message}\n" + (f"hint: {exc.hint}\n" if exc.hint else ""))
        sys.exit(1)


if __name__ == "__main__":
    main()
