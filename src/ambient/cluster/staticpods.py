"""The node components as the Kubernetes API shows them: DaemonSets and kubelet mirror pods (pure).

On a Kubernetes install the node proxy and the node agent are the pods of the DaemonSets `ztunnel` and
`ambient-node-agent` in `ambient-system` (deploy/kubernetes). The local cluster runs them as supervised
processes in each node's network namespace (`cluster/supervisor.py`), so users' commands find them here the
way a kubelet publishes static pods:

- `daemonsets(layout)`: the two DaemonSet objects `cluster create` writes (names, labels, selector, ports,
  readiness as in deploy/kubernetes; `hostNetwork: true` and the component's command line, because that is
  what runs). They describe what the supervisor runs; no controller turns them into processes, and editing
  or deleting one changes nothing that runs.
- `static_pod(layout, ds, node, owner)`: the mirror pod of one component on one node, named
  `<daemonset>-<node>` (the kubelet suffixes a static pod's name with its node), with the annotation
  `kubernetes.io/config.mirror` (= `kubernetes.io/config.hash`, a hash of the manifest) and a controller
  ownerReference. kubectl resolves `logs ds/ztunnel` and `port-forward ds/ztunnel` through the DaemonSet's
  `spec.selector` (kubectl `polymorphichelpers.SelectorsForObject` + `GetFirstPod`), never through owner
  references, so either owner works there; `kubectl describe ds` counts only the pods whose controller
  reference carries the DaemonSet's uid (`getPodStatusForController`), and `describe pod` shows "Controlled
  By", so the owner is the DaemonSet (as on a real install: `daemonset_owner`). Without the DaemonSet (deleted
  by a user) the kubelet's own choice for a mirror pod applies: its Node (`node_owner`, KEP 1314,
  MirrorPodNodeRestriction). Nothing garbage-collects by these references in the local cluster.
- `mirror_status(...)`: the pod status from the supervisor's record (restart count, last exit, back-off)
  and the readiness probe's result; `phase` Running while the process runs or will be restarted.
- `static_component(layout, pod)`: which component (its log file and node netns) a mirror pod stands for,
  for `pods/log`, `pods/exec` and `pods/portforward`.
- `daemonset_status(ds, pods, nodes)`: the DaemonSet's status counts from its pods (kubectl get ds,
  kubectl rollout status).

Invariants: a mirror pod exists exactly while its component is wanted (has a supervisor spec); deleting it
(kubectl delete pod) makes its kubelet publish it again and never touches the process, as the kubelet does for
a static pod; a pod that carries the mirror annotation but stands for no component is deleted by its node's
kubelet (an orphaned mirror pod).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambient.cluster import layout as L
from ambient.cluster import podruntime as rt
from ambient.cluster import processes
from ambient.cluster.errors import ClusterError
from ambient.cluster.podstatus import ContainerState, pod_status

Obj = dict[str, Any]

NAMESPACE = "ambient-system"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
HASH_ANNOTATION = "kubernetes.io/config.hash"
SOURCE_ANNOTATION = "kubernetes.io/config.source"
NODE_NAME_VAR = "$(NODE_NAME)"
STOP_GRACE_S = 3  # processes.stop_component's SIGTERM -> SIGKILL grace


@dataclass(frozen=True)
class StaticComponent:
    """One per-node component published as a DaemonSet and its mirror pods."""

    daemonset: str  # DaemonSet name and the `app` label (deploy/kubernetes)
    component: str  # supervisor component prefix: `<component>-<node>`
    container: str
    module: str
    service_account: str


NODE_PROXY = StaticComponent("ztunnel", "ztunnel", "ztunnel", "ambient.cluster.node_proxy", "ztunnel")
NODE_AGENT = StaticComponent("ambient-node-agent", "node-agent", "node-agent", "ambient.cluster.node_agent",
                             "ambient-node-agent")
STATIC_COMPONENTS = (NODE_PROXY, NODE_AGENT)


def component_name(comp: StaticComponent, node: str) -> str:
    return f"{comp.component}-{node}"


def pod_name(comp: StaticComponent, node: str) -> str:
    return f"{comp.daemonset}-{node}"


def _container(layout: L.ClusterLayout, comp: StaticComponent, node: L.NodeLayout | None) -> Obj:
    """The component's container; `node` None: the DaemonSet template (node as `$(NODE_NAME)`)."""
    argv = processes.python_module_argv(comp.module, "--state-dir", layout.state_dir,
                                        "--node", node.name if node is not None else NODE_NAME_VAR)
    container: Obj = {
        "name": comp.container,
        "image": f"ambient/{comp.component}",  # informational: the local cluster runs command + args
        "command": argv[:3], "args": argv[3:],
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "AMBIENT_STATE_DIR", "value": layout.state_dir}],
    }
    if comp is NODE_PROXY:
        # hostPort = containerPort: what the API server defaults for a host-network pod
        container["ports"] = [{"name": "http-monitoring", "containerPort": 15020, "hostPort": 15020, "protocol": "TCP"},
                              {"name": "http-ready", "containerPort": 15021, "hostPort": 15021, "protocol": "TCP"}]
        container["readinessProbe"] = {"httpGet": {"path": "/healthz/ready", "port": 15021},
                                       "periodSeconds": 2, "failureThreshold": 3}
    elif node is not None:
        # deploy/kubernetes: `test -S /var/run/ambient/pluginevent.sock`; here the socket is in the node's
        # run dir, a different path per node, so only the node's own pod can name it (probes expand nothing).
        sock = str(Path(node.run_dir) / "pluginevent.sock")
        container["readinessProbe"] = {"exec": {"command": ["test", "-S", sock]}, "periodSeconds": 5}
    return container


def _template(layout: L.ClusterLayout, comp: StaticComponent, node: L.NodeLayout | None) -> Obj:
    labels = {"app": comp.daemonset, "istio.io/dataplane-mode": "none"}
    annotations: dict[str, str] = {}
    if comp is NODE_PROXY:
        annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": "15020",
                       "prometheus.io/path": "/stats/prometheus"}
    spec: Obj = {
        "serviceAccountName": comp.service_account,
        "hostNetwork": True,  # the process runs in the node's network namespace
        "hostPID": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "priorityClassName": "system-node-critical",
        "terminationGracePeriodSeconds": STOP_GRACE_S,
        "tolerations": [{"operator": "Exists"}],
        "containers": [_container(layout, comp, node)],
    }
    if comp is NODE_PROXY:
        spec["automountServiceAccountToken"] = False
    meta: Obj = {"labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": spec}


def daemonset(layout: L.ClusterLayout, comp: StaticComponent) -> Obj:
    strategy: Obj = ({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
                     if comp is NODE_PROXY else {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}})
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": comp.daemonset, "namespace": NAMESPACE, "labels": {"app": comp.daemonset}},
        "spec": {"selector": {"matchLabels": {"app": comp.daemonset}}, "updateStrategy": strategy,
                 "template": _template(layout, comp, None)},
    }


def daemonsets(layout: L.ClusterLayout) -> list[Obj]:
    """The DaemonSets `cluster create` writes (with their namespace's ServiceAccounts first)."""
    accounts = [{"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": c.service_account, "namespace": NAMESPACE}} for c in STATIC_COMPONENTS]
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    return [namespace, *accounts, *(daemonset(layout, c) for c in STATIC_COMPONENTS)]


def daemonset_owner(ds: Mapping[str, Any]) -> Obj:
    """The controller reference a DaemonSet's pods carry (as its controller sets it)."""
    meta = ds.get("metadata") or {}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": meta.get("name"), "uid": meta.get("uid"),
            "controller": True, "blockOwnerDeletion": True}


def node_owner(node: str, node_uid: str) -> Obj:
    """The reference the kubelet puts on every mirror pod (KEP 1314): used while the DaemonSet is missing."""
    return {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid, "controller": True}


def static_pod(layout: L.ClusterLayout, comp: StaticComponent, node: str, owner: Obj) -> Obj:
    """The mirror pod of `comp` on `node` (see the module docstring), controlled by `owner`."""
    node_layout = layout.node(node)
    tmpl = _template(layout, comp, node_layout)
    spec = tmpl["spec"]
    spec["nodeName"] = node
    spec["restartPolicy"] = "Always"
    manifest = {"metadata": {"name": pod_name(comp, node), "namespace": NAMESPACE, **tmpl["metadata"]},
                "spec": spec}
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:32]
    meta = manifest["metadata"]
    meta["annotations"] = {**meta.get("annotations", {}), HASH_ANNOTATION: digest, MIRROR_ANNOTATION: digest,
                           SOURCE_ANNOTATION: "file"}
    meta["ownerReferences"] = [dict(owner)]
    return {"apiVersion": "v1", "kind": "Pod", **manifest}


def is_mirror(pod: Mapping[str, Any]) -> bool:
    return MIRROR_ANNOTATION in ((pod.get("metadata") or {}).get("annotations") or {})


def static_component(layout: L.ClusterLayout, pod: Mapping[str, Any]) -> tuple[StaticComponent, L.NodeLayout] | None:
    """The component a mirror pod stands for, or None (not a mirror pod, or one of no component here)."""
    if not is_mirror(pod):
        return None
    meta = pod.get("metadata") or {}
    node = (pod.get("spec") or {}).get("nodeName")
    if meta.get("namespace") != NAMESPACE or not isinstance(node, str):
        return None
    try:
        node_layout = layout.node(node)
    except ClusterError:  # not a node of this cluster
        return None
    for comp in STATIC_COMPONENTS:
        if meta.get("name") == pod_name(comp, node):
            return comp, node_layout
    return None


def pod_log_path(layout: L.ClusterLayout, pod: Mapping[str, Any], container: str) -> Path:
    """Where a pod container's output goes: the component's log (supervisor restart markers included) for a
    mirror pod, else the kubelet's container log."""
    static = static_component(layout, pod)
    if static is not None:
        comp, node = static
        return processes.log_file(layout, component_name(comp, node.name))
    meta = pod.get("metadata") or {}
    return rt.log_path(layout.state_path, meta.get("namespace") or "default", meta["name"], container)


def previous_run(log: bytes, component: str) -> bytes | None:
    """The previous run's part of a component's log: from the supervisor's second-to-last start marker
    (`==== <time> supervisor: starting|restarting <component> ...`) to the last one; None with fewer than two."""
    marker = re.compile(rb"^==== \S+ supervisor: (?:re)?starting " + re.escape(component.encode()) + rb"[ \n]",
                        re.MULTILINE)
    starts = [m.start() for m in marker.finditer(log)]
    if len(starts) < 2:
        return None
    return log[starts[-2]:starts[-1]]


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


def container_state(container: Obj, record: Mapping[str, Any] | None, pid: int | None, now: float,
                    ready: bool) -> ContainerState:
    """The container as the supervisor's status record says (`supervisor.ComponentState` as JSON) and
    `pid` (the live process, None when it is not running)."""
    rec = record or {}
    c = ContainerState(name=container["name"], spec=container, restart_count=int(rec.get("restarts") or 0))
    last = rec.get("last_exit")
    if isinstance(last, dict):
        code, sig = last.get("code"), last.get("signal")
        exit_code = int(code) if isinstance(code, int) else 128 + int(sig) if isinstance(sig, int) else 255
        reason = "Completed" if exit_code == 0 else "Error" if (code is not None or sig is not None) else "Unknown"
        at = float(last.get("at") or now)
        c.last_terminated = {"exitCode": exit_code, "reason": reason,
                             "startedAt": _iso(at - float(last.get("ran_for") or 0.0)), "finishedAt": _iso(at)}
        c.ever_started = True
    if pid is not None:
        c.state, c.reason, c.pid = "running", "", pid
        c.started_at = _iso(float(rec.get("started_at") or now)) if rec.get("pid") == pid else _iso(now)
        c.ever_started, c.startup_done, c.ready = True, True, ready
        return c
    restart_at = rec.get("restart_at")
    if isinstance(restart_at, int | float) and restart_at > now + 0.5:
        # the whole back-off, as the kubelet words it (not a countdown: the status stays put while waiting)
        exited = float(last.get("at") or now) if isinstance(last, dict) else now
        c.set_waiting("CrashLoopBackOff", f"back-off {max(0.0, restart_at - exited):.0f}s restarting failed "
                                          f"container={c.name}")
    else:
        c.set_waiting("ContainerCreating", "")
    return c


def mirror_status(pod: Obj, state: ContainerState, node_ip: str, start_time: str) -> Obj:
    """The mirror pod's status: a host-network pod, so podIP = hostIP = the node's address."""
    return pod_status(pod, [state], host_ip=node_ip, pod_ip=node_ip, network_error=None, start_time=start_time)


def daemonset_status(ds: Obj, pods: list[Obj], nodes: list[Obj]) -> Obj:
    """A DaemonSet's status counts (pure): one pod wanted per Ready-or-not node; its pods are those its
    selector matches in its namespace (as kubectl counts them), ready when their Ready condition is True."""
    meta, spec = ds.get("metadata") or {}, ds.get("spec") or {}
    match = ((spec.get("selector") or {}).get("matchLabels") or {})
    mine = [p for p in pods if (p.get("metadata") or {}).get("namespace") == meta.get("namespace")
            and match and all(((p.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in match.items())
            and not (p.get("metadata") or {}).get("deletionTimestamp")]
    node_names = {(n.get("metadata") or {}).get("name") for n in nodes}
    scheduled = [p for p in mine if (p.get("spec") or {}).get("nodeName") in node_names]
    ready = [p for p in scheduled if any(c.get("type") == "Ready" and c.get("status") == "True"
                                         for c in (p.get("status") or {}).get("conditions") or [])]
    on_nodes = {(p.get("spec") or {}).get("nodeName") for p in scheduled}
    return {
        "desiredNumberScheduled": len(node_names),
        "currentNumberScheduled": len(on_nodes),
        "numberMisscheduled": 0,
        "numberReady": len(ready),
        "updatedNumberScheduled": len(on_nodes),
        "numberAvailable": len(ready),
        "numberUnavailable": max(0, len(node_names) - len(ready)),
        "observedGeneration": meta.get("generation") or 1,
    }


