"""The import contracts of pyproject.toml ([tool.importlinter], run by `make lint`) hold on the tree, and
they fail on a copy of the tree with one bad import added: an upward import hidden inside a function, a
sideways import between two components, an import of I/O into the pure model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter not installed (pip install -e .[dev])")


def lint(pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(LINT), "--no-cache", "--no-logo", "--config", str(ROOT / "pyproject.toml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("layers") / "src"
    shutil.copytree(ROOT / "src" / "ambient", dest / "ambient",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_the_tree_keeps_every_contract() -> None:
    result = lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "added", "named"), [
    # upward, inside a function: the bottom layer reaching for the CLI
    ("core/errors.py", "\n\ndef _bad() -> None:\n    from ambient.cli import main  # noqa: F401\n",
     "ambient.core.errors -> ambient.cli.main"),
    # sideways between two components
    ("ztunnel/settings.py", "\nfrom ambient.waypoint import errors as _we  # noqa: F401\n",
     "ambient.ztunnel.settings -> ambient.waypoint.errors"),
    # a shared service reaching up into a component
    ("xds/client.py", "\nimport ambient.ztunnel.app  # noqa: F401\n", "ambient.xds.client -> ambient.ztunnel.app"),
    # network I/O in the pure model
    ("state/model.py", "\nimport socket  # noqa: F401\n", "ambient.state.model -> socket"),
])
def test_a_bad_import_breaks_the_contract(tree_copy: Path, module: str, added: str, named: str) -> None:
    path = tree_copy / "ambient" / module
    original = path.read_text()
    path.write_text(original + added)
    try:
        result = lint(tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0, result.stdout
    assert named in result.stdout, result.stdout


def test_the_copy_is_what_gets_checked(tree_copy: Path) -> None:
    """Guards the test above: lint-imports must analyse the copy on PYTHONPATH, not the installed tree."""
    marker = tree_copy / "ambient" / "core" / "zz_marker.py"
    marker.write_text("import ambient.cli.main  # noqa: F401\n")
    try:
        result = lint(tree_copy)
    finally:
        marker.unlink()
    assert "ambient.core.zz_marker -> ambient.cli.main" in result.stdout, result.stdout


def test_a_new_package_must_be_placed_in_a_layer(tree_copy: Path) -> None:
    package = tree_copy / "ambient" / "unplaced"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package nobody placed."""\n')
    try:
        result = lint(tree_copy)
    finally:
        shutil.rmtree(package)
    assert result.returncode != 0 and "ambient.unplaced" in result.stdout, result.stdout
