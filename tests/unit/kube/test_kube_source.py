"""Contract tests of the Kubernetes object source, driven through kubernetes-asyncio against recorded API
responses served on 127.0.0.1 (see kube_fakeapi.py)."""

from __future__ import annotations

import asyncio
import copy
import json
from contextlib import aclosing
from typing import Any

import pytest
from kube_fakeapi import TOKEN, FakeKubeApi, event, recorded, status, write_kubeconfig

from ambient.api.client import WatchEvent
from ambient.api.errors import ApiError, GoneError, UnavailableError
from ambient.api.informer import inform
from ambient.controlplane.source import ObjectSource
from ambient.kube.errors import KubeApiError, KubeGoneError, KubeUnavailableError
from ambient.kube.resources import RESOURCES
from ambient.kube.source import KubeSource

PATHS = {
    "Namespace": ("/api/v1/namespaces", "namespaces"),
    "Node": ("/api/v1/nodes", "nodes"),
    "ServiceAccount": ("/api/v1/serviceaccounts", "serviceaccounts"),
    "Pod": ("/api/v1/pods", "pods"),
    "Service": ("/api/v1/services", "services"),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1/endpointslices", "endpointslices"),
    "AuthorizationPolicy": ("/apis/security.istio.io/v1/authorizationpolicies", "authorizationpolicies"),
    "PeerAuthentication": ("/apis/security.istio.io/v1/peerauthentications", "peerauthentications"),
    "Gateway": ("/apis/gateway.networking.k8s.io/v1/gateways", "gateways"),
    "HTTPRoute": ("/apis/gateway.networking.k8s.io/v1/httproutes", "httproutes"),
    "ServiceEntry": ("/apis/networking.istio.io/v1/serviceentries", "serviceentries"),
    "VirtualService": ("/apis/networking.istio.io/v1/virtualservices", "virtualservices"),
    "DestinationRule": ("/apis/networking.istio.io/v1/destinationrules", "destinationrules"),
    "GRPCRoute": ("/apis/gateway.networking.k8s.io/v1/grpcroutes", "grpcroutes"),
    "TCPRoute": ("/apis/gateway.networking.k8s.io/v1alpha2/tcproutes", "tcproutes"),
    "RequestAuthentication": ("/apis/security.istio.io/v1/requestauthentications", "requestauthentications"),
    "ReferenceGrant": ("/apis/gateway.networking.k8s.io/v1beta1/referencegrants", "referencegrants"),
}
POD_PATH = "/api/v1/pods"


def local_shape(kind: str, item: dict[str, Any]) -> dict[str, Any]:
    """What the local cluster API holds for the same object: kind/apiVersion set, no managedFields."""
    res = RESOURCES[kind]
    out = {"apiVersion": res.api_version, "kind": kind, **copy.deepcopy(item)}
    out["metadata"].pop("managedFields", None)
    return out


def test_every_watched_kind_has_a_recorded_list() -> None:
    assert set(PATHS) == set(RESOURCES)


def test_every_kind_the_control_plane_reads_is_watched_from_kubernetes() -> None:
    from ambient.controlplane.index import KINDS

    assert set(KINDS) <= set(RESOURCES)


@pytest.mark.parametrize("kind", sorted(PATHS))
async def test_list_returns_api_json_in_the_local_shape(fake_api: FakeKubeApi, source: KubeSource, kind: str) -> None:
    path, name = PATHS[kind]
    answer = recorded(name)
    fake_api.lists[path] = [copy.deepcopy(answer)]
    items, rv = await source.list(kind)
    assert rv == "100"
    assert items == [local_shape(kind, i) for i in answer["items"]]
    for item in items:  # camelCase JSON, not the client's snake_case models
        assert "resource_version" not in item["metadata"]
        assert "managedFields" not in item["metadata"]
    (req,) = fake_api.requests(path)
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    assert req.query.get("limit") == "500" and "watch" not in req.query


async def test_pod_fields_survive_verbatim(fake_api: FakeKubeApi, source: KubeSource) -> None:
    fake_api.lists[POD_PATH] = [recorded("pods")]
    items, _ = await source.list("Pod")
    web = next(p for p in items if p["metadata"]["name"].startswith("web-"))
    assert web["spec"]["serviceAccountName"] == "web"
    assert web["spec"]["nodeName"] == "kind-worker"
    assert web["status"]["podIPs"] == [{"ip": "10.244.1.5"}]
    assert web["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert web["status"]["conditions"][0]["lastProbeTime"] is None


async def test_list_is_paged_with_continue_tokens(fake_api: FakeKubeApi, source: KubeSource) -> None:
    source.page_size = 2
    fake_api.lists[POD_PATH] = [recorded("pods")]
    items, rv = await source.list("Pod")
    assert [p["metadata"]["name"] for p in items] == [p["metadata"]["name"] for p in recorded("pods")["items"]]
    assert rv == "100"
    reqs = fake_api.requests(POD_PATH)
    assert [r.query.get("continue") for r in reqs] == [None, "2"]
    assert all(r.query["limit"] == "2" for r in reqs)


async def test_namespaced_list_and_selectors(fake_api: FakeKubeApi, source: KubeSource) -> None:
    path = "/api/v1/namespaces/demo/pods"
    fake_api.lists[path] = [recorded("pods")]
    await source.list("Pod", namespace="demo", field_selector="spec.nodeName=kind-worker", label_selector="app=web")
    (req,) = fake_api.requests(path)
    assert req.query["fieldSelector"] == "spec.nodeName=kind-worker"
    assert req.query["labelSelector"] == "app=web"
    path = "/apis/security.istio.io/v1/namespaces/demo/authorizationpolicies"
    fake_api.lists[path] = [recorded("authorizationpolicies")]
    items, _ = await source.list("AuthorizationPolicy", namespace="demo")
    assert items[0]["spec"]["selector"] == {"matchLabels": {"app": "web"}}


async def test_watch_streams_events_and_bookmarks(fake_api: FakeKubeApi, source: KubeSource) -> None:
    pod = recorded("pods")["items"][0]
    modified = copy.deepcopy(pod)
    modified["metadata"].update(resourceVersion="101", labels={**pod["metadata"]["labels"], "version": "v2"})
    fake_api.watches[POD_PATH] = [
        [
            event("BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "100"}}),
            event("MODIFIED", {"kind": "Pod", "apiVersion": "v1", **modified}),
            event("DELETED", {"kind": "Pod", "apiVersion": "v1", **modified, "metadata": {**modified["metadata"],
                                                                                   "resourceVersion": "102"}}),
        ]
    ]
    async with aclosing(source.watch("Pod", "100")) as stream:
        events = [e async for e in stream]
    assert [(e.type, e.resource_version) for e in events] == [("BOOKMARK", "100"), ("MODIFIED", "101"),
                                                              ("DELETED", "102")]
    assert all(isinstance(e, WatchEvent) for e in events)
    assert events[1].object["metadata"]["labels"]["version"] == "v2"
    assert "managedFields" not in events[1].object["metadata"]
    (req,) = fake_api.requests(POD_PATH, watch=True)
    assert req.query["allowWatchBookmarks"].lower() == "true"
    assert req.query["resourceVersion"] == "100"
    assert req.query["timeoutSeconds"] == "30"


async def test_watch_handles_objects_larger_than_aiohttp_line_limit(fake_api: FakeKubeApi, source: KubeSource) -> None:
    pod = copy.deepcopy(recorded("pods")["items"][0])
    pod["metadata"]["annotations"] = {"big": "x" * 300_000}
    fake_api.watches[POD_PATH] = [[event("ADDED", pod)]]
    async with aclosing(source.watch("Pod", "100")) as stream:
        events = [e async for e in stream]
    assert len(events[0].object["metadata"]["annotations"]["big"]) == 300_000


async def test_watch_error_event_410_is_gone(fake_api: FakeKubeApi, source: KubeSource) -> None:
    fake_api.watches[POD_PATH] = [[event("ERROR", status(410, "Expired", "too old resource version: 5 (90)"))]]
    with pytest.raises(KubeGoneError) as info:
        async with aclosing(source.watch("Pod", "5")) as stream:
            async for _ in stream:
                pass
    assert isinstance(info.value, GoneError)  # what inform() re-lists on
    assert "too old resource version" in info.value.message


async def test_watch_http_410_is_gone(fake_api: FakeKubeApi, source: KubeSource) -> None:
    fake_api.watches[POD_PATH] = [410]
    with pytest.raises(GoneError):
        async with aclosing(source.watch("Pod", "5")) as stream:
            async for _ in stream:
                pass


async def test_forbidden_list_names_rbac(fake_api: FakeKubeApi, source: KubeSource) -> None:
    fake_api.lists[POD_PATH] = [403]
    with pytest.raises(KubeApiError) as info:
        await source.list("Pod")
    assert isinstance(info.value, ApiError) and info.value.http_status == 403
    assert "ClusterRole" in (info.value.hint or "")


async def test_unreachable_api_is_unavailable(tmp_path: Any) -> None:
    # a port nothing listens on: bind, note the port, close
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = await KubeSource.connect(str(write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}")))
    try:
        with pytest.raises(KubeUnavailableError) as info:
            await src.list("Pod")
        assert isinstance(info.value, UnavailableError)
    finally:
        await src.aclose()


async def test_patch_sends_a_merge_patch(fake_api: FakeKubeApi, source: KubeSource) -> None:
    pod = recorded("pods")["items"][0]
    path = "/api/v1/namespaces/demo/pods/" + pod["metadata"]["name"]
    fake_api.objects[path] = copy.deepcopy(pod)
    patch = {"metadata": {"annotations": {"ambient.istio.io/redirection": "enabled"}}}
    out = await source.patch("Pod", pod["metadata"]["name"], "demo", patch)
    assert out["metadata"]["annotations"]["ambient.istio.io/redirection"] == "enabled"
    assert out["kind"] == "Pod"
    (req,) = [r for r in fake_api.log if r.method == "PATCH"]
    assert req.headers["Content-Type"] == "application/merge-patch+json"
    assert req.body == patch


async def test_get_missing_object_is_404(fake_api: FakeKubeApi, source: KubeSource) -> None:
    with pytest.raises(KubeApiError) as info:
        await source.get("Pod", "nope", "demo")
    assert info.value.http_status == 404 and "not found" in info.value.message


async def test_reflect_lists_watches_resumes_and_relists_on_410(fake_api: FakeKubeApi, source: KubeSource) -> None:
    """The control plane's informer (`inform`) over the Kubernetes source: list -> replace, watch events
    applied, a watch ended by the server resumed from the last version seen (a bookmark's), a 410 forcing a
    re-list whose result replaces everything (a deletion missed meanwhile is not lost)."""
    pods = recorded("pods")
    web, _client, _coredns = pods["items"]
    added = copy.deepcopy(web)
    added["metadata"].update(name="web-7d9c6b5f4-zzzzz", uid="new-uid", resourceVersion="110")
    relisted = copy.deepcopy(pods)
    relisted["metadata"]["resourceVersion"] = "200"
    relisted["items"] = [web]  # client and the added pod are gone while we were not watching
    fake_api.lists[POD_PATH] = [copy.deepcopy(pods), relisted]
    fake_api.watches[POD_PATH] = [
        [event("ADDED", added), event("BOOKMARK", {"kind": "Pod", "metadata": {"resourceVersion": "150"}})],
        [event("ERROR", status(410, "Expired", "too old resource version: 150 (190)"))],
    ]
    state: dict[str, dict[str, Any]] = {}
    replaces: list[list[str]] = []
    seen: list[str] = []

    def on_replace(kind: str, items: list[dict[str, Any]]) -> None:
        state.clear()
        state.update({i["metadata"]["name"]: i for i in items})
        replaces.append(sorted(state))

    def on_event(kind: str, ev: WatchEvent) -> None:
        seen.append(ev.type)
        name = ev.object["metadata"]["name"]
        if ev.type == "DELETED":
            state.pop(name, None)
        else:
            state[name] = ev.object

    typed: ObjectSource = source  # the control plane's Protocol
    task = asyncio.create_task(inform(typed, "Pod", on_replace, on_event))
    try:
        async with asyncio.timeout(20):
            while len(replaces) < 2 or len(fake_api.requests(POD_PATH, watch=True)) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert replaces[0] == sorted(p["metadata"]["name"] for p in pods["items"])
    assert seen == ["ADDED"]  # bookmarks are not events for the consumer
    assert sorted(state) == [web["metadata"]["name"]]
    watch_rvs = [r.query.get("resourceVersion") for r in fake_api.requests(POD_PATH, watch=True)]
    assert watch_rvs[:3] == ["100", "150", "200"]  # list rv, resumed at the bookmark, re-list rv
    assert len(fake_api.requests(POD_PATH, watch=False)) == 2
    assert all(r.query["allowWatchBookmarks"].lower() == "true" for r in fake_api.requests(POD_PATH, watch=True))
    json.dumps(state)  # plain JSON-able dicts, no client models


async def test_missing_crd_is_an_empty_kind_until_installed(fake_api: FakeKubeApi, source: KubeSource) -> None:
    """No Gateway API CRDs: the list is empty (so a consumer waiting for every kind still syncs), the watch
    waits and ends; once the CRD exists, a watch from version "" delivers the objects."""
    source.missing_crd_poll = 0.05
    path = "/apis/gateway.networking.k8s.io/v1/gateways"
    assert await source.list("Gateway") == ([], "")  # the fake answers 404 for an unknown collection
    async with aclosing(source.watch("Gateway", "")) as stream:
        assert [e async for e in stream] == []
    gateway = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "waypoint", "namespace": "demo", "resourceVersion": "300"},
               "spec": {"gatewayClassName": "istio-waypoint", "listeners": []}}
    fake_api.watches[path] = [[event("ADDED", gateway)]]
    async with aclosing(source.watch("Gateway", "")) as stream:
        events = [e async for e in stream]
    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [("ADDED", "waypoint")]
    assert "resourceVersion" not in fake_api.requests(path, watch=True)[-1].query


async def test_missing_builtin_collection_is_an_error(fake_api: FakeKubeApi, source: KubeSource) -> None:
    with pytest.raises(KubeApiError) as info:
        await source.list("Pod")  # no recorded list: 404, but pods always exist: a real error
    assert info.value.http_status == 404


@pytest.mark.parametrize(
    ("kind", "name", "namespace", "path", "recording"),
    [
        ("AuthorizationPolicy", "web-allow-client", "demo",
         "/apis/security.istio.io/v1/namespaces/demo/authorizationpolicies/web-allow-client", "authorizationpolicies"),
        ("Node", "kind-worker", None, "/api/v1/nodes/kind-worker", "nodes"),
        ("EndpointSlice", "web-8h2kq", "demo",
         "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices/web-8h2kq", "endpointslices"),
    ],
)
async def test_get_custom_cluster_scoped_and_grouped_kinds(
    fake_api: FakeKubeApi, source: KubeSource, kind: str, name: str, namespace: str | None, path: str, recording: str
) -> None:
    item = recorded(recording)["items"][0]
    fake_api.objects[path] = copy.deepcopy(item)
    got = await source.get(kind, name, namespace)
    assert got == local_shape(kind, item)
