"""Deployment planning (pure): which pods to create and delete so a Deployment converges.

Invariants:
- A Deployment owns the pods whose ownerReference names it (kind Deployment, same name and uid).
- Pods carry the template labels plus `pod-template-hash` (a stable hash of the template); a template
  change therefore yields a new hash and the old pods are replaced.
- Rollout keeps capacity: all new pods are created at once, and old pods are deleted only as new pods
  become Ready (old kept = replicas - ready new). Scale down removes not-Ready pods first, then the newest.
- Pod names are `<deployment>-<5 chars>` from Kubernetes' alphabet (no vowels, no look-alike digits).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

from ambient.cluster.services import pod_is_ready

_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
HASH_LABEL = "pod-template-hash"


def template_hash(template: dict[str, Any]) -> str:
    """A short stable hash of a pod template (canonical JSON), usable as a label value."""
    text = json.dumps(template, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).digest()
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:10])


def random_suffix(rng: random.Random | None = None) -> str:
    r = rng or random
    return "".join(r.choice(_ALPHABET) for _ in range(5))


def owned_by(pod: dict[str, Any], deploy: dict[str, Any]) -> bool:
    dmeta = deploy["metadata"]
    pmeta = pod.get("metadata") or {}
    if (pmeta.get("namespace") or "default") != (dmeta.get("namespace") or "default"):
        return False
    for ref in pmeta.get("ownerReferences") or []:
        if ref.get("kind") == "Deployment" and ref.get("name") == dmeta["name"] and (
                not dmeta.get("uid") or not ref.get("uid") or ref.get("uid") == dmeta.get("uid")):
            return True
    return False


def new_pod(deploy: dict[str, Any], name: str) -> dict[str, Any]:
    """The Pod object for one replica of `deploy` (the API server fills uid, timestamps, defaults)."""
    dmeta = deploy["metadata"]
    template = deploy["spec"]["template"]
    tmeta = template.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    labels[HASH_LABEL] = template_hash(template)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": dmeta.get("namespace") or "default",
            "labels": labels,
            "annotations": dict(tmeta.get("annotations") or {}),
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": dmeta["name"],
                "uid": dmeta.get("uid"), "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": copy.deepcopy(template.get("spec") or {}),
    }


@dataclass
class DeploymentPlan:
    create: int = 0
    delete: list[str] = field(default_factory=list)  # pod names
    status: dict[str, Any] = field(default_factory=dict)


def _age_key(pod: dict[str, Any]) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return (meta.get("creationTimestamp") or "", meta.get("name") or "")


def plan(deploy: dict[str, Any], pods: list[dict[str, Any]]) -> DeploymentPlan:
    """Decide creations/deletions for `deploy` given all pods of its namespace."""
    spec = deploy.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    current_hash = template_hash(spec.get("template") or {})
    mine = [p for p in pods if owned_by(p, deploy) and not (p.get("metadata") or {}).get("deletionTimestamp")]
    new = [p for p in mine if (p["metadata"].get("labels") or {}).get(HASH_LABEL) == current_hash]
    old = [p for p in mine if p not in new]
    result = DeploymentPlan()
    if len(new) < replicas:
        result.create = replicas - len(new)
    elif len(new) > replicas:
        # not-Ready first, then newest first
        victims = sorted(new, key=lambda p: (pod_is_ready(p), _age_key(p)), reverse=False)
        not_ready = [p for p in victims if not pod_is_ready(p)]
        ready = sorted((p for p in victims if pod_is_ready(p)), key=_age_key, reverse=True)
        ordered = not_ready + ready
        result.delete += [p["metadata"]["name"] for p in ordered[: len(new) - replicas]]
    ready_new = sum(1 for p in new if pod_is_ready(p))
    keep_old = max(0, replicas - ready_new)
    if len(old) > keep_old:
        not_ready_old = [p for p in old if not pod_is_ready(p)]
        ready_old = sorted((p for p in old if pod_is_ready(p)), key=_age_key)
        ordered_old = not_ready_old + ready_old
        result.delete += [p["metadata"]["name"] for p in ordered_old[: len(old) - keep_old]]
    ready_total = sum(1 for p in mine if pod_is_ready(p))
    available = ready_total >= replicas
    result.status = {
        "observedGeneration": (deploy.get("metadata") or {}).get("generation"),
        "replicas": len(mine),
        "updatedReplicas": len(new),
        "readyReplicas": ready_total,
        "availableReplicas": ready_total,
        "unavailableReplicas": max(0, replicas - ready_total),
        "conditions": [{
            "type": "Available",
            "status": "True" if available else "False",
            "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
        }],
    }
    return result
