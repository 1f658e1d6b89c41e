"""`ambient cluster create|list|delete` through the real command line (typer app), as root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import force_cleanup, leftovers
from typer.testing import CliRunner

from ambient.cli.main import app
from ambient.cluster import lifecycle

pytestmark = pytest.mark.root
NAME = "t3h"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("AMBIENT_REGISTRY_DIR", str(tmp_path / "registry"))
    monkeypatch.delenv("AMBIENT_STATE_DIR", raising=False)
    monkeypatch.delenv("AMBIENT_CLUSTER", raising=False)
    st = tmp_path / "state-h"
    try:
        yield st
    finally:
        lifecycle.delete_cluster(NAME, st)
        force_cleanup(NAME)


def test_cli_create_list_duplicate_delete(state: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["cluster", "create", "--name", NAME, "--nodes", "2", "--state-dir", str(state)])
    assert r.exit_code == 0, r.output
    assert f"cluster {NAME} created with 2 node(s)" in r.output

    r = runner.invoke(app, ["cluster", "list"])
    assert r.exit_code == 0, r.output
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["NAME", "NODES", "STATUS", "RESTARTS", "STATE-DIR"]
    assert [NAME, "2", "running", "0", str(state)] in [row.split() for row in rows]

    r = runner.invoke(app, ["cluster", "create", "--name", NAME, "--state-dir", str(state)])
    assert r.exit_code == 1
    assert f"error: cluster '{NAME}' already exists" in r.output
    assert f"ambient cluster delete --name {NAME}" in r.output

    # the global --cluster option names the cluster too
    r = runner.invoke(app, ["--cluster", NAME, "cluster", "delete"])
    assert r.exit_code == 0, r.output
    assert f"cluster {NAME} deleted" in r.output
    assert leftovers(NAME, state) == []
    r = runner.invoke(app, ["cluster", "delete", "--name", NAME])
    assert r.exit_code == 0 and "did not exist" in r.output


def test_cli_bad_name_is_a_clear_error(state: Path) -> None:
    r = CliRunner().invoke(app, ["cluster", "create", "--name", "Bad-Name", "--state-dir", str(state)])
    assert r.exit_code == 1
    assert "invalid cluster name 'Bad-Name'" in r.output
    assert not state.exists()


def test_make_clean_removes_only_its_own_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make clean` deletes the demo's cluster (CLUSTER, default `ambient`) and build outputs; another cluster
    on the machine keeps running. Run from a scratch directory so the build outputs removed are its own."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    # a short state dir: the components' Unix sockets live under it (AF_UNIX paths are at most 107 bytes)
    tmp_path = Path(tempfile.mkdtemp(prefix="mkc-"))

    from ambient.cluster import layout as L

    if shutil.which("make") is None:
        pytest.skip("needs make")
    monkeypatch.setenv("AMBIENT_REGISTRY_DIR", str(tmp_path / "registry"))
    monkeypatch.delenv("AMBIENT_STATE_DIR", raising=False)
    repo = Path(__file__).resolve().parents[2]
    ours, other = "mkca", "mkcb"
    try:
        for name in (ours, other):
            lifecycle.create_cluster(name, 1, tmp_path / f"state-{name}")
        scratch = tmp_path / "scratch"
        (scratch / ".pytest_cache").mkdir(parents=True)
        run = subprocess.run(["make", "-f", str(repo / "Makefile"), "-C", str(scratch), "clean", f"CLUSTER={ours}",
                              f"BIN={Path(sys.executable).parent}"], capture_output=True, text=True, timeout=120,
                             env=dict(os.environ))
        assert run.returncode == 0, run.stdout + run.stderr
        assert not (scratch / ".pytest_cache").exists()
        netns = set(L.NETNS_RUN_DIR.iterdir()) if L.NETNS_RUN_DIR.exists() else set()
        names = {p.name for p in netns}
        assert not any(n.startswith(f"amb-{ours}-") for n in names), "its own cluster was not deleted"
        assert f"amb-{other}-node-1" in names and f"amb-{other}-underlay" in names
        assert L.load_layout(other).name == other  # still registered and running
    finally:
        for name in (ours, other):
            lifecycle.delete_cluster(name, tmp_path / f"state-{name}")
            force_cleanup(name)
        shutil.rmtree(tmp_path, ignore_errors=True)
