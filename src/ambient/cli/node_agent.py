"""`ambient node-agent --node NODE`: run the node agent of one node of the local cluster in the foreground.

Normally `ambient cluster create` starts it per node (inside the node netns); this command is for running
it by hand (debugging, a custom backend). It must run inside the node's network namespace, e.g.
`ip netns exec amb-<cluster>-node-1 ambient node-agent --node node-1`.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ambient.cli.context import state


def register(app: typer.Typer) -> None:
    @app.command("node-agent")
    def node_agent(
        ctx: typer.Context,
        node: Annotated[str, typer.Option("--node", help="the node to serve (see `ambient get nodes`)")],
        backend: Annotated[str, typer.Option(help="redirection backend: iptables or nftables")] = os.environ.get(
            "AMBIENT_REDIRECTION_BACKEND", "iptables"),
        zds_socket: Annotated[str | None, typer.Option(help="ZDS socket (default <node run dir>/ztunnel.sock)")] = None,
        dns_capture: Annotated[bool, typer.Option(help="capture DNS by default (pods may override)")] = True,
        log_level: Annotated[str, typer.Option(help="DEBUG shows the iptables-restore / nft input")] = "INFO",
    ) -> None:
        """Capture the enrolled pods of NODE and hand them to the node proxy (runs until interrupted)."""
        import asyncio

        from ambient.cli.errors import UsageError
        from ambient.cluster import layout as L
        from ambient.cni import agent

        if backend not in ("iptables", "nftables"):
            raise UsageError(f"unknown backend {backend!r}", hint="use --backend iptables or --backend nftables")
        st = state(ctx)
        state_dir = st.state_dir or L.default_state_dir(st.cluster)
        agent.configure_logging(log_level)
        asyncio.run(agent.serve(state_dir, node, backend=backend, zds_socket=zds_socket, dns_capture=dns_capture))
