"""Server-side apply (`PATCH` with `application/apply-patch+yaml`), a reasonable subset: pure functions.

The applied configuration is merged into the live object (maps merge; lists merge by key where strategic
merge patch does for built-in kinds, else the applied list replaces the live one), then every field this
field manager set in its previous apply and no longer sets is removed, unless another manager also owns it.
Ownership is recorded as Kubernetes does, in `metadata.managedFields` (one `Apply` entry per manager, a
`FieldsV1` set of `f:<name>` keys). A list that merges by key (containers by name, env by name, ports...:
the strategic merge keys) is owned per item (`k:{"name":"app"}`, with `.` for the item itself, printed
`[name="app"]`); any other list is owned whole, as Istio's CRDs declare theirs (atomic).

Conflicts, as kube-apiserver's structured merge: a field the apply changes (its merged value differs from
the live one, or it is new) that another manager's entry owns is a conflict. Without `force` the apply is
refused whole (`ApplyConflictError`: 409, reason Conflict, `Apply failed with 1 conflict: conflict with
"mgr": .spec.action`, one `FieldManagerConflict` cause per field); with `force` the applier takes the
fields over (they leave the other managers' sets; a manager left with no field is dropped). Applying a
value equal to the live one is no conflict: both managers then own the field. An apply that changes
nothing keeps its entry's time, so it writes nothing (no new resourceVersion), as Kubernetes. The manager
`kubectl` (kubectl's default) takes over without conflict the fields its client-side apply record
(`kubectl.kubernetes.io/last-applied-configuration`) set with the live values, as kube-apiserver lets a
client-side applied object be applied server-side (and `kubectl diff --server-side` run on it).
Writes by other verbs that name a field manager (kubectl always does: `kubectl-client-side-apply`,
`kubectl-edit`, `kubectl-label`...) are recorded as Kubernetes records them (`record_update`): an `Update`
entry per manager (and subresource) owning the fields the write changed, taken from every other manager
(an update never conflicts); a write that changes nothing leaves managedFields as they were; managedFields
the write itself sets (kubectl's rewrite when it first applies a client-side applied object server-side)
are taken as given. Not implemented: set-lists (finalizers are owned whole), and list map keys of more
than one field (container ports are keyed by containerPort alone, Kubernetes adds protocol).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

from ambient.api.errors import ApplyConflictError, ValidationError
from ambient.api.patch import merge_key, strategic_merge

Obj = dict[str, Any]
Path = tuple[str, ...]  # field names from the top, e.g. ("spec", "action")
KUBECTL_MANAGER = "kubectl"  # the field manager of `kubectl apply --server-side`
LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"
# Set by the server, never owned by a manager.
_SERVER_OWNED = frozenset({"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
                           "deletionTimestamp", "selfLink"})


def keyed_items(field: str, value: Any) -> dict[str, Obj] | None:
    """The items of list `value` of field `field` by their FieldsV1 key (`k:{"name":"app"}`), when the list
    merges by key and every item has it; None for a list owned whole (or not a list)."""
    if not isinstance(value, list) or not value or not all(isinstance(i, dict) for i in value):
        return None
    key = merge_key(field, value)
    if key is None or not all(key in i for i in value):
        return None
    return {"k:" + json.dumps({key: i[key]}, separators=(",", ":"), sort_keys=True): i for i in value}


def field_set(obj: Any, top: bool = True) -> Obj:
    """The FieldsV1 set of `obj`: `{"f:spec": {"f:replicas": {}}}`; scalars and lists are leaves, but a list
    merging by key has one `k:` node per item (`.` marks the item itself)."""
    if not isinstance(obj, dict):
        return {}
    out: Obj = {}
    for key, value in obj.items():
        if top and key in ("apiVersion", "kind", "status"):
            continue
        if top and key == "metadata" and isinstance(value, dict):
            # Kept even when empty, so that dropping every label drops the labels, not metadata.
            value = {k: v for k, v in value.items() if k not in _SERVER_OWNED and k not in ("name", "namespace")}
        items = keyed_items(key, value)
        if items is not None:
            out[f"f:{key}"] = {k: {".": {}, **field_set(item, top=False)} for k, item in items.items()}
        else:
            out[f"f:{key}"] = field_set(value, top=False) if isinstance(value, dict) else {}
    return out


def _remove(obj: Obj, dropped: Obj, others: list[Obj]) -> None:
    """Delete from `obj` the fields of `dropped` that no set in `others` owns (in place)."""
    for fkey, sub in dropped.items():
        key = fkey[2:]
        if not fkey.startswith("f:") or key not in obj:
            continue
        owners = [o[fkey] for o in others if fkey in o]
        items = keyed_items(key, obj[key]) if sub else None
        if items is not None:
            _remove_items(obj[key], items, sub, owners)
            if not obj[key] and not owners:
                del obj[key]
        elif sub and isinstance(obj[key], dict):
            _remove(obj[key], sub, owners)
            if not obj[key] and not owners:
                del obj[key]  # nothing left in it that anyone set
        elif not owners:
            del obj[key]


def _remove_items(values: list[Any], items: dict[str, Obj], dropped: Obj, others: list[Obj]) -> None:
    """The keyed-list part of `_remove`: an item whose `.` was dropped goes when nobody else owns any of it;
    else only its dropped fields nobody else owns."""
    for kkey, sub in dropped.items():
        item = items.get(kkey)
        if item is None:
            continue
        owners = [o[kkey] for o in others if kkey in o]
        if "." in sub and not owners:
            values.remove(item)
        else:
            _remove(item, {k: v for k, v in sub.items() if k != "."}, owners)


def _minus(old: Obj, new: Obj) -> Obj:
    """The fields of `old` that are not in `new` (leaves, or whole subtrees `new` no longer has)."""
    out: Obj = {}
    for key, sub in old.items():
        if key not in new:
            out[key] = sub  # dropped whole: every field of it this manager owned
        elif sub:
            rest = _minus(sub, new[key])
            if rest:
                out[key] = rest
    return out


def sort_entries(entries: list[Obj]) -> list[Obj]:
    """managedFields in Kubernetes' order: Apply before Update, then by time, manager, apiVersion,
    subresource (so the same ownership always reads the same)."""
    return sorted(entries, key=lambda m: tuple(str(m.get(k) or "") for k in (
        "operation", "time", "manager", "apiVersion", "subresource")))


def leaves(fields: Obj, prefix: Path = ()) -> set[Path]:
    """The members of a FieldsV1 set: the paths of its empty nodes (`{"f:spec": {"f:a": {}}}` -> spec.a).
    An empty top-level `f:metadata` (kept by `field_set` so that dropping every label drops the labels) is
    no member: nobody owns metadata itself."""
    out: set[Path] = set()
    for key, sub in fields.items():
        if key == "." and prefix:
            out.add(prefix)  # a keyed list item itself
            continue
        if not key.startswith(("f:", "k:")):
            continue
        path = (*prefix, key[2:] if key.startswith("f:") else key)
        if isinstance(sub, dict) and sub:
            out |= leaves(sub, path)
        elif path != ("metadata",):
            out.add(path)
    return out


def fields_of(paths: set[Path]) -> Obj:
    """The FieldsV1 set of these members (the inverse of `leaves`)."""
    out: Obj = {}
    for path in sorted(paths):
        node = out
        for name in path:
            node = node.setdefault(name if name.startswith("k:") else f"f:{name}", {})
        if path and path[-1].startswith("k:"):
            node["."] = {}
    return out


def changed_fields(old: Any, new: Any) -> set[Path]:
    """The members (in `field_set`'s shape) whose value in `new` differs from `old` or is new there."""
    return leaves(_changed(old, new, top=True))


def _changed(old: Any, new: Any, top: bool) -> Obj:
    new_set = field_set(new, top)
    old = old if isinstance(old, dict) else {}
    out: Obj = {}
    for fkey, sub in new_set.items():
        key = fkey[2:]
        if key not in old:
            out[fkey] = sub
        elif sub and isinstance(old[key], list) and isinstance(new[key], list):  # a keyed list: per item
            old_items = keyed_items(key, old[key]) or {}
            new_items = keyed_items(key, new[key]) or {}
            inner = {}
            for kkey, isub in sub.items():
                if kkey not in old_items:
                    inner[kkey] = isub
                elif changes := _changed(old_items[kkey], new_items[kkey], top=False):
                    inner[kkey] = changes
            if inner:
                out[fkey] = inner
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            if sub:
                inner = _changed(old[key], new[key], top=False)
                if top and key == "metadata":
                    inner = {k: v for k, v in inner.items() if k in sub}
                if inner:
                    out[fkey] = inner
        elif old[key] != new[key]:
            out[fkey] = {}
    return out


def path_text(path: Path) -> str:
    """A field path as Kubernetes prints it: `.spec.action`, `.metadata.labels.app`,
    `.spec.template.spec.containers[name="app"].image`."""
    out = []
    for name in path:
        if name.startswith("k:"):
            try:
                key = json.loads(name[2:])
            except ValueError:
                key = {}
            out.append("[" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(key.items())) + "]")
        else:
            out.append(f".{name}")
    return "".join(out)


def manager_label(entry: Obj) -> str:
    """A managedFields entry as kube-apiserver names it in a conflict: `"mgr"`, or for an Update entry
    `"mgr" using apps/v1` (with `with subresource "status"` when it has one)."""
    label = json.dumps(str(entry.get("manager") or ""), ensure_ascii=False)
    if entry.get("subresource"):
        label += f" with subresource {json.dumps(str(entry['subresource']), ensure_ascii=False)}"
    if entry.get("operation") == "Update":
        label += f" using {entry.get('apiVersion') or ''}"
    return label


def find_conflicts(others: list[Obj], changed: set[Path]) -> list[tuple[Obj, Path]]:
    """(entry, path) for every member of another manager's set that the apply changes, in the entries'
    order and each entry's paths sorted."""
    return [(entry, owned) for entry in others
            for owned in sorted(leaves(entry.get("fieldsV1") or {}) & changed)]


def conflict_error(conflicts: list[tuple[Obj, Path]]) -> ApplyConflictError:
    """kube-apiserver's apply conflict: one line for one conflict, else the fields grouped by manager."""
    causes = [{"type": "FieldManagerConflict", "message": f"conflict with {manager_label(e)}",
               "field": path_text(p)} for e, p in conflicts]
    if len(conflicts) == 1:
        entry, path = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {manager_label(entry)}: {path_text(path)}"
    else:
        by_manager: dict[str, list[Path]] = {}
        for entry, path in conflicts:
            by_manager.setdefault(manager_label(entry), []).append(path)
        lines = []
        for label in sorted(by_manager):
            lines.append(f"conflicts with {label}:")
            lines += [f"- {path_text(p)}" for p in by_manager[label]]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return ApplyConflictError(
        message, causes=causes,
        hint="take the fields over with force=true (kubectl apply --server-side --force-conflicts), drop them "
        "from the applied manifest, or apply as the manager that owns them",
    )


def _value_at(obj: Any, path: Path) -> tuple[bool, Any]:
    for name in path:
        if not isinstance(obj, dict) or name not in obj:
            return False, None
        obj = obj[name]
    return True, obj


def last_applied_fields(live: Obj) -> set[Path]:
    """The fields of `live`'s client-side apply record (`kubectl.kubernetes.io/last-applied-configuration`)
    whose values are still the live ones: what a client-side apply set and nobody changed since."""
    raw = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED_ANNOTATION)
    try:
        applied = json.loads(raw) if isinstance(raw, str) and raw else None
    except ValueError:
        return set()
    if not isinstance(applied, dict):
        return set()
    out: set[Path] = set()
    for path in leaves(field_set(applied)):
        found, value = _value_at(live, path)
        if found and (True, value) == _value_at(applied, path):
            out.add(path)
    return out


def server_side_apply(live: Obj | None, applied: Obj, manager: str, api_version: str,
                      now: str | None = None, *, force: bool = False) -> Obj:
    """The object after `manager` applied `applied` to `live` (None: it does not exist yet); raises
    ApplyConflictError when it changes fields other managers own, unless `force`."""
    if not isinstance(applied, dict):
        raise ValidationError("an apply patch must be an object")
    if not manager:
        raise ValidationError("fieldManager is required for apply requests", hint="kubectl sends it itself")
    fields = field_set(applied)
    stamp = now or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry = {"manager": manager, "operation": "Apply", "apiVersion": api_version, "time": stamp,
             "fieldsType": "FieldsV1", "fieldsV1": fields}
    if live is None:
        result = copy.deepcopy(applied)
        result.setdefault("metadata", {})["managedFields"] = [entry]
        return result
    managed = [m for m in (live.get("metadata") or {}).get("managedFields") or [] if isinstance(m, dict)]
    previous = next((m for m in managed if m.get("manager") == manager and m.get("operation") == "Apply"
                     and not m.get("subresource")), None)
    copies = {id(m): copy.deepcopy(m) for m in managed if m is not previous}
    others = list(copies.values())
    body = {k: v for k, v in applied.items() if k != "status"}
    result = strategic_merge(live, body)
    conflicts = find_conflicts(others, changed_fields(live, result))
    if conflicts and not force and manager == KUBECTL_MANAGER:
        # kubectl's first server-side apply of an object it applied client-side: the fields its last-applied
        # configuration set (with the live values) are taken over without conflict, as kube-apiserver does.
        allowed = last_applied_fields(live)
        if all(path in allowed for _, path in conflicts):
            force = True
        else:
            conflicts = [(e, p) for e, p in conflicts if p not in allowed]
    if conflicts and not force:
        raise conflict_error(conflicts)
    for other in others:  # forced: the applier takes the fields over
        taken = {p for e, p in conflicts if e is other}
        if taken:
            other["fieldsV1"] = fields_of(leaves(other.get("fieldsV1") or {}) - taken)
    others = [m for m in others if leaves(m.get("fieldsV1") or {})]
    if previous is not None:
        _remove(result, _minus(previous.get("fieldsV1") or {}, fields),
                [m.get("fieldsV1") or {} for m in others])
        if previous.get("fieldsV1") == fields and previous.get("time"):
            entry["time"] = previous["time"]  # kept when nothing changes, so a no-op apply writes nothing
            unchanged = {**result, "metadata": {**result.get("metadata", {}), "managedFields": managed}}
            if unchanged != live:
                entry["time"] = stamp
    kept = {id(m) for m in others}
    # In their order, this manager's entry in place of its previous one: an unchanged apply is unchanged.
    entries = [entry if m is previous else copies[id(m)] for m in managed
               if m is previous or id(copies.get(id(m))) in kept]
    result.setdefault("metadata", {})["managedFields"] = sort_entries(
        entries if previous is not None else [*entries, entry])
    return result


def record_update(live: Obj | None, new: Obj, manager: str, api_version: str, subresource: str | None = None,
                  now: str | None = None) -> Obj:
    """`new` (modified in place) with the managedFields of `manager` having written it over `live` (None: a
    create) with a non-apply verb; `subresource` "status" for a status write (it owns status fields)."""
    meta = new.setdefault("metadata", {})
    live_meta = (live or {}).get("metadata") or {}
    live_entries = [m for m in live_meta.get("managedFields") or [] if isinstance(m, dict)]
    given = meta.get("managedFields")
    # managedFields the writer changed itself are its intent (as Kubernetes: "the user changed them, trust it")
    base = [m for m in given if isinstance(m, dict)] if isinstance(given, list) and given != live_entries else \
        live_entries
    if subresource == "status":
        changed = {("status", *p) for p in leaves(_changed((live or {}).get("status"), new.get("status"), top=False))}
        removed = {("status", *p) for p in leaves(field_set((live or {}).get("status"), top=False))} - {
            ("status", *p) for p in leaves(field_set(new.get("status"), top=False))}
    else:
        changed = changed_fields(live or {}, new)
        removed = leaves(field_set(live or {})) - leaves(field_set(new))
    if not changed and not removed:
        if base:
            meta["managedFields"] = copy.deepcopy(base)
        else:
            meta.pop("managedFields", None)
        return new

    def mine(m: Obj) -> bool:
        return bool(m.get("manager") == manager and m.get("operation") == "Update"
                    and (m.get("subresource") or None) == subresource)

    previous = next((m for m in base if mine(m)), None)
    owned = (leaves(previous.get("fieldsV1") or {}) if previous else set()) - removed | changed
    entry: Obj = {"manager": manager, "operation": "Update", "apiVersion": api_version,
                  "time": now or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "fieldsType": "FieldsV1",
                  "fieldsV1": fields_of(owned)}
    if subresource:
        entry["subresource"] = subresource
    entries: list[Obj] = []
    for m in base:
        if m is previous:
            if owned:
                entries.append(entry)
            continue
        theirs = leaves(m.get("fieldsV1") or {})
        if theirs & changed:  # an update takes the fields it wrote from everyone else
            m = {**m, "fieldsV1": fields_of(theirs - changed)}
            if not theirs - changed:
                continue
        entries.append(copy.deepcopy(m))
    if previous is None and owned:
        entries.append(entry)
    if entries:
        meta["managedFields"] = sort_entries(entries)
    else:
        meta.pop("managedFields", None)
    return new
