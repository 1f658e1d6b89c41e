"""The `ambient` command line (kubectl / kind / istioctl-like): the root app, global options, errors.

Adding a command or a command group (cluster, exec, logs, zc, waypoint, ...): create a module in
`ambient/cli/` (e.g. `ambient/cli/cluster.py`) that defines

    def register(app: typer.Typer) -> None:
        group = typer.Typer(help="Create, delete and list local clusters.", no_args_is_help=True)

        @group.command("create")
        def create(ctx: typer.Context, nodes: int = 2) -> None:
            st = state(ctx)            # from ambient.cli.context: .cluster, .state_dir, .client()
            ...

        app.add_typer(group, name="cluster")      # or @app.command("exec") for a single command

Nothing else to edit: every module of this package that defines `register` is found and registered at
start-up, in name order. Rules for such modules:
- Keep top-level imports light (typer, the stdlib, ambient.cli.*): import heavy modules (httpx, aiohttp,
  grpc, cryptography, the cluster runtime) inside the command functions. `ambient --help` must stay under
  half a second.
- Raise `AmbientError` subclasses (e.g. `ambient.cli.errors.CliError`, or any package's error) for
  failures: the root turns them into `error: <message>` / `hint: <hint>` on stderr and exit code
  `exc.exit_code` (1; 2 for `UsageError`). Never print tracebacks for expected failures.
- Print data to stdout and diagnostics to stderr (see `ambient.cli.output`).

Global options (before the command): `--cluster/-c NAME` (env AMBIENT_CLUSTER, default "ambient") and
`--state-dir DIR` (env AMBIENT_STATE_DIR); commands reach the API server through `state(ctx).client()`.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ambient.cli.context import CliState
from ambient.core.errors import AmbientError


class _RootGroup(TyperGroup):
    """Turns every `AmbientError` raised by any command into `error:`/`hint:` lines and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except AmbientError as exc:
            from ambient.cli.output import error

            error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
        finally:
            obj = ctx.obj
            if isinstance(obj, CliState):
                obj.close()


    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Usage errors too become `error:`/`hint:` lines (exit 2), not a boxed rich panel."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        # typer vendors click; its exception classes are only reachable through typer._click.
        from typer._click.exceptions import ClickException, UsageError

        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except UsageError as exc:
            from ambient.cli.output import error

            if not exc.format_message():  # no arguments: the help was printed already
                sys.exit(exc.exit_code)
            command = exc.ctx.command_path if exc.ctx is not None else "ambient"
            error(exc.format_message(), f"see `{command} --help`")
            sys.exit(exc.exit_code)
        except ClickException as exc:
            from ambient.cli.output import error

            error(exc.format_message())
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.stderr.write("Aborted!\n")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_RootGroup,
    name="ambient",
    help="A sidecar-less (ambient) service mesh: local clusters, objects, and mesh debugging.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    ctx: typer.Context,
    cluster: Annotated[
        str, typer.Option("--cluster", "-c", envvar="AMBIENT_CLUSTER", help="Cluster name.")
    ] = "ambient",
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", envvar="AMBIENT_STATE_DIR", help="Cluster state directory "
                     "(default /var/lib/ambient/<cluster>).", file_okay=False),
    ] = None,
) -> None:
    obj = ctx.obj if isinstance(ctx.obj, CliState) else CliState()
    obj.cluster = cluster
    obj.state_dir = state_dir
    ctx.obj = obj


def _register_commands(target: typer.Typer) -> None:
    """Import every module of this package that has `register(app)` and let it add its commands."""
    package = sys.modules[__package__ or "ambient.cli"]
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_") or module_info.name == "main":
            continue
        name = f"{package.__name__}.{module_info.name}"
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # one broken command module must not take the whole CLI down
            sys.stderr.write(f"warning: commands from {name} are unavailable: {exc!r}\n")
            continue
        register = getattr(module, "register", None)
        if callable(register):
            register(target)


_register_commands(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`ambient`, `python -m ambient`)."""
    app(args=argv, prog_name="ambient")


if __name__ == "__main__":
    main()
