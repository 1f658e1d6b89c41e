"""`python -m ambient.gateway --name GW --namespace NS --api-socket PATH [--ready 0.0.0.0:15021]`: run one
ingress gateway (the composition root of the package).

Follows the Gateway `NS/GW`, the HTTPRoutes, TLS Secrets and Services from the cluster API, binds its
listener ports once the first config arrived, reports ready on `--ready` (GET /healthz/ready) once
listening, prints `gateway listening on ports ...` and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from ambient.core.errors import AmbientError

log = logging.getLogger("ambient.gateway")


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def run(args: argparse.Namespace) -> None:
    from aiohttp import web

    from ambient.api.client import AsyncApiClient
    from ambient.gateway.config import ApiConfigSource
    from ambient.gateway.server import Gateway
    from ambient.runtime.admin import Readiness, readiness_app

    readiness = Readiness("config", "listeners")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncApiClient(args.api_socket) as api, asyncio.TaskGroup() as tg:
        source = ApiConfigSource(api, args.name, args.namespace)
        follower = tg.create_task(source.run(), name="config")
        runner = None
        if args.ready is not None:
            runner = web.AppRunner(readiness_app(readiness), access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, args.ready[0], args.ready[1], reuse_port=True).start()
        await source.ready.wait()
        readiness.done("config")
        for name, problem in source.current.problems.items():
            log.warning("gateway %s/%s: listener %s not served: %s", args.namespace, args.name, name, problem)
        gateway = Gateway(args.name, args.namespace, lambda: source.current, upstream_idle=args.upstream_idle)
        try:
            ports = await gateway.start(args.host)
            readiness.done("listeners")
            print(f"gateway {args.namespace}/{args.name} listening on ports {', '.join(map(str, ports))}",
                  flush=True)
            await stop.wait()
        finally:
            await gateway.aclose()
            if runner is not None:
                await runner.cleanup()
            follower.cancel()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ambient.gateway", description="Run an ambient ingress gateway.")
    p.add_argument("--name", required=True, help="the Gateway's name")
    p.add_argument("--namespace", default="default", help="the Gateway's namespace")
    p.add_argument("--api-socket", required=True, type=Path, help="the cluster API's Unix socket")
    p.add_argument("--host", default="0.0.0.0", help="address the listeners bind")
    p.add_argument("--ready", type=_addr, help="readiness endpoint address (e.g. 0.0.0.0:15021)")
    p.add_argument("--upstream-idle", type=float, default=5.0,
                   help="seconds an idle upstream connection is kept (default 5)")
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
