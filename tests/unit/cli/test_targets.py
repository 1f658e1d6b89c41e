"""kubectl-style targets: resource spellings, the pod kubectl attaches to, the default container and its note."""

from __future__ import annotations

from typing import Any

import pytest

from ambient.cli import targets
from ambient.cli.errors import CliError, UsageError


@pytest.mark.parametrize(("ref", "expected"), [
    ("web", ("Pod", "web")),
    ("pod/web", ("Pod", "web")),
    ("po/web", ("Pod", "web")),
    ("pods/web", ("Pod", "web")),
    ("deploy/curl", ("Deployment", "curl")),
    ("deployment/curl", ("Deployment", "curl")),
    ("deployments.apps/curl", ("Deployment", "curl")),
    ("svc/httpbin", ("Service", "httpbin")),
    ("service/httpbin", ("Service", "httpbin")),
])
def test_parse_target(ref: str, expected: tuple[str, str]) -> None:
    assert targets.parse_target(ref) == expected


@pytest.mark.parametrize("ref", ["cm/x", "deploy/", "pod/a/b", "nosuch/x"])
def test_parse_target_refuses(ref: str) -> None:
    with pytest.raises(UsageError, match="cannot resolve"):
        targets.parse_target(ref)


def _pod(name: str, *, phase: str = "Running", ready: bool = True, created: str = "2026-01-01T00:00:00Z",
         node: str | None = "node-1", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-02T00:00:00Z"
    spec: dict[str, Any] = {"nodeName": node} if node else {}
    cond = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": meta, "spec": spec, "status": {"phase": phase, "conditions": cond}}


@pytest.mark.parametrize(("pods", "chosen"), [
    ([_pod("a", ready=False), _pod("b")], "b"),                                      # Ready first
    ([_pod("a", phase="Pending", ready=False), _pod("b", ready=False)], "b"),        # Running before Pending
    ([_pod("a", node=None, phase="Pending"), _pod("b", phase="Pending")], "b"),      # scheduled first
    ([_pod("new", created="2026-03-01T00:00:00Z"), _pod("old")], "old"),             # then the oldest
    ([_pod("gone", deleting=True), _pod("b", ready=False)], "b"),                    # terminating last
    ([_pod("done", phase="Succeeded"), _pod("b", phase="Pending")], "b"),            # finished never
    ([_pod("done", phase="Failed")], None),
    ([], None),
])
def test_pick_pod_as_kubectl(pods: list[dict[str, Any]], chosen: str | None) -> None:
    pod = targets.pick_pod(pods)
    assert (pod["metadata"]["name"] if pod else None) == chosen


def _multi(annotation: str | None = None, init: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p"}
    if annotation:
        meta["annotations"] = {targets.DEFAULT_CONTAINER_ANNOTATION: annotation}
    spec: dict[str, Any] = {"containers": [{"name": "app"}, {"name": "side"}]}
    if init:
        spec["initContainers"] = [{"name": "setup"}]
    return {"metadata": meta, "spec": spec}


def test_default_container_first_with_kubectl_note() -> None:
    spec, note = targets.default_container(_multi(), None)
    assert spec["name"] == "app"
    assert note == 'Defaulted container "app" out of: app, side, setup (init)'


def test_default_container_annotation_silent() -> None:
    assert targets.default_container(_multi("side"), None) == ({"name": "side"}, None)
    # an annotation naming no container falls back to the first, with the note
    spec, note = targets.default_container(_multi("nope", init=False), None)
    assert spec["name"] == "app" and note == 'Defaulted container "app" out of: app, side'


def test_default_container_single_and_explicit() -> None:
    single = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "only"}]}}
    assert targets.default_container(single, None) == ({"name": "only"}, None)
    assert targets.default_container(_multi(), "side") == ({"name": "side"}, None)
    with pytest.raises(CliError, match="container nope is not valid for pod p out of: app, side, setup"):
        targets.default_container(_multi(), "nope")


def test_resolve_pod_through_deployment_selector() -> None:
    objs = {("Deployment", "curl"): {"kind": "Deployment", "spec": {"selector": {"matchLabels": {"app": "curl"}}}},
            ("Service", "empty"): {"kind": "Service", "spec": {"selector": {"app": "none"}}}}
    pods = {"app=curl": [_pod("curl-2", ready=False), _pod("curl-1")], "app=none": []}
    seen: list[str] = []

    def get(kind: str, name: str, ns: str) -> dict[str, Any]:
        return objs[(kind, name)] if kind != "Pod" else {"metadata": {"name": name}}

    def list_(kind: str, ns: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        seen.append(label_selector)
        return pods[label_selector], "1"

    assert targets.resolve_pod(get, list_, "deploy/curl", "client")["metadata"]["name"] == "curl-1"
    assert targets.resolve_pod(get, list_, "pod/x", "client")["metadata"]["name"] == "x"
    with pytest.raises(CliError, match="no pods found for service client/empty"):
        targets.resolve_pod(get, list_, "svc/empty", "client")
    assert seen == ["app=curl", "app=none"]
