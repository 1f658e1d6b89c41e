"""In-pod mode: one `WorkloadProxy` per pod the node agent hands over on ZDS, listening INSIDE the pod netns.

ZDS callbacks (`inpod.zds.ZdsClient`):
- `on_add(uid, info, netns_fd)`: dup the fd (it is only valid during the callback), create a thread that
  entered the pod netns, fetch the pod's certificate, start the pod's proxy and return (= ACK) only once
  its listeners 15001 / 15006 / 15008 are established (SO_MARK 0x539, SO_REUSEPORT). A failure is the
  agent's NACK. Re-Add with the same netns inode never reaches us (ZDS state answers it); a different
  inode arrives with `replace`: the old proxy drains, the new one starts.
- `on_del(uid)` and `on_snapshot_done(keep)` (pods not kept): that pod's proxy drains (listeners closed
  at once, connections until the deadline), then its thread and fd are released. A Del carries only the
  uid (as Istio's ZDS `DelWorkload`): the pod was deleted OR only left the mesh (its namespace or pod
  label changed), so our log says "removed from the mesh or deleted"; the node agent's log says which.
Port 15053 (DNS) is reserved for the DNS proxy and not opened yet.

Invariants: each pod proxy is a task of the manager's TaskGroup; the netns fd and thread live exactly as
long as that task.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from ambient.inpod.netns import netns_inode
from ambient.inpod.zds_codec import WorkloadInfo
from ambient.runtime.drain import Drain
from ambient.ztunnel.proxy import NetnsSockets, PodContext, PodScope, ProxyCore, WorkloadProxy

log = logging.getLogger("ambient.ztunnel.inpod")

ProxyBuilder = Callable[[PodContext, Drain], WorkloadProxy]


@dataclass
class PodProxy:
    uid: str
    scope: PodScope
    info: WorkloadInfo
    inode: int
    netns_fd: int  # our dup, open as long as the pod's task (handed to worker processes)
    proxy: WorkloadProxy
    drain: Drain
    task: asyncio.Task[None]


class InpodManager:
    def __init__(self, core: ProxyCore, tg: asyncio.TaskGroup, build: ProxyBuilder) -> None:
        self.core = core
        self._tg = tg
        self._build = build
        self.pods: dict[str, PodProxy] = {}

    async def on_add(self, uid: str, info: WorkloadInfo, netns_fd: int) -> None:
        inode = netns_inode(netns_fd)
        log.info("pod netns received uid=%s pod=%s/%s netns_inode=%d", uid, info.namespace, info.name, inode)
        old = self.pods.pop(uid, None)
        if old is not None:
            log.info("pod %s has a new netns (inode %d -> %d): draining the old proxy", uid, old.inode, inode)
            old.drain.start()
        scope = PodScope(uid, info.name, info.namespace, info.service_account)
        await self.core.certs.fetch(scope.identity(self.core.view()))
        fd = os.dup(netns_fd)
        sockets = NetnsSockets(fd, info.name or uid[:8])
        drain = Drain(f"pod {scope.label}", self.core.settings.drain_deadline)
        proxy = self._build(PodContext(self.core, scope, sockets), drain)
        task = self._tg.create_task(self._run(scope, proxy, sockets, fd), name=f"pod-{uid}")
        await proxy.started  # raises the listener error: the agent gets a NACK naming it
        self.pods[uid] = PodProxy(uid, scope, info, inode, fd, proxy, drain, task)
        log.info("proxy started for pod %s (uid %s)", scope.label, uid)

    async def _run(self, scope: PodScope, proxy: WorkloadProxy, sockets: NetnsSockets, fd: int) -> None:
        try:
            await proxy.run()
        except Exception as exc:
            if not proxy.listening.is_set():  # on_add reports it through proxy.started
                raise  # reported by on_add as a NACK
            log.exception("proxy for pod %s failed: %s", scope.label, exc)
        finally:
            sockets.close()
            os.close(fd)
        log.info("proxy for pod %s drained and stopped", scope.label)

    async def on_del(self, uid: str) -> None:
        pod = self.pods.pop(uid, None)
        if pod is None:
            log.info("pod uid %s removed from the mesh or deleted: not served by this proxy", uid)
            return
        # ZDS does not say why (deleted, or un-enrolled while running): the node agent logs the reason.
        log.info("pod %s (uid %s) removed from the mesh or deleted: draining its proxy (deadline %.1fs)",
                 pod.scope.label, uid, pod.drain.deadline)
        pod.drain.start()

    async def on_snapshot_done(self, keep: frozenset[str]) -> None:
        for uid in [u for u in self.pods if u not in keep]:
            log.info("pod uid %s not in the node agent's snapshot (removed from the mesh or deleted)", uid)
            await self.on_del(uid)

    def live(self) -> list[tuple[str, WorkloadInfo, int]]:
        """The pods served and not draining: (uid, info, netns fd), for worker processes."""
        return [(p.uid, p.info, p.netns_fd) for p in self.pods.values() if not p.drain.draining]

    def drain_all(self) -> list[asyncio.Task[None]]:
        for pod in self.pods.values():
            pod.drain.start()
        return [p.task for p in self.pods.values()]
