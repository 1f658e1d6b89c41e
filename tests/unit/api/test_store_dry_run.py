"""Dry-run writes of the object store (Kubernetes' `?dryRun=All`): each runs whole (validation, defaulting,
checks) and answers what a real write would, with the object's current resourceVersion (none for a
create), but stores nothing: no version is taken, no change-log row kept, the stored object is unchanged."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ambient.api.errors import (
    AlreadyExistsError,
    ApiError,
    ConflictError,
    NotFoundError,
    UnknownFieldError,
    ValidationError,
)
from ambient.api.store import Store

Obj = dict[str, Any]
AP = "security.istio.io/v1"


def policy(name: str = "p", ns: str = "shop", action: str = "ALLOW") -> Obj:
    return {"apiVersion": AP, "kind": "AuthorizationPolicy", "metadata": {"name": name, "namespace": ns},
            "spec": {"action": action, "rules": [{}]}}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path)
    s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    s.create(policy())
    yield s
    s.close()


def snapshot(store: Store) -> tuple[int, list[Obj]]:
    return store.resource_version(), store.list("AuthorizationPolicy")[0] + store.list("Namespace")[0]


def live(store: Store) -> Obj:
    return store.get("AuthorizationPolicy", "p", "shop")


# (name, the write as a function of (store, dry_run), what the dry-run answer must look like)
Check = Callable[[Obj, Obj], None]


def _created(result: Obj, before: Obj) -> None:
    meta = result["metadata"]
    assert "resourceVersion" not in meta  # as Kubernetes answers a dry-run create
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1


def _changed(result: Obj, before: Obj) -> None:
    assert result["spec"]["action"] == "DENY"
    assert result["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert result["metadata"]["generation"] == before["metadata"]["generation"] + 1  # as it would be


def _status(result: Obj, before: Obj) -> None:
    assert result["status"] == {"x": 1}
    assert result["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def _same(result: Obj, before: Obj) -> None:
    assert result == before


CASES: list[tuple[str, Callable[[Store, bool], Obj], Check]] = [
    ("create", lambda s, d: s.create(policy("new"), dry_run=d), _created),
    ("update", lambda s, d: s.update({**live(s), "spec": {"action": "DENY", "rules": [{}]}}, dry_run=d), _changed),
    ("patch", lambda s, d: s.patch("AuthorizationPolicy", "p", "shop", {"spec": {"action": "DENY"}}, dry_run=d),
     _changed),
    ("status", lambda s, d: s.update_status({**live(s), "status": {"x": 1}}, dry_run=d), _status),
    ("apply", lambda s, d: s.apply(policy(action="DENY"), dry_run=d)[0], _changed),
    ("delete", lambda s, d: s.delete("AuthorizationPolicy", "p", "shop", dry_run=d), _same),
    ("delete namespace", lambda s, d: s.delete("Namespace", "shop", dry_run=d),
     lambda r, b: _same(r, {**r, "metadata": {**r["metadata"], "name": "shop"}})),
]


@pytest.mark.parametrize(("name", "write", "check"), CASES, ids=[c[0] for c in CASES])
def test_a_dry_run_answers_like_the_write_and_stores_nothing(
    store: Store, name: str, write: Callable[[Store, bool], Obj], check: Check
) -> None:
    before_state, before = snapshot(store), copy.deepcopy(live(store))
    result = write(store, True)
    check(result, before)
    assert snapshot(store) == before_state  # same version, same objects, no change-log row
    assert store.events_since(before_state[0], "AuthorizationPolicy")[0] == []
    # the real write then does what the dry run announced (all but the new version)
    real = write(store, False)
    strip = ("resourceVersion", "uid", "creationTimestamp")
    if name not in ("delete", "delete namespace", "create"):
        assert {k: v for k, v in real["metadata"].items() if k not in strip} == {
            k: v for k, v in result["metadata"].items() if k not in strip}
        assert real.get("spec") == result.get("spec") and real.get("status") == result.get("status")
    assert store.resource_version() > before_state[0]


@pytest.mark.parametrize(("write", "error"), [
    (lambda s: s.create(policy()), AlreadyExistsError),
    (lambda s: s.create(policy("x", "nowhere")), NotFoundError),
    (lambda s: s.update({**live(s), "metadata": {**live(s)["metadata"], "resourceVersion": "1"}}), ConflictError),
    (lambda s: s.patch("AuthorizationPolicy", "p", "shop", {"spec": {"action": "MAYBE"}}), ValidationError),
    (lambda s: s.patch("AuthorizationPolicy", "p", "shop", {"spec": {"actoin": "DENY"}}), UnknownFieldError),
    (lambda s: s.delete("AuthorizationPolicy", "gone", "shop"), NotFoundError),
    (lambda s: s.delete("Namespace", "default"), ValidationError),
], ids=["exists", "no namespace", "stale version", "invalid", "unknown field", "not found", "protected"])
def test_a_dry_run_fails_as_the_write_would(store: Store, write: Callable[..., Any], error: type[ApiError]) -> None:
    before = snapshot(store)
    with pytest.raises(error):
        write(_DryRun(store))
    assert snapshot(store) == before


class _DryRun:
    """The store, every write a dry run."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name in ("create", "update", "update_status", "patch", "delete"):
            return lambda *a, **kw: method(*a, dry_run=True, **kw)
        return method


def test_a_dry_run_batch_sees_its_own_earlier_items_then_rolls_back(store: Store) -> None:
    """A namespace and a policy in it, applied as one dry run: the policy's namespace check sees the
    namespace the same batch creates, and neither is stored."""
    rv = store.resource_version()
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fresh"}}
    results = store.apply_many([ns, policy("q", "fresh")], dry_run=True)
    assert [action for _, action in results] == ["created", "created"]
    assert store.resource_version() == rv
    with pytest.raises(NotFoundError):
        store.get("Namespace", "fresh")


def test_delete_preconditions(store: Store) -> None:
    """DeleteOptions preconditions: the object must still be the one the client read (409 otherwise, worded
    as Kubernetes'), dry run or not."""
    current = live(store)
    with pytest.raises(ConflictError) as info:
        store.delete("AuthorizationPolicy", "p", "shop", preconditions={"uid": "other"}, dry_run=True)
    assert info.value.message == (f'Operation cannot be fulfilled on authorizationpolicies "p": Precondition failed: '
                                  f'UID in precondition: other, UID in object meta: {current["metadata"]["uid"]}')
    with pytest.raises(ConflictError, match="ResourceVersion in precondition: 1, ResourceVersion in object meta"):
        store.delete("AuthorizationPolicy", "p", "shop", preconditions={"resourceVersion": "1"})
    assert live(store) == current
    meta = current["metadata"]
    store.delete("AuthorizationPolicy", "p", "shop",
                 preconditions={"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]})
    with pytest.raises(NotFoundError):
        live(store)
