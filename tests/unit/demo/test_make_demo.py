"""`make demo CLUSTER=x` runs the demo against cluster x, as `make clean CLUSTER=x` cleans it up."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(("args", "cluster"), [((), "ambient"), (("CLUSTER=rvdemo",), "rvdemo")])
def test_make_demo_passes_the_cluster_name(args: tuple[str, ...], cluster: str) -> None:
    # -n prints the recipes without running them (bootstrap included)
    out = subprocess.run(["make", "-n", "-C", str(ROOT), "demo", *args], capture_output=True, text=True,
                         timeout=30, check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    (line,) = [line for line in out.splitlines() if "-m ambient.demo" in line]
    assert f"AMBIENT_CLUSTER={cluster} " in line
