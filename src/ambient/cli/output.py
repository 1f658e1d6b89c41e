"""Rendering for the CLI: kubectl-like tables, YAML/JSON documents, ages, and the error/hint lines.

Invariants:
- Data goes to stdout, diagnostics (`error:`, `hint:`, "No resources found") to stderr, so that
  `ambient get pods -o json | jq` always sees clean JSON.
- When stdout is not a terminal, tables are plain text: columns left-aligned and separated by three
  spaces, no colour, no box, exactly like kubectl (scripts and tests parse it). On a terminal, rich draws
  the same columns with a bold header. Large tables always take the plain path (10,000 rows must print in
  well under a second).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import yaml

# Ages are computed where the API server computes them too (its Table responses).
from ambient.api.tables import age, human_duration, parse_timestamp  # noqa: F401 - re-exported

_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_RICH_MAX_ROWS = 500


def is_tty(stream: TextIO | None = None) -> bool:
    stream = stream if stream is not None else sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain kubectl-style table text (no trailing spaces, newline-terminated)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            if len(cell) > widths[i]:
                widths[i] = len(cell)
    last = len(headers) - 1
    lines = []
    for row in (headers, *rows):
        parts = [cell if i == last else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("   ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO | None = None) -> None:
    out = out if out is not None else sys.stdout
    if is_tty(out) and len(rows) <= _RICH_MAX_ROWS:
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 3, 0, 0), header_style="bold")
        for header in headers:
            table.add_column(header, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        Console(file=out, highlight=False).print(table)
        return
    out.write(format_table(headers, rows))


def dump_yaml(obj: Any) -> str:
    return str(yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True))


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=4, ensure_ascii=False) + "\n"


def as_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Several objects as kubectl prints them: a `kind: List`."""
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}


def print_objects(objs: list[dict[str, Any]], fmt: str, *, single: bool, out: TextIO | None = None) -> None:
    """Print objects as yaml or json: one object as itself when `single`, else a List."""
    out = out if out is not None else sys.stdout
    doc: Any = objs[0] if single and len(objs) == 1 else as_list(objs)
    out.write(dump_yaml(doc) if fmt == "yaml" else dump_json(doc))


def error(message: str, hint: str | None = None) -> None:
    """The one way the CLI reports a failure: `error: ...` and optionally `hint: ...` on stderr."""
    sys.stderr.write(f"error: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
    sys.stderr.flush()
