"""`python -m ambient.controlplane --state-dir DIR --listen HOST:PORT`: run the control plane.

Role: parse flags and run `ControlPlane` under the process bootstrap (`core.process`: logging, and
SIGTERM/SIGINT cancel it for a clean shutdown).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from ambient.controlplane.app import Settings, build
from ambient.core import process
from ambient.core.errors import AmbientError


def main(argv: list[str] | None = None) -> int:
    from ambient.controlplane.admission import ENV_PREFIX, ServingLimits

    limits = ", ".join(f"{ENV_PREFIX}{k.upper()} ({v})" for k, v in asdict(ServingLimits()).items())
    parser = argparse.ArgumentParser(prog="python -m ambient.controlplane", description=__doc__,
                                     epilog=f"gRPC port limits, from the environment (default): {limits}")
    parser.add_argument("--state-dir", required=True, help="cluster state directory (API socket, CA, tokens)")
    parser.add_argument("--listen", default="127.0.0.1:15012", help="gRPC address for xDS and the CA")
    parser.add_argument("--insecure", action="store_true", help="serve gRPC without TLS (tests only)")
    parser.add_argument("--max-cert-ttl", type=float, default=86400.0, help="certificate lifetime cap (s)")
    parser.add_argument("--root-namespace", default="istio-system")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    process.configure_logging(args.log_level)
    try:
        cp = build(Settings(Path(args.state_dir), args.listen, tls=not args.insecure,
                            max_ttl=timedelta(seconds=args.max_cert_ttl), root_namespace=args.root_namespace))
    except AmbientError as exc:  # e.g. a malformed AMBIENT_CP_* limit: say which, no traceback
        print(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 2

    async def run(_: process.Shutdown) -> None:
        try:
            await cp.run()
        except asyncio.CancelledError:
            logging.getLogger("ambient.controlplane").info("control plane stopped")
            raise

    process.run(run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
