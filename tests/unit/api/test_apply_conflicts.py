"""Server-side apply between field managers (`ambient.api.apply`): which fields conflict, the 409 as
kube-apiserver words it, `force` taking fields over, shared ownership of equal values, no-op applies."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from ambient.api.apply import (
    changed_fields,
    leaves,
    manager_label,
    path_text,
    record_update,
    server_side_apply,
    sort_entries,
)
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


# ----------------------------------------------------------------------------- writes by other verbs


def entries(obj: dict[str, Any]) -> list[tuple[str, str, set[tuple[str, ...]]]]:
    return [(m["manager"], m["operation"], leaves(m["fieldsV1"])) for m in obj["metadata"].get("managedFields", [])]


def test_a_create_by_a_named_manager_owns_every_field_it_set() -> None:
    created = record_update(None, policy(labels={"x": "1"}), "kubectl-client-side-apply", AP, now="T")
    assert entries(created) == [("kubectl-client-side-apply", "Update",
                                 {("metadata", "labels", "x"), ("spec", "action"), ("spec", "rules")})]
    assert created["metadata"]["managedFields"][0]["time"] == "T"


@pytest.mark.parametrize(("name", "change", "want"), [
    # the writer takes what it changed from everyone (an update never conflicts)
    ("takes a field", lambda o: o["spec"].update(action="DENY"),
     [("a", "Apply", {("spec", "rules")}), ("kubectl-patch", "Update", {("spec", "action")})]),
    # nothing changed: managedFields untouched
    ("no-op", lambda o: None, [("a", "Apply", {("spec", "action"), ("spec", "rules")})]),
    # a new field: owned by the writer only
    ("adds a label", lambda o: o["metadata"].setdefault("labels", {}).update(team="blue"),
     [("a", "Apply", {("spec", "action"), ("spec", "rules")}),
      ("kubectl-patch", "Update", {("metadata", "labels", "team")})]),
    # every field of a manager taken: the manager is dropped
    ("takes everything", lambda o: o["spec"].update(action="DENY", rules=[]),
     [("kubectl-patch", "Update", {("spec", "action"), ("spec", "rules")})]),
])
def test_an_update_records_its_manager(name: str, change: Any, want: list[Any]) -> None:
    live = applied_by(("a", policy()))
    new = copy.deepcopy(live)
    change(new)
    assert entries(record_update(live, new, "kubectl-patch", AP, now="T1")) == want


def test_a_status_write_owns_status_fields_under_its_subresource() -> None:
    live = applied_by(("a", policy()))
    new = {**copy.deepcopy(live), "status": {"conditions": [{"type": "Ready"}]}}
    out = record_update(live, new, "controller", AP, "status", now="T")
    entry = out["metadata"]["managedFields"][-1]
    assert (entry["manager"], entry["subresource"], leaves(entry["fieldsV1"])) == (
        "controller", "status", {("status", "conditions", 'k:{"type":"Ready"}'),
                                 ("status", "conditions", 'k:{"type":"Ready"}', "type")})
    assert manager_label(entry) == f'"controller" with subresource "status" using {AP}'


def test_managed_fields_the_writer_sets_are_taken_as_given() -> None:
    live = record_update(None, policy(), "kubectl-client-side-apply", AP, now="T")
    rewritten = copy.deepcopy(live)
    rewritten["metadata"]["managedFields"] = [{**live["metadata"]["managedFields"][0], "manager": "kubectl",
                                               "operation": "Apply"}]
    out = record_update(live, rewritten, "kubectl", AP, now="T2")
    assert entries(out) == [("kubectl", "Apply", {("spec", "action"), ("spec", "rules")})]


def test_then_an_apply_conflicts_with_the_update_manager() -> None:
    live = applied_by(("kubectl", policy()))
    patched = copy.deepcopy(live)
    patched["spec"]["action"] = "DENY"
    patched = record_update(live, patched, "kubectl-patch", AP)
    with pytest.raises(ApplyConflictError) as info:
        server_side_apply(patched, policy(), "kubectl", AP)
    assert info.value.message == f'Apply failed with 1 conflict: conflict with "kubectl-patch" using {AP}: .spec.action'


@pytest.mark.parametrize(("manager", "live_action", "conflicts"), [
    # kubectl's first server-side apply over its client-side apply: no conflict
    ("kubectl", "ALLOW", None),
    # another manager gets no such pass
    ("ci", "ALLOW", 'conflict with "kubectl-client-side-apply" using security.istio.io/v1: .spec.action'),
    # a field changed since the client-side apply (no longer its value) still conflicts
    ("kubectl", "AUDIT", 'conflict with "kubectl-client-side-apply" using security.istio.io/v1: .spec.action'),
])
def test_kubectl_takes_over_its_client_side_apply(manager: str, live_action: str, conflicts: str | None) -> None:
    manifest = policy()
    manifest["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": json.dumps(policy())}
    live = record_update(None, manifest, "kubectl-client-side-apply", AP, now="T")
    live["spec"]["action"] = live_action
    applied = {**policy("DENY"), "metadata": {**manifest["metadata"]}}
    if conflicts is None:
        out = server_side_apply(live, applied, manager, AP)
        assert out["spec"]["action"] == "DENY"
        assert [(m, o) for m, o, _ in entries(out)] == [(manager, "Apply"), ("kubectl-client-side-apply", "Update")]
    else:
        with pytest.raises(ApplyConflictError) as info:
            server_side_apply(live, applied, manager, AP)
        assert info.value.message == f"Apply failed with 1 conflict: {conflicts}"


def test_entries_are_in_kubernetes_order() -> None:
    unsorted = [{"manager": "z", "operation": "Update", "time": "T1"}, {"manager": "b", "operation": "Apply",
                "time": "T2"}, {"manager": "a", "operation": "Apply", "time": "T2"},
                {"manager": "c", "operation": "Update", "time": "T0"}]
    assert [m["manager"] for m in sort_entries(unsorted)] == ["a", "b", "c", "z"]



# ----------------------------------------------------------------------------- lists merging by key

def deployment(*containers: tuple[str, str]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": n, "image": i} for n, i in containers]}}}}


def containers(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["name"], c["image"]) for c in obj["spec"]["template"]["spec"]["containers"]]


def test_a_keyed_list_is_owned_per_item() -> None:
    """Two managers each applying their own container: no conflict, both kept, each owning its item;
    a changed image of another's container conflicts at the item's field, as Kubernetes prints it."""
    live = server_side_apply(None, deployment(("app", "v1")), "team-app", "apps/v1", now="T")
    live = server_side_apply(live, deployment(("proxy", "p1")), "team-mesh", "apps/v1", now="T")
    assert containers(live) == [("app", "v1"), ("proxy", "p1")]
    assert ("spec", "template", "spec", "containers", 'k:{"name":"proxy"}', "image") in leaves(
        managers(live)["team-mesh"])
    with pytest.raises(ApplyConflictError) as info:
        server_side_apply(live, deployment(("app", "v2")), "team-mesh", "apps/v1")
    assert info.value.message == ('Apply failed with 1 conflict: conflict with "team-app": '
                                  '.spec.template.spec.containers[name="app"].image')
    # team-mesh stops applying its container: it goes; team-app's stays
    dropped = server_side_apply(live, {**deployment(), "spec": {"selector": {"matchLabels": {"app": "web"}}}},
                                "team-mesh", "apps/v1")
    assert containers(dropped) == [("app", "v1")]


def test_a_keyed_item_shared_by_two_managers_stays_until_both_drop_it() -> None:
    live = server_side_apply(None, deployment(("app", "v1")), "a", "apps/v1", now="T")
    live = server_side_apply(live, deployment(("app", "v1")), "b", "apps/v1", now="T")
    spec_only = {**deployment(), "spec": {"selector": {"matchLabels": {"app": "web"}}}}
    one = server_side_apply(live, spec_only, "a", "apps/v1")
    assert containers(one) == [("app", "v1")]
    none = server_side_apply(one, spec_only, "b", "apps/v1")
    assert "template" not in none["spec"]  # nothing in it is anyone's any more


@pytest.mark.parametrize(("path", "text"), [
    (("spec", "action"), ".spec.action"),
    (("spec", "containers", 'k:{"name":"app"}', "image"), '.spec.containers[name="app"].image'),
    (("spec", "ports", 'k:{"containerPort":80}'), ".spec.ports[containerPort=80]"),
])
def test_path_text(path: tuple[str, ...], text: str) -> None:
    assert path_text(path) == text
