"""Shared building blocks of `ambient.api.validation`: error messages and typed field accessors.

Role: every kind check (core_kinds.py, mesh_kinds.py, metadata.py) reads fields through these accessors so
that type errors read the same everywhere: `<path>.<key>: expected <what>, got <found>`.

Invariants:
- Every error is a `ValidationError` built by `_fail`, whose message starts with the field path.
- An accessor only reads `d[key]`, checks its type and returns it; the only writes are the documented defaults
  (`_enum(..., default=...)` fills in the default when the field is absent).
- Absent (None) optional fields are fine; a present field of the wrong type is an error.
- Package-internal: the underscore names are shared by the modules of this package only, not API elsewhere.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any

from ambient.api.errors import ValidationError

_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")

Obj = dict[str, Any]


def _show(value: Any) -> str:
    """How a found value appears in a message: JSON-ish and short."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str) and len(value) > 60:
        return f"{json.dumps(value[:40])[:-1]}...\" ({len(value)} characters)"
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _fail(path: str, expected: str, found: Any = ..., *, hint: str | None = None) -> ValidationError:
    message = f"{path}: {expected}" if found is ... else f"{path}: expected {expected}, got {_show(found)}"
    return ValidationError(message, hint=hint)


# ----------------------------------------------------------------------------- typed field accessors
# Each accessor reads `d[key]`, checks its type, and returns it (or None when absent and optional).


def _map(d: Obj, key: str, path: str, *, required: bool = False) -> Obj | None:
    value = d.get(key)
    if value is None:
        if required:
            raise _fail(f"{path}.{key}", "required field is missing")
        return None
    if not isinstance(value, dict):
        raise _fail(f"{path}.{key}", "an object", value)
    return value


def _list(d: Obj, key: str, path: str, *, required: bool = False, nonempty: bool = False) -> list[Any]:
    value = d.get(key)
    if value is None:
        if required:
            raise _fail(f"{path}.{key}", "required field is missing")
        return []
    if not isinstance(value, list):
        raise _fail(f"{path}.{key}", "a list", value)
    if nonempty and not value:
        raise _fail(f"{path}.{key}", "must have at least one entry")
    return value


def _items(d: Obj, key: str, path: str, **kw: bool) -> list[tuple[str, Obj]]:
    """The entries of a list of objects, each with its path (`path.key[i]`)."""
    out = []
    for i, item in enumerate(_list(d, key, path, **kw)):
        p = f"{path}.{key}[{i}]"
        if not isinstance(item, dict):
            raise _fail(p, "an object", item)
        out.append((p, item))
    return out


def _str(d: Obj, key: str, path: str, *, required: bool = False) -> str | None:
    value = d.get(key)
    if value is None:
        if required:
            raise _fail(f"{path}.{key}", "required field is missing")
        return None
    if not isinstance(value, str):
        raise _fail(f"{path}.{key}", "a string", value)
    if required and not value:
        raise _fail(f"{path}.{key}", "must not be empty")
    return value


def _int(d: Obj, key: str, path: str, *, lo: int | None = None, hi: int | None = None,
         required: bool = False) -> int | None:
    value = d.get(key)
    if value is None:
        if required:
            raise _fail(f"{path}.{key}", "required field is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) or (
        hi is not None and value > hi
    ):
        raise _fail(f"{path}.{key}", _int_range(lo, hi), value)
    return value


def _int_range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"an integer {lo}-{hi}"
    if lo is not None:
        return f"an integer >= {lo}"
    return "an integer"


def _bool(d: Obj, key: str, path: str) -> None:
    value = d.get(key)
    if value is not None and not isinstance(value, bool):
        raise _fail(f"{path}.{key}", "true or false", value)


def _enum(d: Obj, key: str, path: str, allowed: tuple[str, ...], default: str | None = None) -> str | None:
    value = d.get(key)
    if value is None:
        if default is not None:
            d[key] = default
        return default
    if value not in allowed:
        raise _fail(f"{path}.{key}", "one of " + "|".join(allowed), value)
    return str(value)


def _str_list(d: Obj, key: str, path: str, *, check: Callable[[str, str], None] | None = None) -> None:
    for i, item in enumerate(_list(d, key, path)):
        p = f"{path}.{key}[{i}]"
        if not isinstance(item, str):
            raise _fail(p, "a string", item)
        if check is not None:
            check(item, p)


def _str_map(d: Obj, key: str, path: str) -> Obj | None:
    m = _map(d, key, path)
    if m is not None:
        for k, v in m.items():
            if not isinstance(v, str):
                raise _fail(f"{path}.{key}.{k}", "a string", v)
    return m


def _duration(d: Obj, key: str, path: str) -> None:
    value = _str(d, key, path)
    if value is not None and not _DURATION.match(value):
        raise _fail(f"{path}.{key}", 'a duration like "10s", "500ms" or "1m30s"', value)


def _port_number(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _fail(path, "an integer 1-65535", value)
    return value


# ----------------------------------------------------------------------------- scalar formats


def _check_port_name(name: str, path: str) -> None:
    if len(name) > 15 or not _IANA_SVC_NAME.match(name) or not re.search("[a-z]", name):
        raise _fail(path, "a port name of at most 15 characters of a-z, 0-9, '-' with at least one letter", name)


def _check_ip(value: str, path: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise _fail(path, "an IP address", value) from None


def _check_cidr(value: str, path: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _fail(path, "an IP address or CIDR (e.g. 10.0.0.0/8)", value) from None
