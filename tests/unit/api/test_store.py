"""The SQLite object store: round trips, optimistic concurrency, change log, cascades, selectors, speed."""

from __future__ import annotations

import copy
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from ambient.api.errors import (
    AlreadyExistsError,
    ApiError,
    ConflictError,
    GoneError,
    NotFoundError,
    UnknownKindError,
    ValidationError,
)
from ambient.api.kinds import KINDS
from ambient.api.patch import merge_patch
from ambient.api.store import LAST_APPLIED, Store

Obj = dict[str, Any]
_CONTAINERS = [{"name": "app", "image": "busybox"}]

# One minimal valid object per kind (the labels on each are what the round-trip test patches and updates).
MINIMAL: dict[str, Obj] = {
    "Namespace": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}},
    "Node": {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}},
    "ServiceAccount": {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa1"}},
    "Pod": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": {"containers": _CONTAINERS}},
    "Service": {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
    },
    "Endpoints": {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"}},
    "Deployment": {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": _CONTAINERS}},
        },
    },
    "DaemonSet": {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"hostNetwork": True, "containers": _CONTAINERS}},
        },
    },
    "AuthorizationPolicy": {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-all"},
        "spec": {},
    },
    "PeerAuthentication": {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "strict"},
        "spec": {"mtls": {"mode": "STRICT"}},
    },
    "Gateway": {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "wp"},
        "spec": {
            "gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    },
    "HTTPRoute": {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {"parentRefs": [{"name": "web", "kind": "Service", "group": ""}]},
    },
    "ServiceEntry": {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "ext"},
        "spec": {"hosts": ["httpbin.example.test"], "ports": [{"number": 80}]},
    },
    "Secret": {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "dg=="}},
    "Event": {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.17e2a3b4c5d6e7f8"},
              "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"}, "reason": "Started",
              "message": "Started container web", "type": "Normal", "count": 1},
    "IstioGateway": {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "g"},
                     "spec": {"selector": {"istio": "ingressgateway"},
                              "servers": [{"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["*"]}]}},
    "VirtualService": {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "vs"},
                       "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}]}]}},
    "DestinationRule": {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "dr"},
                        "spec": {"host": "web"}},
    "RequestAuthentication": {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                              "metadata": {"name": "ra"}, "spec": {}},
    "GRPCRoute": {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute", "metadata": {"name": "g"},
                  "spec": {"parentRefs": [{"name": "web", "kind": "Service", "group": ""}]}},
    "TCPRoute": {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute", "metadata": {"name": "t"},
                 "spec": {"rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}},
    "ReferenceGrant": {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                       "metadata": {"name": "rg"},
                       "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                          "namespace": "a"}], "to": [{"group": "", "kind": "Service"}]}},
}


def pod(name: str, ns: str = "default", labels: dict[str, str] | None = None, **spec: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"containers": copy.deepcopy(_CONTAINERS), **spec},
    }


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path, max_events=200)
    yield s
    s.close()


def test_every_kind_is_covered() -> None:
    assert set(MINIMAL) == {k.kind for k in KINDS}


@pytest.mark.parametrize("kind", sorted(MINIMAL))
def test_round_trip_of_every_kind(store: Store, kind: str) -> None:
    created = store.create(copy.deepcopy(MINIMAL[kind]))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta.get("generation") == (None if kind == "Event" else 1)  # Events have no generation, as in Kubernetes
    name, ns = meta["name"], meta.get("namespace")
    assert store.get(kind, name, ns) == created
    items, rv = store.list(kind, ns)
    assert created in items and int(rv) >= int(meta["resourceVersion"])

    patched = store.patch(kind, name, ns, {"metadata": {"labels": {"tier": "gold"}}})
    assert patched["metadata"]["labels"] == {"tier": "gold"}
    assert int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert patched["metadata"].get("generation") == meta.get("generation")  # metadata changes do not bump it
    assert patched["metadata"]["uid"] == meta["uid"]

    changed = copy.deepcopy(patched)
    changed["metadata"]["labels"]["tier"] = "silver"
    updated = store.update(changed)
    assert store.get(kind, name, ns)["metadata"]["labels"] == {"tier": "silver"}
    with pytest.raises(ConflictError, match="has been modified"):
        store.update(changed)  # stale resourceVersion: the update above already happened

    deleted = store.delete(kind, name, ns)
    assert deleted["metadata"]["uid"] == meta["uid"]
    assert int(deleted["metadata"]["resourceVersion"]) > int(updated["metadata"]["resourceVersion"])
    with pytest.raises(NotFoundError, match="not found"):
        store.get(kind, name, ns)


def test_initial_namespaces_exist_and_default_is_protected(store: Store) -> None:
    names = {n["metadata"]["name"] for n in store.list("namespaces")[0]}
    assert {"default", "kube-system", "istio-system"} <= names
    assert store.get("ns", "default")["status"]["phase"] == "Active"
    with pytest.raises(ValidationError, match="cannot be deleted"):
        store.delete("ns", "default")


def test_missing_namespace_is_refused_with_a_hint(store: Store) -> None:
    with pytest.raises(NotFoundError) as err:
        store.create(pod("web", ns="nope"))
    assert err.value.message == 'namespaces "nope" not found'
    assert "ambient create namespace nope" in (err.value.hint or "")


def test_create_twice_is_already_exists(store: Store) -> None:
    store.create(pod("web"))
    with pytest.raises(AlreadyExistsError, match='pods "web" in namespace "default" already exists'):
        store.create(pod("web"))


def test_namespace_deletion_cascades_in_one_transaction(store: Store) -> None:
    store.create(copy.deepcopy(MINIMAL["Namespace"]))
    for i in range(3):
        store.create(pod(f"p{i}", ns="team-a"))
    store.create(pod("keep", ns="default"))
    before = store.resource_version()
    store.delete("namespace", "team-a")
    assert store.list("pods", "team-a")[0] == []
    assert [p["metadata"]["name"] for p in store.list("pods")[0]] == ["keep"]
    events, _ = store.events_since(before, "Pod")
    assert [(e.type, json.loads(e.data)["metadata"]["name"]) for e in events] == [
        ("DELETED", "p0"),
        ("DELETED", "p1"),
        ("DELETED", "p2"),
    ]
    ns_events, _ = store.events_since(before, "Namespace")
    assert [e.type for e in ns_events] == ["DELETED"]
    # one version per deletion, the namespace's last
    assert json.loads(ns_events[0].data)["metadata"]["resourceVersion"] == str(before + 4)


def test_generation_bumps_on_spec_change_only(store: Store) -> None:
    created = store.create(pod("web"))
    new = copy.deepcopy(created)
    new["spec"]["nodeName"] = "node-1"
    updated = store.update(new)
    assert updated["metadata"]["generation"] == 2
    status = store.update_status({**updated, "status": {"phase": "Running"}})
    assert status["metadata"]["generation"] == 2 and status["status"] == {"phase": "Running"}
    assert int(status["metadata"]["resourceVersion"]) > int(updated["metadata"]["resourceVersion"])


def test_update_keeps_status_and_status_update_keeps_spec(store: Store) -> None:
    created = store.create(pod("web"))
    running = store.update_status({**created, "status": {"phase": "Running"}})
    sneaky = copy.deepcopy(running)
    sneaky["status"] = {"phase": "Failed"}
    sneaky["spec"]["nodeName"] = "node-2"
    after = store.update(sneaky)
    assert after["status"] == {"phase": "Running"} and after["spec"]["nodeName"] == "node-2"
    sneaky2 = copy.deepcopy(after)
    sneaky2["spec"]["nodeName"] = "node-9"
    sneaky2["status"] = {"phase": "Succeeded"}
    after2 = store.update_status(sneaky2)
    assert after2["spec"]["nodeName"] == "node-2" and after2["status"] == {"phase": "Succeeded"}


def test_noop_update_writes_nothing(store: Store) -> None:
    created = store.create(pod("web"))
    rv = store.resource_version()
    assert store.update(copy.deepcopy(created)) == created
    assert store.resource_version() == rv


def test_update_status_conflict(store: Store) -> None:
    created = store.create(pod("web"))
    store.patch("pod", "web", "default", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(ConflictError):
        store.update_status({**created, "status": {"phase": "Running"}})


def test_merge_patch_semantics(store: Store) -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": None, "e": 4}, "d": [1]}) == {
        "a": {"c": 2, "e": 4},
        "d": [1],
    }
    store.create(pod("web", labels={"a": "1", "b": "2"}))
    out = store.patch("po", "web", None, {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert out["metadata"]["labels"] == {"b": "2", "c": "3"}
    with pytest.raises(ValidationError, match=r"spec\.containers"):
        store.patch("po", "web", None, {"spec": {"containers": None}})
    with pytest.raises(ValidationError, match="cannot be changed"):
        store.patch("po", "web", None, {"metadata": {"name": "other"}})
    status = store.patch("po", "web", None, {"status": {"phase": "Running"}}, status=True)
    assert status["status"] == {"phase": "Running"}
    assert store.patch("po", "web", None, {"status": {"phase": "Failed"}})["status"] == {"phase": "Running"}


def test_apply_created_configured_unchanged_and_label_merge(store: Store) -> None:
    obj, action = store.apply(pod("web", labels={"app": "web"}))
    assert action == "created"
    assert store.apply(pod("web", labels={"app": "web"}))[1] == "unchanged"
    store.patch("po", "web", None, {"metadata": {"labels": {"added-by": "controller"}}})
    store.update_status({**store.get("po", "web"), "status": {"phase": "Running"}})
    # Controller-added labels and status survive a re-apply of the same manifest.
    assert store.apply(pod("web", labels={"app": "web"}))[1] == "unchanged"
    new, action = store.apply(pod("web", labels={"app": "web"}, nodeName="node-1"))
    assert action == "configured"
    assert new["metadata"]["labels"] == {"app": "web", "added-by": "controller"}
    assert new["status"] == {"phase": "Running"} and new["metadata"]["generation"] == 2
    assert new["metadata"]["uid"] == obj["metadata"]["uid"]


def test_apply_removes_what_the_previous_apply_set_and_the_manifest_dropped(store: Store) -> None:
    """kubectl's three-way merge for labels and annotations: a key the last apply set and the manifest no
    longer has is removed (un-enrolling by editing a manifest works); keys added by others survive."""
    first = pod("web", labels={"app": "web", "istio.io/dataplane-mode": "ambient"})
    first["metadata"]["annotations"] = {"team": "a"}
    store.apply(first)
    store.patch("po", "web", None, {"metadata": {"labels": {"added-by": "controller"},
                                                 "annotations": {"note": "kept"}}})
    second = pod("web", labels={"app": "web"})
    out, action = store.apply(second)
    assert action == "configured"
    assert out["metadata"]["labels"] == {"app": "web", "added-by": "controller"}
    annotations = dict(out["metadata"]["annotations"])
    assert annotations.pop(LAST_APPLIED) == '{"annotations":[],"labels":["app"]}'
    assert annotations == {"note": "kept"}
    assert store.apply(second)[1] == "unchanged"
    # An object never applied (created, or made by a controller) has no record: apply only adds.
    store.create(pod("made", labels={"owner": "controller"}))
    out, _ = store.apply(pod("made", labels={"app": "made"}))
    assert out["metadata"]["labels"] == {"owner": "controller", "app": "made"}


def test_apply_many_is_all_or_nothing_and_names_the_item(store: Store) -> None:
    rv = store.resource_version()
    bad = pod("bad")
    bad["spec"]["containers"] = [{"name": "c", "image": "x", "ports": [{"containerPort": "http"}]}]
    with pytest.raises(ValidationError, match=r'item 3 \(Pod "bad"\): spec.containers\[0\].ports\[0\]'):
        store.apply_many([pod("a"), pod("b"), bad, pod("c")])
    assert store.list("pods")[0] == [] and store.resource_version() == rv
    with pytest.raises(NotFoundError, match=r'item 2 .*namespaces "team-a" not found'):
        store.apply_many([pod("a"), pod("b", ns="team-a")])
    # a Namespace earlier in the same batch makes the namespace exist for later items
    results = store.apply_many([copy.deepcopy(MINIMAL["Namespace"]), pod("b", ns="team-a")])
    assert [a for _, a in results] == ["created", "created"]
    rvs = [int(o["metadata"]["resourceVersion"]) for o, _ in results]
    assert rvs == [rv + 1, rv + 2]


def test_unknown_kind(store: Store) -> None:
    with pytest.raises(UnknownKindError):
        store.create({"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "w"}})
    with pytest.raises(UnknownKindError):
        store.list("widgets")


def test_list_selectors_and_namespaces(store: Store) -> None:
    store.create(copy.deepcopy(MINIMAL["Namespace"]))
    store.create(pod("a", labels={"app": "web", "v": "1"}, nodeName="n1"))
    store.create(pod("b", labels={"app": "web", "v": "2"}, nodeName="n2"))
    store.create(pod("c", ns="team-a", labels={"app": "db"}, nodeName="n1"))

    def names(**kw: Any) -> list[str]:
        return [p["metadata"]["name"] for p in store.list("pods", **kw)[0]]

    assert names() == ["a", "b", "c"]
    assert names(namespace="team-a") == ["c"]
    assert names(label_selector="app=web,v!=1") == ["b"]
    assert names(label_selector="app in (db)") == ["c"]
    assert names(label_selector="!v") == ["c"]
    assert names(field_selector="spec.nodeName=n1") == ["a", "c"]
    assert names(field_selector="metadata.namespace=default,metadata.name!=a") == ["b"]


def test_change_log_order_and_compaction(tmp_path: Path) -> None:
    store = Store(tmp_path, max_events=50)
    start = store.resource_version()
    for i in range(40):
        store.create(pod(f"p{i}"))
    events, scanned = store.events_since(start, "Pod")
    assert [e.rv for e in events] == list(range(start + 1, start + 41))
    assert scanned == store.resource_version()
    assert all(e.type == "ADDED" for e in events)
    # paging: a limit stops at the last returned event, not at the head
    page, upto = store.events_since(start, "Pod", limit=10)
    assert len(page) == 10 and upto == page[-1].rv
    for i in range(40):
        store.delete("pod", f"p{i}")
    with pytest.raises(GoneError, match="too old"):
        store.events_since(start, "Pod")
    recent, _ = store.events_since(store.resource_version() - 10, "Pod")
    assert len(recent) == 10 and all(e.type == "DELETED" for e in recent)
    store.close()


def test_state_survives_reopen_and_versions_stay_monotonic(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.create(pod("web"))
    rv = store.resource_version()
    store.close()
    again = Store(tmp_path)
    assert again.get("pod", "web")["metadata"]["resourceVersion"] == str(rv)
    assert int(again.create(pod("api"))["metadata"]["resourceVersion"]) == rv + 1
    assert again.integrity_check() == "ok"
    again.close()
    db = sqlite3.connect(tmp_path / "apiserver.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_corrupt_database_is_reported_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "apiserver.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ApiError, match="cannot open the object store") as err:
        Store(tmp_path)
    assert "integrity_check" in (err.value.hint or "")


def test_speed_apply_1000_and_list_10000(tmp_path: Path) -> None:
    store = Store(tmp_path)
    objs = [pod(f"p{i}", labels={"i": str(i % 7)}) for i in range(10_000)]
    t0 = time.perf_counter()
    store.apply_many(objs[:1000])
    apply_s = time.perf_counter() - t0
    store.apply_many(objs[1000:])
    t0 = time.perf_counter()
    items, _ = store.list("pods")
    list_s = time.perf_counter() - t0
    print(f"\nstore: apply_many(1000) {apply_s:.3f}s, list(10000) {list_s:.3f}s")
    assert len(items) == 10_000
    assert apply_s < 15 and list_s < 15
    store.close()
