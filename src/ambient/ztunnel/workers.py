"""The node proxy on every core: the primary process relays the node agent's pods to its worker processes.

With `Settings.workers = N > 1` (in-pod mode) the node proxy is N processes (`runtime.workers`). Only the
primary talks ZDS with the node agent (the agent serves one proxy connection, as Istio's does). For each
worker the primary serves a ZDS endpoint of its own (`inpod.zds.ZdsServer`, the same protocol and code the
agent uses) and the worker is an ordinary node proxy whose ZDS client points there. So:
- Add: the primary starts its own pod proxy, then hands the same netns fd to every running worker and
  ACKs the agent only once all of them ACKed (a CNI ADD still succeeds only when the pod is served). A
  worker's NACK removes the pod everywhere and NACKs the agent with the worker's reason.
- Del / snapshot end: relayed the same way.
- A worker that (re)connects gets a snapshot of the primary's live pods, so one restarted by the
  supervisor serves every pod again; while it is down the kernel gives its share to the others (the
  listeners are SO_REUSEPORT in each pod netns, so no connection is refused).
- Metrics and connections: the primary's `/metrics` and `/config_dump` add up the workers' (read from
  each worker's admin Unix socket), so scrapers and `ambient zc` see one node proxy; the counters never go
  down when a worker is replaced (`runtime.exposition.WorkerMetrics`).

Each worker has its own xDS stream, certificates and HBONE pools (state replicated, not shared): nothing
is shared between processes but the pods' listening ports. Worker sockets live beside the agent's ZDS
socket, named `zw<primary pid>-<index>.zds` / `.adm`, so two proxies of one node (an upgrade) never clash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambient.inpod.errors import ZdsError, ZdsNackError, ZdsNotConnectedError
from ambient.inpod.zds import SnapshotPod, ZdsServer
from ambient.inpod.zds_codec import WorkloadInfo
from ambient.runtime.exposition import WorkerMetrics
from ambient.runtime.workers import WorkerError, Workers, get_unix
from ambient.ztunnel.errors import ConfigError

log = logging.getLogger("ambient.ztunnel.workers")

WORKER_ZDS_ENV = "AMBIENT_ZTUNNEL_WORKER_ZDS"  # set by the primary: the worker's ZDS socket
WORKER_ADMIN_ENV = "AMBIENT_ZTUNNEL_WORKER_ADMIN"  # set by the primary: the worker's admin socket
ACK_WAIT = 10.0  # how long an Add/Del waits for a running worker to be connected and ACK


@dataclass(frozen=True)
class WorkerRole:
    """What makes a worker process differ from the primary: its index and its two private sockets."""

    index: int
    zds_socket: str
    admin_socket: str

    @classmethod
    def from_env(cls, index: int, env: dict[str, str] | None = None) -> WorkerRole:
        env = dict(os.environ if env is None else env)
        zds, admin = env.get(WORKER_ZDS_ENV, ""), env.get(WORKER_ADMIN_ENV, "")
        if not zds or not admin:
            raise ConfigError(f"worker {index} started without {WORKER_ZDS_ENV} / {WORKER_ADMIN_ENV}",
                              hint="workers are started by the node proxy itself; unset AMBIENT_WORKER_INDEX")
        return cls(index, zds, admin)


def worker_paths(zds_socket: str, index: int, pid: int | None = None) -> tuple[str, str]:
    base = Path(zds_socket).parent / f"zw{os.getpid() if pid is None else pid}-{index}"
    return f"{base}.zds", f"{base}.adm"


PodsProvider = Callable[[], Sequence[tuple[str, WorkloadInfo, int]]]  # live pods: (uid, info, netns fd)


class WorkerRelay:
    """The primary's side (see the module docstring). `run()` lives in the app's TaskGroup."""

    def __init__(self, count: int, zds_socket: str, live_pods: PodsProvider) -> None:
        if count < 2:
            raise ConfigError("a worker relay needs at least 2 processes")
        self._live_pods = live_pods
        self._paths = {i: worker_paths(zds_socket, i) for i in range(1, count)}
        self._servers: dict[int, ZdsServer] = {}
        self.workers = Workers("node proxy", count, self._env_for, own_group=True)  # signals come from us
        self._up = asyncio.Event()
        self._metrics = WorkerMetrics()

    def _env_for(self, index: int) -> dict[str, str]:
        zds, admin = self._paths[index]
        return {WORKER_ZDS_ENV: zds, WORKER_ADMIN_ENV: admin}

    async def _snapshot(self) -> list[SnapshotPod]:
        # fds are dup'ed: the server owns and closes what the provider returns
        return [SnapshotPod(uid, info, os.dup(fd)) for uid, info, fd in self._live_pods()]

    async def run(self) -> None:
        async with AsyncExitStack() as stack:
            for index, (zds, _admin) in self._paths.items():
                self._servers[index] = await stack.enter_async_context(ZdsServer(zds, self._snapshot))
            self._up.set()
            try:
                await self.workers.run()
            finally:
                for _zds, admin in self._paths.values():
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(admin)

    async def wait_connected(self, limit: float) -> None:
        """Until every worker connected once (so the agent's first pods are not held up by a worker still
        starting), or `limit` seconds: a worker slower than that gets the pods in its snapshot when it connects."""
        await self._up.wait()
        waits = [s.wait_ready(limit) for s in self._servers.values()]
        for index, result in zip(self._servers, await asyncio.gather(*waits, return_exceptions=True), strict=True):
            if isinstance(result, ZdsNotConnectedError):
                log.warning("node proxy worker %d not connected after %.0fs: starting without it", index, limit)
            elif isinstance(result, BaseException):
                raise result
        log.info("node proxy workers connected: %d of %d", sum(s.ready for s in self._servers.values()),
                 len(self._servers))

    async def stop(self, grace: float) -> None:
        await self.workers.stop(grace)

    # -- pods ----------------------------------------------------------------------------------------
    async def _each(self, call: Callable[[ZdsServer], Any], what: str) -> list[tuple[int, BaseException]]:
        """Run `call` on every running worker's server at once; errors per worker index."""
        await self._up.wait()
        running = [i for i in self._servers if self.workers.alive(i)]
        results = await asyncio.gather(*(call(self._servers[i]) for i in running), return_exceptions=True)
        failed: list[tuple[int, BaseException]] = []
        for index, result in zip(running, results, strict=True):
            if isinstance(result, ZdsNotConnectedError):
                # it died or is restarting: its reconnection snapshot carries the current pods
                log.warning("node proxy worker %d not connected for %s: it gets the pods on reconnect", index, what)
            elif isinstance(result, BaseException):
                failed.append((index, result))
        return failed

    async def add(self, uid: str, info: WorkloadInfo, netns_fd: int) -> None:
        """Hand a pod the primary already serves to every worker. Raises the first worker's refusal."""
        failed = await self._each(lambda s: s.add_pod(uid, info, netns_fd, ready_timeout=ACK_WAIT),
                                  f"pod {info.namespace}/{info.name}")
        if failed:
            index, error = failed[0]
            await self.delete(uid)
            reason = error.error if isinstance(error, ZdsNackError) else str(error)
            raise ConfigError(f"node proxy worker {index} could not serve pod {info.namespace}/{info.name}: "
                              f"{reason}")

    async def delete(self, uid: str) -> None:
        for index, error in await self._each(lambda s: s.del_pod(uid, ready_timeout=ACK_WAIT), f"pod uid {uid}"):
            if not isinstance(error, ZdsError):
                raise error
            log.warning("node proxy worker %d did not remove pod uid %s: %s (it is resynced on reconnect)",
                        index, uid, error)

    # -- observability -------------------------------------------------------------------------------
    async def _gather(self, target: str) -> dict[int, bytes]:
        """What each running worker's admin socket answers for `target` (a worker starting or restarting
        does not answer and is left out)."""
        running = [i for i in self._paths if self.workers.alive(i)]
        results = await asyncio.gather(*(get_unix(self._paths[i][1], target) for i in running),
                                       return_exceptions=True)
        out: dict[int, bytes] = {}
        for index, result in zip(running, results, strict=True):
            if isinstance(result, WorkerError):
                log.debug("skipping node proxy worker %d: %s", index, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                out[index] = result
        return out

    async def metrics(self, own: bytes) -> bytes:
        """The sum of every process's series; counters never go down when a worker is replaced."""
        pids = self.workers.pids
        current = await self._gather("/metrics")
        return self._metrics.merge(own, {i: (pids.get(i, 0), current.get(i)) for i in self._paths})

    async def config_dump(self, own: dict[str, Any]) -> dict[str, Any]:
        """The primary's dump, with every worker's live connections added under their pods."""
        pods = own.setdefault("workloadState", {})
        for body in (await self._gather("/config_dump")).values():
            for uid, state in json.loads(body).get("workloadState", {}).items():
                mine = pods.setdefault(uid, {**state, "connections": {"inbound": [], "outbound": []}})
                for direction in ("inbound", "outbound"):
                    mine["connections"].setdefault(direction, []).extend(
                        state.get("connections", {}).get(direction, []))
        own["workers"] = {"count": len(self._paths) + 1, "pids": {0: os.getpid(), **self.workers.pids},
                          "restarts": self.workers.restarts}
        return own
