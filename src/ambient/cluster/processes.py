"""Cluster component processes: start daemonised, record, supervise, stop; find every process inside cluster netns.

A component is a long-running process of the cluster (apiserver, dns, controller-manager, controlplane,
kubelet-<node>, ztunnel-<node>, node-agent-<node>). `spawn_component` runs it in its own session (setsid,
so it outlives whoever started it and never gets the terminal's signals), optionally inside a cluster netns,
with stdout+stderr appended to `<state>/logs/<name>.log` (never truncated: restarts append, after a marker
line), and records `<pid> <starttime>` in `<state>/pids/<name>.pid`.

Supervision: `start_component` records the component as wanted (`<state>/supervisor/specs/<name>.json`);
the cluster's supervisor (`ambient.cluster.supervisor`, pid in `<state>/supervisor/supervisor.pid`) starts
it and restarts it whenever it exits. `stop_component` / `kill_component` remove the spec before signalling,
so a deliberate stop stays stopped; `stop_all_components` stops the supervisor first.

Invariants:
- a pid file is trusted only if /proc/<pid>/stat still shows the recorded start time, so a recycled pid
  is never signalled;
- `kill_netns_processes` finds processes by their netns inode (not by name), so it catches pods,
  `ip netns exec` children and anything started by a component that crashed before recording it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def spawn_component(layout: L.ClusterLayout, name: str, argv: Sequence[str], netns: str | None = None,
                    env: Mapping[str, str] | None = None, *, marker: str | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` as component `name` now (in `netns` when given) and record its pid; no supervision.

    `marker` is a line appended to the log first, so a log kept across restarts shows where each run begins."""
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
        if marker:
            log.write(marker.encode() + b"\n")
            log.flush()
        try:
            proc = subprocess.Popen(cmd, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                    start_new_session=True, close_fds=True, cwd=layout.state_dir)
        except OSError as exc:
            raise ComponentError(f"cannot start component {name!r}: {exc}") from exc
    start = _proc_starttime(proc.pid)
    tmp = pid_file(layout, name).with_suffix(".pid.tmp")
    tmp.write_text(f"{proc.pid} {start or 0}\n")
    os.replace(tmp, pid_file(layout, name))  # atomic: a reader never sees an empty pid file
    return proc


def start_component(layout: L.ClusterLayout, name: str, argv: Sequence[str], netns: str | None = None,
                    env: Mapping[str, str] | None = None, *, timeout: float = 15.0) -> int:
    """Start `argv` as component `name` (in `netns` when given) under supervision; return its pid.

    The component is recorded as wanted (`<state>/supervisor/specs/<name>.json`). With the cluster's
    supervisor running, the supervisor starts it (and restarts it whenever it exits); without one it is
    started here, and a supervisor started later adopts it."""
    existing = running_components(layout).get(name)
    if existing is not None:
        raise ComponentError(f"component {name!r} of cluster {layout.name!r} is already running (pid {existing})")
    write_spec(layout, ComponentSpecFile(name, list(argv), netns, dict(env or {})))
    sup = supervisor_pid(layout)
    if sup is None:
        proc = spawn_component(layout, name, argv, netns, env)
        _CHILDREN[proc.pid] = proc  # so we can reap it if we stop it ourselves (no zombies in tests)
        return proc.pid
    wake_supervisor(layout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = running_components(layout).get(name)
        if pid is not None:
            return pid
        if supervisor_pid(layout) is None:
            raise ComponentError(f"the supervisor of cluster {layout.name!r} exited before starting {name!r}",
                                 hint=f"see {log_file(layout, SUPERVISOR)}")
        time.sleep(0.02)
    raise ComponentError(f"the supervisor did not start component {name!r} within {timeout:.0f}s",
                         hint=f"see {log_file(layout, SUPERVISOR)} and {log_file(layout, name)}")


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
    """Stop one component (SIGTERM, then SIGKILL after `grace`) and its supervision; True if it was running.

    The spec goes first, so the supervisor, seeing the exit, finds nothing to restart."""
    remove_spec(layout, name)
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


def kill_component(layout: L.ClusterLayout, name: str, timeout: float = 5.0) -> bool:
    """SIGKILL one component (a crash, as far as the rest of the cluster can tell) and stop supervising it,
    so it stays down; True if it was running. Start it again with `start_component`."""
    remove_spec(layout, name)
    rec = _read_pid_file(pid_file(layout, name))
    if not rec or not _alive(*rec):
        return False
    try:
        os.kill(rec[0], signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while _alive(*rec) and time.monotonic() < deadline:
        _reap_if_child(rec[0])
        time.sleep(0.01)
    _reap(rec[0])
    return True


def stop_all_components(layout: L.ClusterLayout, grace: float = 3.0, last: Sequence[str] = ("apiserver",)) -> list[str]:
    """Stop the supervisor, then every recorded component: all but `last` together first, then `last`
    (dependencies go last, so clients shut down while the API server still answers them).

    The stopping flag goes first: from then on neither the supervisor nor its watchdog starts anything."""
    set_stopping(layout)
    stop_component(layout, WATCHDOG, grace)
    stop_supervisor(layout, grace)
    shutil.rmtree(spec_dir(layout), ignore_errors=True)
    running = running_components(layout)
    first = {n: p for n, p in running.items() if n not in last}
    terminate(first.values(), grace)
    terminate([p for n, p in running.items() if n in last], grace)
    if layout.pid_dir.is_dir():
        for path in layout.pid_dir.glob("*.pid"):
            path.unlink(missing_ok=True)
    return sorted(running)


# --- what the supervisor is asked to keep running -------------------------------------------------------

SUPERVISOR = "supervisor"  # its log is <state>/logs/supervisor.log; its pid file is not among the components'
WATCHDOG = "supervisor-watchdog"  # a component like any other, whose job is to restart a dead supervisor


@dataclass(frozen=True)
class ComponentSpecFile:
    """How to (re)start one component: what `start_component` was given."""

    name: str
    argv: list[str]
    netns: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "argv": self.argv, "netns": self.netns, "env": self.env}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ComponentSpecFile:
        return cls(str(data["name"]), [str(a) for a in data["argv"]],
                   None if data.get("netns") is None else str(data["netns"]),
                   {str(k): str(v) for k, v in (data.get("env") or {}).items()})


def supervisor_dir(layout: L.ClusterLayout | Path) -> Path:
    """`<state>/supervisor` (given a layout, or only the state dir: `delete` may have no layout)."""
    return (layout.state_path if isinstance(layout, L.ClusterLayout) else layout) / "supervisor"


def spec_dir(layout: L.ClusterLayout) -> Path:
    return supervisor_dir(layout) / "specs"


def write_spec(layout: L.ClusterLayout, spec: ComponentSpecFile) -> None:
    d = spec_dir(layout)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{spec.name}.json.tmp"
    tmp.write_text(json.dumps(spec.to_json()) + "\n")
    os.replace(tmp, d / f"{spec.name}.json")


def remove_spec(layout: L.ClusterLayout, name: str) -> None:
    (spec_dir(layout) / f"{name}.json").unlink(missing_ok=True)


def has_spec(layout: L.ClusterLayout, name: str) -> bool:
    return (spec_dir(layout) / f"{name}.json").exists()


def read_specs(layout: L.ClusterLayout) -> dict[str, ComponentSpecFile]:
    out: dict[str, ComponentSpecFile] = {}
    d = spec_dir(layout)
    if not d.is_dir():
        return out
    for path in sorted(d.glob("*.json")):
        try:
            spec = ComponentSpecFile.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # removed meanwhile, or half a file from a crash: never fatal for the supervisor
        out[spec.name] = spec
    return out


def supervisor_pid_file(layout: L.ClusterLayout) -> Path:
    return supervisor_dir(layout) / "supervisor.pid"


def supervisor_ready_file(layout: L.ClusterLayout) -> Path:
    return supervisor_dir(layout) / "ready"


def stopping_file(layout: L.ClusterLayout) -> Path:
    return supervisor_dir(layout) / "stopping"


def set_stopping(layout: L.ClusterLayout | Path) -> None:
    """Tell the supervisor and its watchdog that the cluster is being stopped: start nothing any more."""
    d = supervisor_dir(layout)
    if d.parent.is_dir():
        d.mkdir(exist_ok=True)
        (d / "stopping").touch()


def is_stopping(layout: L.ClusterLayout) -> bool:
    return stopping_file(layout).exists()


def supervisor_pid(layout: L.ClusterLayout) -> int | None:
    """The pid of the cluster's supervisor when it is alive."""
    rec = _read_pid_file(supervisor_pid_file(layout))
    return rec[0] if rec and _alive(*rec) else None


def start_supervisor(layout: L.ClusterLayout, env: Mapping[str, str] | None = None, timeout: float = 15.0) -> int:
    """Start the cluster's supervisor (`ambient.cluster.supervisor`) unless it runs; wait until it handles
    wake-ups; return its pid. It adopts the components already running."""
    supervisor_dir(layout).mkdir(parents=True, exist_ok=True)
    stopping_file(layout).unlink(missing_ok=True)  # asked to supervise: whatever stop was under way is over
    pid = supervisor_pid(layout)
    if pid is not None:
        wake_supervisor(layout)  # it may have been told to stop starting things: look again now
        return pid
    supervisor_ready_file(layout).unlink(missing_ok=True)
    argv = python_module_argv("ambient.cluster.supervisor", "--state-dir", layout.state_dir)
    proc = spawn_component(layout, SUPERVISOR, argv, None, env,
                           marker=f"==== {_utc_now()} starting the supervisor ====")
    # spawn_component recorded it among the components: the supervisor is not one of them.
    os.replace(pid_file(layout, SUPERVISOR), supervisor_pid_file(layout))
    _CHILDREN[proc.pid] = proc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _supervisor_ready(layout, proc.pid):
            return proc.pid
        if proc.poll() is not None:
            raise ComponentError(f"the supervisor of cluster {layout.name!r} exited during startup",
                                 hint=f"see {log_file(layout, SUPERVISOR)}")
        time.sleep(0.02)
    raise ComponentError(f"the supervisor of cluster {layout.name!r} did not start within {timeout:.0f}s",
                         hint=f"see {log_file(layout, SUPERVISOR)}")


def _supervisor_ready(layout: L.ClusterLayout, pid: int) -> bool:
    try:
        return int(supervisor_ready_file(layout).read_text().split()[0]) == pid
    except (OSError, ValueError, IndexError):
        return False


def wake_supervisor(layout: L.ClusterLayout) -> None:
    """Ask the supervisor to look at the specs now (SIGUSR1, sent only once it handles it: the default
    action of SIGUSR1 is to terminate). A supervisor not ready yet scans the specs when it is."""
    pid = supervisor_pid(layout)
    if pid is not None and _supervisor_ready(layout, pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)


def stop_supervisor(layout: L.ClusterLayout, grace: float = 3.0) -> bool:
    """Stop the supervisor (it leaves the components running); True if it was running."""
    pid = supervisor_pid(layout)
    if pid is not None:
        terminate([pid], grace)
    supervisor_pid_file(layout).unlink(missing_ok=True)
    supervisor_ready_file(layout).unlink(missing_ok=True)
    return pid is not None


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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
