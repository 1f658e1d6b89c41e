"""Cluster component processes: start daemonised, record, stop; find every process inside cluster netns.

A component is a long-running process of the cluster (apiserver, dns, controller-manager, kubelet-<node>,
later ztunnel-<node>, node-agent-<node>, controlplane). `start_component` runs it in its own session
(setsid, so it outlives the `ambient cluster create` that started it and never gets the terminal's
signals), optionally inside a cluster netns, with stdout+stderr appended to `<state>/logs/<name>.log`, and
records `<pid> <starttime>` in `<state>/pids/<name>.pid`.

Invariants:
- a pid file is trusted only if /proc/<pid>/stat still shows the recorded start time, so a recycled pid
  is never signalled;
- `kill_netns_processes` finds processes by their netns inode (not by name), so it catches pods,
  `ip netns exec` children and anything started by a component that crashed before recording it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ambient.cluster import layout as L
from ambient.cluster.errors import ComponentError


def _proc_starttime(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The comm field may contain spaces and parentheses: fields after the last ')' are fixed.
    fields = stat[stat.rfind(")") + 2:].split()
    if fields and fields[0] == "Z":
        return None  # a zombie is already dead; it only waits for its parent to reap it
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def pid_file(layout: L.ClusterLayout, name: str) -> Path:
    return layout.pid_dir / f"{name}.pid"


def log_file(layout: L.ClusterLayout, name: str) -> Path:
    return layout.log_dir / f"{name}.log"


def python_module_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def start_component(layout: L.ClusterLayout, name: str, argv: Sequence[str], netns: str | None = None,
                    env: Mapping[str, str] | None = None) -> int:
    """Start `argv` as component `name` (in `netns` when given); return its pid."""
    existing = running_components(layout).get(name)
    if existing is not None:
        raise ComponentError(f"component {name!r} of cluster {layout.name!r} is already running (pid {existing})")
    layout.log_dir.mkdir(parents=True, exist_ok=True)
    layout.pid_dir.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update({"AMBIENT_CLUSTER": layout.name, "AMBIENT_STATE_DIR": layout.state_dir,
                     "PYTHONUNBUFFERED": "1"})
    if env:
        full_env.update(env)
    # `nsenter --net` execs the component in place: the pid we record is the component's own pid.
    cmd = list(argv) if netns is None else ["nsenter", f"--net={L.netns_path(netns)}", "--", *argv]
    with open(log_file(layout, name), "ab") as log, open(os.devnull, "rb") as devnull:
        try:
            proc = subprocess.Popen(cmd, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                    start_new_session=True, close_fds=True, cwd=layout.state_dir)
        except OSError as exc:
            raise ComponentError(f"cannot start component {name!r}: {exc}") from exc
    start = _proc_starttime(proc.pid)
    pid_file(layout, name).write_text(f"{proc.pid} {start or 0}\n")
    _CHILDREN[proc.pid] = proc  # so we can reap it if we stop it ourselves (no zombies in tests)
    return proc.pid


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _read_pid_file(path: Path) -> tuple[int, int] | None:
    try:
        parts = path.read_text().split()
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _alive(pid: int, start: int) -> bool:
    now = _proc_starttime(pid)
    return now is not None and (start == 0 or now == start)


def running_components(layout: L.ClusterLayout) -> dict[str, int]:
    """name -> pid of the recorded components that are still alive."""
    out: dict[str, int] = {}
    if not layout.pid_dir.is_dir():
        return out
    for path in sorted(layout.pid_dir.glob("*.pid")):
        rec = _read_pid_file(path)
        if rec and _alive(*rec):
            out[path.stem] = rec[0]
    return out


def component_exited(layout: L.ClusterLayout, name: str) -> bool:
    rec = _read_pid_file(pid_file(layout, name))
    return rec is None or not _alive(*rec)


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        try:
            child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            _CHILDREN[pid] = child


def terminate(pids: Iterable[int], grace: float) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL what is left."""
    pids = list(pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    left = pids
    while left and time.monotonic() < deadline:
        for pid in left:
            _reap_if_child(pid)
        left = [p for p in left if _proc_starttime(p) is not None]
        if left:
            time.sleep(0.02)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        _reap(pid)


def _reap_if_child(pid: int) -> None:
    if pid in _CHILDREN:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def stop_component(layout: L.ClusterLayout, name: str, grace: float = 3.0) -> bool:
    """Stop one component (SIGTERM, then SIGKILL after `grace`); True if it was running."""
    path = pid_file(layout, name)
    rec = _read_pid_file(path)
    was_running = bool(rec and _alive(*rec))
    if rec and was_running:
        terminate([rec[0]], grace)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    return was_running


def stop_all_components(layout: L.ClusterLayout, grace: float = 3.0, last: Sequence[str] = ("apiserver",)) -> list[str]:
    """Stop every recorded component: all but `last` together first, then `last` (dependencies go last,
    so clients shut down while the API server still answers them)."""
    running = running_components(layout)
    first = {n: p for n, p in running.items() if n not in last}
    terminate(first.values(), grace)
    terminate([p for n, p in running.items() if n in last], grace)
    if layout.pid_dir.is_dir():
        for path in layout.pid_dir.glob("*.pid"):
            path.unlink(missing_ok=True)
    return sorted(running)


def _ns_key(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def netns_processes(netns_names: Iterable[str]) -> dict[int, str]:
    """pid -> netns name of every process whose network namespace is one of `netns_names`."""
    keys: dict[tuple[int, int], str] = {}
    for name in netns_names:
        key = _ns_key(L.netns_path(name))
        if key is not None:
            keys[key] = name
    if not keys:
        return {}
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        key = _ns_key(f"/proc/{entry}/ns/net")
        if key is not None and key in keys:
            found[int(entry)] = keys[key]
    return found


def kill_netns_processes(netns_names: Iterable[str], grace: float = 1.0) -> list[int]:
    """Terminate (then kill) every process living in one of the namespaces; return their pids."""
    names = list(netns_names)
    pids = list(netns_processes(names))
    if pids:
        terminate(pids, grace)
    # Processes may have forked while we waited: a final sweep with SIGKILL only.
    for _ in range(5):
        rest = list(netns_processes(names))
        if not rest:
            break
        for pid in rest:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
        pids += [p for p in rest if p not in pids]
    return pids
