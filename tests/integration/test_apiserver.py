"""The API server over its Unix socket (in-process, on a background thread or the test's loop) and both clients."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ambient.api.client import ApiClient, AsyncApiClient, WatchEvent, default_socket_path
from ambient.api.errors import (
    AlreadyExistsError,
    ApiError,
    ConflictError,
    GoneError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)
from ambient.api.server import ApiServer, serve_in_thread

Obj = dict[str, Any]
_C = [{"name": "app", "image": "busybox"}]

MINIMAL: list[Obj] = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}},
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa1"}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": {"containers": _C}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}},
    {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"}},
    {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": _C}},
        },
    },
    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "deny"}, "spec": {}},
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "strict"},
        "spec": {"mtls": {"mode": "STRICT"}},
    },
    {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "wp"},
        "spec": {
            "gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    },
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"}, "spec": {}},
]


def pod(name: str, ns: str = "default", labels: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"containers": copy.deepcopy(_C)},
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ApiServer]:
    with serve_in_thread(tmp_path, "127.0.0.1:0", bookmark_interval=0.3, max_events=300) as srv:
        yield srv


@pytest.fixture
def api(server: ApiServer) -> Iterator[ApiClient]:
    with ApiClient(server.socket_path, timeout=30) as client:
        yield client


def test_socket_is_private_and_one_server_per_state_dir(server: ApiServer, tmp_path: Path) -> None:
    assert stat.S_IMODE(os.stat(server.socket_path).st_mode) == 0o600
    with pytest.raises(ApiError, match="already running"), serve_in_thread(tmp_path):
        pass
    # the refused second server left the first one's socket alone
    with ApiClient(server.socket_path) as client:
        assert client.healthy()


@pytest.mark.parametrize("index", range(len(MINIMAL)), ids=[o["kind"] for o in MINIMAL])
def test_round_trip_every_kind_over_http(api: ApiClient, index: int) -> None:
    obj = copy.deepcopy(MINIMAL[index])
    kind = obj["kind"]
    created = api.create(obj)
    name, ns = created["metadata"]["name"], created["metadata"].get("namespace")
    assert api.get(kind, name, ns) == created
    items, rv = api.list(kind, ns)
    assert created in items and int(rv) >= int(created["metadata"]["resourceVersion"])
    with pytest.raises(AlreadyExistsError, match="already exists"):
        api.create(copy.deepcopy(obj))
    patched = api.patch(kind, name, ns, {"metadata": {"labels": {"tier": "gold"}}})
    assert patched["metadata"]["labels"] == {"tier": "gold"}
    stale = copy.deepcopy(created)
    stale["metadata"]["labels"] = {"tier": "bronze"}
    with pytest.raises(ConflictError, match="has been modified") as err:
        api.update(stale)
    assert err.value.hint and "retry" in err.value.hint
    fresh = api.get(kind, name, ns)
    fresh["metadata"]["labels"]["tier"] = "silver"
    assert api.update(fresh)["metadata"]["labels"] == {"tier": "silver"}
    assert api.delete(kind, name, ns)["metadata"]["uid"] == created["metadata"]["uid"]
    with pytest.raises(NotFoundError):
        api.get(kind, name, ns)


def test_errors_keep_class_message_and_hint(api: ApiClient) -> None:
    with pytest.raises(NotFoundError) as err:
        api.create(pod("web", ns="missing"))
    assert err.value.message == 'namespaces "missing" not found'
    assert "ambient create namespace missing" in (err.value.hint or "")
    bad = pod("bad")
    bad["spec"]["containers"][0]["ports"] = [{"containerPort": "http"}]
    with pytest.raises(ValidationError, match=r"spec.containers\[0\].ports\[0\].containerPort"):
        api.create(bad)


def test_malformed_requests(server: ApiServer) -> None:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(server.socket_path)), base_url="http://x") as http:
        r = http.post("/api/v1/namespaces/default/pods", content=b"{not json")
        assert r.status_code == 400 and r.json()["reason"] == "BadRequest"
        assert "not valid JSON" in r.json()["message"]
        r = http.get("/api/v1/widgets")
        assert r.status_code == 404 and r.json()["kind"] == "Status"
        r = http.get("/apis/apps/v1/namespaces/default/pods")  # pods are not in the apps group
        assert r.status_code == 404
        r = http.post("/api/v1/namespaces/team-x/pods", json=pod("web", ns="default"))
        assert r.status_code == 400 and "does not match the URL namespace" in r.json()["message"]
        r = http.patch(
            "/api/v1/namespaces/default/pods/web",
            content=b"[]",
            headers={"Content-Type": "application/xml"},
        )
        assert r.status_code == 415 and "unsupported patch type" in r.json()["message"]
        assert http.get("/healthz").text == "ok"


def test_status_subresource_and_namespace_status_path(api: ApiClient) -> None:
    created = api.create(pod("web"))
    running = api.update_status({**created, "status": {"phase": "Running", "podIP": "10.244.0.5"}})
    assert running["status"]["phase"] == "Running" and running["metadata"]["generation"] == 1
    patched = api.patch("pods", "web", "default", {"status": {"phase": "Succeeded"}}, status=True)
    assert patched["status"] == {"phase": "Succeeded", "podIP": "10.244.0.5"}
    ns = api.get("ns", "default")
    assert api.update_status({**ns, "status": {"phase": "Active", "note": "x"}})["status"]["note"] == "x"


def test_apply_and_apply_many(api: ApiClient) -> None:
    assert api.apply(pod("web", labels={"a": "1"}))[1] == "created"
    assert api.apply(pod("web", labels={"a": "1"}))[1] == "unchanged"
    assert api.apply(pod("web", labels={"a": "2"}))[1] == "configured"
    before = api.list("pods")[1]
    with pytest.raises(NotFoundError, match=r'item 2 \(Pod "x"\): namespaces "nope" not found'):
        api.apply_many([pod("y"), pod("x", ns="nope")])
    items, after = api.list("pods")
    assert after == before and [p["metadata"]["name"] for p in items] == ["web"]


def test_namespace_delete_cascades_and_emits_deleted_events(api: ApiClient) -> None:
    api.apply_many(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}},
            pod("a", "team-a"),
            pod("b", "team-a"),
            pod("c"),
        ]
    )
    rv = api.list("pods")[1]
    api.delete("ns", "team-a")
    assert [p["metadata"]["name"] for p in api.list("pods")[0]] == ["c"]
    events = list(api.watch("pods", resource_version=rv, timeout=1.0))
    assert [(e.type, e.object["metadata"]["name"]) for e in events if e.type != "BOOKMARK"] == [
        ("DELETED", "a"),
        ("DELETED", "b"),
    ]


def test_watch_ordered_after_version_with_bookmarks(api: ApiClient) -> None:
    api.create(pod("early"))
    _, rv = api.list("pods")
    api.create(pod("a", labels={"app": "web"}))
    api.patch("pods", "a", "default", {"metadata": {"labels": {"v": "2"}}})
    api.create(pod("b"))
    api.delete("pods", "a")
    seen: list[WatchEvent] = []
    for event in api.watch("pods", resource_version=rv, timeout=1.5):
        seen.append(event)
    changes = [(e.type, e.object["metadata"]["name"]) for e in seen if e.type != "BOOKMARK"]
    assert changes == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    versions = [int(e.resource_version) for e in seen]
    assert versions == sorted(versions) and versions[0] == int(rv) + 1
    bookmarks = [e for e in seen if e.type == "BOOKMARK"]
    assert bookmarks and int(bookmarks[-1].resource_version) >= versions[3]


def test_watch_without_version_starts_with_current_state(api: ApiClient) -> None:
    api.create(pod("one"))
    events = [e for e in api.watch("pods", timeout=0.5) if e.type != "BOOKMARK"]
    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [("ADDED", "one")]


def test_watch_with_selectors_reports_transitions(api: ApiClient) -> None:
    _, rv = api.list("pods")
    api.create(pod("a", labels={"app": "web"}))
    api.create(pod("b", labels={"app": "db"}))
    api.patch("pods", "a", None, {"metadata": {"labels": {"app": "other"}}})  # leaves the selection
    api.patch("pods", "b", None, {"metadata": {"labels": {"app": "web"}}})  # enters it
    events = [
        e for e in api.watch("pods", resource_version=rv, label_selector="app=web", timeout=1.0) if e.type != "BOOKMARK"
    ]
    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"),
        ("DELETED", "a"),
        ("ADDED", "b"),
    ]
    named = [
        e
        for e in api.watch("pods", resource_version=rv, field_selector="metadata.name=b", timeout=0.5)
        if e.type != "BOOKMARK"
    ]
    assert [e.type for e in named] == ["ADDED", "MODIFIED"]


def test_watch_too_old_version_is_gone(api: ApiClient) -> None:
    _, rv = api.list("pods")
    api.apply_many([pod(f"p{i}") for i in range(400)])  # the server keeps 300 events
    with pytest.raises(GoneError, match="too old") as err:
        list(api.watch("pods", resource_version=rv, timeout=1))
    assert err.value.hint and "list" in err.value.hint
    # recovery: re-list, then watch from the list's version
    items, rv2 = api.list("pods")
    assert len(items) == 400
    assert {e.type for e in api.watch("pods", resource_version=rv2, timeout=0.5)} <= {"BOOKMARK"}


def test_watcher_overtaken_by_compaction_gets_an_error_event(api: ApiClient, server: ApiServer) -> None:
    _, rv = api.list("pods")
    # The watch is established (its first scan finds nothing), then one batch compacts the log past it.
    timer = threading.Timer(0.3, lambda: server.store.apply_many([pod(f"p{i}") for i in range(400)]))
    timer.start()
    try:
        with pytest.raises(GoneError, match="too old"):
            for _ in api.watch("pods", resource_version=rv, timeout=20):
                pass
    finally:
        timer.join()
    with pytest.raises(ValidationError, match="negative"):
        list(api.watch("pods", resource_version="-5", timeout=1))


def test_unavailable_when_no_server(tmp_path: Path) -> None:
    with ApiClient(tmp_path / "nothing.sock") as client, pytest.raises(UnavailableError) as err:
        client.get("pods", "x")
    assert "ambient cluster list" in (err.value.hint or "")


def test_tcp_listener(server: ApiServer) -> None:
    assert server.tcp_port
    with ApiClient(f"http://127.0.0.1:{server.tcp_port}") as client:
        assert client.get("namespaces", "default")["metadata"]["name"] == "default"


def test_default_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMBIENT_STATE_DIR", raising=False)
    monkeypatch.setenv("AMBIENT_CLUSTER", "c2")
    assert default_socket_path() == Path("/var/lib/ambient/c2/apiserver.sock")
    assert default_socket_path("x") == Path("/var/lib/ambient/x/apiserver.sock")
    monkeypatch.setenv("AMBIENT_STATE_DIR", "/tmp/st")
    assert default_socket_path() == Path("/tmp/st/apiserver.sock")


def test_speed_over_http(api: ApiClient, server: ApiServer) -> None:
    t0 = time.perf_counter()
    results = api.apply_many([pod(f"p{i}", labels={"i": str(i % 5)}) for i in range(1000)])
    apply_s = time.perf_counter() - t0
    assert {a for _, a in results} == {"created"}
    server.store.apply_many([pod(f"q{i}") for i in range(9000)])
    t0 = time.perf_counter()
    items, _ = api.list("pods")
    list_s = time.perf_counter() - t0
    print(f"\nhttp: apply_many(1000) {apply_s:.3f}s, list(10000) {list_s:.3f}s")
    assert len(items) == 10_000
    assert apply_s < 15 and list_s < 15


async def test_async_client_and_watch_in_the_same_loop(tmp_path: Path, no_leaked_tasks: None) -> None:
    srv = ApiServer(tmp_path, bookmark_interval=0.2)
    await srv.start()
    try:
        async with AsyncApiClient(srv.socket_path) as api:
            _, rv = await api.list("pods")
            seen: list[WatchEvent] = []

            async def watcher() -> None:
                async with contextlib.aclosing(api.watch("pods", resource_version=rv, timeout=10)) as stream:
                    async for event in stream:
                        seen.append(event)
                        if event.type == "DELETED":
                            return

            async with asyncio.TaskGroup() as tg:
                tg.create_task(watcher())
                created = await api.create(pod("web"))
                await api.patch("pods", "web", "default", {"metadata": {"annotations": {"x": "y"}}})
                with pytest.raises(ConflictError):
                    await api.update(created)
                await api.delete("pods", "web")
            assert [e.type for e in seen if e.type != "BOOKMARK"] == ["ADDED", "MODIFIED", "DELETED"]
            assert (await api.apply(pod("x")))[1] == "created"
            assert (await api.get("po", "x"))["metadata"]["name"] == "x"
    finally:
        await srv.stop()
