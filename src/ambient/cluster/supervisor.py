"""The cluster supervisor: keeps every component of a local cluster running, as the kubelet keeps a DaemonSet's
pods running (`python -m ambient.cluster.supervisor --state-dir <state>`, one per cluster).

What it keeps running is what `processes.start_component` recorded in `<state>/supervisor/specs/<name>.json`
(argv, netns, extra env); `processes.stop_component` removes the spec first, so a deliberate stop is never
undone. The components are its children (own session each, as before), so it learns at once when one exits
(SIGCHLD, multiplexed with SIGUSR1 "specs changed" through a wake-up pipe) and with what code or signal.
Components that were already running when it started (a previous supervisor crashed) are adopted: watched
through their pid files every `POLL_INTERVAL`, their exit status unknown.

Restart policy (pure: `restart_delay`, `crashes_after_exit`; settings `RestartPolicy`, from the environment):
the kubelet waits 10 s before restarting a crashed container, doubling to 5 min, and forgets the crashes
after 10 min of running. A mesh node proxy, node agent or control plane that stays down 10 s breaks traffic
or enrollment for that long, so the first `fast_restarts` (3) restarts in a row are immediate; only a
component that keeps crashing falls back to the kubelet's back-off (10 s doubling to 5 min). A run of
`reset_after` (10 min) forgets the earlier crashes.

Observable: each (re)start appends a marker line to the component's log (`==== <time> supervisor: restarting
<name> (restart N; last exit: signal 9 (SIGKILL) after 12.3s) ====`; logs are appended to, never
truncated); `<state>/supervisor/status.json` (pid, start time, restart count, last exit, pending restart per
component) is rewritten atomically on every change and read by `ambient cluster status`.

Who supervises the supervisor: its watchdog (`--watchdog`, component `supervisor-watchdog`), which the
supervisor keeps running like any component and which starts a new supervisor within `POLL_INTERVAL` when
none is alive; the new one adopts everything. Only killing both at once needs `ambient cluster supervise`.
A `<state>/supervisor/stopping` flag (set by `cluster delete` before it stops anything) makes both start
nothing more.

Invariants:
- it never kills a component (stopping is `processes.stop_component`'s job) and it survives the exit of
  any of them; an exception in one pass is logged and the next pass runs;
- SIGTERM/SIGINT stop it without touching the components (`cluster delete` stops it first, waits for it to
  exit, then stops the components, so nothing is restarted behind delete's back); SIGHUP is ignored;
- it carries the cluster's `AMBIENT_COMPONENT_OF` marker, so `cluster delete` finds it even without its
  pid file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ambient.cluster import layout as L
from ambient.cluster import processes
from ambient.cluster.errors import ClusterError, ComponentError, SupervisorSettingsError

log = logging.getLogger("ambient.cluster.supervisor")

POLL_INTERVAL = 0.5  # adopted components (not our children) are checked this often
IDLE_INTERVAL = 5.0  # otherwise SIGCHLD / SIGUSR1 wake us; this pass only catches a lost wake-up


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart an exited component. Environment: AMBIENT_RESTART_FAST (3), AMBIENT_RESTART_BACKOFF
    (10 s), AMBIENT_RESTART_BACKOFF_MAX (300 s), AMBIENT_RESTART_RESET_AFTER (600 s)."""

    fast_restarts: int = 3  # restarts in a row done at once, before any back-off
    initial_backoff: float = 10.0  # then the kubelet's CrashLoopBackOff: 10 s, 20 s, 40 s, ...
    max_backoff: float = 300.0  # ... up to 5 min
    reset_after: float = 600.0  # a run this long forgets the earlier crashes

    ENV: ClassVar[dict[str, str]] = {
        "fast_restarts": "AMBIENT_RESTART_FAST", "initial_backoff": "AMBIENT_RESTART_BACKOFF",
        "max_backoff": "AMBIENT_RESTART_BACKOFF_MAX", "reset_after": "AMBIENT_RESTART_RESET_AFTER"}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RestartPolicy:
        values: dict[str, Any] = {}
        for attr, var in cls.ENV.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                value = int(raw) if attr == "fast_restarts" else float(raw)
            except ValueError:
                raise SupervisorSettingsError(f"{var}={raw!r} is not a number",
                                              hint=f"e.g. {var}={getattr(cls(), attr)}") from None
            if value < 0:
                raise SupervisorSettingsError(f"{var}={raw!r} must not be negative")
            values[attr] = value
        return cls(**values)


def restart_delay(policy: RestartPolicy, crashes: int) -> float:
    """Seconds to wait before restarting a component that exited for the `crashes`-th time in a row (>= 1)."""
    if crashes <= policy.fast_restarts:
        return 0.0
    step = crashes - policy.fast_restarts - 1
    if step >= 32:  # 2**32 * anything positive is far beyond any maximum: no float overflow games
        return policy.max_backoff
    return float(min(policy.initial_backoff * 2**step, policy.max_backoff))


def crashes_after_exit(policy: RestartPolicy, crashes_before: int, ran_for: float) -> int:
    """The crash count after one more exit: a run of `reset_after` or more starts the count again."""
    return 1 if ran_for >= policy.reset_after else crashes_before + 1


def describe_exit(returncode: int | None) -> str:
    """`exit code 1`, `signal 9 (SIGKILL)`, or `unknown` (an adopted process: not our child)."""
    if returncode is None:
        return "unknown (not started by this supervisor)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "?"
        return f"signal {-returncode} ({name})"
    return f"exit code {returncode}"


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


@dataclass
class ComponentState:
    """What the status file says about one component."""

    name: str
    pid: int | None = None
    started_at: float | None = None  # wall clock of the current run
    restarts: int = 0
    crashes: int = 0  # exits in a row (reset by a long run): drives the back-off
    last_exit: dict[str, Any] | None = None  # {"reason", "code", "signal", "at", "ran_for"}
    restart_at: float | None = None  # wall clock of the pending restart
    adopted: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ComponentState:
        known = {k: data[k] for k in ("name", "pid", "started_at", "restarts", "crashes", "last_exit",
                                      "restart_at", "adopted") if k in data}
        return cls(**known)


@dataclass
class _Run:
    proc: subprocess.Popen[bytes] | None  # None: adopted, watched through the pid file
    pid: int
    started: float  # monotonic


@dataclass
class Supervisor:
    layout: L.ClusterLayout
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    mono: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    states: dict[str, ComponentState] = field(default_factory=dict)
    runs: dict[str, _Run] = field(default_factory=dict)
    _due: dict[str, float] = field(default_factory=dict)  # name -> monotonic time of the pending restart
    _stopping: bool = False
    _written: str = ""

    # --- one pass ------------------------------------------------------------------------------------------
    def step(self) -> None:
        specs = processes.read_specs(self.layout)
        self._reap(specs)
        if processes.is_stopping(self.layout):  # `cluster delete` under way: reap, never start
            self._write_status()
            return
        recorded = processes.running_components(self.layout)
        now = self.mono()
        for name, spec in specs.items():
            if self._stopping:
                break
            if name in self.runs:
                continue
            st = self.states.setdefault(name, ComponentState(name))
            pid = recorded.get(name)
            if pid is not None:  # started by someone else (a previous supervisor, or without one): adopt
                if st.pid != pid or st.started_at is None:  # not the run the status file knows
                    st.started_at = self.wall()
                ran = max(0.0, self.wall() - st.started_at)
                self.runs[name] = _Run(None, pid, now - ran)
                st.pid, st.adopted, st.restart_at = pid, True, None
                self._due.pop(name, None)
                log.info("adopted %s (pid %d)", name, pid)
                continue
            if st.pid is not None:  # the status file's run died while no supervisor watched it
                ran = max(0.0, self.wall() - (st.started_at or self.wall()))
                self._exited(name, _Run(None, st.pid, now - ran), None, wanted=True)
            if now < self._due.get(name, now):
                continue
            self._start(spec, st)
        for name in [n for n in self.states if n not in specs and n not in self.runs]:
            del self.states[name]  # stopped on purpose: a later start is a first start again
            self._due.pop(name, None)
        self._write_status()

    def _reap(self, specs: Mapping[str, processes.ComponentSpecFile]) -> None:
        recorded: dict[str, int] | None = None
        for name, run in list(self.runs.items()):
            if run.proc is not None:
                code = run.proc.poll()
                if code is None:
                    continue
                exit_code: int | None = code
            else:
                if recorded is None:
                    recorded = processes.running_components(self.layout)
                if recorded.get(name) == run.pid:
                    continue
                exit_code = None
            del self.runs[name]
            self._exited(name, run, exit_code, wanted=name in specs)

    def _exited(self, name: str, run: _Run, code: int | None, *, wanted: bool) -> None:
        st = self.states.setdefault(name, ComponentState(name))
        ran_for = max(0.0, self.mono() - run.started)
        what = describe_exit(code)
        st.last_exit = {"reason": what, "code": code if code is None or code >= 0 else None,
                        "signal": -code if code is not None and code < 0 else None,
                        "at": self.wall(), "ran_for": round(ran_for, 3)}
        st.pid, st.started_at, st.adopted = None, None, False
        if not wanted:
            log.info("%s (pid %d) exited (%s): stopped on purpose, not restarted", name, run.pid, what)
            return
        st.crashes = crashes_after_exit(self.policy, st.crashes, ran_for)
        delay = restart_delay(self.policy, st.crashes)
        self._due[name] = self.mono() + delay
        st.restart_at = self.wall() + delay
        log.warning("%s (pid %d) exited (%s) after %.1fs: restarting %s (exit %d in a row)", name, run.pid,
                    what, ran_for, "now" if delay == 0 else f"in {delay:.0f}s", st.crashes)

    def _start(self, spec: processes.ComponentSpecFile, st: ComponentState) -> None:
        first = st.last_exit is None
        if first:
            marker = f"==== {_iso(self.wall())} supervisor: starting {spec.name} ===="
        else:
            assert st.last_exit is not None
            marker = (f"==== {_iso(self.wall())} supervisor: restarting {spec.name} (restart {st.restarts + 1}; "
                      f"last exit: {st.last_exit['reason']} after {st.last_exit['ran_for']:.1f}s) ====")
        try:
            proc = processes.spawn_component(self.layout, spec.name, spec.argv, spec.netns, spec.env,
                                             marker=marker)
        except (ComponentError, OSError) as e:  # e.g. its netns is gone: retried with the back-off
            st.crashes += 1
            delay = max(restart_delay(self.policy, st.crashes), 1.0)
            self._due[spec.name] = self.mono() + delay
            st.restart_at = self.wall() + delay
            log.error("cannot start %s: %s (retrying in %.0fs)", spec.name, e, delay)
            return
        if not first:
            st.restarts += 1
        self.runs[spec.name] = _Run(proc, proc.pid, self.mono())
        self._due.pop(spec.name, None)
        st.pid, st.started_at, st.restart_at, st.adopted = proc.pid, self.wall(), None, False
        log.info("%s %s (pid %d)", "started" if first else "restarted", spec.name, proc.pid)

    # --- status file ---------------------------------------------------------------------------------------
    def _write_status(self) -> None:
        doc = {"supervisor": {"pid": os.getpid()}, "policy": asdict(self.policy),
               "components": {n: asdict(s) for n, s in sorted(self.states.items())}}
        text = json.dumps(doc, indent=1, sort_keys=True)
        if text == self._written:
            return
        path = status_file(self.layout)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
        self._written = text

    def load_status(self) -> None:
        """Carry restart counts and last exits over from a previous supervisor."""
        doc = read_status(self.layout)
        for name, data in (doc.get("components") or {}).items():
            with contextlib.suppress(TypeError, KeyError):
                st = ComponentState.from_json(data)  # pid kept: adoption checks it is still that run
                st.adopted, st.restart_at = False, None
                self.states[name] = st

    # --- the loop ------------------------------------------------------------------------------------------
    def next_timeout(self) -> float:
        timeout = POLL_INTERVAL if any(run.proc is None for run in self.runs.values()) else IDLE_INTERVAL
        if self._due:
            timeout = min(timeout, max(0.0, min(self._due.values()) - self.mono()))
        return timeout

    def stop(self) -> None:
        self._stopping = True

    def run(self) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGUSR1):
            signal.signal(sig, lambda *_: None)  # the wake-up fd does the work
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        processes.supervisor_dir(self.layout).mkdir(parents=True, exist_ok=True)
        self.load_status()
        processes.supervisor_ready_file(self.layout).write_text(f"{os.getpid()}\n")
        log.info("supervising cluster %s (pid %d): %s", self.layout.name, os.getpid(), self.policy)
        while not self._stopping:
            try:
                self.step()
            except Exception:  # one bad pass must not end supervision
                log.exception("supervisor pass failed; continuing")
                time.sleep(POLL_INTERVAL)
            if self._stopping:
                break
            with contextlib.suppress(InterruptedError):
                ready, _, _ = select.select([r], [], [], self.next_timeout())
                if ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(r, 4096)
        log.info("supervisor stopping (components keep running)")


def status_file(layout: L.ClusterLayout) -> Path:
    return processes.supervisor_dir(layout) / "status.json"


def read_status(layout: L.ClusterLayout) -> dict[str, Any]:
    try:
        data = json.loads(status_file(layout).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def watch(layout: L.ClusterLayout, env: Mapping[str, str], interval: float = POLL_INTERVAL,
          should_stop: Callable[[], bool] = lambda: False) -> None:
    """The watchdog's loop: start a new supervisor whenever none is alive (it adopts every component, this
    watchdog included). The supervisor restarts the watchdog and the watchdog the supervisor, so killing
    either heals; killing both at once needs `ambient cluster supervise`."""
    while not should_stop():
        try:
            if not processes.is_stopping(layout) and processes.supervisor_pid(layout) is None:
                log.warning("the supervisor of cluster %s is not running: starting a new one", layout.name)
                pid = processes.start_supervisor(layout, env=env)
                log.info("supervisor started (pid %d)", pid)
        except Exception:  # keep watching; the next pass retries
            log.exception("could not start the supervisor")
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:  # supervisors we started and that died: no zombies
                pass
        time.sleep(interval)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ambient-supervisor", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--watchdog", action="store_true",
                        help="Do not supervise the components: restart the supervisor when it dies.")
    parser.add_argument("--log-level", default=os.environ.get("AMBIENT_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        layout = L.load_layout(args.state_dir)
        policy = RestartPolicy.from_env(os.environ)
    except ClusterError as e:
        log.error("%s", e)
        raise SystemExit(2) from e
    if args.watchdog:
        marker = {k: v for k, v in os.environ.items() if k == "AMBIENT_COMPONENT_OF"}
        watch(layout, marker)
        return
    Supervisor(layout, policy).run()


if __name__ == "__main__":
    main()
