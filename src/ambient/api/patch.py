"""Patches as the Kubernetes API applies them: JSON merge patch (RFC 7386), strategic merge patch and JSON
patch (RFC 6902: `kubectl patch --type=json`, and kubectl's own rewrite of managedFields when a client-side
applied object is first applied server-side).

Strategic merge patch (`application/strategic-merge-patch+json`, what client-side `kubectl apply`, `edit`
and `set` send for built-in kinds) is a merge patch where some lists merge by a key instead of being
replaced (containers by `name`, container ports by `containerPort`, service ports by `port`, ...), plus
directives:
- `$patch: replace` (an object or list element replaces instead of merging), `$patch: delete` (removes a
  map, or the list element with that merge key);
- `$setElementOrder/<list>`: the order of a merged list's elements (extra elements of the target follow);
- `$deleteFromPrimitiveList/<list>`: values removed from a list of scalars;
- `$retainKeys`: the keys a map keeps (others are cleared) before the patch is merged.
Lists without a merge key (and every list of a kind that is not built in: the mesh kinds are CRDs in a
real cluster, and kubectl sends them JSON merge patches) are replaced whole.

Pure functions: the inputs are never modified.
"""

from __future__ import annotations

import copy
from typing import Any

from ambient.api.errors import BadRequestError, ValidationError

# List field -> merge key, for the built-in kinds' lists that merge (Kubernetes' `patchMergeKey` tags).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
# Lists of scalars that merge as sets (`patchStrategy:"merge"` on a []string).
_MERGED_SCALAR_LISTS = frozenset({"finalizers"})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, null deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def merge_key(field: str, items: list[Any]) -> str | None:
    """The key list `field` merges by in a strategic merge (None: replaced whole)."""
    return _merge_key(field, items)


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        # Container ports merge by containerPort, service ports by port.
        sample = next((i for i in items if isinstance(i, dict)), {})
        return "containerPort" if "containerPort" in sample else "port"
    return MERGE_KEYS.get(field)


def strategic_merge(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch to `target` (see the module docstring); raises ValidationError."""
    if not isinstance(patch, dict):
        raise ValidationError(f"a strategic merge patch must be a JSON object, got {type(patch).__name__}")
    return _merge_map(target if isinstance(target, dict) else {}, patch)


def _merge_map(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip({k: v for k, v in patch.items() if k != "$patch"})
    if directive == "delete":
        return {}
    if directive not in (None, "merge"):
        raise ValidationError(f'unknown $patch directive "{directive}"')
    result = copy.deepcopy(target)
    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list):
            raise ValidationError("$retainKeys: expected a list of field names")
        result = {k: v for k, v in result.items() if k in retain}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [v for v in result[field] if v not in value]
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            old = result.get(key)
            merged = _merge_map(old if isinstance(old, dict) else {}, value)
            if value.get("$patch") == "delete":
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            order = patch.get(f"$setElementOrder/{key}")
            result[key] = _merge_list(key, result.get(key), value, order)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_list(field: str, target: Any, patch: list[Any], order: Any) -> list[Any]:
    current = target if isinstance(target, list) else []
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [_strip(i) for i in patch if not (isinstance(i, dict) and i.get("$patch") == "replace")]
    if field in _MERGED_SCALAR_LISTS and all(not isinstance(i, dict | list) for i in patch):
        return [*current, *(v for v in patch if v not in current)]
    key = _merge_key(field, [*patch, *current])
    if key is None or not all(isinstance(i, dict) for i in patch):
        return [_strip(i) for i in patch]
    result = [copy.deepcopy(i) for i in current]
    for item in patch:
        index = next((n for n, c in enumerate(result) if isinstance(c, dict) and c.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
            continue
        if index is None:
            result.append(_merge_map({}, item))
        else:
            result[index] = _merge_map(result[index], item)
    if isinstance(order, list):
        rank = {_as_key(o.get(key) if isinstance(o, dict) else o): n for n, o in enumerate(order)}
        result.sort(key=lambda i: rank.get(_as_key(i.get(key) if isinstance(i, dict) else i), len(rank)))
    return result


def _as_key(value: Any) -> str:
    return repr(value)


def _strip(value: Any) -> Any:
    """A copy of `value` without directives (keys starting with `$`)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return copy.deepcopy(value)


# ----------------------------------------------------------------------------- JSON patch (RFC 6902)

_JSON_PATCH_OPS = {"add": ("path", "value"), "remove": ("path",), "replace": ("path", "value"),
                   "move": ("from", "path"), "copy": ("from", "path"), "test": ("path", "value")}
_MAX_JSON_PATCH_OPS = 10_000


def json_patch(target: Any, ops: Any) -> Any:
    """`target` with the RFC 6902 operations applied in order (all or nothing: `target` is not modified).

    A malformed patch (not a list of operations, an unknown op, a member missing, a bad pointer) is a
    BadRequestError (400); an operation that does not apply to the document (a missing path, a failed
    `test`) a ValidationError (422), as kube-apiserver answers them."""
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        raise BadRequestError("a JSON patch must be a list of operations (objects with op and path)")
    if len(ops) > _MAX_JSON_PATCH_OPS:
        raise BadRequestError(f"a JSON patch may have at most {_MAX_JSON_PATCH_OPS} operations")
    doc = copy.deepcopy(target)
    for index, op in enumerate(ops):
        name = op.get("op")
        if name not in _JSON_PATCH_OPS:
            raise BadRequestError(f"operation {index}: unknown op {str(name)[:32]!r} (add, remove, replace, move, "
                                  "copy or test)")
        for member in _JSON_PATCH_OPS[name]:
            if member not in op or (member != "value" and not isinstance(op[member], str)):
                raise BadRequestError(f"operation {index} ({name}): missing {member!r}")
        path = _pointer(op["path"])
        if name == "test":
            if _get(doc, path, name) != op["value"]:
                raise ValidationError(f"testing value {op['path'][:256]} failed: test failed")
        elif name == "remove":
            doc = _remove(doc, path, name)
        elif name == "replace":
            doc = _replace(doc, path, copy.deepcopy(op["value"]), name)
        elif name == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]), name)
        else:  # move, copy
            source = _pointer(op["from"])
            if name == "move" and path[: len(source)] == source and path != source:
                raise ValidationError(f"move operation {index}: cannot move {op['from'][:256]} into itself")
            value = copy.deepcopy(_get(doc, source, name))
            if name == "move":
                doc = _remove(doc, source, name)
            doc = _add(doc, path, value, name)
    return doc


def _pointer(text: str) -> list[str]:
    """An RFC 6901 JSON pointer as its tokens ("" is the whole document)."""
    if text == "":
        return []
    if not text.startswith("/"):
        raise BadRequestError(f"JSON pointer {text[:256]!r} must start with /")
    return [t.replace("~1", "/").replace("~0", "~") for t in text[1:].split("/")]


def _missing(name: str, path: list[str]) -> ValidationError:
    return ValidationError(f"{name} operation does not apply: doc is missing path: /{'/'.join(path)[:256]}")


def _index(container: list[Any], token: str, name: str, path: list[str], *, end_ok: bool) -> int:
    if token == "-" and end_ok:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise _missing(name, path)
    index = int(token)
    if index > len(container) or (index == len(container) and not end_ok):
        raise _missing(name, path)
    return index


def _parent(doc: Any, path: list[str], name: str) -> Any:
    node = doc
    for depth, token in enumerate(path[:-1]):
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, name, path[: depth + 1], end_ok=False)]
        else:
            raise _missing(name, path)
    return node


def _get(doc: Any, path: list[str], name: str) -> Any:
    if not path:
        return doc
    parent, last = _parent(doc, path, name), path[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, name, path, end_ok=False)]
    raise _missing(name, path)


def _remove(doc: Any, path: list[str], name: str) -> Any:
    if not path:
        return None
    parent, last = _parent(doc, path, name), path[-1]
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last, name, path, end_ok=False)]
    else:
        raise _missing(name, path)
    return doc


def _replace(doc: Any, path: list[str], value: Any, name: str) -> Any:
    """Set an existing member in place (an object keeps its key order)."""
    if not path:
        return value
    parent, last = _parent(doc, path, name), path[-1]
    if isinstance(parent, dict) and last in parent:
        parent[last] = value
    elif isinstance(parent, list):
        parent[_index(parent, last, name, path, end_ok=False)] = value
    else:
        raise _missing(name, path)
    return doc


def _add(doc: Any, path: list[str], value: Any, name: str) -> Any:
    if not path:
        return value
    parent, last = _parent(doc, path, name), path[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, name, path, end_ok=True), value)
    else:
        raise _missing(name, path)
    return doc
