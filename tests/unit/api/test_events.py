"""Kubernetes Events: the correlator (repeats counted, similar events combined, spam filter), the Table columns
kubectl prints, and what the store keeps (validation, per-object and overall caps, TTL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ambient.api import events as ev
from ambient.api import tables
from ambient.api.errors import ValidationError
from ambient.api.kinds import resolve_kind
from ambient.api.store import Store

POD: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "7"}}


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def occurrence(message: str = "Readiness probe failed: HTTP probe failed with statuscode: 503", *,
               reason: str = "Unhealthy", at: float = 1_700_000_000.0, obj: dict[str, Any] = POD) -> dict[str, Any]:
    return ev.new_event(ev.reference(obj, ev.container_path("app")), ev.WARNING, reason, message, "kubelet",
                        "node-1", at)


def test_a_new_event_is_named_and_shaped_as_the_kubelet_writes_it() -> None:
    e = occurrence(at=1_700_000_000.5)
    assert e["metadata"] == {"name": f"web.{int(1_700_000_000.5 * 1e9):x}", "namespace": "shop"}
    assert e["involvedObject"] == {"kind": "Pod", "name": "web", "namespace": "shop", "uid": "u-1",
                                   "resourceVersion": "7", "apiVersion": "v1", "fieldPath": "spec.containers{app}"}
    assert e["source"] == {"component": "kubelet", "host": "node-1"}
    assert (e["reportingComponent"], e["reportingInstance"]) == ("kubelet", "node-1")
    assert e["count"] == 1 and e["firstTimestamp"] == e["lastTimestamp"] == "2023-11-14T22:13:20Z"
    # a cluster-scoped object's events live in "default"
    node = ev.new_event(ev.reference({"kind": "Node", "metadata": {"name": "n1", "uid": "n1"}}), ev.NORMAL,
                        "NodeReady", "Node n1 status is now: NodeReady", "kubelet", "n1", 0)
    assert node["metadata"]["namespace"] == "default" and "namespace" not in node["involvedObject"]


def test_repeats_patch_one_event_with_a_growing_count() -> None:
    clock = Clock()
    c = ev.Correlator(clock=clock)
    first = c.observe(occurrence(at=clock.now))
    assert first.action == "create" and first.event["count"] == 1
    c.written(first)
    clock.now += 5
    second = c.observe(occurrence(at=clock.now))
    assert second.action == "patch" and second.name == first.name and second.namespace == "shop"
    assert second.patch == {"count": 2, "lastTimestamp": ev.rfc3339(clock.now), "message": first.event["message"]}
    assert second.event["firstTimestamp"] == first.event["firstTimestamp"]
    # another message (or reason, or container) is another Event
    other = c.observe(occurrence("Liveness probe failed: HTTP probe failed with statuscode: 500", at=clock.now))
    assert other.action == "create" and other.name != first.name


def test_ten_different_messages_are_combined_into_one_event() -> None:
    clock = Clock()
    c = ev.Correlator(clock=clock)
    names = set()
    for i in range(ev.AGGREGATE_MAX - 1):
        d = c.observe(occurrence(f"Readiness probe failed: dial tcp 10.0.0.{i}:80: connection refused", at=clock.now))
        assert d.action == "create"
        c.written(d)
        names.add(d.name)
        clock.now += 0.001
    combined = c.observe(occurrence("Readiness probe failed: timeout", at=clock.now))
    assert combined.action == "create"
    assert combined.event["message"] == "(combined from similar events): Readiness probe failed: timeout"
    c.written(combined)
    again = c.observe(occurrence("Readiness probe failed: yet another", at=clock.now + 1))
    assert again.action == "patch" and again.name == combined.name and again.event["count"] == 2
    assert again.patch is not None and again.patch["message"].endswith("yet another")
    # after the window, messages are counted afresh
    clock.now += ev.AGGREGATE_WINDOW_SECONDS + 1
    fresh = c.observe(occurrence("Readiness probe failed: something new", at=clock.now))
    assert not fresh.event["message"].startswith(ev.COMBINED_PREFIX)


def test_the_spam_filter_holds_writes_back_but_keeps_counting() -> None:
    clock = Clock()
    c = ev.Correlator(clock=clock, burst=3, refill_seconds=300)
    actions = []
    for _ in range(6):
        d = c.observe(occurrence(at=clock.now))
        actions.append(d.action)
        if d.action != "skip":
            c.written(d)
        clock.now += 1
    assert actions == ["create", "patch", "patch", "skip", "skip", "skip"]
    clock.now += 300  # one token back
    d = c.observe(occurrence(at=clock.now))
    assert d.action == "patch" and d.event["count"] == 7  # the held-back repeats are in the count
    # the bucket is per source + object: another pod is not held back
    other = {**POD, "metadata": {**POD["metadata"], "name": "api", "uid": "u-2"}}
    assert c.observe(occurrence(at=clock.now, obj=other)).action == "create"


def test_an_event_gone_from_the_server_is_created_again_with_its_count() -> None:
    c = ev.Correlator(clock=Clock())
    first = c.observe(occurrence())
    c.written(first)
    second = c.observe(occurrence())
    c.forget(second)  # the patch found no Event (expired)
    third = c.observe(occurrence())
    assert third.action == "create" and third.event["count"] == 3 and third.name == first.name


def test_a_long_message_is_cut() -> None:
    e = occurrence("x" * 5000)
    assert len(e["message"]) == ev.MAX_MESSAGE_CHARS and e["message"].endswith("...")


# ----------------------------------------------------------------------------- table

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def stored_event(**fields: Any) -> dict[str, Any]:
    e = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.1", "namespace": "shop"},
         "involvedObject": {"kind": "Pod", "name": "web", "namespace": "shop", "fieldPath": "spec.containers{app}"},
         "reason": "BackOff", "type": "Warning", "source": {"component": "kubelet", "host": "node-1"},
         "message": "Back-off restarting failed container app in pod web_shop(u-1)",
         "firstTimestamp": "2026-01-01T11:50:00Z", "lastTimestamp": "2026-01-01T11:58:00Z", "count": 5}
    e.update(fields)
    return e


def test_the_event_table_has_kubectls_columns() -> None:
    info = resolve_kind("Event")
    doc = tables.table(info, [stored_event()], "9", now=NOW)
    cols = [(c["name"], c["priority"]) for c in doc["columnDefinitions"]]
    assert cols == [("Last Seen", 0), ("Type", 0), ("Reason", 0), ("Object", 0), ("Subobject", 1), ("Source", 1),
                    ("Message", 0), ("First Seen", 1), ("Count", 1), ("Name", 1)]
    assert doc["rows"][0]["cells"] == [
        "2m (x5 over 10m)", "Warning", "BackOff", "pod/web", "spec.containers{app}", "kubelet, node-1",
        "Back-off restarting failed container app in pod web_shop(u-1)", "10m", "5", "web.1"]
    headers, rows = tables.build_table(info, [stored_event(count=1)], all_namespaces=True, now=NOW)
    assert headers == ["NAMESPACE", "LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert rows == [["shop", "2m", "Warning", "BackOff", "pod/web",
                     "Back-off restarting failed container app in pod web_shop(u-1)"]]


def test_an_event_without_legacy_timestamps_uses_its_event_time() -> None:
    e = stored_event(firstTimestamp=None, lastTimestamp=None, count=None, eventTime="2026-01-01T11:59:00Z",
                     source=None, reportingComponent="default-scheduler")
    _, rows = tables.build_table(resolve_kind("Event"), [e], wide=True, now=NOW)
    assert rows[0][0] == "60s" and rows[0][5] == "default-scheduler" and rows[0][8] == "1"


# ----------------------------------------------------------------------------- store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path, event_limits=ev.EventLimits(ttl=60, per_object=3, total=5))
    s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    yield s
    s.close()


def _put(store: Store, name: str, pod: str = "web", uid: str = "u-1", at: str = "2026-01-01T11:58:00Z") -> None:
    store.create(stored_event(metadata={"name": name, "namespace": "shop"}, lastTimestamp=at,
                              involvedObject={"kind": "Pod", "name": pod, "namespace": "shop", "uid": uid}))


def _names(store: Store) -> list[str]:
    return sorted(e["metadata"]["name"] for e in store.list("Event", "shop")[0])


def test_an_event_must_be_about_an_object_of_its_namespace(store: Store) -> None:
    with pytest.raises(ValidationError, match=r"involvedObject\.namespace"):
        store.create(stored_event(involvedObject={"kind": "Pod", "name": "web", "namespace": "other"}))
    with pytest.raises(ValidationError, match=r"one of Normal\|Warning"):
        store.create(stored_event(type="Error"))
    with pytest.raises(ValidationError, match="involvedObject"):
        store.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "x", "namespace": "shop"}})


def test_the_store_keeps_a_bounded_number_of_events_per_object_and_overall(store: Store) -> None:
    for i in range(5):
        _put(store, f"web.{i}")
    assert _names(store) == ["web.2", "web.3", "web.4"]  # per object: the least recently written went
    store.patch("Event", "web.2", "shop", {"count": 9})  # written again: now the most recent
    _put(store, "web.5")
    assert _names(store) == ["web.2", "web.4", "web.5"]
    for i in range(3):
        _put(store, f"api.{i}", pod="api", uid="u-2")
    assert len(_names(store)) == 5  # overall
    assert _names(store) == ["api.0", "api.1", "api.2", "web.2", "web.5"]


def test_events_expire_after_the_ttl_from_their_last_occurrence(store: Store) -> None:
    created = time.time()
    _put(store, "web.old", at=ev.rfc3339(created - 100))  # counts from its creation (now): the later of the two
    _put(store, "web.new", at=ev.rfc3339(created + 50))  # seen again later
    rv = store.resource_version()
    assert store.expire_events(created + 30) == 0
    assert store.expire_events(created + 62) == 1
    assert _names(store) == ["web.new"]
    deleted, _ = store.events_since(rv, "Event", "shop")
    assert [(e.type, e.rv > rv) for e in deleted] == [("DELETED", True)]  # watchers see it go
    assert store.expire_events(created + 62) == 0
