"""`ambient node-agent --node NODE`: run the node agent of one node in the foreground.

`--source local` (default): a node of the local cluster. Normally `ambient cluster create` starts it per node
(inside the node netns); this is for running it by hand (debugging, a custom backend), e.g.
`ip netns exec amb-<cluster>-node-1 ambient node-agent --node node-1`.

`--source kubernetes`: the agent of the node DaemonSet (deploy/kubernetes/node-agent): pods of `--node` and
namespaces from the Kubernetes API, `pluginevent.sock` in `--run-dir`, pod netns paths from the CNI ADD
record or /proc (see `ambient.kube.nodeagent`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ambient.cli.context import state


def register(app: typer.Typer) -> None:
    @app.command("node-agent")
    def node_agent(
        ctx: typer.Context,
        node: Annotated[str, typer.Option("--node", envvar="NODE_NAME",
                                          help="the node to serve (see `ambient get nodes`)")],
        source: Annotated[str, typer.Option("--source", help="where pods come from: local | kubernetes")] = "local",
        run_dir: Annotated[
            Path | None,
            typer.Option("--run-dir", help="kubernetes: directory of pluginevent.sock and the netns records "
                         "(local: the node's run dir)"),
        ] = None,
        backend: Annotated[str, typer.Option(help="redirection backend: iptables or nftables")] = os.environ.get(
            "AMBIENT_REDIRECTION_BACKEND", "iptables"),
        zds_socket: Annotated[str | None, typer.Option(help="ZDS socket (default <run dir>/ztunnel.sock)")] = None,
        dns_capture: Annotated[bool, typer.Option(help="capture DNS by default (pods may override)")] = True,
        exclude_namespace: Annotated[
            list[str] | None,
            typer.Option("--exclude-namespace", help="kubernetes: never capture pods of this namespace (repeatable; "
                         "default kube-system and the agent's own namespace)"),
        ] = None,
        kubeconfig: Annotated[
            str | None,
            typer.Option("--kubeconfig", envvar="KUBECONFIG", help="kubernetes: kubeconfig (default: in-cluster)"),
        ] = None,
        log_level: Annotated[str, typer.Option(help="DEBUG shows the iptables-restore / nft input")] = "INFO",
    ) -> None:
        """Capture the enrolled pods of NODE and hand them to the node proxy (runs until interrupted)."""

        from ambient.cli.errors import UsageError
        from ambient.core import process

        if backend not in ("iptables", "nftables"):
            raise UsageError(f"unknown backend {backend!r}", hint="use --backend iptables or --backend nftables")
        if source not in ("local", "kubernetes"):
            raise UsageError(f"unknown --source {source!r}", hint="use --source local or --source kubernetes")
        process.configure_logging(log_level)
        if source == "kubernetes":
            from ambient.kube import nodeagent

            excluded = exclude_namespace or ["kube-system", os.environ.get("POD_NAMESPACE") or "ambient-system"]
            async def run_kubernetes(_: process.Shutdown) -> None:
                await nodeagent.serve(
                    node, run_dir or Path("/var/run/ambient"), zds_socket=zds_socket, backend=backend,
                    dns_capture=dns_capture, exclude_namespaces=excluded, kubeconfig=kubeconfig,
                )

            process.run(run_kubernetes)
            return
        if run_dir is not None or exclude_namespace:
            raise UsageError("--run-dir and --exclude-namespace apply to --source kubernetes only",
                             hint="the local cluster's layout names the node's run dir")
        from ambient.cluster import layout as L

        st = state(ctx)
        state_dir = st.state_dir or L.default_state_dir(st.cluster)
        from ambient.cluster import node_agent

        async def run(_: process.Shutdown) -> None:
            await node_agent.serve(state_dir, node, backend=backend, zds_socket=zds_socket, dns_capture=dns_capture)

        process.run(run)
