"""The root of the CLI: global options, error rendering, usage errors, command discovery."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ambient.cli.context import CliState, state
from ambient.cli.main import app
from ambient.core.errors import AmbientError


def test_usage_errors_are_plain_error_lines_with_exit_2() -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["get"])
    assert missing.exit_code == 2
    assert missing.stderr == (
        "error: Missing argument 'KIND[,KIND...] [NAME...] | KIND/NAME...'.\nhint: see `ambient get --help`\n"
    )
    flag = runner.invoke(app, ["get", "pods", "--bogus"])
    assert flag.exit_code == 2
    assert flag.stderr.startswith("error: No such option: --bogus")
    command = runner.invoke(app, ["frobnicate"])
    assert command.exit_code == 2
    assert command.stderr.startswith("error: No such command 'frobnicate'.")


def test_help_lists_object_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("apply", "get", "delete", "label", "annotate", "wait", "create", "version"):
        assert f" {command} " in result.stdout


def test_state_dir_and_cluster_select_the_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AMBIENT_STATE_DIR", raising=False)
    assert CliState(state_dir=tmp_path).socket_path == tmp_path / "apiserver.sock"
    assert CliState(cluster="dev").socket_path == Path("/var/lib/ambient/dev/apiserver.sock")
    seen: list[CliState] = []
    probe = typer.Typer()

    @probe.command("probe")
    def _probe(ctx: typer.Context) -> None:
        seen.append(state(ctx))

    # The global options reach commands registered from other modules through state(ctx).
    from ambient.cli.main import _root

    probe.callback()(_root)
    result = CliRunner().invoke(probe, ["--cluster", "dev", "--state-dir", str(tmp_path), "probe"])
    assert result.exit_code == 0, result.output
    assert seen[0].cluster == "dev" and seen[0].state_dir == tmp_path
    monkeypatch.setenv("AMBIENT_CLUSTER", "envy")
    CliRunner().invoke(probe, ["probe"])
    assert seen[1].cluster == "envy" and seen[1].state_dir is None


def test_any_ambient_error_becomes_error_and_hint() -> None:
    def factory(_state: CliState) -> object:
        raise AmbientError("the cluster is on fire", hint="call the fire brigade")

    result = CliRunner().invoke(app, ["get", "pods"], obj=CliState(client_factory=factory))
    assert result.exit_code == 1
    assert result.stderr == "error: the cluster is on fire\nhint: call the fire brigade\n"
    assert result.exception is None or isinstance(result.exception, SystemExit)
