"""The node agent in Kubernetes mode: its API (pods of this node, namespaces) and pod netns paths on a real node.

Role: `ambient node-agent --source kubernetes` runs the same `ambient.cni.agent.NodeAgent` as the local
cluster, with
- `KubeAgentApi`: the agent's `AgentApi` over `KubeSource` (pods watched with the field selector
  `spec.nodeName=<node>`, namespaces for the enrollment labels, the redirection annotation set with a JSON
  merge patch);
- `PodNetnsResolver`: where a pod's network namespace is, since a Kubernetes node does not name it after
  the pod the way the local cluster does.

How pod netns paths are found (the choice, in order):
1. The path the CNI ADD gave (`CNI_NETNS`, e.g. `/var/run/netns/cni-<id>` with containerd and CRI-O), which
   the agent records at /cmdadd time in `<run dir>/netns/<pod uid>`. The run dir is a hostPath, so the
   record survives agent restarts and upgrades; the DaemonSet mounts `/var/run/netns` with HostToContainer
   propagation so the path opens inside the agent's container.
2. For pods without a usable record (started before the plugin was chained, or a record lost): a scan of
   `/proc` (the DaemonSet uses hostPID) for a process whose cgroup path names the pod
   (`.../pod<uid>/...` with cgroupfs, `...-pod<uid with _>.slice` with the systemd driver); its
   `/proc/<pid>/ns/net` is the pod's netns. A process sharing the agent's own (host) netns is never taken
   (host-network pods must never get in-pod rules).
Names under /var/run/netns alone cannot be mapped to pods (the runtime names them by sandbox id, which the
pod object does not carry), so they are only used through the CNI record.

Invariants: records are written atomically, removed when the agent releases the pod, and pruned at start
for pods deleted while no agent ran; the /proc scan is cached for `scan_ttl` seconds (one reconcile
resolves many pods).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ambient.api.client import WatchEvent
from ambient.kube.errors import KubeError
from ambient.kube.source import KubeSource

log = logging.getLogger("ambient.cni.agent")

Obj = dict[str, Any]
NETNS_RECORDS = "netns"
DEFAULT_EXCLUDED = ("kube-system", "ambient-system")


class KubeAgentApi:
    """`ambient.cni.agent.AgentApi` over a `KubeSource`."""

    def __init__(self, source: KubeSource) -> None:
        self.source = source

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Obj:
        return await self.source.get(kind, name, namespace)

    async def list(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[Obj], str]:
        return await self.source.list(kind, namespace, label_selector=label_selector, field_selector=field_selector)

    async def patch(self, kind: str, name: str, namespace: str | None, patch: Obj, *, status: bool = False) -> Obj:
        if status:  # the agent only writes annotations (metadata); its RBAC grants no pods/status
            raise KubeError(f"patch {kind} {namespace}/{name}: the node agent does not write status subresources")
        return await self.source.patch(kind, name, namespace, patch)

    def watch(
        self, kind: str, namespace: str | None = None, resource_version: str | None = None,
        label_selector: str | None = None, timeout: float | None = None,
        field_selector: str | None = None,
    ) -> AsyncIterator[WatchEvent]:
        return self.source.watch(kind, resource_version, namespace, label_selector=label_selector,
                                 field_selector=field_selector, timeout=timeout)


class PodNetnsResolver:
    """Pod -> netns path on a Kubernetes node (see the module docstring); also the agent's `NetnsRecorder`."""

    def __init__(self, run_dir: Path | str, *, proc_root: Path | str = "/proc", scan_ttl: float = 2.0) -> None:
        self.records = Path(run_dir) / NETNS_RECORDS
        self.proc_root = Path(proc_root)
        self.scan_ttl = scan_ttl
        self._scan: dict[str, str] = {}
        self._scanned_at = -1e9

    # --- NetnsRecorder
    def record(self, uid: str, netns: str) -> None:
        if not _safe_uid(uid):
            return
        self.records.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.records / f".{uid}.tmp"
        tmp.write_text(netns + "\n")
        os.replace(tmp, self.records / uid)

    def forget(self, uid: str) -> None:
        if _safe_uid(uid):
            with contextlib.suppress(OSError):
                (self.records / uid).unlink()

    def prune(self, live_uids: set[str]) -> list[str]:
        """Drop the records of pods that no longer exist (deleted while no agent ran). Returns their uids."""
        try:
            names = [e.name for e in os.scandir(self.records) if not e.name.startswith(".")]
        except OSError:
            return []
        gone = sorted(n for n in names if n not in live_uids)
        for uid in gone:
            self.forget(uid)
        return gone

    def recorded(self, uid: str) -> str | None:
        if not _safe_uid(uid):
            return None
        try:
            return (self.records / uid).read_text().strip() or None
        except OSError:
            return None

    # --- NetnsResolver
    def __call__(self, pod: Mapping[str, Any]) -> str | None:
        uid = str(((pod.get("metadata") or {}).get("uid")) or "")
        if not _safe_uid(uid):
            return None
        path = self.recorded(uid)
        if path and os.path.exists(path):
            return path
        found = self._from_proc(uid)
        if found:
            log.info("pod %s: netns found through /proc: %s", uid, found)
        return found

    def _from_proc(self, uid: str) -> str | None:
        now = time.monotonic()
        if now - self._scanned_at > self.scan_ttl or uid not in self._scan:
            self._scan = self.scan_proc()
            self._scanned_at = now
        return self._scan.get(uid)

    def scan_proc(self) -> dict[str, str]:
        """pod uid -> `<proc>/<pid>/ns/net` for every process whose cgroup names a pod (not in our netns)."""
        own = _inode(self.proc_root / "self" / "ns" / "net")
        out: dict[str, str] = {}
        try:
            entries = list(os.scandir(self.proc_root))
        except OSError as exc:
            log.warning("cannot scan %s for pod network namespaces: %s", self.proc_root, exc)
            return out
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                cgroup = Path(entry.path, "cgroup").read_text()
            except OSError:
                continue  # the process exited meanwhile, or is not ours to read
            uid = pod_uid_from_cgroup(cgroup)
            if uid is None or uid in out:
                continue
            netns = Path(entry.path, "ns", "net")
            ino = _inode(netns)
            if ino is None or ino == own:
                continue
            out[uid] = str(netns)
        return out


def pod_uid_from_cgroup(text: str) -> str | None:
    """The pod uid in a /proc/<pid>/cgroup (cgroupfs `.../pod<uid>/...`, systemd `...-pod<uid_>.slice`)."""
    for line in text.splitlines():
        path = line.rsplit(":", 1)[-1]
        for part in path.split("/"):
            if part.endswith(".slice"):
                part = part[: -len(".slice")].rsplit("-", 1)[-1]
            if part.startswith("pod") and len(part) == 3 + 36:
                uid = part[3:].replace("_", "-")
                if _safe_uid(uid) and uid.count("-") == 4:
                    return uid
    return None


def _safe_uid(uid: str) -> bool:
    """A pod uid usable as a file name (never a path)."""
    return bool(uid) and all(c.isalnum() or c == "-" for c in uid) and len(uid) <= 64


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


async def serve(
    node: str,
    run_dir: Path | str,
    *,
    zds_socket: str | None = None,
    backend: str = "iptables",
    dns_capture: bool = True,
    exclude_namespaces: Sequence[str] = DEFAULT_EXCLUDED,
    kubeconfig: str | None = None,
) -> None:
    """Run the node agent of `node` against the Kubernetes API until cancelled (SIGTERM/SIGINT, through
    `core.process.run`); rules stay in place."""
    from ambient.cni.agent import ZDS_SOCKET, AgentSettings, NodeAgent, NodeAgentError
    from ambient.cni.apply import BACKENDS

    if backend not in BACKENDS:
        raise NodeAgentError(f"unknown redirection backend {backend!r}", hint=f"use one of {', '.join(BACKENDS)}")
    if not node:
        raise NodeAgentError("the node name is empty",
                             hint="pass --node (the DaemonSet sets NODE_NAME from spec.nodeName)")
    run = Path(run_dir)
    await asyncio.to_thread(run.mkdir, parents=True, exist_ok=True)
    settings = AgentSettings(
        node=node, run_dir=run, zds_socket=Path(zds_socket) if zds_socket else run / ZDS_SOCKET,
        backend=backend,  # type: ignore[arg-type]
        dns_capture=dns_capture, exclude_namespaces=tuple(exclude_namespaces),
    )
    resolver = PodNetnsResolver(run)
    async with await KubeSource.connect(kubeconfig) as source:
        pods, _ = await source.list("Pod", field_selector=f"spec.nodeName={node}")
        gone = await asyncio.to_thread(resolver.prune, {str((p.get("metadata") or {}).get("uid")) for p in pods})
        if gone:
            log.info("dropped the netns records of %d pod(s) deleted while the agent was down", len(gone))
        agent = NodeAgent(KubeAgentApi(source), settings, resolver, resolver)
        with contextlib.suppress(asyncio.CancelledError):
            await agent.run()
    log.info("node agent %s stopped (pods keep their redirection rules)", node)
