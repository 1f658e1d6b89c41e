"""AMBIENT_ZTUNNEL_WORKERS and the worker role, as the node proxy's settings read them."""

from __future__ import annotations

import os

import pytest

from ambient.runtime.workers import MAX_WORKERS
from ambient.ztunnel.errors import ConfigError
from ambient.ztunnel.settings import Settings
from ambient.ztunnel.workers import WORKER_ADMIN_ENV, WORKER_ZDS_ENV, WorkerRole, worker_paths


@pytest.mark.parametrize(("raw", "want"), [
    ("1", 1), ("2", 2), (" 4 ", 4), (str(MAX_WORKERS), MAX_WORKERS),
    ("auto", max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))), ("AUTO", len(os.sched_getaffinity(0))),
])
def test_worker_counts(raw: str, want: int) -> None:
    assert Settings.from_env({"AMBIENT_ZTUNNEL_WORKERS": raw}).workers == want


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5", str(MAX_WORKERS + 1)])
def test_bad_worker_counts_are_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="AMBIENT_ZTUNNEL_WORKERS"):
        Settings.from_env({"AMBIENT_ZTUNNEL_WORKERS": raw})


def test_default_is_one_process_and_no_role() -> None:
    s = Settings.from_env({})
    assert (s.workers, s.worker) == (1, None)


def test_a_worker_reads_its_role_from_the_primary() -> None:
    env = {"AMBIENT_WORKER_INDEX": "1", WORKER_ZDS_ENV: "/r/zw9-1.zds", WORKER_ADMIN_ENV: "/r/zw9-1.adm"}
    assert Settings.from_env(env).worker == WorkerRole(1, "/r/zw9-1.zds", "/r/zw9-1.adm")


@pytest.mark.parametrize("env", [{"AMBIENT_WORKER_INDEX": "1"}, {"AMBIENT_WORKER_INDEX": "x"}])
def test_a_worker_without_its_sockets_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_worker_socket_names_fit_beside_the_agent_socket() -> None:
    zds, adm = worker_paths("/var/run/ztunnel/ztunnel.sock", 3, pid=4194304)
    assert (zds, adm) == ("/var/run/ztunnel/zw4194304-3.zds", "/var/run/ztunnel/zw4194304-3.adm")
    assert len("zw4194304-63.adm") <= len("ztunnel-admin.sock")  # the cluster's socket-path check covers them
