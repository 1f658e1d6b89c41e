"""The kubelet of one node of the local cluster: runs the pods bound to it, and its kube-proxy rules.

Run as `python -m ambient.cluster.kubelet --state-dir DIR --node NAME` (normally inside the node's netns;
every network action names its netns explicitly anyway, so it also works from elsewhere, e.g. in tests).

Per pod (one `PodWorker` task): record -> netns + resolv.conf -> CNI ADD (retried with backoff while it fails:
the pod stays Pending with reason NetworkNotReady, it never runs without its network) -> containers started
with `ip netns exec` and supervised per restartPolicy with a capped exponential back-off -> probes run per
container (probes.py: startupProbe gates liveness and readiness; a liveness/startup failure kills the
container, which then restarts with the same back-off, `lastState.terminated` recorded; each failed probe
is logged as the kubelet's event words it: `Liveness probe failed: HTTP probe failed with statuscode: 500`)
-> status patched (phase, podIP, conditions, containerStatuses). Pod gone from the API (or moved away) ->
process groups get SIGTERM, then SIGKILL after terminationGracePeriodSeconds (default 2 s), CNI DEL, netns
and record removed. An enrolled pod's CNI ADD succeeds only once its node proxy serves it (cni.agent), so
its containers never start, and it is never Ready, before that.

Static components: the node proxy and the node agent of this node run under the cluster supervisor, not as
API pods; `MirrorPods` publishes them as the kubelet publishes static pods (`cluster.staticpods`: mirror pods
`ztunnel-<node>` and `ambient-node-agent-<node>` in `ambient-system`, status from the supervisor's record and a
readiness probe; a deleted one is published again, its process untouched). Pods with the mirror annotation are
never run as API pods.

Invariants:
- The API is the source of truth; the on-disk records (podruntime.RecordStore) are how a restarted kubelet
  finds what it made: pods still bound here are adopted (live processes kept), the rest are torn down.
- A kubelet shutdown (SIGTERM) leaves pods running (a restart adopts them); only pod deletion tears down.
- Status is written with a status merge patch (no read-modify-write races with other writers).
- Events (`cluster.events`, fire and forget, source `kubelet` + node): Created/Started per container start
  (one step here; no Pulling/Pulled: there are no images), Failed ("Error: executable not found: ..."),
  BackOff per held-back restart, Unhealthy per failed probe ("Readiness probe failed: HTTP probe failed with
  statuscode: 503"), Killing (probe kill, pod deletion), FailedCreatePodSandBox; node Starting/NodeReady/
  NodeNotReady (involvedObject uid = the node's name, as the kubelet's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambient.api.errors import AlreadyExistsError, ApiError, NotFoundError
from ambient.api.events import NORMAL, WARNING, container_path
from ambient.api.informer import Reconciler
from ambient.cluster import kubeproxy, probes
from ambient.cluster import layout as L
from ambient.cluster import podruntime as rt
from ambient.cluster import staticpods as sp
from ambient.cluster.controllers import Client
from ambient.cluster.errors import ClusterError
from ambient.cluster.events import EventRecorder
from ambient.cluster.podstatus import ContainerState, pod_status
from ambient.core import process
from ambient.core.backoff import Backoff

log = logging.getLogger("ambient.kubelet")

BACKOFF_START = 0.5
BACKOFF_CAP = 10.0
RESET_AFTER = 10.0  # a container that ran this long starts its back-off from scratch
POLL = 0.2
DEFAULT_GRACE = 2.0


class PodWorker:
    """Owns one pod on this node from sandbox creation to teardown."""

    def __init__(self, kubelet: Kubelet, pod: dict[str, Any], record: rt.PodRecord | None) -> None:
        self.kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta.get("namespace") or "default"
        self.name: str = meta["name"]
        self.record = record or rt.PodRecord(self.uid, self.namespace, self.name,
                                             L.pod_netns_name(kubelet.layout.name, self.uid))
        self.adopted = record is not None
        self.teardown = False
        self.network_error: str | None = None
        self.containers: dict[str, ContainerState] = {}
        for c in (pod.get("spec") or {}).get("containers") or []:
            prev = self.record.containers.get(c["name"])
            state = ContainerState(name=c["name"], spec=c)
            if prev is not None:
                state.restart_count = prev.restart_count
            self.containers[c["name"]] = state
        self._changed = asyncio.Event()
        self._last_status: dict[str, Any] | None = None
        # Kept across kubelet restarts (adoption must not look like a new start).
        self.start_time = (pod.get("status") or {}).get("startTime") or rt.now_rfc3339()

    def changed(self) -> None:
        self._changed.set()

    def event(self, event_type: str, reason: str, message: str, container: str | None = None) -> None:
        """Record an Event about this pod (a container's, with its fieldPath), as the kubelet of this node."""
        self.kubelet.recorder.event(self.pod, event_type, reason, message,
                                    container_path(container) if container else None)

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._status_writer())
                await self._sandbox()
                for state in self.containers.values():
                    tg.create_task(self._supervise(state), name=f"{self.name}/{state.name}")
                    for kind in probes.KINDS:
                        spec = probes.probe_spec(kind, state.spec)
                        if spec is not None:
                            tg.create_task(self._probe(state, spec), name=f"{self.name}/{state.name}/{kind}")
        finally:
            if self.teardown:
                await self._teardown()

    async def _sandbox(self) -> None:
        rec = self.record
        if self.adopted and rec.ip and L.netns_path(rec.netns).exists():
            return
        backoff = Backoff(BACKOFF_START, BACKOFF_CAP)
        while True:
            self.kubelet.records.save(rec)  # before the netns exists: a crash leaves a trace to clean up
            try:
                async with self.kubelet.sandbox_slots:
                    await asyncio.to_thread(rt.create_netns, rec.netns, self.namespace)
                    result = await asyncio.to_thread(self.kubelet.cni.add, self.uid, self.name, self.namespace,
                                                     str(L.netns_path(rec.netns)))
            except ClusterError as exc:
                self.network_error = exc.message
                self.event(WARNING, "FailedCreatePodSandBox", f"Failed to create pod sandbox: {exc.message}")
                delay = backoff.next()
                log.warning("pod %s/%s: network not ready: %s (retry in %.1fs)", self.namespace, self.name,
                            exc.message, delay)
                self.changed()
                await asyncio.sleep(delay)
                continue
            rec.ip, rec.gateway = result.ip, result.gateway
            self.network_error = None
            self.kubelet.records.save(rec)
            log.info("pod %s/%s: sandbox %s ip %s", self.namespace, self.name, rec.netns, rec.ip)
            self.changed()
            return

    async def _teardown(self) -> None:
        grace = (self.pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        grace_s = DEFAULT_GRACE if grace is None else float(grace)
        for c in self.containers.values():
            if c.pid:
                self.event(NORMAL, "Killing", f"Stopping container {c.name}", c.name)
        stops = [asyncio.to_thread(rt.stop_process_group, c.pid, c.starttime, grace_s)
                 for c in self.containers.values() if c.pid]
        await asyncio.gather(*stops)
        for c in self.containers.values():
            c.reap()
        await self.kubelet.teardown_record(self.record)

    # ------------------------------------------------------------------ containers

    async def _supervise(self, c: ContainerState) -> None:
        policy = (self.pod.get("spec") or {}).get("restartPolicy") or "Always"
        failures = 0
        prev = self.record.containers.get(c.name)
        if self.adopted and prev is not None and rt.process_alive(prev.pid, prev.starttime):
            c.adopt(prev.pid, prev.starttime, prev.started_at)
            log.info("pod %s/%s: adopted container %s (pid %d)", self.namespace, self.name, c.name, c.pid)
        first = True
        while True:
            if c.pid == 0:
                if not first:
                    # (exponent capped: 2**1024 would overflow a float after ~3 hours of crash-looping)
                    delay = min(BACKOFF_CAP, BACKOFF_START * (2 ** min(max(0, failures - 1), 32)))
                    if c.reason != "StartError":  # keep the cause visible while waiting to retry it
                        c.set_waiting("CrashLoopBackOff", f"back-off {delay:.1f}s restarting failed container "
                                      f"{c.name} in pod {self.name}")
                        self.changed()
                    if delay > BACKOFF_START:  # a restart held back: the kubelet's BackOff (not a quick retry)
                        self.event(WARNING, "BackOff", f"Back-off restarting failed container {c.name} in pod "
                                   f"{self.name}_{self.namespace}({self.uid})", c.name)
                    await asyncio.sleep(delay)
                first = False
                try:
                    env = rt.container_env(self.pod, c.spec, self.kubelet.node, self.record.ip)
                    env.update(await self._token_env())
                    argv = rt.resolve_command(c.spec, env)
                    log_file = rt.log_path(self.kubelet.state_dir, self.namespace, self.name, c.name)
                    proc = rt.start_container(self.record.netns, argv, env, c.spec.get("workingDir"), log_file)
                except rt.StartError as exc:
                    log.warning("pod %s/%s container %s: %s", self.namespace, self.name, c.name, exc.message)
                    self.event(WARNING, "Failed", f"Error: {exc.message}", c.name)
                    c.set_start_error(exc.message)
                    failures += 1
                    self.changed()
                    if policy == "Never":
                        return
                    c.restart_count += 1
                    continue
                c.set_running(proc)
                self._save_container(c)
                # One step here (the process is the container): the kubelet's two events, in its words.
                self.event(NORMAL, "Created", f"Created container: {c.name}", c.name)
                self.event(NORMAL, "Started", f"Started container {c.name}", c.name)
                self.changed()
            exit_code = await self._wait_exit(c)
            ran = c.set_terminated(exit_code)
            self._save_container(c)
            log.info("pod %s/%s container %s exited with %s after %.1fs", self.namespace, self.name,
                     c.name, exit_code, ran)
            # A container killed by its liveness/startup probe restarts under OnFailure even if it exited 0.
            if policy == "Never" or (policy == "OnFailure" and exit_code == 0 and not c.probe_kill):
                self.changed()
                return
            failures = 0 if ran >= RESET_AFTER else failures + 1
            c.restart_count += 1
            self.changed()

    async def _wait_exit(self, c: ContainerState) -> int:
        while True:
            code = c.poll()
            if code is not None:
                return code
            await asyncio.sleep(POLL)

    async def _token_env(self) -> dict[str, str]:
        """`AMBIENT_TOKEN_FILE` for the pod's own identity; none (logged) if the token cannot be written."""
        from ambient.controlplane.pod_tokens import TOKEN_ENV
        from ambient.core.errors import AmbientError

        try:
            path = await asyncio.to_thread(rt.write_pod_token, self.kubelet.state_dir, self.kubelet.node, self.pod)
        except (OSError, AmbientError) as exc:
            log.warning("pod %s/%s: cannot write its service-account token: %s", self.namespace, self.name, exc)
            return {}
        return {TOKEN_ENV: str(path)}

    def _save_container(self, c: ContainerState) -> None:
        self.record.containers[c.name] = rt.ContainerRecord(c.pid, c.starttime, c.restart_count, c.started_at)
        self.kubelet.records.save(self.record)

    async def _probe(self, c: ContainerState, spec: probes.ProbeSpec) -> None:
        """One probe of one container, on its own schedule (the kubelet's probe worker).

        Probe state lives for one container run (`c.runs`): a restart starts over after initialDelaySeconds.
        Startup gates liveness and readiness; liveness/startup failure kills the run (`_supervise` restarts
        it with the crash back-off); readiness sets `c.ready`.
        """
        run = -1
        tracker = probes.ProbeTracker(spec)
        due = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if c.state != "running":
                if spec.kind == "readiness" and c.ready:
                    c.ready = False
                    self.changed()
                await asyncio.sleep(POLL)
                continue
            if c.runs != run:  # a new run: fresh state, first probe after the initial delay
                run, tracker = c.runs, probes.ProbeTracker(spec)
                due = loop.time() + max(0.0, spec.initial_delay - (time.monotonic() - c.started_mono))
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(min(wait, 1.0))  # wake now and then: a restart resets the schedule
                continue
            due = loop.time() + spec.period
            gated = (spec.kind == "startup" and c.startup_done) or (spec.kind != "startup" and not c.startup_done)
            if gated or tracker.on_hold:
                continue
            result = await probes.run_probe(spec, self.kubelet.probe_context(self))
            if c.runs != run or c.state != "running":
                continue  # the run ended while probing: the result is about a process that is gone
            # The kubelet's "Unhealthy" event, one per failed probe (the recorder counts repeats); logged once
            # per streak for readiness. The implicit port check is no probe of the pod's: no event.
            if not result.ok and spec.handler != "ports":
                self.event(WARNING, "Unhealthy", f"{spec.title} probe failed: {result.message}", c.name)
                if spec.kind != "readiness" or not tracker.failing:
                    log.warning("pod %s/%s container %s: %s probe failed: %s", self.namespace, self.name, c.name,
                                spec.title, result.message)
            outcome = tracker.observe(result.ok)
            if outcome is None:
                continue
            if spec.kind == "readiness":
                c.ready = outcome
                self.changed()
            elif spec.kind == "startup" and outcome:
                c.startup_done = True
                log.info("pod %s/%s container %s: startup probe succeeded", self.namespace, self.name, c.name)
                self.changed()
            elif not outcome:
                await self._kill_for_probe(c, spec)

    async def _kill_for_probe(self, c: ContainerState, spec: probes.ProbeSpec) -> None:
        log.warning("pod %s/%s: Container %s failed %s probe, will be restarted", self.namespace, self.name,
                    c.name, spec.kind)
        self.event(NORMAL, "Killing", f"Container {c.name} failed {spec.kind} probe, will be restarted", c.name)
        c.probe_kill = spec.kind
        c.ready = False
        self.changed()
        grace = spec.grace
        if grace is None:
            pod_grace = (self.pod.get("spec") or {}).get("terminationGracePeriodSeconds")
            grace = DEFAULT_GRACE if pod_grace is None else float(pod_grace)
        if c.pid:
            await asyncio.to_thread(rt.stop_process_group, c.pid, c.starttime, grace)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        return pod_status(
            self.pod, list(self.containers.values()), host_ip=self.kubelet.host_ip, pod_ip=self.record.ip,
            network_error=self.network_error, start_time=self.start_time,
        )

    async def _status_writer(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            status = self.status()
            if status == self._last_status:
                continue
            try:
                await self.kubelet.client.patch("Pod", self.name, self.namespace, {"status": status}, status=True)
                self._last_status = status
            except NotFoundError:
                return  # deleted: the kubelet's reconcile will tear us down
            except ApiError as exc:
                log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, exc)
                await asyncio.sleep(1.0)
                self._changed.set()


MIRROR_PERIOD = 1.0  # mirror pods' status is refreshed this often (and at once on a pod event of this node)


@dataclass
class _Readiness:
    """The readiness probe of one mirror pod's container, for one run (pid) of its process."""

    pid: int
    tracker: probes.ProbeTracker
    due: float = 0.0
    ready: bool = False


class MirrorPods:
    """Publishes this node's static components (node proxy, node agent) as mirror pods (`cluster.staticpods`).

    Each pass: the supervisor's specs say which components are wanted; a wanted one without its mirror pod
    gets it (again, after `kubectl delete pod`), an unwanted or unknown mirror pod on this node is deleted;
    each mirror pod's status follows the supervisor's record (pid, restarts, last exit, back-off) and its
    readiness probe, run from the node netns like any pod's."""

    def __init__(self, kubelet: Kubelet, period: float = MIRROR_PERIOD) -> None:
        self.kubelet = kubelet
        self.period = period
        self._wake = asyncio.Event()
        self._node_uid: str | None = None
        self._readiness: dict[str, _Readiness] = {}
        self._written: dict[str, dict[str, Any]] = {}  # pod uid -> status last written
        self.created = 0

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        last_error, logged_at = "", 0.0
        while True:
            try:
                await self.sync()
                last_error = ""
            except (ApiError, OSError, ClusterError) as exc:
                # the same failure every pass (e.g. namespace ambient-system deleted) is logged once a minute
                text = str(exc)
                if text != last_error or time.monotonic() - logged_at >= 60.0:
                    log.warning("mirror pods: %s (retrying every %.0fs)", text, self.period)
                    last_error, logged_at = text, time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.period)
            self._wake.clear()

    async def sync(self) -> None:
        from ambient.cluster import processes
        from ambient.cluster.supervisor import read_status

        k = self.kubelet
        layout, node = k.layout, k.node
        specs = await asyncio.to_thread(processes.read_specs, layout)
        records = (await asyncio.to_thread(read_status, layout)).get("components") or {}
        running = await asyncio.to_thread(processes.running_components, layout)
        items, _ = await k.client.list("Pod", field_selector=f"spec.nodeName={node}")
        mirrors = {(p["metadata"].get("namespace"), p["metadata"]["name"]): p for p in items if sp.is_mirror(p)}
        daemonsets = {d["metadata"]["name"]: d for d in (await k.client.list("DaemonSet", sp.NAMESPACE))[0]}
        wanted: set[tuple[str, str]] = set()
        for comp in sp.STATIC_COMPONENTS:
            cname = sp.component_name(comp, node)
            if cname not in specs:
                continue
            key = (sp.NAMESPACE, sp.pod_name(comp, node))
            wanted.add(key)
            ds = daemonsets.get(comp.daemonset)
            owner = sp.daemonset_owner(ds) if ds is not None else sp.node_owner(node, await self._node_uid_of())
            desired = sp.static_pod(layout, comp, node, owner)
            pod = mirrors.get(key)
            mirror_hash = desired["metadata"]["annotations"][sp.MIRROR_ANNOTATION]
            if pod is not None and (pod["metadata"].get("annotations") or {}).get(sp.MIRROR_ANNOTATION) != mirror_hash:
                log.info("mirror pod %s/%s is out of date: publishing it again", *key)
                with contextlib.suppress(NotFoundError):
                    await k.client.delete("Pod", key[1], key[0])
                pod = None
            if pod is None:
                try:
                    pod = await k.client.create(desired)
                except AlreadyExistsError:
                    continue  # published by a concurrent pass; the next pass writes its status
                self.created += 1
                log.info("published mirror pod %s/%s of %s", *key, cname)
            elif pod["metadata"].get("ownerReferences") != desired["metadata"]["ownerReferences"]:
                # the DaemonSet was deleted or made again (another uid): follow it
                try:
                    pod = await k.client.patch("Pod", key[1], key[0], {"metadata": {
                        "ownerReferences": desired["metadata"]["ownerReferences"]}})
                except NotFoundError:
                    continue
            await self._write_status(pod, records.get(cname), running.get(cname))
        for key in mirrors:
            if key not in wanted:
                log.info("deleting mirror pod %s/%s: no static component of this node stands behind it", *key)
                with contextlib.suppress(NotFoundError):
                    await k.client.delete("Pod", key[1], key[0])

    async def _node_uid_of(self) -> str:
        if self._node_uid is None:
            node = await self.kubelet.client.get("Node", self.kubelet.node)
            self._node_uid = str(node["metadata"].get("uid") or "")
        return self._node_uid

    async def _ready(self, name: str, container: dict[str, Any], pid: int | None) -> bool:
        """Run the container's readiness probe when due; its outcome for this run of the process."""
        if pid is None:
            self._readiness.pop(name, None)
            return False
        spec = probes.probe_spec("readiness", container)
        assert spec is not None
        state = self._readiness.get(name)
        if state is None or state.pid != pid:
            state = self._readiness[name] = _Readiness(pid, probes.ProbeTracker(spec))
        loop = asyncio.get_running_loop()
        if loop.time() >= state.due:
            state.due = loop.time() + spec.period
            ctx = probes.ProbeContext(self.kubelet.host_ip, self.kubelet.node_layout.netns,
                                      self.kubelet._probe.node_netns_path, self.kubelet._probe.in_node_netns)
            result = await probes.run_probe(spec, ctx)
            outcome = state.tracker.observe(result.ok)
            if outcome is not None:
                state.ready = outcome
            if not result.ok:
                log.debug("mirror pod %s: readiness probe failed: %s", name, result.message)
        return state.ready

    async def _write_status(self, pod: dict[str, Any], record: Any, pid: int | None) -> None:
        meta = pod["metadata"]
        container = pod["spec"]["containers"][0]
        ready = await self._ready(meta["name"], container, pid)
        state = sp.container_state(container, record if isinstance(record, dict) else None, pid, time.time(), ready)
        start = (pod.get("status") or {}).get("startTime") or rt.now_rfc3339()
        status = sp.mirror_status(pod, state, self.kubelet.host_ip, start)
        uid = meta["uid"]
        if self._written.get(uid) == status:
            return
        try:
            await self.kubelet.client.patch("Pod", meta["name"], meta.get("namespace"), {"status": status},
                                            status=True)
        except NotFoundError:
            return  # deleted meanwhile: published again by the next pass
        if len(self._written) > 64:  # uids of deleted mirror pods: forget them
            self._written.clear()
        self._written[uid] = status


@dataclass
class _Probe:
    node_netns_path: Path
    in_node_netns: bool


class Kubelet:
    def __init__(self, client: Client, layout: L.ClusterLayout, node: str, *, cni: Any = None,
                 kube_proxy: bool = True, resync_seconds: float = 5.0, mirror_pods: bool = True) -> None:
        self.client = client
        self.layout = layout
        self.node = node
        self.node_layout = layout.node(node)
        self.host_ip = self.node_layout.ip
        self.state_dir = layout.state_path
        if cni is None:
            from ambient.cluster.cni import CniRuntime

            cni = CniRuntime(layout, self.node_layout)
        self.cni = cni
        self.records = rt.RecordStore(self.state_dir, node)
        self.recorder = EventRecorder(client, "kubelet", host=node)
        self.workers: dict[str, PodWorker] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.resync_seconds = resync_seconds
        self._reconciler = Reconciler(self.reconcile, name="pod reconcile pass", resync=resync_seconds, logger=log)
        self.sandbox_slots = asyncio.Semaphore(4)  # CNI plugins are processes: don't fork 50 at once
        self.kube_proxy = KubeProxy(client, self.node_layout) if kube_proxy else None
        self.mirrors = MirrorPods(self) if mirror_pods else None
        node_ns = self.node_layout.netns_path
        try:
            here = os.stat("/proc/self/ns/net").st_ino == os.stat(node_ns).st_ino
        except OSError:
            here = False
        self._probe = _Probe(node_ns, here)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self.recorder.run(), name="events")
            self.recorder.event(self._node_ref(), NORMAL, "Starting", "Starting kubelet.")
            await self._adopt()
            await self.set_node_ready(True)
            tg.create_task(self._reconciler.follow(self.client, "Pod", field_selector=f"spec.nodeName={self.node}"))
            tg.create_task(self._reconciler.run())
            if self.kube_proxy is not None:
                tg.create_task(self.kube_proxy.run())
            if self.mirrors is not None:
                tg.create_task(self.mirrors.run())

    async def set_node_ready(self, ready: bool) -> None:
        """Report this kubelet on its Node (the scheduler only binds pods to Ready nodes)."""
        cond = {"type": "Ready", "status": "True" if ready else "False",
                "reason": "KubeletReady" if ready else "KubeletStopped",
                "message": "kubelet is running" if ready else "kubelet was stopped",
                "lastTransitionTime": rt.now_rfc3339()}
        try:
            await self.client.patch("Node", self.node, None, {"status": {"conditions": [cond]}}, status=True)
        except ApiError as exc:
            log.warning("cannot update node %s status: %s", self.node, exc)
            return
        status = "NodeReady" if ready else "NodeNotReady"
        self.recorder.event(self._node_ref(), NORMAL, status, f"Node {self.node} status is now: {status}")

    def _node_ref(self) -> dict[str, Any]:
        """This node as the kubelet's events name it: uid = the node's name (`kubectl describe node` asks
        for that uid)."""
        return {"kind": "Node", "metadata": {"name": self.node, "uid": self.node}}

    async def _adopt(self) -> None:
        pods = await self._my_pods()
        for rec in self.records.load_all():
            pod = pods.get(rec.uid)
            if pod is None:
                log.info("cleaning up pod %s/%s left from a previous run", rec.namespace, rec.name)
                await self.teardown_record(rec, kill=True)
            else:
                self._start_worker(pod, rec)

    async def _my_pods(self) -> dict[str, dict[str, Any]]:
        """The pods this kubelet runs: bound here, mirror pods excepted (they stand for static components,
        which the supervisor runs; `MirrorPods` publishes them)."""
        items, _ = await self.client.list("Pod", field_selector=f"spec.nodeName={self.node}")
        return {p["metadata"]["uid"]: p for p in items if not sp.is_mirror(p)}

    async def reconcile(self) -> None:
        if self.mirrors is not None:
            self.mirrors.poke()  # a pod event of this node: a deleted mirror pod is published again at once
        pods = await self._my_pods()
        for uid, pod in pods.items():
            worker = self.workers.get(uid)
            if worker is None:
                # A record means we ran it before (a worker that failed): adopt instead of starting twice.
                self._start_worker(pod, self.records.load(uid))
            else:
                old = (worker.pod.get("metadata") or {}).get("annotations")
                worker.pod = pod
                if (pod.get("metadata") or {}).get("annotations") != old:
                    worker.changed()  # the Ready condition reads the mesh's redirection annotation
        for uid, worker in list(self.workers.items()):
            if uid not in pods and not worker.teardown:
                log.info("pod %s/%s deleted: tearing down", worker.namespace, worker.name)
                worker.teardown = True
                self._tasks[uid].cancel()

    def _start_worker(self, pod: dict[str, Any], record: rt.PodRecord | None) -> None:
        worker = PodWorker(self, pod, record)
        uid = worker.uid
        self.workers[uid] = worker

        async def guarded() -> None:
            try:
                await worker.run()
            except asyncio.CancelledError:
                if not worker.teardown:
                    raise
            except Exception:  # one bad pod must not stop the kubelet
                log.exception("pod %s/%s worker failed", worker.namespace, worker.name)
            finally:
                if self.workers.get(uid) is worker:
                    del self.workers[uid]
                    self._tasks.pop(uid, None)

        self._tasks[uid] = self._tg.create_task(guarded(), name=f"pod-{worker.namespace}-{worker.name}")

    async def teardown_record(self, rec: rt.PodRecord, *, kill: bool = False) -> None:
        if kill:
            for c in rec.containers.values():
                await asyncio.to_thread(rt.stop_process_group, c.pid, c.starttime, DEFAULT_GRACE)
        for attempt in range(5):
            try:
                await asyncio.to_thread(rt.teardown_sandbox, self.cni, rec)
                break
            except ClusterError as exc:
                log.warning("pod %s/%s: teardown failed (attempt %d): %s", rec.namespace, rec.name,
                            attempt + 1, exc)
                await asyncio.sleep(0.5 * (attempt + 1))
        await asyncio.to_thread(rt.remove_pod_token, self.state_dir, self.node, rec.uid)
        self.records.remove(rec.uid)

    def probe_context(self, worker: PodWorker) -> probes.ProbeContext:
        return probes.ProbeContext(worker.record.ip, worker.record.netns, self._probe.node_netns_path,
                                   self._probe.in_node_netns)


class KubeProxy:
    """Keeps the node netns' `AMB-*` nat/filter chains equal to kubeproxy.build_rules(Services, Endpoints)."""

    def __init__(self, client: Client, node: L.NodeLayout) -> None:
        self.client = client
        self.node = node
        self._applied: str | None = None
        self.applies = 0
        self._reconciler = Reconciler(self._sync_pass, name="kube-proxy sync", resync=10.0, logger=log)

    def _ns(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net={self.node.netns_path}", "--", *argv]

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._reconciler.follow(self.client, "Service"))
            tg.create_task(self._reconciler.follow(self.client, "Endpoints"))
            tg.create_task(self._reconciler.run())

    async def _sync_pass(self) -> None:
        try:
            await self.sync()
        except Exception:
            self._applied = None  # the rules may be half-applied: the retry rewrites them in full
            raise

    async def sync(self) -> None:
        services, _ = await self.client.list("Service")
        endpoints, _ = await self.client.list("Endpoints")
        rules = kubeproxy.service_rules(services, endpoints)
        probe = kubeproxy.build_rules(rules)
        if probe == self._applied:
            return
        await asyncio.to_thread(self._apply, rules)
        self._applied = probe
        self.applies += 1

    def _apply(self, rules: list[kubeproxy.ServicePortRule]) -> None:
        saved = subprocess.run(self._ns(["iptables-save", "-t", "nat"]), capture_output=True, text=True,
                               check=False)
        text = kubeproxy.build_rules(rules, existing_chains=kubeproxy.parse_chains(saved.stdout))
        proc = subprocess.run(self._ns(["iptables-restore", "--noflush"]), input=text, capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise ClusterError(f"iptables-restore in {self.node.netns} failed: {proc.stderr.strip()}")
        for table, chain, target in kubeproxy.JUMPS:
            check = subprocess.run(self._ns(["iptables", "-t", table, "-C", chain, "-j", target]),
                                   capture_output=True, check=False)
            if check.returncode != 0:
                subprocess.run(self._ns(["iptables", "-t", table, "-I", chain, "1", "-j", target]),
                               capture_output=True, check=True)


async def _amain(state_dir: Path, node: str) -> None:
    from ambient.api.client import AsyncApiClient

    layout = L.load_layout(state_dir)
    async with AsyncApiClient(layout.api_socket) as client:
        kubelet = Kubelet(client, layout, node)
        log.info("kubelet %s started (netns %s)", node, kubelet.node_layout.netns)
        with contextlib.suppress(asyncio.CancelledError):
            await kubelet.run()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(kubelet.set_node_ready(False), timeout=2.0)  # within the stop grace
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(kubelet.recorder.drain(), timeout=0.5)  # NodeNotReady, if the API takes it
    log.info("kubelet %s stopped (pods left running for the next start to adopt)", node)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ambient.cluster.kubelet", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--node", required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    process.configure_logging(args.log_level)

    async def run(_: process.Shutdown) -> None:  # SIGTERM/SIGINT cancel it
        await _amain(args.state_dir, args.node)

    try:
        process.run(run)
    except ClusterError as exc:
        raise SystemExit(f"kubelet: {exc}") from exc


if __name__ == "__main__":
    main()
