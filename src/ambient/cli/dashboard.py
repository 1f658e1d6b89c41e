"""`ambient dashboard`: the live mesh dashboard of the local cluster on http://127.0.0.1:PORT/.

Reads the cluster's access logs (`<state>/logs`) and its AuthorizationPolicies; see `ambient.dashboard`.
Heavy imports happen inside the command (the CLI's start-up time rule).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ambient.cli.context import state
from ambient.cli.errors import CliError


def dashboard_command(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port on the host (0: any free port).")] = 8765,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback unless you mean it).")] = "127.0.0.1",
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open the page in a browser.")] = True,
    window: Annotated[float, typer.Option(help="Seconds of connections shown (graph and table).")] = 60.0,
) -> None:
    """Serve the live mesh dashboard (graph, connections, policies, traces) on localhost."""
    from ambient.cluster import layout as L
    from ambient.core import process
    from ambient.dashboard.server import LogSource, build_app, serve

    st = state(ctx)
    try:
        layout = L.load_layout(st.socket_path.parent)
    except Exception as exc:
        raise CliError(f"no local cluster at {st.socket_path.parent}: {exc}",
                       hint="`ambient cluster create` first, or pass --cluster / --state-dir") from None
    client = st.client()

    def policies() -> list[dict[str, object]]:
        items, _ = client.list("AuthorizationPolicy", None)
        return list(items)

    def ready(url: str) -> None:
        sys.stdout.write(f"dashboard on {url} (Ctrl-C to stop)\n")
        sys.stdout.flush()
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    app = build_app(LogSource(layout.log_dir, window=window), policies=policies)
    process.run(lambda _shutdown: serve(app, host, port, ready))


def register(root: typer.Typer) -> None:
    root.command("dashboard")(dashboard_command)
