"""Worker processes of one component (one per core): spawned, kept alive and stopped by the primary.

A Python process serves from one core. A component that must use every core of its node (the node proxy,
a waypoint) runs as a primary plus `count - 1` workers; every worker re-runs the primary's own command
line (`sys.orig_argv`: same interpreter, module, flags and environment) with `WORKER_INDEX_ENV` set to its
index (1..count-1) and whatever the component adds (`env_for`), so a worker is configured exactly like
the primary and only its role differs. The component decides how work is shared (SO_REUSEPORT listeners
in the same network namespace: the kernel spreads connections over the workers' sockets).

Lifecycle (the primary's `Workers.run()` task, in its TaskGroup):
- each worker is (re)started by its own supervising task; one that exits while the primary runs is
  restarted after a backoff (0.1 s doubling to 5 s, reset once it ran 10 s), with the exit logged;
- every worker gets PR_SET_PDEATHSIG(SIGTERM): if the primary dies, even by SIGKILL, its workers drain
  and exit instead of serving on unsupervised;
- `own_group=True` starts each worker in its own process group: a signal to the primary's group (a
  kubelet stopping a container) then reaches a worker once, from the primary, instead of twice (a second
  SIGTERM cuts a graceful drain short);
- `stop()` sends SIGTERM to every worker (a graceful drain, as the primary's own) and waits up to the
  given grace for each, then SIGKILLs what is left.

`get_unix(path, target)` reads an HTTP endpoint on a worker's admin Unix socket (metrics, config dump),
with a bound on the time it may take.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

import aiohttp

from ambient.core.backoff import Backoff
from ambient.runtime.errors import ProcessRuntimeError

log = logging.getLogger("ambient.runtime.workers")

WORKER_INDEX_ENV = "AMBIENT_WORKER_INDEX"
_PR_SET_PDEATHSIG = 1
_STABLE_AFTER = 10.0  # a worker that ran this long resets the restart backoff


class WorkerError(ProcessRuntimeError):
    """A worker could not be reached or started."""


MAX_WORKERS = 64


def parse_worker_count(text: str, variable: str) -> int:
    """A component's worker setting: a count in 1..64, or `auto` (one per core this process may run on)."""
    value = text.strip().lower()
    if value == "auto":
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    if not value.isdigit() or not 1 <= int(value) <= MAX_WORKERS:
        raise WorkerError(f"{variable}: expected 1..{MAX_WORKERS} or auto, got {text!r}",
                          hint="auto runs one process per core")
    return int(value)


def worker_index(env: dict[str, str] | None = None) -> int:
    """This process's worker index: 0 for the primary (no `WORKER_INDEX_ENV`), else 1..count-1."""
    raw = (os.environ if env is None else env).get(WORKER_INDEX_ENV, "0").strip() or "0"
    if not raw.isdigit():
        raise WorkerError(f"{WORKER_INDEX_ENV}={raw!r} is not a worker index",
                          hint="the variable is set by the primary process for its workers; unset it")
    return int(raw)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _own_group_dying_with_parent() -> None:  # runs in the child between fork and exec
    os.setpgid(0, 0)
    _die_with_parent()


class Workers:
    """`count - 1` supervised copies of this process (see the module docstring)."""

    def __init__(self, name: str, count: int, env_for: Callable[[int], dict[str, str]] | None = None,
                 argv: Sequence[str] | None = None, own_group: bool = False) -> None:
        self.name = name
        self._own_group = own_group
        self.indexes = list(range(1, count))
        self._env_for = env_for or (lambda _i: {})
        self._argv = list(argv if argv is not None else sys.orig_argv)
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False
        self.restarts: dict[int, int] = dict.fromkeys(self.indexes, 0)

    def alive(self, index: int) -> bool:
        proc = self._procs.get(index)
        return proc is not None and proc.returncode is None

    @property
    def pids(self) -> dict[int, int]:
        return {i: p.pid for i, p in self._procs.items() if p.returncode is None}

    async def run(self) -> None:
        """Start and supervise every worker until cancelled or `stop()`."""
        async with asyncio.TaskGroup() as tg:
            for index in self.indexes:
                tg.create_task(self._supervise(index), name=f"{self.name}-worker-{index}")

    async def _supervise(self, index: int) -> None:
        backoff = Backoff(0.1, 5.0)
        loop = asyncio.get_running_loop()
        while not self._stopping:
            env = {**os.environ, **self._env_for(index), WORKER_INDEX_ENV: str(index)}
            started = loop.time()
            try:
                # uvloop takes no `process_group`: the child leaves the group itself, before exec
                proc = await asyncio.create_subprocess_exec(
                    *self._argv, env=env, preexec_fn=_own_group_dying_with_parent if self._own_group
                    else _die_with_parent)
            except OSError as exc:
                log.error("%s worker %d could not start: %s", self.name, index, exc)
            else:
                self._procs[index] = proc
                log.info("%s worker %d started (pid %d)", self.name, index, proc.pid)
                try:
                    code = await proc.wait()
                except asyncio.CancelledError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()  # cancelled without stop(): never leave a worker behind
                    raise
                if self._stopping:
                    return
                self.restarts[index] += 1
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                log.warning("%s worker %d (pid %d) exited (%s): restarting", self.name, index, proc.pid, how)
            if loop.time() - started >= _STABLE_AFTER:
                backoff.reset()
            await asyncio.sleep(backoff.next())

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker, wait up to `grace` seconds for them, SIGKILL the rest."""
        self._stopping = True
        procs = [p for p in self._procs.values() if p.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if not procs:
            return
        _, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=grace)
        for fut in pending:
            fut.cancel()
        for proc in procs:
            if proc.returncode is None:
                log.warning("%s worker (pid %d) did not stop within %.1fs: killing it", self.name, proc.pid, grace)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


WORKER_HTTP_TIMEOUT = 2.0  # seconds a read of a worker's admin endpoint may take


async def get_unix(path: str, target: str) -> bytes:
    """GET `target` from an HTTP server on the Unix socket `path` (a worker's admin endpoint)."""
    try:
        async with (aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path),
                                          timeout=aiohttp.ClientTimeout(total=WORKER_HTTP_TIMEOUT)) as session,
                    session.get(f"http://worker{target}") as resp):
            body = await resp.read()
            if resp.status != 200:
                raise WorkerError(f"worker endpoint {path}{target} answered {resp.status}")
            return body
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise WorkerError(f"worker endpoint {path}{target} unreachable: {exc}") from None
