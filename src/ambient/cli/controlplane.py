"""`ambient proxy-status`: the control plane's view of connected node proxies (istioctl proxy-status).

Registered automatically (this module defines `register`). Heavy imports stay inside the command.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ambient.cli.context import state


def register(app: typer.Typer) -> None:
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
