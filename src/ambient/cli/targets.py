"""kubectl-style targets for exec / logs / port-forward: `pod/NAME`, `deploy/NAME`, `svc/NAME` or a bare NAME.

Pure decisions (tested with tables in tests/unit/cli/test_targets.py), plus one resolver that asks the API:
- `parse_target` maps kubectl's resource spellings to a kind (a bare name is a pod, as in kubectl);
- `pick_pod` orders a workload's pods as kubectl does when it attaches to a Deployment or Service
  (`sort.Reverse(podutils.ActivePods)`): Ready before not Ready, Running before Pending, scheduled before
  unscheduled, then the oldest; terminating pods last;
- `default_container` picks the container kubectl picks: `-c NAME`, else the
  `kubectl.kubernetes.io/default-container` annotation when it names a container, else the first one, with
  kubectl's note (`Defaulted container "a" out of: a, b, c (init)`) when the pod has more than one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ambient.cli.errors import CliError, UsageError

DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"

_KINDS = {
    "po": "Pod", "pod": "Pod", "pods": "Pod",
    "deploy": "Deployment", "deployment": "Deployment", "deployments": "Deployment",
    "deployment.apps": "Deployment", "deployments.apps": "Deployment",
    "svc": "Service", "service": "Service", "services": "Service",
}


def parse_target(ref: str) -> tuple[str, str]:
    """`TYPE/NAME` (pod, deploy, svc in any of kubectl's spellings) or a bare pod NAME -> (kind, name)."""
    kind, sep, name = ref.partition("/")
    if not sep:
        return "Pod", ref
    resolved = _KINDS.get(kind.lower())
    if resolved is None or not name or "/" in name:
        raise UsageError(f"cannot resolve {ref!r} to a pod",
                         hint="use NAME, pod/NAME, deploy/NAME or svc/NAME")
    return resolved, name


def _workload_selector(obj: dict[str, Any]) -> dict[str, str]:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Deployment":
        return dict((spec.get("selector") or {}).get("matchLabels") or {})
    return dict(spec.get("selector") or {})


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _created(pod: dict[str, Any]) -> float:
    stamp = (pod.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return float("inf")
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")


_PHASE_RANK = {"Running": 0, "Unknown": 1, "Pending": 2}


def pick_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pod kubectl attaches to among a workload's pods (None when there is none)."""
    def rank(pod: dict[str, Any]) -> tuple[int, int, int, int, float, str]:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        return (
            1 if meta.get("deletionTimestamp") else 0,
            0 if (pod.get("spec") or {}).get("nodeName") else 1,
            _PHASE_RANK.get(str(status.get("phase")), 3),
            0 if _ready(pod) else 1,
            _created(pod),
            str(meta.get("name", "")),
        )

    candidates = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    return min(candidates, key=rank) if candidates else None


def all_container_names(pod: dict[str, Any]) -> str:
    """kubectl's list for the defaulting note: containers, then ephemeral `(ephem)`, then init `(init)`."""
    spec = pod.get("spec") or {}
    names = [c["name"] for c in spec.get("containers") or []]
    names += [f"{c['name']} (ephem)" for c in spec.get("ephemeralContainers") or []]
    names += [f"{c['name']} (init)" for c in spec.get("initContainers") or []]
    return ", ".join(names)


def default_container(pod: dict[str, Any], requested: str | None) -> tuple[dict[str, Any], str | None]:
    """(container, note for stderr or None): `-c NAME`, the default-container annotation, or the first."""
    spec = pod.get("spec") or {}
    containers = list(spec.get("containers") or [])
    name = (pod.get("metadata") or {}).get("name", "")
    by_name = {c["name"]: c for c in containers}
    if requested is not None:
        if requested not in by_name:
            raise CliError(f"container {requested} is not valid for pod {name} out of: "
                           f"{all_container_names(pod)}")
        return dict(by_name[requested]), None
    if not containers:
        raise CliError(f"pod {name} has no containers")
    annotated = ((pod.get("metadata") or {}).get("annotations") or {}).get(DEFAULT_CONTAINER_ANNOTATION)
    if annotated and annotated in by_name:
        return dict(by_name[annotated]), None
    first = containers[0]
    note = None
    if len(containers) > 1 or spec.get("initContainers") or spec.get("ephemeralContainers"):
        note = f'Defaulted container "{first["name"]}" out of: {all_container_names(pod)}'
    return dict(first), note


def resolve_pod(get: Callable[..., dict[str, Any]], list_: Callable[..., Any], ref: str,
                namespace: str) -> dict[str, Any]:
    """The pod behind `ref` in `namespace`: the pod itself, or the one kubectl picks for a workload."""
    kind, name = parse_target(ref)
    if kind == "Pod":
        return get("Pod", name, namespace)
    obj = get(kind, name, namespace)
    selector = _workload_selector(obj)
    if not selector:
        raise CliError(f"{kind.lower()} {namespace}/{name} has no selector: no pod to attach to")
    text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    pods, _ = list_("Pod", namespace, label_selector=text)
    pod = pick_pod(list(pods))
    if pod is None:
        raise CliError(f"no pods found for {kind.lower()} {namespace}/{name} (selector {text})",
                       hint=f"`ambient get pods -n {namespace} -l {text}` lists them")
    return pod
