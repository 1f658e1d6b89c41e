"""The waypoint on every core: one primary process and `count - 1` worker processes (AMBIENT_WAYPOINT_WORKERS).

Sharing: every process opens its own SO_REUSEPORT HBONE listener on the same address of the waypoint's
network namespace, so the kernel spreads incoming HBONE connections over the processes (a connection, and
every CONNECT stream it carries, stays with the process that accepted it). Nothing else is shared: each
process has its own xDS stream, certificate, L7 config follower and upstream HBONE pools (state
replicated, not shared), so a worker is an ordinary waypoint that differs only in what it serves besides.

Roles:
- primary (no `AMBIENT_WORKER_INDEX`): serves as a single waypoint does (metrics 15020, readiness 15021),
  starts and supervises the workers with `runtime.workers.Workers` (restart with backoff, PR_SET_PDEATHSIG,
  each in its own process group so a signal to the pod's group reaches a worker once, from the primary),
  and adds their metrics up on its 15020 (`runtime.exposition.merge_expositions`) so a scraper sees one
  waypoint. Its admin socket `<dir>/0.sock` has the merged `/config_dump` and its own `/metrics`.
  The merged counters never go down when a worker dies (Prometheus would read a reset): a worker that is
  down or unreachable counts with its last exposition, and once its successor answers, the departed
  process's counter and histogram families (`monotonic_part`) stay in the sum for good (what it counted
  after the last read of its metrics is lost).
- worker (index 1..count-1, set by the primary with its admin socket and the primary's bound listen
  address, so `--listen ...:0` still means one port): no TCP listener but the shared HBONE one, which it
  binds only once it can serve (certificate, mesh state and L7 config in), so the kernel never hands it a
  connection to leave waiting in a backlog; admin (`/config_dump`, `/quitquitquit`) and `/metrics` on its
  private Unix socket.

Private directory: made by the primary (`mkdtemp`, mode 0700, `ambient-wp<pid>-XXXXXXXX` in the temp dir:
socket paths stay far below the AF_UNIX limit), sockets `<index>.sock`, removed by the primary when it exits.
One left by a primary that was killed (SIGKILL) is removed by the next primary that starts, once no process
of that pid is alive.

Stop: when the primary starts draining it SIGTERMs its workers; each drains as the primary does (listener
closed at once, live tunnels up to the drain time) and the primary waits for them (drain + `STOP_MARGIN`
seconds, then SIGKILL), so the pod's termination grace covers both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambient.runtime.exposition import WorkerMetrics
from ambient.runtime.workers import WorkerError, Workers, get_unix, parse_worker_count, worker_index
from ambient.waypoint.errors import ConfigError

log = logging.getLogger("ambient.waypoint.workers")

WORKERS_ENV = "AMBIENT_WAYPOINT_WORKERS"
WORKER_ADMIN_ENV = "AMBIENT_WAYPOINT_WORKER_ADMIN"  # set by the primary: the worker's admin socket
WORKER_LISTEN_ENV = "AMBIENT_WAYPOINT_WORKER_LISTEN"  # set by the primary: the HBONE address it bound
STOP_MARGIN = 1.0  # seconds a worker may take beyond the drain time before it is killed


def parse_workers(text: str) -> int:
    """AMBIENT_WAYPOINT_WORKERS: a count in 1..64, or `auto` (one per core this process may run on)."""
    try:
        return parse_worker_count(text, WORKERS_ENV)
    except WorkerError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from None


def format_addr(addr: tuple[str, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_addr(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class WorkerRole:
    """What makes a worker differ from the primary: its index, its admin socket, the address to share."""

    index: int
    admin_socket: str
    listen: tuple[str, int]


def workers_from_env(env: dict[str, str]) -> tuple[int, WorkerRole | None]:
    """(processes this waypoint runs, this process's worker role or None for the primary)."""
    try:
        index = worker_index(env)
    except WorkerError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from None
    raw = env.get(WORKERS_ENV, "")
    count = parse_workers(raw) if raw.strip() else 1  # a worker checks it too: same environment, same verdict
    if not index:
        return count, None
    admin, listen = env.get(WORKER_ADMIN_ENV, ""), env.get(WORKER_LISTEN_ENV, "")
    if not admin or not listen:
        raise ConfigError(f"waypoint worker {index} started without {WORKER_ADMIN_ENV} / {WORKER_LISTEN_ENV}",
                          hint="workers are started by the waypoint itself; unset AMBIENT_WORKER_INDEX")
    return 1, WorkerRole(index, admin, parse_addr(listen, WORKER_LISTEN_ENV))


DIR_PREFIX = "ambient-wp"


def stale_dir_pid(name: str) -> int | None:
    """The primary pid in a private directory's name `ambient-wp<pid>-XXXXXXXX`, else None (pure)."""
    if not name.startswith(DIR_PREFIX):
        return None
    pid, sep, _rest = name[len(DIR_PREFIX):].partition("-")
    return int(pid) if sep and pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(base_dir: str | None = None) -> None:
    """Remove the private directories of primaries that are gone (killed before they could clean up);
    only ours (same owner), only when no process of that pid is alive."""
    base = Path(base_dir or tempfile.gettempdir())
    try:
        entries = list(base.iterdir())
    except OSError:
        return
    for entry in entries:
        pid = stale_dir_pid(entry.name)
        if pid is None or _alive(pid):
            continue
        try:
            if entry.is_symlink() or not entry.is_dir() or entry.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        log.info("removed %s, left by waypoint %d", entry, pid)


class WorkerPool:
    """The primary's side (see the module docstring): `run()` lives in the app's TaskGroup; `stop()` once
    the primary drains; `cleanup()` when it exits."""

    def __init__(self, count: int, listen: tuple[str, int], base_dir: str | None = None) -> None:
        if count < 2:
            raise ConfigError("a waypoint worker pool needs at least 2 processes")
        sweep_stale(base_dir)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=base_dir))  # 0700, ours alone
        self.listen = listen
        self.workers = Workers("waypoint", count, self._env_for, own_group=True)
        self._stop_started = False
        self._metrics = WorkerMetrics()  # counters stay monotonic across worker restarts

    def admin_socket(self, index: int) -> str:
        return str(self.dir / f"{index}.sock")

    def _env_for(self, index: int) -> dict[str, str]:
        return {WORKER_ADMIN_ENV: self.admin_socket(index), WORKER_LISTEN_ENV: format_addr(self.listen)}

    async def run(self) -> None:
        log.info("waypoint workers: %d more processes sharing %s (admin sockets in %s)",
                 len(self.workers.indexes), format_addr(self.listen), self.dir)
        await self.workers.run()

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker once and wait up to `grace` seconds (then SIGKILL). Idempotent."""
        if self._stop_started:
            return
        self._stop_started = True
        await self.workers.stop(grace)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- observability -------------------------------------------------------------------------------
    async def _gather(self, target: str) -> list[tuple[int, bytes]]:
        running = [i for i in self.workers.indexes if self.workers.alive(i)]
        results = await asyncio.gather(*(get_unix(self.admin_socket(i), target) for i in running),
                                       return_exceptions=True)
        out: list[tuple[int, bytes]] = []
        for index, result in zip(running, results, strict=True):
            if isinstance(result, WorkerError):
                log.debug("skipping waypoint worker %d: %s", index, result)  # starting or restarting
            elif isinstance(result, BaseException):
                raise result
            else:
                out.append((index, result))
        return out

    async def metrics(self, own: bytes) -> bytes:
        pids = self.workers.pids
        current = dict(await self._gather("/metrics"))
        return self._metrics.merge(own, {i: (pids.get(i, 0), current.get(i)) for i in self.workers.indexes})

    async def config_dump(self, own: dict[str, Any]) -> dict[str, Any]:
        """The primary's dump with every worker's own dump under `workers.processes`."""
        processes = {0: own.get("process", {})}
        for index, body in await self._gather("/config_dump"):
            processes[index] = json.loads(body).get("process", {})
        own["workers"] = {"count": len(self.workers.indexes) + 1, "pids": {0: os.getpid(), **self.workers.pids},
                          "restarts": self.workers.restarts, "dir": str(self.dir), "processes": processes}
        return own
