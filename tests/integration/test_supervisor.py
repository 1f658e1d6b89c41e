"""The cluster supervisor as a real process keeping real (stand-in) components running: restart at once
with a count and a log marker, back-off for a crash loop, deliberate stops respected, adoption after the
supervisor itself died. No network namespaces: the components are `sleep`/`sh` in the root netns."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ambient.cluster import layout as L
from ambient.cluster import lifecycle, processes
from ambient.cluster.supervisor import read_status
from helpers import wait_for


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[L.ClusterLayout]:
    lay = L.build_layout("supint", 1, tmp_path / "state")
    L.save_layout(lay)
    try:
        yield lay
    finally:
        processes.stop_all_components(lay, grace=1.0)


def gone(pid: int) -> bool:
    try:
        return b") Z " in Path(f"/proc/{pid}/stat").read_bytes()  # a zombie waits only to be reaped
    except OSError:
        return True


def status_of(lay: L.ClusterLayout, name: str) -> dict[str, Any]:
    return dict((read_status(lay).get("components") or {}).get(name) or {})


def new_pid(lay: L.ClusterLayout, name: str, old: int) -> int | None:
    pid = processes.running_components(lay).get(name)
    return pid if pid is not None and pid != old else None


def test_a_killed_component_is_restarted_at_once_counted_and_marked_in_its_log(layout: L.ClusterLayout) -> None:
    processes.start_supervisor(layout)
    pid = processes.start_component(layout, "web", ["sleep", "300"])
    os.kill(pid, signal.SIGKILL)
    t = time.monotonic()
    pid2 = wait_for(lambda: new_pid(layout, "web", pid), timeout=3, what="the restarted component")
    print(f"\nrestarted after {time.monotonic() - t:.3f}s")
    st = wait_for(lambda: status_of(layout, "web").get("pid") == pid2 and status_of(layout, "web"), timeout=3,
                  what="status")
    assert st["restarts"] == 1
    assert st["last_exit"]["signal"] == 9 and st["last_exit"]["reason"] == "signal 9 (SIGKILL)"
    markers = [line for line in processes.log_file(layout, "web").read_text().splitlines() if line.startswith("====")]
    assert len(markers) == 2
    assert "supervisor: starting web" in markers[0]
    assert "supervisor: restarting web (restart 1; last exit: signal 9 (SIGKILL)" in markers[1]
    sup, rows = lifecycle.component_statuses(layout)
    assert sup is not None
    row = next(r for r in rows if r.name == "web")
    assert (row.status, row.pid, row.restarts) == ("running", pid2, 1)
    assert row.last_exit.startswith("signal 9 (SIGKILL) at ")


def test_a_crash_loop_falls_back_to_the_back_off(layout: L.ClusterLayout) -> None:
    processes.start_supervisor(layout, env={"AMBIENT_RESTART_FAST": "2", "AMBIENT_RESTART_BACKOFF": "30"})
    processes.write_spec(layout, processes.ComponentSpecFile("crasher", ["sh", "-c", "exit 3"]))
    processes.wake_supervisor(layout)
    # Two immediate restarts, then the third exit waits 30 s.
    st = wait_for(lambda: (s := status_of(layout, "crasher")).get("restart_at") and s.get("crashes") == 3 and s,
                  timeout=10, what="the crash loop to back off")
    assert st["restarts"] == 2
    assert st["last_exit"]["code"] == 3 and st["last_exit"]["reason"] == "exit code 3"
    assert 20 < st["restart_at"] - time.time() <= 30
    row = next(r for r in lifecycle.component_statuses(layout)[1] if r.name == "crasher")
    assert row.status == "waiting" and row.pid is None


def test_a_deliberate_stop_is_not_undone(layout: L.ClusterLayout) -> None:
    processes.start_supervisor(layout)
    pid = processes.start_component(layout, "db", ["sleep", "300"])
    wait_for(lambda: status_of(layout, "db").get("pid") == pid, timeout=3, what="the supervisor's record")
    assert processes.stop_component(layout, "db", grace=1.0)
    # The supervisor saw the exit and forgot the component (rather than restarting it).
    wait_for(lambda: "db" not in (read_status(layout).get("components") or {}), timeout=3,
             what="the component forgotten")
    assert "db" not in processes.running_components(layout)
    assert "stopped on purpose, not restarted" in processes.log_file(layout, processes.SUPERVISOR).read_text()
    # Started again: a first start, not a restart.
    pid2 = processes.start_component(layout, "db", ["sleep", "300"])
    assert wait_for(lambda: status_of(layout, "db").get("pid") == pid2 and status_of(layout, "db"), timeout=3,
                    what="the new record")["restarts"] == 0


def test_a_new_supervisor_adopts_what_runs_and_restarts_it_later(layout: L.ClusterLayout) -> None:
    first = processes.start_supervisor(layout)
    pid = processes.start_component(layout, "cache", ["sleep", "300"])
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: processes.supervisor_pid(layout) is None, timeout=3, what="the supervisor dead")
    assert processes.running_components(layout)["cache"] == pid  # components outlive their supervisor
    second = processes.start_supervisor(layout)
    assert second != first
    wait_for(lambda: status_of(layout, "cache").get("adopted"), timeout=3, what="adoption")
    os.kill(pid, signal.SIGKILL)
    pid2 = wait_for(lambda: new_pid(layout, "cache", pid), timeout=3, what="the restart of an adopted component")
    st = wait_for(lambda: status_of(layout, "cache").get("pid") == pid2 and status_of(layout, "cache"), timeout=3,
                  what="status")
    assert st["restarts"] == 1 and st["last_exit"]["reason"].startswith("unknown")


def test_stop_all_stops_the_supervisor_first(layout: L.ClusterLayout) -> None:
    sup = processes.start_supervisor(layout)
    pids = [processes.start_component(layout, f"c{i}", ["sleep", "300"]) for i in range(3)]
    assert processes.stop_all_components(layout, grace=1.0) == ["c0", "c1", "c2"]
    for pid in [sup, *pids]:
        wait_for(lambda: gone(pid), timeout=3, what=f"pid {pid} gone")  # noqa: B023
    assert processes.running_components(layout) == {} and processes.supervisor_pid(layout) is None


def test_the_watchdog_replaces_a_killed_supervisor(layout: L.ClusterLayout) -> None:
    first = processes.start_supervisor(layout)
    processes.start_component(layout, processes.WATCHDOG, processes.python_module_argv(
        "ambient.cluster.supervisor", "--state-dir", layout.state_dir, "--watchdog"))
    pid = processes.start_component(layout, "web", ["sleep", "300"])
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (p := processes.supervisor_pid(layout)) != first and p, timeout=10,
                      what="a new supervisor started by the watchdog")
    assert "is not running: starting a new one" in processes.log_file(layout, processes.WATCHDOG).read_text()
    # It adopted the component and restarts it.
    wait_for(lambda: status_of(layout, "web").get("adopted"), timeout=5, what="adoption")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: new_pid(layout, "web", pid), timeout=5, what="the restart")
    assert processes.supervisor_pid(layout) == second
