"""AMBIENT_WAYPOINT_WORKERS and a waypoint worker's role, as the waypoint's entry point reads them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ambient.runtime.workers import MAX_WORKERS
from ambient.waypoint.__main__ import parse_args, settings_from_args
from ambient.waypoint.app import AppSettings
from ambient.waypoint.errors import ConfigError
from ambient.waypoint.workers import (
    WORKER_ADMIN_ENV,
    WORKER_LISTEN_ENV,
    WORKERS_ENV,
    WorkerPool,
    WorkerRole,
    format_addr,
    parse_addr,
    stale_dir_pid,
)

CORES = len(os.sched_getaffinity(0))
ARGS = ["--ca-dir", "/tmp/ca"]


def settings(env: dict[str, str]) -> AppSettings:
    return settings_from_args(parse_args(ARGS), env)


@pytest.mark.parametrize(("raw", "want"), [
    ("1", 1), ("2", 2), (" 4 ", 4), (str(MAX_WORKERS), MAX_WORKERS), ("", 1), ("  ", 1),
    ("auto", max(1, min(MAX_WORKERS, CORES))), ("AUTO", max(1, min(MAX_WORKERS, CORES))),
])
def test_worker_counts(raw: str, want: int) -> None:
    s = settings({WORKERS_ENV: raw})
    assert (s.workers, s.worker) == (want, None)


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5", "0x2", str(MAX_WORKERS + 1), "auto2"])
def test_bad_worker_counts_are_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match=WORKERS_ENV):
        settings({WORKERS_ENV: raw})


def test_default_is_one_process_and_no_role() -> None:
    s = settings({})
    assert (s.workers, s.worker) == (1, None)


@pytest.mark.parametrize(("listen", "addr"), [("127.0.0.1:15008", ("127.0.0.1", 15008)),
                                              ("[::1]:15008", ("::1", 15008))])
def test_a_worker_reads_its_role_from_the_primary(listen: str, addr: tuple[str, int]) -> None:
    env = {WORKERS_ENV: "4", "AMBIENT_WORKER_INDEX": "2", WORKER_ADMIN_ENV: "/tmp/ambient-wp-x/2.sock",
           WORKER_LISTEN_ENV: listen}
    s = settings(env)
    assert s.worker == WorkerRole(2, "/tmp/ambient-wp-x/2.sock", addr)
    assert s.workers == 1  # a worker starts no workers of its own
    assert format_addr(addr) == listen


@pytest.mark.parametrize("env", [
    {"AMBIENT_WORKER_INDEX": "1"},
    {"AMBIENT_WORKER_INDEX": "1", WORKER_ADMIN_ENV: "/tmp/a/1.sock"},
    {"AMBIENT_WORKER_INDEX": "1", WORKER_LISTEN_ENV: "127.0.0.1:15008"},
    {"AMBIENT_WORKER_INDEX": "x"},
    {"AMBIENT_WORKER_INDEX": "1", WORKER_ADMIN_ENV: "/tmp/a/1.sock", WORKER_LISTEN_ENV: "15008"},
    {"AMBIENT_WORKER_INDEX": "1", WORKER_ADMIN_ENV: "/tmp/a/1.sock", WORKER_LISTEN_ENV: "127.0.0.1:0"},
])
def test_a_worker_without_a_complete_role_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        settings(env)


@pytest.mark.parametrize("text", ["", ":80", "host:", "host:http", "host:70000"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ConfigError, match="LISTEN"):
        parse_addr(text, "LISTEN")


def test_worker_sockets_are_short_and_private() -> None:
    pool = WorkerPool(MAX_WORKERS, ("0.0.0.0", 15008))
    try:
        assert pool.dir.stat().st_mode & 0o777 == 0o700
        assert len(pool.admin_socket(MAX_WORKERS - 1).encode()) <= 64  # far below the 107-byte AF_UNIX limit
        assert pool._env_for(3) == {WORKER_ADMIN_ENV: pool.admin_socket(3), WORKER_LISTEN_ENV: "0.0.0.0:15008"}
    finally:
        pool.cleanup()
    assert not pool.dir.exists()


def test_a_pool_needs_two_processes() -> None:
    with pytest.raises(ConfigError):
        WorkerPool(1, ("0.0.0.0", 15008))


@pytest.mark.parametrize(("name", "pid"), [
    ("ambient-wp123-abcd1234", 123), ("ambient-wp123-", 123), ("ambient-wp-abcd1234", None),
    ("ambient-wpx1-abc", None), ("ambient-wp123", None), ("other", None), ("ambient-wp12a-b", None),
])
def test_private_directory_names(name: str, pid: int | None) -> None:
    assert stale_dir_pid(name) == pid


def test_a_killed_primarys_directory_is_swept(tmp_path: Path) -> None:
    gone = tmp_path / "ambient-wp4194305-abcd1234"  # above the kernel's pid_max: never alive
    mine = tmp_path / f"ambient-wp{os.getpid()}-abcd1234"
    other = tmp_path / "ambient-zw4194305-abcd1234"
    for d in (gone, mine, other):
        d.mkdir()
        (d / "1.sock").write_text("")
    pool = WorkerPool(2, ("0.0.0.0", 15008), base_dir=str(tmp_path))
    try:
        assert not gone.exists() and mine.exists() and other.exists()
        assert pool.dir.name.startswith(f"ambient-wp{os.getpid()}-")
    finally:
        pool.cleanup()
