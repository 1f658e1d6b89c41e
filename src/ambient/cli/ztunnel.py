"""`ambient ztunnel`: run the node proxy (one per node; the local cluster starts it in the node netns).

Inputs: `--static FILE` (workloads/services/policies in the model's shape, reloaded on change) and
`--ca-dir DIR` (a local CA key pair; created when absent) for standalone use; `--xds/--ca-addr` for the
control plane once its client lands. `--mode inpod` (default) takes pods from the node agent over ZDS
(`--zds-socket`); `--mode shared` listens in the proxy's own netns for its local workloads.
Logs: lifecycle lines on stderr, access-log lines on stdout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("ztunnel")
    def ztunnel(
        static: Annotated[Path | None, typer.Option("--static", help="Static state file (YAML/JSON).")] = None,
        ca_dir: Annotated[
            Path | None, typer.Option("--ca-dir", help="Local CA directory (root-cert.pem, root-key.pem).")
        ] = None,
        xds: Annotated[str | None, typer.Option("--xds", help="Control-plane xDS address (host:port).")] = None,
        ca_addr: Annotated[str | None, typer.Option("--ca-addr", help="Control-plane CA address.")] = None,
        token_file: Annotated[Path | None, typer.Option("--token-file", help="Bearer token for xDS/CA.")] = None,
        root_cert: Annotated[Path | None, typer.Option("--root-cert", help="Control-plane root certificate.")] = None,
        mode: Annotated[str, typer.Option("--mode", help="inpod | shared")] = "inpod",
        zds_socket: Annotated[str | None, typer.Option("--zds-socket", help="Node agent ZDS socket.")] = None,
        node: Annotated[str, typer.Option("--node", envvar="NODE_NAME", help="This node's name.")] = "",
        workload: Annotated[
            list[str] | None, typer.Option("--workload", help="shared mode: local workload uid (repeatable).")
        ] = None,
        admin_socket: Annotated[
            str | None, typer.Option("--admin-socket", help="Also serve admin on this Unix socket.")
        ] = None,
        admin_host: Annotated[str, typer.Option("--admin-host", help="Admin (15000) bind address.")] = "127.0.0.1",
        no_http: Annotated[bool, typer.Option("--no-http", help="Do not open 15000/15020/15021.")] = False,
        log_format: Annotated[str, typer.Option("--log-format", help="Access log format: text | json.")] = "text",
        log_level: Annotated[str, typer.Option("--log-level", help="debug | info | warning | error.")] = "info",
    ) -> None:
        """Run the node proxy (ztunnel)."""
        import os
        import sys

        from ambient.cli.errors import UsageError
        from ambient.core import process
        from ambient.ztunnel.app import AppOptions, Sources, build
        from ambient.ztunnel.settings import Settings
        from ambient.ztunnel.telemetry import install_access_handler

        if mode not in ("inpod", "shared"):
            raise UsageError(f"unknown --mode {mode!r}", hint="use inpod or shared")
        if log_format not in ("text", "json"):
            raise UsageError(f"unknown --log-format {log_format!r}", hint="use text or json")
        if xds is None and (static is None or ca_dir is None):
            raise UsageError("the node proxy needs --static FILE and --ca-dir DIR, or --xds ADDR")
        if xds is not None and ca_addr not in (None, xds):
            raise UsageError("--ca-addr must equal --xds: the control plane serves xDS and the CA on one address")
        settings = Settings.from_env(
            mode=mode, node=node, admin_socket=admin_socket, admin_host=admin_host,
            serve_http=not no_http, log_format=log_format,
        )
        # the pod's identity as Kubernetes' downward API gives it (Istio's ztunnel reads the same variables)
        sources = Sources(xds=xds, token_file=token_file, root_cert=root_cert, static=static, ca_dir=ca_dir,
                          instance_ip=os.environ.get("INSTANCE_IP", ""), pod_name=os.environ.get("POD_NAME", ""),
                          pod_namespace=os.environ.get("POD_NAMESPACE", "istio-system"))
        options = AppOptions(shared_workloads=tuple(workload or ()))
        if zds_socket:
            options.zds_socket = zds_socket
        process.configure_logging(log_level, fmt="%(asctime)s\t%(levelname)s\t%(name)s\t%(message)s", quiet=())
        install_access_handler(sys.stdout)

        async def main(shutdown: process.Shutdown) -> None:
            app = build(settings, sources, options)
            shutdown.on_signal(app.stop)
            await app.run()

        process.run(main, use_uvloop=settings.uvloop)
