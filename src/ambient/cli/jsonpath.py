"""kubectl's JSONPath templates for `ambient get -o jsonpath=TEMPLATE` (pure: parse, then evaluate on dicts).

The template is text with `{...}` actions, as kubectl documents it
(https://kubernetes.io/docs/reference/kubectl/jsonpath/):
- a path: `{.metadata.name}`, `{.items[0].status.podIP}`, `{.items[*].metadata.name}`, `{..image}`
  (recursive descent), `{.items[-1:]}` (slices), `{.metadata.labels['app\\.kubernetes\\.io/name']}`,
  `{.spec.containers[?(@.name=="app")].image}` (filters with == != < > <= >=, or `?(@.field)` for presence),
  `{.*}` (every value); `$` is the root and may be left out;
- a string literal: `{"\\n"}`, `{"\\t"}`;
- `{range EXPR}...{end}`: the text between is rendered once per result of EXPR, with `@` (and relative
  paths) meaning that result.
Output follows kubectl: the results of one action are joined by a space; strings print bare, booleans as
true/false, maps and lists as JSON; a missing key prints nothing (kubectl's default
`--allow-missing-template-keys=true`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ambient.cli.errors import UsageError


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Path:
    steps: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class _Range:
    path: _Path
    body: tuple[Any, ...]


# A field name runs to the next unescaped `.` or `[` (`\.` is a dot inside the name, as in label keys).
_NAME = re.compile(r"(?:\\\.|[^.\[\]\s\\()=!<>])+|\*")
_FILTER = re.compile(r"^\?\(\s*@((?:\.[^=!<>\s]+)*)\s*(?:(==|!=|<=|>=|<|>)\s*(.+?))?\s*\)$")


def _bad(template: str, why: str) -> UsageError:
    return UsageError(f"error parsing jsonpath {template}: {why}",
                      hint='e.g. -o jsonpath=\'{.items[*].metadata.name}\' or \'{range .items[*]}{.metadata.name}'
                           '{"\\n"}{end}\'')


def _literal(value: str, template: str) -> Any:
    value = value.strip()
    if value[:1] in "\"'" and value[-1:] == value[:1] and len(value) >= 2:
        return value[1:-1]
    try:
        return json.loads(value)
    except ValueError:
        raise _bad(template, f"invalid filter value {value}") from None


def _parse_path(expr: str, template: str) -> _Path:
    steps: list[tuple[str, Any]] = []
    i, n = 0, len(expr)
    if expr[:1] in "$@":
        i = 1
    while i < n:
        if expr.startswith("..", i):
            m = _NAME.match(expr[i + 2:])
            if not m:
                raise _bad(template, f"expected a field name after '..' in {expr}")
            steps.append(("recurse", m.group(0).replace("\\.", ".")))
            i += 2 + m.end()
        elif expr[i] == ".":
            m = _NAME.match(expr[i + 1:])
            if not m:
                if i + 1 == n:  # `{.}`: the current object
                    i += 1
                    continue
                raise _bad(template, f"expected a field name after '.' in {expr}")
            steps.append(("all", None) if m.group(0) == "*" else ("field", m.group(0).replace("\\.", ".")))
            i += 1 + m.end()
        elif expr[i] == "[":
            depth, j = 0, i
            while j < n:
                depth += {"[": 1, "]": -1}.get(expr[j], 0)
                if depth == 0:
                    break
                j += 1
            if j >= n:
                raise _bad(template, f"unclosed '[' in {expr}")
            steps.append(_parse_bracket(expr[i + 1:j].strip(), template))
            i = j + 1
        else:
            raise _bad(template, f"unexpected {expr[i]!r} in {expr}")
    return _Path(tuple(steps))


def _parse_bracket(inner: str, template: str) -> tuple[str, Any]:
    if inner == "*":
        return ("all", None)
    if "," in inner and not inner.startswith("?"):
        raise _bad(template, f"unions like [{inner}] are not supported: use one {{...}} action per field")
    if inner[:1] in "\"'" and inner[-1:] == inner[:1]:
        return ("field", inner[1:-1].replace("\\.", "."))
    if inner.startswith("?"):
        m = _FILTER.match(inner)
        if not m:
            raise _bad(template, f"unsupported filter [{inner}]")
        path = _parse_path(m.group(1), template) if m.group(1) else _Path(())
        return ("filter", (path, m.group(2), _literal(m.group(3), template) if m.group(2) else None))
    if ":" in inner:
        parts = inner.split(":")
        try:
            bounds = [int(p) if p.strip() else None for p in parts[:2]]
        except ValueError:
            raise _bad(template, f"invalid slice [{inner}]") from None
        return ("slice", (bounds[0], bounds[1] if len(bounds) > 1 else None))
    try:
        return ("index", int(inner))
    except ValueError:
        return ("field", inner.replace("\\.", "."))


def parse(template: str) -> tuple[Any, ...]:
    """The template's nodes (text, paths, ranges); a `UsageError` naming the problem when it is malformed."""
    nodes: list[Any] = []
    open_ranges: list[tuple[_Path, list[Any], list[Any]]] = []  # (path, parent, body)
    current = nodes
    i = 0
    while i < len(template):
        start = template.find("{", i)
        if start < 0:
            current.append(_Text(template[i:]))
            break
        if start > i:
            current.append(_Text(template[i:start]))
        end = _closing_brace(template, start)
        if end < 0:
            raise _bad(template, "unclosed action")
        action = template[start + 1:end].strip()
        i = end + 1
        if action.startswith("range "):
            body: list[Any] = []
            open_ranges.append((_parse_path(action[6:].strip(), template), current, body))
            current = body
        elif action == "end":
            if not open_ranges:
                raise _bad(template, "{end} without {range}")
            path, parent, body = open_ranges.pop()
            parent.append(_Range(path, tuple(body)))
            current = parent
        elif action[:1] in "\"'":
            if len(action) < 2 or action[-1] != action[0]:
                raise _bad(template, f"unterminated string {action}")
            current.append(_Text(_unescape(action[1:-1])))
        elif action == "":
            raise _bad(template, "empty action {}")
        else:
            current.append(_parse_path(action, template))
    if open_ranges:
        raise _bad(template, "{range} without {end}")
    return tuple(nodes)


def _closing_brace(template: str, start: int) -> int:
    quote = ""
    for j in range(start + 1, len(template)):
        ch = template[j]
        if quote:
            if ch == "\\":
                continue
            if ch == quote and template[j - 1] != "\\":
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "}":
            return j
    return -1


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r").replace('\\"', '"')


def _children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return list(value)
    return []


def _recurse(value: Any, key: str) -> list[Any]:
    out: list[Any] = []
    if isinstance(value, dict):
        if key == "*":
            out.extend(value.values())
        elif key in value:
            out.append(value[key])
    for child in _children(value):
        out.extend(_recurse(child, key))
    return out


def _compare(left: Any, op: str, right: Any) -> bool:
    try:
        return bool({"==": left == right, "!=": left != right}.get(op) if op in ("==", "!=") else
                    {"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[op])
    except TypeError:
        return False


def _step(values: list[Any], step: tuple[str, Any]) -> list[Any]:
    kind, arg = step
    out: list[Any] = []
    for value in values:
        if kind == "field":
            if isinstance(value, dict) and arg in value:
                out.append(value[arg])
        elif kind == "all":
            out.extend(_children(value))
        elif kind == "recurse":
            out.extend(_recurse(value, arg))
        elif kind == "index" and isinstance(value, list):
            if -len(value) <= arg < len(value):
                out.append(value[arg])
        elif kind == "slice" and isinstance(value, list):
            out.extend(value[arg[0]:arg[1]])
        elif kind == "filter":
            path, op, literal = arg
            for item in _children(value):
                found = evaluate_path(path, item)
                if op is None:
                    if found and found[0] not in (None, False, "", [], {}):
                        out.append(item)
                elif found and _compare(found[0], op, literal):
                    out.append(item)
    return out


def evaluate_path(path: _Path, root: Any) -> list[Any]:
    values = [root]
    for step in path.steps:
        values = _step(values, step)
    return values


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _render(nodes: tuple[Any, ...], data: Any) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, _Text):
            parts.append(node.text)
        elif isinstance(node, _Path):
            parts.append(" ".join(_text(v) for v in evaluate_path(node, data)))
        else:
            for item in evaluate_path(node.path, data):
                parts.append(_render(node.body, item))
    return "".join(parts)


def render(template: str, data: Any) -> str:
    """`template` applied to `data` (an object, or a `List` with `items`), as `kubectl -o jsonpath` prints."""
    return _render(parse(template), data)
