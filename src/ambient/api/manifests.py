"""Loading Kubernetes-style manifests: multi-document YAML, JSON, and `kind: List` documents.

`load_manifests(text, source)` turns the text of one file (or stdin) into validated, normalised objects.

Invariants:
- Every error is an `ApiError` (a `ValidationError` for syntax and field errors, an `UnknownKindError` for
  kinds) whose message names the source, the 1-based document index (and the List item when inside a
  `kind: List`), the object when known, and the field: `bad.yaml: document 2 (Pod "web"): spec...`.
- Empty documents (`---` alone, comments only) are skipped, not errors.
- Nesting deeper than `limits.MAX_NESTING_DEPTH`, or YAML alias bombs, are refused before anything
  recursive runs on them (`limits.check_yaml_shape`).
- A field written twice in one mapping is refused (`duplicates`, Strict by default), as Kubernetes' strict
  field validation does.
- `field_validation` is passed to `validate_object`: "Strict" (the default) refuses unknown fields here, with
  the document named; None leaves them in the objects for the API server to judge (Warn/Ignore requests).
- Objects come back in file order; each is the output of `validation.validate_object`.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from ambient.api import limits
from ambient.api.errors import ApiError, UnknownFieldError, ValidationError
from ambient.api.validation import validate_object
from ambient.api.validation.schema import duplicate_message, loads_with_duplicates

# libyaml's C loader is ~10x faster; apply of a 1,000-object file must stay well under a second of parsing.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _TrackingLoader(_Loader):  # type: ignore[misc, valid-type]
    """The safe loader, noting every key written twice in one mapping (YAML keeps the last silently).

    Only keys written inside the mapping count: `<<: *anchor` merges bring keys from elsewhere, which the
    mapping may override."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str, int]] = []  # (line, key, line of the first one)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[str, int] = {}
        start, end = node.start_mark.index, node.end_mark.index
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            if not start <= key_node.start_mark.index <= end:
                continue  # merged in from an anchor
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                self.duplicates.append((line, key_node.value, seen[key_node.value]))
            else:
                seen[key_node.value] = line
        return super().construct_mapping(node, deep)


def _char_at(text: str, line: int, column: int) -> str:
    lines = text.splitlines()
    return lines[line][column : column + 1] if 0 <= line < len(lines) else ""


def _parse(text: str, source: str) -> tuple[list[Any], list[str]]:
    """Parse every document of `text`, and describe every duplicated field (the last value is kept).
    JSON is tried first when it looks like JSON (faster, exact)."""
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            doc, duplicates = loads_with_duplicates(text)
        except json.JSONDecodeError:
            pass  # may still be YAML flow style; the YAML parser reports the real error
        except RecursionError:
            raise ValidationError(f"{source}: {limits.too_deep_message()}", hint="flatten the document") from None
        else:
            limits.check_depth(doc, source, limits.MAX_NESTING_DEPTH + 1)  # +1: a JSON list of documents
            return (doc if isinstance(doc, list) else [doc]), [duplicate_message(p) for p in duplicates]
    # Before composing: libyaml composes recursively in C, and crashes on very deep nesting.
    limits.check_yaml_shape(text, _Loader, source)
    loader = _TrackingLoader(text)
    try:
        docs = []
        while loader.check_data():
            docs.append(loader.get_data())
        return docs, [f"line {line}: {duplicate_message(key)} (also at line {first})"
                      for line, key, first in loader.duplicates]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        if mark is not None and _char_at(text, mark.line, mark.column) == "\t":
            context += " (a tab: indent YAML with spaces)"
        raise ValidationError(
            f"{source}: {where}invalid YAML: {problem}{context}",
            hint="check the indentation and quoting around that line (tabs are not allowed in YAML)",
        ) from None
    except yaml.YAMLError as exc:
        raise ValidationError(f"{source}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def _describe(doc: Any) -> str:
    if isinstance(doc, dict):
        kind = doc.get("kind")
        meta = doc.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if isinstance(kind, str) and isinstance(name, str) and name:
            return f' ({kind} "{name}")'
        if isinstance(kind, str):
            return f" ({kind})"
    return ""


def _validate(doc: Any, where: str, namespace: str | None, field_validation: str | None) -> dict[str, Any]:
    if namespace is not None and isinstance(doc, dict):
        meta = doc.get("metadata")
        if isinstance(meta, dict) and not meta.get("namespace"):
            # Cluster-scoped kinds drop the namespace again in validate_object.
            doc = {**doc, "metadata": {**meta, "namespace": namespace}}
    try:
        obj = validate_object(doc, field_validation=field_validation)
    except ApiError as exc:
        raise type(exc)(f"{where}{_describe(doc)}: {exc.message}", hint=exc.hint) from None
    found = obj["metadata"].get("namespace")
    if namespace is not None and found is not None and found != namespace:
        raise ValidationError(
            f'{where}{_describe(doc)}: metadata.namespace "{found}" does not match the namespace "{namespace}" '
            "given on the command line",
            hint=f"pass -n {found}, or remove metadata.namespace from the manifest",
        )
    return obj


def load_manifests(
    text: str,
    source: str = "-",
    *,
    namespace: str | None = None,
    field_validation: str | None = "Strict",
    duplicates: str = "Strict",
    warnings: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Parse and validate every object in `text` (YAML or JSON; `kind: List` is expanded).

    `namespace` (kubectl's `-n`) is given to namespaced objects that have none, and objects that name
    another namespace are refused; without it, such objects go to "default". A field written twice in one
    mapping (lost when the YAML becomes JSON, so only seen here) is an error with `duplicates="Strict"`, a
    message in `warnings` with "Warn", and ignored (the last value kept) with "Ignore".
    """
    docs, duplicated = _parse(text, source)
    if duplicated and duplicates == "Strict":
        listed = "; ".join(duplicated[:10]) + (f" (and {len(duplicated) - 10} more)" if len(duplicated) > 10 else "")
        raise UnknownFieldError(f"{source}: strict decoding error: {listed}",
                                hint="each field may appear once in a mapping: remove the extra one")
    if duplicates == "Warn" and warnings is not None:
        warnings.extend(f"{source}: {d}" for d in duplicated)
    objects: list[dict[str, Any]] = []
    for index, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        where = f"{source}: document {index}"
        if isinstance(doc, dict) and isinstance(doc.get("kind"), str) and doc["kind"].endswith("List") and (
            "items" in doc
        ):
            items = doc.get("items") or []
            if not isinstance(items, list):
                raise ValidationError(f"{where} ({doc['kind']}): items: expected a list, got {type(items).__name__}")
            for item_index, item in enumerate(items):
                if item is not None:
                    objects.append(_validate(item, f"{where}, items[{item_index}]", namespace, field_validation))
            continue
        objects.append(_validate(doc, where, namespace, field_validation))
    return objects
