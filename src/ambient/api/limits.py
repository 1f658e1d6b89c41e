"""Size and shape limits of the object API, and the checks that enforce them before any recursive code runs.

Role: one place for every limit of what the API accepts (the server's settings default to these values), and
the pure checks: `check_depth` on a parsed value, `check_yaml_shape` on YAML text *before* it is composed
(libyaml composes recursively in C: a 100,000-deep flow sequence crashes the process instead of raising).

Limits (Kubernetes' figures where it has one):
- MAX_REQUEST_BYTES 3 MiB: the body of one create/update/patch (kube-apiserver answers 413
  "Request entity too large: limit is 3145728"); server setting `--max-request-bytes`.
- MAX_APPLY_BYTES 32 MiB: the body of one batch apply (`POST /ambient/v1/apply`, many objects in one
  transaction; Kubernetes has no batch); server setting `--max-apply-bytes`.
- MAX_OBJECT_BYTES 1.5 MiB: one object as stored (compact JSON), status included: etcd's default request
  limit (`--max-request-bytes` 1.5 MiB, "etcdserver: request is too large"); server setting
  `--max-object-bytes`.
- MAX_ANNOTATIONS_BYTES 256 KiB: all annotations of one object together, keys and values (Kubernetes'
  TotalAnnotationSizeLimitB, fixed there too: "metadata.annotations: Too long: must have at most 262144
  bytes"). Fixed, because the CLI and the server must agree.
- MAX_NESTING_DEPTH 100: objects and lists nested in a document or body (real manifests stay under 20; the
  limit keeps every recursive walk, deep copy and JSON encoding far from Python's recursion limit). Fixed.
- MAX_YAML_ALIAS_NODES 1,000,000: nodes a YAML document may expand to through aliases (`*anchor`): a
  "billion laughs" document is refused before it is composed. Fixed.

Invariants: the checks are iterative (no recursion on input), and stop at the first excess.
"""

from __future__ import annotations

from typing import Any

import yaml

from ambient.api.errors import ValidationError

MAX_REQUEST_BYTES = 3 * 1024 * 1024
MAX_APPLY_BYTES = 32 * 1024 * 1024
MAX_OBJECT_BYTES = 1536 * 1024
MAX_ANNOTATIONS_BYTES = 256 * 1024
MAX_NESTING_DEPTH = 100
MAX_YAML_ALIAS_NODES = 1_000_000


def too_deep_message(limit: int = MAX_NESTING_DEPTH) -> str:
    return f"nested too deeply: at most {limit} levels of objects and lists"


def exceeds_depth(value: Any, limit: int = MAX_NESTING_DEPTH) -> bool:
    """Whether `value` nests objects/lists more than `limit` levels (the outermost is level 1)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def check_depth(value: Any, what: str, limit: int = MAX_NESTING_DEPTH) -> None:
    if exceeds_depth(value, limit):
        raise ValidationError(f"{what}: {too_deep_message(limit)}", hint="flatten the document")


_OPEN = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSE = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


def check_yaml_shape(text: str, loader: Any, source: str, *, max_depth: int = MAX_NESTING_DEPTH,
                     max_alias_nodes: int = MAX_YAML_ALIAS_NODES) -> None:
    """Refuse YAML nested deeper than `max_depth` or expanding to more than `max_alias_nodes` nodes through
    aliases, reading the event stream only (libyaml's parser keeps its own stack: no recursion).

    Each anchored node remembers its size and depth, so an alias counts as the subtree it stands for.
    Syntax errors are left to the loader that runs next (it reports them with their position)."""
    depth = 0
    nodes = 0
    # per open collection: (anchor, node count at its start, depth at its start, max depth inside)
    open_: list[list[Any]] = []
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, depth of the subtree)
    through_aliases = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, _OPEN):
                depth += 1
                nodes += 1
                if depth > max_depth:
                    raise ValidationError(f"{source}: {too_deep_message(max_depth)}", hint="flatten the document")
                open_.append([event.anchor, nodes - 1, depth, depth])
            elif isinstance(event, _CLOSE):
                anchor, start, at, inner = open_.pop()
                if open_:
                    open_[-1][3] = max(open_[-1][3], inner)
                if anchor:
                    anchors[anchor] = (nodes - start, inner - at + 1)
                depth -= 1
            elif isinstance(event, yaml.ScalarEvent):
                nodes += 1
                if event.anchor:
                    anchors[event.anchor] = (1, 0)
            elif isinstance(event, yaml.AliasEvent):
                size, sub_depth = anchors.get(event.anchor or "", (1, 0))
                nodes += size
                through_aliases += size
                if depth + sub_depth > max_depth:
                    raise ValidationError(f"{source}: {too_deep_message(max_depth)} (through an alias)",
                                          hint="flatten the document")
                if open_:
                    open_[-1][3] = max(open_[-1][3], depth + sub_depth)
            if through_aliases > max_alias_nodes:
                raise ValidationError(
                    f"{source}: the document expands to more than {max_alias_nodes} nodes (excessive aliasing)",
                    hint="expand fewer aliases (*anchor), or split the file",
                )
    except yaml.YAMLError:
        return
