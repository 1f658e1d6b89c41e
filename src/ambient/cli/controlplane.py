"""`ambient controlplane` (run the control plane) and `ambient proxy-status` (its view of connected proxies).

Registered automatically (this module defines `register`). Heavy imports stay inside the commands.

`ambient controlplane --source local` (default) serves the local cluster at `--state-dir` (as
`python -m ambient.controlplane` does); `--source kubernetes` reads the Kubernetes API (in-cluster service
account, or `--kubeconfig`), keeps the CA root in Secret `ambient-ca`, publishes the root certificate in
ConfigMap `ambient-ca-root-cert` and authenticates callers with TokenReview (`--token-audience`). The flags
are the ones deploy/kubernetes/controlplane/deployment.yaml passes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ambient.cli.context import state


def register(app: typer.Typer) -> None:
    @app.command("controlplane")
    def controlplane(
        ctx: typer.Context,
        source: Annotated[str, typer.Option("--source", help="where objects come from: local | kubernetes")] = "local",
        listen: Annotated[str, typer.Option("--listen", help="gRPC address for xDS and the CA")] = "127.0.0.1:15012",
        state_dir: Annotated[
            Path | None,
            typer.Option("--state-dir", help="state directory (local: the cluster's, default from the global "
                         "options; kubernetes: scratch space only)"),
        ] = None,
        root_namespace: Annotated[
            str | None,
            typer.Option("--root-namespace", help="mesh-wide policies live here (default: istio-system locally, "
                         "the control plane's namespace on Kubernetes)"),
        ] = None,
        token_audience: Annotated[
            list[str] | None,
            typer.Option("--token-audience", help="kubernetes: audience CA callers' tokens must carry (repeatable)"),
        ] = None,
        dns_name: Annotated[
            list[str] | None,
            typer.Option("--dns-name", help="DNS SAN of the server certificate (repeatable; kubernetes default: "
                         "ambient-controlplane.<namespace>.svc[.cluster.local])"),
        ] = None,
        namespace: Annotated[
            str | None,
            typer.Option("--namespace", envvar="POD_NAMESPACE",
                         help="kubernetes: the control plane's namespace (CA Secret and root ConfigMap)"),
        ] = None,
        proxy_namespace: Annotated[
            str | None,
            typer.Option("--proxy-namespace", help="namespace of the node proxies' service account (default: "
                         "istio-system locally, the control plane's namespace on Kubernetes)"),
        ] = None,
        proxy_service_account: Annotated[
            str, typer.Option("--proxy-service-account", help="the node proxies' service account (may impersonate)")
        ] = "ztunnel",
        kubeconfig: Annotated[
            str | None,
            typer.Option("--kubeconfig", envvar="KUBECONFIG", help="kubernetes: kubeconfig (default: in-cluster)"),
        ] = None,
        insecure: Annotated[bool, typer.Option("--insecure", help="serve gRPC without TLS (tests only)")] = False,
        max_cert_ttl: Annotated[float, typer.Option("--max-cert-ttl", help="certificate lifetime cap (s)")] = 86400.0,
        log_level: Annotated[str, typer.Option("--log-level", help="debug | info | warning | error")] = "info",
    ) -> None:
        """Run the control plane: delta xDS and the CA on --listen, objects from --source (until interrupted)."""
        import asyncio
        import logging
        from datetime import timedelta

        from ambient.cli.errors import UsageError
        from ambient.core import process

        if source not in ("local", "kubernetes"):
            raise UsageError(f"unknown --source {source!r}", hint="use --source local or --source kubernetes")
        if source == "local" and token_audience:
            raise UsageError("--token-audience applies to --source kubernetes only",
                             hint="the local cluster authenticates node proxies with per-node tokens")
        process.configure_logging(log_level)
        ttl = timedelta(seconds=max_cert_ttl)

        async def run_local() -> None:
            from ambient.controlplane.app import Settings, build
            from ambient.controlplane.ca_server import PROXY_NAMESPACE

            st = state(ctx)
            if state_dir is not None:
                directory = state_dir
            elif st.state_dir is not None:
                directory = st.state_dir
            else:
                from ambient.cluster import layout as L

                directory = Path(L.default_state_dir(st.cluster))
            cp = build(Settings(Path(directory), listen, tls=not insecure, max_ttl=ttl,
                                root_namespace=root_namespace or "istio-system",
                                proxy_namespace=proxy_namespace or PROXY_NAMESPACE,
                                proxy_service_account=proxy_service_account, dns_names=tuple(dns_name or ())))
            await cp.run()

        async def run_kubernetes() -> None:
            from ambient.kube import controlplane as kcp

            ns = namespace or kcp.own_namespace()
            await kcp.serve(
                kubeconfig,
                state_dir=state_dir or Path(os.environ.get("TMPDIR", "/tmp")) / "ambient-controlplane",
                listen=listen,
                namespace=ns,
                audiences=token_audience or ["istio-ca"],
                tls=not insecure,
                max_ttl=ttl,
                root_namespace=root_namespace or ns,
                proxy_namespace=proxy_namespace or ns,
                proxy_service_account=proxy_service_account,
                dns_names=dns_name or (),
            )

        async def main(_: process.Shutdown) -> None:
            try:
                await (run_kubernetes() if source == "kubernetes" else run_local())
            except asyncio.CancelledError:
                logging.getLogger("ambient.controlplane").info("control plane stopped")
                raise

        process.run(main)

    @app.command("proxy-status")
    def proxy_status(
        ctx: typer.Context,
        output: Annotated[str, typer.Option("--output", "-o", help="table | json | yaml")] = "table",
    ) -> None:
        """Which proxies are connected to the control plane, their last ACKed versions and lag."""
        from ambient.cli.output import dump_json, dump_yaml, print_table
        from ambient.controlplane import proxy_status as ps

        status = ps.fetch(state(ctx).socket_path.parent)
        if output == "json":
            typer.echo(dump_json(status), nl=False)
        elif output == "yaml":
            typer.echo(dump_yaml(status), nl=False)
        else:
            print_table(ps.HEADERS, ps.rows(status))
