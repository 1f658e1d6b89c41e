"""The node agent (`ambient node-agent`): captures enrolled pods of one node and hands them to the node proxy.

Role (redirection.md "Node agent"): one per node, running in the node netns. Three inputs:
- CNI ADD, through the chained plugin's `POST /cmdadd` on `<run dir>/pluginevent.sock` (agent_server.py);
- the cluster API: pods of this node and all namespaces, watched; labels enroll / un-enroll running pods;
- the node proxy, connected to our ZDS socket (`<run dir>/ztunnel.sock`); each (re)connection gets a
  snapshot of every captured pod (`ZdsServer` calls `_snapshot`).

Add order for a pod: open its netns -> apply the in-pod rules there (on the dedicated rules thread) ->
`Add` over ZDS, wait for the Ack -> pod IP into the node's probe ipset -> annotation
`ambient.istio.io/redirection: enabled`. If the proxy is unreachable or refuses once the rules are in
place: annotation `pending`, retried in the background, and a CNI ADD fails (as Istio's partial add): the
runtime retries the sandbox, so a pod's containers never start before its node proxy serves it.
Removal: ipset entry, rules (if the netns still exists), `Del` to the proxy, annotation.

Invariants:
- Fail closed: /cmdadd answers 200 only after the rules are in place in the pod netns AND the node proxy
  acknowledged the pod (ZDS Ack, waited for up to `cni_add_proxy_wait`); otherwise a 500 (the CNI ADD
  fails, the pod stays Pending and is retried). A pod that is Running after a CNI ADD is served.
- `tracked` holds exactly the pods whose rules we put in place; the ZDS snapshot is built from it, so the
  proxy never serves a pod we do not capture and never misses one we do.
- Operations on one pod are serialised by a per-uid lock; rule commands run one at a time on one
  dedicated executor thread (which switches into the pod netns on its own short-lived thread).
- Agent restart: rules of pods annotated by a previous agent are verified and repaired (never duplicated,
  the apply is idempotent); the ZDS server starts only after that, so the first snapshot is complete.
  Stopping the agent leaves every rule in place (pods stay captured while it is down).
- Every task is owned by a TaskGroup.

Layout: settings, error and the injected interfaces are in agent_types.py (re-exported here, so
`ambient.cni.agent` stays the one import path); the local cluster's entry point, which reads the cluster
layout, is `ambient.cluster.node_agent` (the Kubernetes one `ambient.kube.nodeagent`). The rule commands
are called through this module's globals (tests replace them here).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ambient.api.informer import Reconciler
from ambient.cni import agent_plan as P
from ambient.cni.agent_plan import CmdAdd, Tracked
from ambient.cni.agent_server import PluginEventServer
from ambient.cni.agent_types import (
    DEFAULT_EXCLUDED,
    ZDS_SOCKET,
    AgentApi,
    AgentSettings,
    NetnsRecorder,
    NetnsResolver,
    NodeAgentError,
    Obj,
    watch_specs,
)
from ambient.cni.apply import (
    BACKENDS,
    apply_node_probe_snat,
    apply_pod_redirection,
    probe_ipset_add,
    probe_ipset_entries,
    probe_ipset_prune,
    probe_ipset_remove,
    remove_pod_redirection,
    verify_pod_redirection,
)
from ambient.cni.plugin import PluginConfig
from ambient.cni.rules import RedirectConfig
from ambient.core.errors import AmbientError
from ambient.inpod.errors import ZdsConnectionError, ZdsError, ZdsNackError, ZdsNotConnectedError
from ambient.inpod.netns import NetnsError, open_netns
from ambient.inpod.zds import SnapshotPod, ZdsServer
from ambient.inpod.zds_codec import WorkloadInfo

log = logging.getLogger("ambient.cni.agent")

T = TypeVar("T")

__all__ = [
    "DEFAULT_EXCLUDED",
    "ZDS_SOCKET",
    "AgentApi",
    "AgentSettings",
    "NetnsRecorder",
    "NetnsResolver",
    "NodeAgent",
    "NodeAgentError",
    "watch_specs",
]


class NodeAgent:
    """Use as `await NodeAgent(api, settings, resolver).run()` inside the caller's task (until cancelled)."""

    def __init__(self, api: AgentApi, settings: AgentSettings, netns_resolver: NetnsResolver | None = None,
                 netns_recorder: NetnsRecorder | None = None) -> None:
        if settings.backend not in BACKENDS:
            raise NodeAgentError(f"unknown redirection backend {settings.backend!r}",
                                 hint=f"use one of {', '.join(BACKENDS)}")
        self.api = api
        self.settings = settings
        self._resolve = netns_resolver or (lambda _pod: None)
        self._recorder = netns_recorder
        self.plugin_cfg = PluginConfig(exclude_namespaces=settings.exclude_namespaces)
        self.tracked: dict[str, Tracked] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._busy: set[str] = set()  # uids with a CNI ADD in flight: reconcile leaves them alone
        self._ns_enabled: dict[str, bool] = {}
        self._reconciler = Reconciler(self.reconcile, name="reconcile", resync=settings.resync_interval, coalesce=0,
                                      logger=log)
        self._retry = asyncio.Event()
        self.ready = asyncio.Event()  # set once both sockets listen and the first reconcile is done
        self.reconciles = 0
        self.cni_add_unacked = 0  # CNI ADDs failed because the proxy had not acknowledged the pod
        self._executor: ThreadPoolExecutor | None = None
        self._zds: ZdsServer | None = None

    def __repr__(self) -> str:
        return f"<NodeAgent {self.settings.node} {self.settings.backend} pods={len(self.tracked)}>"

    # --- plumbing ----------------------------------------------------------------------------------------
    async def _rules(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking rule command on the dedicated rules thread (one at a time)."""
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def _lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    @property
    def zds(self) -> ZdsServer:
        assert self._zds is not None, "ZDS server not started"
        return self._zds

    # --- main ---------------------------------------------------------------------------------------------
    async def run(self) -> None:
        s = self.settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ambient-rules")
        try:
            log.info("node agent for %s starting (backend %s, DNS capture %s by default)", s.node, s.backend,
                     "on" if s.dns_capture else "off")
            await self._rules(apply_node_probe_snat, netns=s.node_netns)
            await self.startup_reconcile()
            async with ZdsServer(s.zds_socket, self._snapshot) as zds:
                self._zds = zds
                async with PluginEventServer(s.plugin_event_socket, self.cmdadd), asyncio.TaskGroup() as tg:
                    for kind, selectors in watch_specs(s.node):
                        tg.create_task(self._watch(kind, **selectors), name=f"watch-{kind.lower()}s")
                    tg.create_task(self._reconciler.run(), name="reconcile")
                    tg.create_task(self._retry_loop(), name="retry-pending")
                    self.ready.set()
                    log.info("node agent ready: ZDS on %s, CNI events on %s", s.zds_socket, s.plugin_event_socket)
        finally:
            self._zds = None
            self._executor.shutdown(wait=True)
            self._executor = None

    # --- CNI ADD --------------------------------------------------------------------------------------------
    async def cmdadd(self, event: CmdAdd) -> dict[str, Any]:
        """Capture a pod whose sandbox is being created; returns once its rules are in place."""
        uid = event.pod_uid
        self._busy.add(uid)
        try:
            async with self._lock(uid):
                log.info("pod %s (uid %s): CNI ADD, netns %s, IPs %s", event.ref, uid, event.netns,
                         ",".join(event.ips) or "-")
                pod = await self._get_pod(event.pod_namespace, event.pod_name, uid)
                t = await self._capture(uid, event.pod_name, event.pod_namespace, event.netns,
                                        event.ips[0] if event.ips else "", pod,
                                        wait=self.settings.cni_add_proxy_wait)
                if self._recorder is not None:
                    self._recorder.record(uid, event.netns)
                if t.status != P.STATUS_ENABLED:
                    # Istio's "partial add": rules in place (so removal undoes them), pod pending and retried
                    # in the background, but its containers must not start before the proxy serves it.
                    self.cni_add_unacked += 1
                    raise NodeAgentError(
                        f"pod {event.ref}: the node proxy has not acknowledged it (within "
                        f"{self.settings.cni_add_proxy_wait:g}s): {t.last_error or 'no reason given'}; its "
                        "redirection rules are in place, the runtime retries the sandbox",
                        hint=f"is the node proxy running and connected to {self.settings.zds_socket}?")
                return {"uid": uid, "redirection": t.status}
        finally:
            self._busy.discard(uid)

    async def _get_pod(self, namespace: str, name: str, uid: str) -> Obj | None:
        """The pod (for its annotations and service account); None = unknown, node defaults apply."""
        try:
            pod = await asyncio.wait_for(self.api.get("Pod", name, namespace), 5.0)
        except (AmbientError, TimeoutError) as e:
            log.warning("pod %s/%s: cannot read it from the API (%s); using the node defaults", namespace, name, e)
            return None
        if P.pod_uid(pod) not in ("", uid):
            log.warning("pod %s/%s: API has uid %s, CNI said %s; using the node defaults", namespace, name,
                        P.pod_uid(pod), uid)
            return None
        return pod

    # --- capture / release ------------------------------------------------------------------------------------
    async def _capture(self, uid: str, name: str, namespace: str, netns_path: str, ip: str,
                       pod: Mapping[str, Any] | None, *, wait: float | None = None) -> Tracked:
        """Rules in place (or raise NodeAgentError), then hand the pod to the proxy. Caller holds the lock."""
        s = self.settings
        cfg = P.redirect_config(pod, dns_default=s.dns_capture) if pod else RedirectConfig(dns_capture=s.dns_capture)
        info = P.workload_info(pod) if pod else WorkloadInfo(name=name, namespace=namespace, service_account="default")
        ref = f"{namespace}/{name}"
        await self._apply_rules(ref, netns_path, cfg)
        previous = self.tracked.get(uid)
        if previous is not None and previous.ip and previous.ip != ip:
            # A retried sandbox may get another address: the old one must not keep bypassing capture.
            with contextlib.suppress(AmbientError):
                await self._rules(probe_ipset_remove, previous.ip, uid, netns=s.node_netns)
        t = Tracked(uid=uid, name=name, namespace=namespace, netns_path=netns_path, ip=ip, cfg=cfg, info=info,
                    annotated=previous.annotated if previous else P.status_annotation(pod or {}))
        self.tracked[uid] = t
        await self._hand_to_proxy(t, wait=s.zds_wait if wait is None else wait)
        return t

    async def _apply_rules(self, ref: str, netns_path: str, cfg: RedirectConfig) -> None:
        backend = self.settings.backend
        try:
            fd = open_netns(netns_path)
        except NetnsError as e:
            raise NodeAgentError(f"pod {ref}: cannot open its network namespace {netns_path}: {e.message}",
                                 hint="the sandbox may have been removed; the runtime retries") from e
        try:
            log.info("pod %s: applying %s redirection rules (DNS capture %s, inbound capture %s)", ref, backend,
                     "on" if cfg.dns_capture else "off", "on" if cfg.inbound_capture else "off")
            await self._rules(apply_pod_redirection, cfg, backend, netns=fd)
        except AmbientError as e:
            raise NodeAgentError(f"pod {ref}: redirection rules could not be applied: {e.message}",
                                 hint=e.hint or "see the node agent log") from e
        finally:
            os.close(fd)
        log.info("pod %s: rules applied in netns %s", ref, netns_path)

    async def _hand_to_proxy(self, t: Tracked, *, wait: float) -> bool:
        """Add over ZDS; on Ack: ipset + `enabled`, else `pending` (retried). Caller holds the lock."""
        try:
            fd = open_netns(t.netns_path)
        except NetnsError as e:
            log.warning("pod %s: netns gone before it reached the proxy: %s", t.ref, e.message)
            return False
        ok = False
        try:
            log.info("pod %s: sending Add to the node proxy", t.ref)
            await self.zds.add_pod(t.uid, t.info, fd, ready_timeout=wait)
            ok = True
        except ZdsNackError as e:
            t.last_error = f"the node proxy refused it: {e.error}"
            log.warning("pod %s: node proxy refused it: %s (pending, will retry)", t.ref, e.error)
        except (ZdsNotConnectedError, ZdsConnectionError) as e:
            t.last_error = f"node proxy not reachable: {e.message}"
            log.warning("pod %s: node proxy not reachable: %s (rules are in place; pending, will retry)",
                        t.ref, e.message)
        finally:
            os.close(fd)
        if ok:
            t.last_error = ""
            log.info("pod %s: node proxy acked the pod", t.ref)
            if t.ip:
                try:
                    await self._rules(probe_ipset_add, t.ip, t.uid, netns=self.settings.node_netns)
                except AmbientError as e:
                    log.warning("pod %s: could not add %s to the probe ipset: %s", t.ref, t.ip, e)
            t.status = P.STATUS_ENABLED
        else:
            t.status = P.STATUS_PENDING
            self._retry.set()
        await self._annotate(t)
        return ok

    async def _annotate(self, t: Tracked) -> None:
        if t.annotated == t.status:
            return
        try:
            await self.api.patch("Pod", t.name, t.namespace,
                                 {"metadata": {"annotations": {P.ANNOTATION_STATUS: t.status}}})
            t.annotated = t.status
            log.info("pod %s: annotated %s=%s", t.ref, P.ANNOTATION_STATUS, t.status)
        except AmbientError as e:  # reconcile retries (it compares the annotation with our state)
            log.warning("pod %s: could not set annotation %s: %s", t.ref, P.ANNOTATION_STATUS, e)

    async def _remove(self, uid: str, reason: str, *, pod_exists: bool) -> None:
        async with self._lock(uid):
            t = self.tracked.pop(uid, None)
            if t is None:
                return
            if pod_exists:  # only leaves the mesh (un-labelled, finished, ...): the pod keeps running
                log.info("pod %s: removed from the mesh (%s): releasing its capture", t.ref, reason)
            else:
                log.info("pod %s: deleted: releasing its capture", t.ref)
            if t.ip:
                with contextlib.suppress(AmbientError):
                    await self._rules(probe_ipset_remove, t.ip, t.uid, netns=self.settings.node_netns)
            await self._remove_rules(t.ref, t.netns_path)
            try:
                await self.zds.del_pod(uid, ready_timeout=0.5)
                log.info("pod %s: node proxy acked the Del", t.ref)
            except ZdsError as e:  # not connected: the next snapshot no longer lists it, the proxy drops it
                log.info("pod %s: Del not delivered to the node proxy (%s)", t.ref, e.message)
            if pod_exists:
                await self._clear_annotation(t.name, t.namespace, t.ref)
            if self._recorder is not None:
                self._recorder.forget(uid)
        self._locks.pop(uid, None)

    async def _remove_rules(self, ref: str, netns_path: str) -> None:
        try:
            fd = open_netns(netns_path)
        except NetnsError:
            log.info("pod %s: netns already gone, no rules to remove", ref)
            return
        try:
            await self._rules(remove_pod_redirection, None, netns=fd)
            log.info("pod %s: redirection rules removed", ref)
        except AmbientError as e:
            log.warning("pod %s: removing the rules failed: %s", ref, e)
        finally:
            os.close(fd)

    async def _clear_annotation(self, name: str, namespace: str, ref: str) -> None:
        try:
            await self.api.patch("Pod", name, namespace, {"metadata": {"annotations": {P.ANNOTATION_STATUS: None}}})
        except AmbientError as e:
            log.debug("pod %s: could not remove the status annotation: %s", ref, e)

    # --- snapshot (ZdsServer calls it on every proxy connection) ---------------------------------------------
    async def _snapshot(self) -> list[SnapshotPod]:
        pods = []
        for t in list(self.tracked.values()):
            try:
                fd = open_netns(t.netns_path)
            except NetnsError:
                log.info("snapshot: pod %s skipped, its netns is gone", t.ref)
                self._reconciler.mark()
                continue
            pods.append(SnapshotPod(t.uid, t.info, fd))
        log.info("node proxy connected: sending a snapshot of %d pod(s)", len(pods))
        return pods

    # --- reconcile -------------------------------------------------------------------------------------------
    async def _list_state(self) -> tuple[dict[str, Obj], dict[str, Obj]]:
        pods, _ = await self.api.list("Pod", field_selector=f"spec.nodeName={self.settings.node}")
        namespaces, _ = await self.api.list("Namespace")
        return ({P.pod_uid(p): p for p in pods if P.pod_uid(p)},
                {str(P.meta(n).get("name")): n for n in namespaces})

    def _log_namespaces(self, namespaces: Mapping[str, Obj]) -> None:
        for name, enabled in P.namespace_changes(self._ns_enabled, namespaces):
            if enabled:
                log.info("namespace %s enabled in the mesh (label istio.io/dataplane-mode=ambient)", name)
            else:
                log.info("namespace %s disabled in the mesh", name)
        self._ns_enabled = {n: P.namespace_enabled(ns) for n, ns in namespaces.items()}

    async def startup_reconcile(self) -> None:
        """Adopt the pods a previous agent captured: verify + repair their rules, prune the probe ipset."""
        s = self.settings
        pods, namespaces = await self._list_state()
        self._log_namespaces(namespaces)
        for uid in P.stale_annotated(pods, namespaces, self.plugin_cfg):
            pod = pods[uid]
            log.info("pod %s: annotated by a previous agent but no longer enrolled: cleaning up", P.pod_ref(pod))
            netns = self._netns_of(pod)
            if netns:
                await self._remove_rules(P.pod_ref(pod), netns)
            m = P.meta(pod)
            await self._clear_annotation(str(m.get("name")), str(m.get("namespace") or "default"), P.pod_ref(pod))
        for _uid, pod in sorted(pods.items()):
            status = P.status_annotation(pod)
            if status not in (P.STATUS_ENABLED, P.STATUS_PENDING) or not P.wants_capture(pod, namespaces,
                                                                                           self.plugin_cfg)[0]:
                continue
            netns = self._netns_of(pod)
            if netns is None:
                continue  # no sandbox: the kubelet recreates it through CNI ADD
            await self._adopt(pod, netns, status)
        keep = {t.ip: t.uid for t in self.tracked.values() if t.ip and t.status == P.STATUS_ENABLED}
        pruned = await self._rules(probe_ipset_prune, keep, netns=s.node_netns)
        if pruned:
            log.info("probe ipset: pruned %d stale entr(y/ies): %s", len(pruned), ", ".join(pruned))
        live = await self._rules(probe_ipset_entries, netns=s.node_netns)
        for ip, uid in keep.items():
            if live.get(ip) != uid:
                await self._rules(probe_ipset_add, ip, uid, netns=s.node_netns)
        log.info("startup reconcile: %d captured pod(s) adopted", len(self.tracked))

    async def _adopt(self, pod: Mapping[str, Any], netns: str, status: str) -> None:
        uid, ref = P.pod_uid(pod), P.pod_ref(pod)
        cfg = P.redirect_config(pod, dns_default=self.settings.dns_capture)
        try:
            fd = open_netns(netns)
        except NetnsError:
            return
        try:
            diffs = await self._rules(verify_pod_redirection, cfg, self.settings.backend, netns=fd)
        except AmbientError as e:
            diffs = [f"verification failed: {e.message}"]
        finally:
            os.close(fd)
        if diffs:
            log.warning("pod %s: rules not as expected after restart (%s): repairing", ref, "; ".join(diffs))
            try:
                await self._apply_rules(ref, netns, cfg)
            except NodeAgentError as e:
                log.error("%s", e)
                return
        else:
            log.info("pod %s: rules verified", ref)
        m = P.meta(pod)
        self.tracked[uid] = Tracked(uid=uid, name=str(m.get("name")), namespace=str(m.get("namespace") or "default"),
                                    netns_path=netns, ip=P.pod_ip(pod), cfg=cfg, info=P.workload_info(pod),
                                    status=status, annotated=status)
        if status == P.STATUS_PENDING:
            self._retry.set()

    def _netns_of(self, pod: Mapping[str, Any]) -> str | None:
        path = self._resolve(pod)
        return path if path and os.path.exists(path) else None

    async def reconcile(self) -> None:
        """One level-triggered pass: enroll, remove, reconfigure, re-annotate (see agent_plan.plan)."""
        pods, namespaces = await self._list_state()
        self._log_namespaces(namespaces)
        plan = P.plan(self.tracked, pods, namespaces, self.plugin_cfg, dns_default=self.settings.dns_capture,
                      busy=frozenset(self._busy))
        self.reconciles += 1
        for uid, reason in plan.remove:
            await self._remove(uid, reason, pod_exists=uid in pods)
        for pod in plan.enroll:
            await self._enroll_running(pod)
        for uid, cfg in plan.reconfigure:
            async with self._lock(uid):
                t = self.tracked.get(uid)
                if t is None:
                    continue
                log.info("pod %s: capture settings changed: re-applying the rules", t.ref)
                try:
                    await self._apply_rules(t.ref, t.netns_path, cfg)
                    t.cfg = cfg
                except NodeAgentError as e:
                    log.error("%s", e)
        for uid, ip in plan.refresh_ip:
            t = self.tracked.get(uid)
            if t is not None:
                t.ip = ip
                if t.status == P.STATUS_ENABLED:
                    with contextlib.suppress(AmbientError):
                        await self._rules(probe_ipset_add, ip, uid, netns=self.settings.node_netns)
        for uid in plan.annotate:
            t = self.tracked.get(uid)
            if t is not None:
                t.annotated = None  # the API disagrees with what we wrote: write it again
                await self._annotate(t)

    async def _enroll_running(self, pod: Mapping[str, Any]) -> None:
        uid, ref = P.pod_uid(pod), P.pod_ref(pod)
        netns = self._netns_of(pod)
        if netns is None:
            log.debug("pod %s: enrolled but its netns is not known (yet)", ref)
            return
        async with self._lock(uid):
            if uid in self.tracked:
                return
            m = P.meta(pod)
            log.info("pod %s: enrolled while running: capturing it", ref)
            try:
                await self._capture(uid, str(m.get("name")), str(m.get("namespace") or "default"), netns,
                                    P.pod_ip(pod), pod)
            except NodeAgentError as e:
                log.error("%s (retried on the next reconcile)", e)

    async def _watch(self, kind: str, **selectors: str) -> None:
        """An informer on `kind` that marks the reconciler dirty (cancel to stop)."""
        await self._reconciler.follow(self.api, kind, **selectors)

    async def _retry_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry.wait(), self.settings.retry_interval)
            self._retry.clear()
            pending = [t.uid for t in self.tracked.values() if t.status == P.STATUS_PENDING]
            if not pending or not self.zds.ready:
                continue
            for uid in pending:
                if uid in self._busy:
                    continue
                async with self._lock(uid):
                    t = self.tracked.get(uid)
                    if t is not None and t.status == P.STATUS_PENDING:
                        log.info("pod %s: retrying the hand-over to the node proxy", t.ref)
                        await self._hand_to_proxy(t, wait=0.5)
