"""`make demo` waits only for the pods the node agent should capture (pure: pod and namespace objects)."""

from __future__ import annotations

from typing import Any

import pytest

from ambient.demo import capture_expected, uncaptured

ENROLLED = {"metadata": {"name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}}}
PLAIN = {"metadata": {"name": "demo", "labels": {}}}


def pod(name: str, *, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        ns: str = "demo", **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels or {},
                            "annotations": annotations or {}}
    meta.update(extra.pop("meta", {}))
    return {"metadata": meta, "spec": extra.pop("spec", {}), "status": extra.pop("status", {"phase": "Running"})}


# A waypoint as `ambient waypoint apply -n demo --enroll-namespace` deploys it (cluster/waypoints.py).
WAYPOINT = pod("waypoint-7d9f", labels={"gateway.networking.k8s.io/gateway-name": "waypoint",
                                        "istio.io/dataplane-mode": "none"})


@pytest.mark.parametrize(("the_pod", "namespace", "expected"), [
    (pod("httpbin-1"), ENROLLED, True),
    (WAYPOINT, ENROLLED, False),  # the README tour's waypoint: never captured, never waited for
    (pod("httpbin-1"), PLAIN, False),  # namespace not (yet) enrolled
    (pod("httpbin-1", labels={"istio.io/dataplane-mode": "ambient"}), PLAIN, True),  # pod label enrolls
    (pod("old", meta={"deletionTimestamp": "2026-01-01T00:00:00Z"}), ENROLLED, False),  # being deleted
    (pod("done", status={"phase": "Succeeded"}), ENROLLED, False),
    (pod("host", spec={"hostNetwork": True}), ENROLLED, False),
    (pod("dns", ns="kube-system"), {"metadata": {"name": "kube-system", "labels": ENROLLED["metadata"]["labels"]}},
     False),
])
def test_capture_expected(the_pod: dict[str, Any], namespace: dict[str, Any], expected: bool) -> None:
    assert capture_expected(the_pod, namespace) is expected


def test_the_tour_waypoint_does_not_hold_the_demo_back() -> None:
    captured = pod("httpbin-1", annotations={"ambient.istio.io/redirection": "enabled"})
    assert uncaptured([captured, WAYPOINT], ENROLLED) == []
    waiting = pod("httpbin-2", annotations={"ambient.istio.io/redirection": "pending"})
    assert uncaptured([captured, WAYPOINT, waiting], ENROLLED) == ["httpbin-2"]
