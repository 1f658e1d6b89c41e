"""Server-side apply between field managers (`ambient.api.apply`): which fields conflict, the 409 as
kube-apiserver words it, `force` taking fields over, shared ownership of equal values, no-op applies."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ambient.api.apply import changed_fields, leaves, manager_label, server_side_apply
from ambient.api.errors import ApplyConflictError

AP = "security.istio.io/v1"


def policy(action: str = "ALLOW", principals: tuple[str, ...] = ("a",), **meta: Any) -> dict[str, Any]:
    return {"apiVersion": AP, "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "shop", **meta},
            "spec": {"action": action, "rules": [{"from": [{"source": {"principals": list(principals)}}]}]}}


def applied_by(*steps: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    live: dict[str, Any] | None = None
    for manager, obj in steps:
        live = server_side_apply(live, obj, manager, AP, now="T0")
    assert live is not None
    return live


def managers(obj: dict[str, Any]) -> dict[str, Any]:
    return {m["manager"]: m["fieldsV1"] for m in obj["metadata"]["managedFields"]}


@pytest.mark.parametrize(("old", "new", "want"), [
    ({"spec": {"a": 1}}, {"spec": {"a": 1}}, set()),
    ({"spec": {"a": 1}}, {"spec": {"a": 2}}, {("spec", "a")}),
    ({"spec": {"a": 1}}, {"spec": {"a": 1, "b": {"c": 1}}}, {("spec", "b", "c")}),
    ({"spec": {"l": [1]}}, {"spec": {"l": [1, 2]}}, {("spec", "l")}),  # lists are owned whole
    ({"spec": {"x": 1}}, {"spec": {"x": {"y": 1}}}, {("spec", "x")}),
    # server-owned metadata and status never count
    ({"metadata": {"name": "p", "resourceVersion": "1", "labels": {"a": "1"}}, "status": {"s": 1}},
     {"metadata": {"name": "p", "resourceVersion": "2", "labels": {"a": "2"}}, "status": {"s": 2}},
     {("metadata", "labels", "a")}),
])
def test_changed_fields(old: dict[str, Any], new: dict[str, Any], want: set[tuple[str, ...]]) -> None:
    assert changed_fields(old, new) == want


@pytest.mark.parametrize(("entry", "want"), [
    ({"manager": "a", "operation": "Apply"}, '"a"'),
    ({"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "apps/v1"},
     '"kubectl-client-side-apply" using apps/v1'),
    ({"manager": "c", "operation": "Update", "apiVersion": "v1", "subresource": "status"},
     '"c" with subresource "status" using v1'),
])
def test_manager_label(entry: dict[str, Any], want: str) -> None:
    assert manager_label(entry) == want


def test_a_second_manager_changing_an_owned_field_conflicts() -> None:
    live = applied_by(("a", policy()))
    with pytest.raises(ApplyConflictError) as info:
        server_side_apply(live, policy("DENY"), "b", AP)
    exc = info.value
    assert (exc.status, exc.reason) == (409, "Conflict")
    assert exc.message == 'Apply failed with 1 conflict: conflict with "a": .spec.action'
    assert exc.details == {"causes": [{"type": "FieldManagerConflict", "message": 'conflict with "a"',
                                       "field": ".spec.action"}]}


def test_several_conflicts_are_listed_by_manager() -> None:
    live = applied_by(("a", policy()), ("c", {**policy(), "spec": {"action": "ALLOW"}}))
    with pytest.raises(ApplyConflictError) as info:
        server_side_apply(live, policy("DENY", ("z",)), "b", AP)
    assert info.value.message == ('Apply failed with 3 conflicts: conflicts with "a":\n- .spec.action\n'
                                  '- .spec.rules\nconflicts with "c":\n- .spec.action')
    assert info.value.details is not None
    assert [c["field"] for c in info.value.details["causes"]] == [".spec.action", ".spec.rules", ".spec.action"]


def test_equal_values_are_shared_and_the_same_manager_never_conflicts() -> None:
    live = applied_by(("a", policy()), ("b", policy()))  # same values: no conflict, both own them
    assert managers(live)["a"] == managers(live)["b"]
    # a changes its own (shared) field: b owns it too, so that is a conflict with b
    with pytest.raises(ApplyConflictError, match=re.escape('conflict with "b": .spec.action')):
        server_side_apply(live, policy("DENY"), "a", AP)
    # a field only a owns: a changes it freely
    only_a = applied_by(("a", policy()))
    assert server_side_apply(only_a, policy("DENY"), "a", AP)["spec"]["action"] == "DENY"


def test_force_takes_the_fields_over() -> None:
    live = applied_by(("a", policy()))
    forced = server_side_apply(live, {**policy("DENY"), "spec": {"action": "DENY"}}, "b", AP, force=True)
    assert forced["spec"]["action"] == "DENY"
    owned = {m: leaves(f) for m, f in managers(forced).items()}
    assert owned == {"a": {("spec", "rules")}, "b": {("spec", "action")}}  # a keeps what was not taken
    # a manager left with nothing is dropped
    everything = server_side_apply(forced, policy("ALLOW", ("z",)), "c", AP, force=True)
    assert set(managers(everything)) == {"c"}


def test_a_field_given_up_by_its_only_owner_is_removed_but_a_shared_one_stays() -> None:
    live = applied_by(("a", policy(labels={"x": "1", "y": "2"})), ("b", {**policy(), "metadata": {
        "name": "p", "namespace": "shop", "labels": {"y": "2"}}}))
    result = server_side_apply(live, policy(), "a", AP)  # a drops both labels
    assert result["metadata"]["labels"] == {"y": "2"}


def test_an_apply_that_changes_nothing_keeps_its_time() -> None:
    live = applied_by(("a", policy()))
    again = server_side_apply(live, policy(), "a", AP, now="T1")
    assert again == live  # identical: the store writes nothing, no new resourceVersion
    changed = server_side_apply(live, policy("DENY"), "a", AP, now="T1")
    assert changed["metadata"]["managedFields"][0]["time"] == "T1"


def test_update_entries_are_honoured() -> None:
    live = applied_by(("a", policy()))
    live["metadata"]["managedFields"].append({
        "manager": "kubectl-edit", "operation": "Update", "apiVersion": AP, "time": "T",
        "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}})
    live["metadata"]["labels"] = {"team": "blue"}
    with pytest.raises(ApplyConflictError) as info:
        server_side_apply(live, policy(labels={"team": "red"}), "a", AP)
    assert info.value.message == ('Apply failed with 1 conflict: conflict with "kubectl-edit" using '
                                  f'{AP}: .metadata.labels.team')
