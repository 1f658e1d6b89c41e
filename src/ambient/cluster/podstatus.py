"""Container state as the kubelet tracks it, and the Pod `status` computed from it (pure except `poll`).

Invariants:
- `pod_status` is a pure function of the pod, its container states and the sandbox facts: the kubelet
  writes it whenever it differs from the last written one.
- Phase: Pending until the sandbox network is up and a container has started; Running while any container
  runs or will be restarted; Succeeded when all exited 0 and none restarts; Failed when all stopped for good
  and one failed (restartPolicy Never / a StartError under Never).
- Keys that may disappear (reason, message) are written as None so a merge patch removes them.
- Ready additionally waits for the mesh (local-cluster extension, in the manner of a readiness gate): a pod
  the node agent captured but its node proxy has not acknowledged yet (annotation
  `ambient.istio.io/redirection: pending`, e.g. enrolled while the proxy is down) is not Ready, reason
  `RedirectionPending`, while ContainersReady still tells the containers' own state. Its inbound traffic is
  redirected to a proxy that does not serve it yet, so it must not receive Service traffic.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from ambient.cluster import podruntime as rt


@dataclass
class ContainerState:
    name: str
    spec: dict[str, Any]
    restart_count: int = 0
    state: str = "waiting"  # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    exit_code: int | None = None
    started_at: str = ""
    finished_at: str = ""
    last_terminated: dict[str, Any] | None = None
    ready: bool = False
    pid: int = 0
    starttime: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_mono: float = 0.0
    ever_started: bool = False
    runs: int = 0  # bumped on every (re)start or adoption: probe state belongs to one run
    startup_done: bool = False  # the startupProbe succeeded (or there is none) in this run
    probe_kill: str = ""  # which probe killed the current run ("liveness"/"startup"), "" if none

    def set_waiting(self, reason: str, message: str) -> None:
        self.state, self.reason, self.message = "waiting", reason, message
        self.ready = False

    def set_start_error(self, message: str) -> None:
        self.set_waiting("StartError", message)
        self.pid, self.proc = 0, None

    def set_running(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.starttime = rt.proc_starttime(proc.pid) or 0
        self._running(rt.now_rfc3339())

    def adopt(self, pid: int, starttime: int, started_at: str) -> None:
        self.proc, self.pid, self.starttime = None, pid, starttime
        self._running(started_at or rt.now_rfc3339())

    def _running(self, started_at: str) -> None:
        self.state, self.reason, self.message = "running", "", ""
        self.started_at = started_at
        self.started_mono = time.monotonic()
        self.ever_started = True
        self.runs += 1
        self.startup_done = not isinstance(self.spec.get("startupProbe"), dict)
        self.probe_kill = ""

    def poll(self) -> int | None:
        """The exit code once the process ended (-1 when unknown: an adopted, non-child process); death by
        signal N is 128+N, as container runtimes report it (SIGKILL: 137, SIGTERM: 143)."""
        if self.proc is not None:
            code = self.proc.poll()
            return 128 - code if code is not None and code < 0 else code
        if self.pid and not rt.process_alive(self.pid, self.starttime):
            return -1
        return None

    def set_terminated(self, exit_code: int) -> float:
        """Record the exit; return how long the process ran (seconds)."""
        ran = time.monotonic() - self.started_mono
        self.state = "terminated"
        self.exit_code = exit_code
        self.reason = "Completed" if exit_code == 0 else "Error"
        self.message = ""
        self.finished_at = rt.now_rfc3339()
        self.last_terminated = {"exitCode": exit_code, "reason": self.reason, "startedAt": self.started_at,
                                "finishedAt": self.finished_at}
        self.ready = False
        self.reap()
        self.pid = 0
        return ran

    def reap(self) -> None:
        if self.proc is not None:
            self.proc.poll()

    def to_status(self) -> dict[str, Any]:
        if self.state == "running":
            state: dict[str, Any] = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated":
            state = {"terminated": dict(self.last_terminated or {})}
        else:
            waiting: dict[str, Any] = {"reason": self.reason}
            if self.message:
                waiting["message"] = self.message
            state = {"waiting": waiting}
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.spec.get("image") or "",
            "ready": self.ready,
            "started": self.state == "running" and self.startup_done,
            "restartCount": self.restart_count,
            "state": state,
        }
        if self.last_terminated is not None and self.state != "terminated":
            out["lastState"] = {"terminated": dict(self.last_terminated)}
        return out


def _phase(policy: str, containers: list[ContainerState], network_up: bool) -> str:
    if not network_up or not containers:
        return "Pending"
    if any(c.state == "running" for c in containers):
        return "Running"
    if not any(c.ever_started for c in containers):
        # Only StartErrors so far: Failed for good under Never, otherwise still trying.
        if policy == "Never" and all(c.reason == "StartError" for c in containers):
            return "Failed"
        return "Pending"
    final = all(c.state == "terminated" or (policy == "Never" and c.reason == "StartError") for c in containers)
    if policy == "Never" and final:
        return "Succeeded" if all(c.exit_code == 0 for c in containers) else "Failed"
    if policy == "OnFailure" and all(c.state == "terminated" and c.exit_code == 0 for c in containers):
        return "Succeeded"
    return "Running"


def _condition(ctype: str, ok: bool, reason: str | None = None, message: str | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": ctype, "status": "True" if ok else "False"}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


REDIRECTION_ANNOTATION = "ambient.istio.io/redirection"  # written by the node agent (cni.agent_plan)
REDIRECTION_PENDING = "pending"


def redirection_pending(pod: dict[str, Any]) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return annotations.get(REDIRECTION_ANNOTATION) == REDIRECTION_PENDING


def pod_status(pod: dict[str, Any], containers: list[ContainerState], *, host_ip: str, pod_ip: str,
               network_error: str | None, start_time: str) -> dict[str, Any]:
    policy = (pod.get("spec") or {}).get("restartPolicy") or "Always"
    network_up = bool(pod_ip) and network_error is None
    phase = _phase(policy, containers, network_up)
    all_ready = bool(containers) and all(c.ready for c in containers)
    reason: str | None = None
    message: str | None = None
    if network_error is not None:
        reason, message = "NetworkNotReady", network_error
    else:
        bad = next((c for c in containers if c.state == "waiting" and c.reason in ("StartError",
                                                                                    "CrashLoopBackOff")), None)
        if bad is not None:
            reason = bad.reason
            message = f"container {bad.name}: {bad.message}" if bad.message else f"container {bad.name}"
    not_ready = [c.name for c in containers if not c.ready]
    ready_msg = None if all_ready else f"containers with unready status: [{' '.join(not_ready)}]"
    ready_reason = None if all_ready else ("PodCompleted" if phase in ("Succeeded", "Failed")
                                           else "ContainersNotReady")
    pod_ready, pod_reason, pod_msg = all_ready, reason or ready_reason, message or ready_msg
    if all_ready and redirection_pending(pod):
        pod_ready, pod_reason = False, "RedirectionPending"
        pod_msg = (f"the node proxy has not acknowledged this pod yet ({REDIRECTION_ANNOTATION}="
                   f"{REDIRECTION_PENDING}): its traffic is captured but not yet served")
    conditions = [
        _condition("PodScheduled", True),
        _condition("Initialized", True),
        _condition("PodReadyToStartContainers", network_up, None if network_up else "NetworkNotReady",
                   network_error),
        _condition("ContainersReady", all_ready, ready_reason, ready_msg),
        _condition("Ready", pod_ready, pod_reason, pod_msg),
    ]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip or None,
        "podIPs": [{"ip": pod_ip}] if pod_ip else None,
        "startTime": start_time,
        "containerStatuses": [c.to_status() for c in containers],
        "reason": reason,
        "message": message,
    }
    return status
