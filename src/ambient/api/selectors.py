"""Label and field selectors, Kubernetes syntax, parsed once and matched against plain-dict objects.

Label selector grammar (comma = AND): `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a` (exists),
`!a` (does not exist). Field selectors: `path=value`, `path==value`, `path!=value` where path is a dotted
path into the object (`metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`, ...).

Invariants: parsing is pure and raises `ValidationError` naming the offending term; matching never raises
(a missing field compares as the empty string, as in Kubernetes field selectors).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ambient.api.errors import ValidationError

# A label key: optional DNS prefix + "/" + name; values are names or empty. Kept permissive but bounded so
# that typos like "app=(web)" are reported instead of silently matching nothing.
_KEY_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SET_RE = re.compile(r"^(\S+)\s+(in|notin)\s*\((.*)\)$")
_FIELD_PATH_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*$")


@dataclass(frozen=True)
class Requirement:
    """One term of a label selector."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects without the label too (Kubernetes semantics).
        return not present or labels[self.key] not in self.values


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    terms: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValidationError(f'invalid selector "{text}": unbalanced ")"')
        if ch == "," and depth == 0:
            terms.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise ValidationError(f'invalid selector "{text}": unbalanced "("')
    terms.append("".join(current).strip())
    return terms


def _check_key(key: str, term: str) -> str:
    if not _KEY_RE.match(key) or len(key) > 316:
        raise ValidationError(f'invalid label selector term "{term}": "{key}" is not a valid label key')
    return key


def _check_value(value: str, term: str) -> str:
    if not _VALUE_RE.match(value) or len(value) > 63:
        raise ValidationError(f'invalid label selector term "{term}": "{value}" is not a valid label value')
    return value


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    """Parse `a=b,c!=d,e in (x,y),f notin (z),g,!h` into requirements (empty text -> match all)."""
    if text is None or not text.strip():
        return ()
    reqs: list[Requirement] = []
    for term in _split_terms(text):
        if not term:
            raise ValidationError(f'invalid label selector "{text}": empty term')
        m = _SET_RE.match(term)
        if m:
            key, op, inner = m.group(1), m.group(2), m.group(3)
            values = [v.strip() for v in inner.split(",")]
            if values == [""]:
                raise ValidationError(f'invalid label selector term "{term}": empty value set')
            reqs.append(Requirement(_check_key(key, term), op, frozenset(_check_value(v, term) for v in values)))
            continue
        for op in ("!=", "==", "="):
            if op in term:
                key, _, value = term.partition(op)
                reqs.append(
                    Requirement(
                        _check_key(key.strip(), term),
                        "!=" if op == "!=" else "=",
                        frozenset({_check_value(value.strip(), term)}),
                    )
                )
                break
        else:
            if term.startswith("!"):
                reqs.append(Requirement(_check_key(term[1:].strip(), term), "!exists"))
            else:
                reqs.append(Requirement(_check_key(term, term), "exists"))
    return tuple(reqs)


@dataclass(frozen=True)
class FieldRequirement:
    """One term of a field selector: a dotted path compared with a string."""

    path: tuple[str, ...]
    op: str  # "=" or "!="
    value: str

    def matches(self, obj: dict[str, Any]) -> bool:
        cur: Any = obj
        for part in self.path:
            cur = cur.get(part) if isinstance(cur, dict) else None
        if self.path == ("source",) and isinstance(cur, dict):
            cur = cur.get("component")  # an Event's `source` selects on its component, as kube-apiserver's
        actual = "" if cur is None else (str(cur).lower() if isinstance(cur, bool) else str(cur))
        return (actual == self.value) if self.op == "=" else (actual != self.value)


def parse_field_selector(text: str | None) -> tuple[FieldRequirement, ...]:
    """Parse `metadata.name=web,status.phase!=Running` (empty text -> match all)."""
    if text is None or not text.strip():
        return ()
    reqs: list[FieldRequirement] = []
    for term in (t.strip() for t in text.split(",")):
        for op in ("!=", "==", "="):
            if op in term:
                path, _, value = term.partition(op)
                path = path.strip()
                if not _FIELD_PATH_RE.match(path):
                    raise ValidationError(
                        f'invalid field selector term "{term}": "{path}" is not a field path',
                        hint="use e.g. metadata.name=web, metadata.namespace=default, spec.nodeName=node-1, "
                        "status.phase=Running",
                    )
                reqs.append(FieldRequirement(tuple(path.split(".")), "!=" if op == "!=" else "=", value.strip()))
                break
        else:
            raise ValidationError(f'invalid field selector term "{term}": expected FIELD=VALUE or FIELD!=VALUE')
    return tuple(reqs)


def compile_selectors(
    label_selector: str | None = None, field_selector: str | None = None
) -> Callable[[dict[str, Any]], bool] | None:
    """A predicate matching both selectors, or None when both are empty (so callers can skip parsing)."""
    labels = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector)
    if not labels and not fields:
        return None

    def predicate(obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        obj_labels = meta.get("labels") or {}
        return all(r.matches(obj_labels) for r in labels) and all(f.matches(obj) for f in fields)

    return predicate


def matches_labels(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    """Equality-based `matchLabels` / Service `selector` semantics; an empty selector matches everything."""
    if not selector:
        return True
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())
