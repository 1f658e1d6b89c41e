"""Server-side apply (`PATCH` with `application/apply-patch+yaml`), a reasonable subset: pure functions.

The applied configuration is merged into the live object (maps merge; lists merge by key where strategic
merge patch does for built-in kinds, else the applied list replaces the live one), then every field this
field manager set in its previous apply and no longer sets is removed, unless another manager also owns it.
Ownership is recorded as Kubernetes does, in `metadata.managedFields` (one `Apply` entry per manager, a
`FieldsV1` set of `f:<name>` keys; lists are owned whole). Not implemented: conflict detection between
managers (every apply behaves as `--force-conflicts`), and ownership of fields written by other verbs.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from ambient.api.errors import ValidationError
from ambient.api.patch import strategic_merge

Obj = dict[str, Any]
# Set by the server, never owned by a manager.
_SERVER_OWNED = frozenset({"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
                           "deletionTimestamp", "selfLink"})


def field_set(obj: Any, top: bool = True) -> Obj:
    """The FieldsV1 set of `obj`: `{"f:spec": {"f:replicas": {}}}`; lists and scalars are leaves."""
    if not isinstance(obj, dict):
        return {}
    out: Obj = {}
    for key, value in obj.items():
        if top and key in ("apiVersion", "kind", "status"):
            continue
        if top and key == "metadata" and isinstance(value, dict):
            # Kept even when empty, so that dropping every label drops the labels, not metadata.
            value = {k: v for k, v in value.items() if k not in _SERVER_OWNED and k not in ("name", "namespace")}
        out[f"f:{key}"] = field_set(value, top=False) if isinstance(value, dict) else {}
    return out


def _remove(obj: Obj, dropped: Obj, others: list[Obj]) -> None:
    """Delete from `obj` the fields of `dropped` that no set in `others` owns (in place)."""
    for fkey, sub in dropped.items():
        key = fkey[2:]
        if key not in obj:
            continue
        owners = [o[fkey] for o in others if fkey in o]
        if sub and isinstance(obj[key], dict):
            _remove(obj[key], sub, owners)
            if not obj[key] and not owners:
                del obj[key]  # nothing left in it that anyone set
        elif not owners:
            del obj[key]


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


def server_side_apply(live: Obj | None, applied: Obj, manager: str, api_version: str,
                      now: str | None = None) -> Obj:
    """The object after `manager` applied `applied` to `live` (None: it does not exist yet)."""
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
    previous = next((m for m in managed if m.get("manager") == manager and m.get("operation") == "Apply"), None)
    others = [m.get("fieldsV1") or {} for m in managed if m is not previous]
    body = {k: v for k, v in applied.items() if k != "status"}
    result = strategic_merge(live, body)
    if previous is not None:
        _remove(result, _minus(previous.get("fieldsV1") or {}, fields), others)
    kept = [m for m in managed if m is not previous]
    result.setdefault("metadata", {})["managedFields"] = [*kept, entry]
    return result
