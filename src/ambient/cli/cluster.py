"""`ambient cluster create|delete|list|status|supervise`: the local hermetic cluster's lifecycle (see
ambient.cluster.lifecycle; supervision in ambient.cluster.supervisor).

Registered by `ambient.cli.main` through `register(app)`. The name comes from `--name`, else the global
`--cluster` / $AMBIENT_CLUSTER; the state dir from `--state-dir`, else the global one / $AMBIENT_STATE_DIR,
else /var/lib/ambient/<name>. Progress goes to stderr, tables to stdout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ambient.cli.context import state

if TYPE_CHECKING:
    from ambient.cluster.lifecycle import ComponentStatus

app = typer.Typer(help="Create, delete and list local hermetic clusters.", no_args_is_help=True)

NameOpt = Annotated[str | None, typer.Option("--name", "-n", help="Cluster name (default: --cluster / "
                                                                  "$AMBIENT_CLUSTER / ambient).")]
StateOpt = Annotated[Path | None, typer.Option("--state-dir", help="Cluster state directory "
                                                                   "(default /var/lib/ambient/<name>).",
                                               file_okay=False)]


def _resolve(ctx: typer.Context, name: str | None, state_dir: Path | None) -> tuple[str, Path | None]:
    st = state(ctx)
    return name or st.cluster, state_dir or st.state_dir


@app.command("create")
def create(
    ctx: typer.Context,
    name: NameOpt = None,
    nodes: Annotated[int, typer.Option("--nodes", help="Number of nodes.", min=1, max=200)] = 2,
    state_dir: StateOpt = None,
    outside: Annotated[bool, typer.Option(
        "--outside", help="Add the outside world: hosts httpbin.example.test and api.example.test beyond the "
        "nodes (HTTP :80, HTTPS :443 with a throw-away public CA in <state>/outside/ca.crt).")] = False,
) -> None:
    """Create a cluster: underlay + node network namespaces, API server, DNS, controllers, kubelets."""
    from rich.console import Console

    from ambient.cluster.lifecycle import create_cluster

    cluster, sdir = _resolve(ctx, name, state_dir)
    err = Console(stderr=True, log_path=False)
    with err.status(f"creating cluster {cluster}") as status:
        def progress(msg: str) -> None:
            status.update(f"{cluster}: {msg}")
            err.log(msg)

        result = create_cluster(cluster, nodes, sdir, progress=progress)
        if outside:
            from ambient.cluster.outside import OUTSIDE_HOSTS, create_outside_world

            progress("adding the outside world: " + ", ".join(n for h in OUTSIDE_HOSTS for n in h.names))
            create_outside_world(result.layout)
    skipped = f" (not available yet: {', '.join(result.skipped)})" if result.skipped else ""
    err.print(f"[green]cluster {cluster} created[/] with {nodes} node(s) in {result.timings['total']:.1f}s"
              f"{skipped}")
    err.print(f"state: {result.layout.state_dir}   delete: ambient cluster delete --name {cluster}")


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: NameOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Delete every cluster on this machine.")] = False,
    keep_state: Annotated[bool, typer.Option("--keep-state", help="Keep the state directory.")] = False,
    state_dir: StateOpt = None,
) -> None:
    """Delete a cluster: every process, network namespace, mount and (unless --keep-state) its state."""
    from rich.console import Console

    from ambient.cluster.lifecycle import delete_all, delete_cluster

    err = Console(stderr=True, log_path=False)
    if all_:
        deleted = delete_all(progress=err.log)
        err.print(f"deleted: {', '.join(deleted) or 'nothing (no clusters)'}")
        return
    cluster, sdir = _resolve(ctx, name, state_dir)
    with err.status(f"deleting cluster {cluster}"):
        found = delete_cluster(cluster, sdir, keep_state=keep_state, progress=err.log)
    err.print(f"cluster {cluster} deleted" if found else f"cluster {cluster} did not exist (nothing to do)")


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List the clusters on this machine (NAME NODES STATUS RESTARTS STATE-DIR).

    RESTARTS counts the component restarts done by the cluster's supervisor; `ambient cluster status`
    says which component restarted, when and why."""
    from ambient.cli.output import print_table
    from ambient.cluster.lifecycle import list_clusters

    rows = [[c.name, str(c.nodes), c.status, str(c.restarts), c.state_dir] for c in list_clusters()]
    print_table(["NAME", "NODES", "STATUS", "RESTARTS", "STATE-DIR"], rows)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


@app.command("status")
def status(ctx: typer.Context, name: NameOpt = None, state_dir: StateOpt = None) -> None:
    """The components of a cluster: COMPONENT STATUS PID RESTARTS AGE LAST-EXIT.

    The supervisor restarts a component that exits (at once for the first 3 exits in a row, then after 10 s
    doubling to 5 min); STATUS is running, restarting, waiting (back-off), stopped (on purpose) or down
    (the supervisor itself is not running)."""
    import time

    from ambient.cli.output import print_table
    from ambient.cluster import layout as L
    from ambient.cluster.lifecycle import component_statuses
    from ambient.cluster.processes import supervisor_pid_file

    cluster, sdir = _resolve(ctx, name, state_dir)
    layout = L.load_layout(sdir if sdir is not None else cluster)
    sup, comps = component_statuses(layout)
    sup_since = None
    if sup is not None:
        with contextlib.suppress(OSError):  # written when it started; gone if it just exited
            sup_since = supervisor_pid_file(layout).stat().st_mtime
    print_table(["COMPONENT", "STATUS", "PID", "RESTARTS", "AGE", "LAST-EXIT"],
                status_rows(sup, sup_since, comps, time.time()))


def status_rows(sup: int | None, sup_since: float | None, comps: Sequence[ComponentStatus],
                now: float) -> list[list[str]]:
    """The rows of `cluster status`, every cell filled ("-" when it does not apply) so the columns line up.
    The supervisor's own restarts are its watchdog's and are not counted: "-"."""
    rows = [["supervisor", "running" if sup else "down", str(sup or "-"), "-",
             _age(now - sup_since) if sup and sup_since else "-", "-"]]
    for c in comps:
        st = c.status
        if st == "waiting" and c.restart_at is not None:
            st = f"waiting({_age(c.restart_at - now)})"
        rows.append([c.name, st, str(c.pid or "-"), str(c.restarts),
                     _age(now - c.since) if c.since else "-", c.last_exit or "-"])
    return rows


@app.command("kubeconfig")
def kubeconfig(ctx: typer.Context, name: NameOpt = None, state_dir: StateOpt = None) -> None:
    """Print the path of the cluster's kubeconfig (context named after the cluster), for
    `KUBECONFIG=$(ambient cluster kubeconfig) kubectl get pods -A`."""
    from ambient.api.tls_listener import KUBECONFIG_NAME
    from ambient.cli.errors import CliError
    from ambient.cluster import layout as L

    cluster, sdir = _resolve(ctx, name, state_dir)
    layout = L.load_layout(sdir if sdir is not None else cluster)
    path = Path(layout.state_dir) / KUBECONFIG_NAME
    if not path.exists():
        raise CliError(f"cluster {cluster} has no kubeconfig yet ({path})",
                       hint="its API server writes it when it starts: see `ambient cluster status`")
    typer.echo(str(path))


@app.command("supervise")
def supervise(ctx: typer.Context, name: NameOpt = None, state_dir: StateOpt = None) -> None:
    """Start the cluster's supervisor again if it is not running (it adopts the running components and
    restarts the missing ones)."""
    from rich.console import Console

    from ambient.cluster import layout as L
    from ambient.cluster import processes
    from ambient.cluster.lifecycle import COMPONENT_MARKER_ENV, check_root

    check_root()
    cluster, sdir = _resolve(ctx, name, state_dir)
    layout = L.load_layout(sdir if sdir is not None else cluster)
    err = Console(stderr=True, log_path=False)
    before = processes.supervisor_pid(layout)
    pid = processes.start_supervisor(layout, env={COMPONENT_MARKER_ENV: layout.state_dir})
    err.print(f"supervisor of {cluster} already running (pid {pid})" if before == pid
              else f"supervisor of {cluster} started (pid {pid})")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="cluster")
