"""Pod scheduling (pure): which Ready node a pod without `spec.nodeName` is bound to.

Invariants:
- Only Ready, schedulable nodes are candidates (and those matching `spec.nodeSelector` by node labels).
- Pods of the same owner (a Deployment's pods share the ownerReference) are spread: the node with the
  fewest of them wins; ties go to the node with the fewest pods overall, then round-robin order, so
  consecutive single pods also alternate between nodes.
- A pod that already has a nodeName is never moved.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any


def node_is_ready(node: dict[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def owner_key(pod: dict[str, Any]) -> str | None:
    meta = pod.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    if refs:
        return f"{meta.get('namespace')}/{refs[0].get('kind')}/{refs[0].get('name')}"
    return None


class RoundRobinScheduler:
    """Keeps the round-robin cursor between calls; everything else comes from the arguments."""

    def __init__(self) -> None:
        self._cursor = 0

    def pick(self, pod: dict[str, Any], nodes: Iterable[dict[str, Any]],
             bound_pods: Iterable[dict[str, Any]]) -> str | None:
        """The node name for `pod`, or None when no node fits (the pod stays Pending)."""
        selector = (pod.get("spec") or {}).get("nodeSelector") or {}
        candidates = sorted(
            n["metadata"]["name"] for n in nodes
            if node_is_ready(n) and all(((n["metadata"].get("labels") or {}).get(k) == v)
                                        for k, v in selector.items())
        )
        if not candidates:
            return None
        key = owner_key(pod)
        total: Counter[str] = Counter()
        same_owner: Counter[str] = Counter()
        for other in bound_pods:
            node = (other.get("spec") or {}).get("nodeName")
            if not node:
                continue
            total[node] += 1
            if key is not None and owner_key(other) == key:
                same_owner[node] += 1
        n = len(candidates)
        order = {name: (i - self._cursor) % n for i, name in enumerate(candidates)}
        best = min(candidates, key=lambda name: (same_owner[name], total[name], order[name]))
        self._cursor = (candidates.index(best) + 1) % n
        return best
