"""`make demo` run again after the README tour (a waypoint for namespace `demo`) succeeds: it waits only for
the pods the node agents capture (not the waypoint's) and shows the DENY policy at the waypoint (403).

Runs the real demo (`python -m ambient.demo`) against its own cluster "sup2" (private state dir and
registry), as `make demo` would, and deletes the cluster afterwards.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import force_cleanup

from ambient.cluster import lifecycle

pytestmark = pytest.mark.root

CLUSTER = "sup2"


@pytest.fixture
def demo_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ, AMBIENT_CLUSTER=CLUSTER, AMBIENT_STATE_DIR=str(tmp_path / "state"),
               AMBIENT_REGISTRY_DIR=str(tmp_path / "registry"))
    force_cleanup(CLUSTER)
    try:
        yield env
    finally:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AMBIENT_REGISTRY_DIR", env["AMBIENT_REGISTRY_DIR"])
            with contextlib.suppress(Exception):
                lifecycle.delete_cluster(CLUSTER, env["AMBIENT_STATE_DIR"])
        force_cleanup(CLUSTER)


def run(env: dict[str, str], *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_demo_runs_again_after_the_readme_waypoint(demo_env: dict[str, str]) -> None:
    first = run(demo_env, "-m", "ambient.demo")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert "curl: (56) Recv failure" in first.stdout  # no waypoint yet: the L4 policy step

    tour = run(demo_env, "-m", "ambient", "waypoint", "apply", "-n", "demo", "--enroll-namespace", "--wait",
               timeout=120)
    assert tour.returncode == 0, tour.stdout + tour.stderr

    again = run(demo_env, "-m", "ambient.demo")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert "is already running: reusing it" in again.stdout
    assert "not captured in time" not in again.stdout
    assert "403   <- the waypoint denied the request" in again.stdout
    assert "policy removed: the request goes through again" in again.stdout
