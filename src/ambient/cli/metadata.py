"""`ambient label` and `ambient annotate`: change an object's labels or annotations (kubectl semantics).

`k=v` sets, `k-` removes. Changing an existing value needs `--overwrite` (kubectl refuses otherwise, so a
typo does not silently re-label a workload out of the mesh). The change is sent as one JSON merge patch
of `metadata.labels`/`metadata.annotations` (null deletes a key), so concurrent edits of other keys are
not lost; the server validates keys and values.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ambient.cli.context import state
from ambient.cli.errors import CliError, UsageError
from ambient.cli.objects import NamespaceOpt, parse_targets


def parse_changes(items: list[str]) -> tuple[dict[str, str], list[str]]:
    """`["a=1", "b-"]` -> ({"a": "1"}, ["b"])."""
    sets: dict[str, str] = {}
    removes: list[str] = []
    for item in items:
        if "=" in item:
            key, _, value = item.partition("=")
            if not key:
                raise UsageError(f'"{item}": expected KEY=VALUE with a non-empty key')
            sets[key] = value
        elif item.endswith("-") and len(item) > 1:
            removes.append(item[:-1])
        else:
            raise UsageError(f'"{item}": expected KEY=VALUE to set or KEY- to remove')
    overlap = set(sets) & set(removes)
    if overlap:
        raise UsageError(f"can not both modify and remove {', '.join(sorted(overlap))} in the same command")
    return sets, removes


def plan_patch(current: dict[str, Any], sets: dict[str, str], removes: list[str], *, overwrite: bool,
               what: str) -> tuple[dict[str, Any], list[str]]:
    """The merge patch for the map `current`, and notes for keys that were asked to go but are absent."""
    patch: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in sets.items():
        old = current.get(key)
        if old == value:
            continue
        if old is not None and not overwrite:
            raise CliError(f"'{key}' already has a value ({old}), and --overwrite is false",
                           hint=f"pass --overwrite to replace the {what}")
        patch[key] = value
    for key in removes:
        if key in current:
            patch[key] = None
        else:
            notes.append(f'{what} "{key}" not found.')
    return patch, notes


def _change(ctx: typer.Context, args: list[str], namespace: str | None, overwrite: bool, field: str) -> None:
    from ambient.cli.printers import display_name

    what, verb = ("label", "labeled") if field == "labels" else ("annotation", "annotated")
    if not args or len(args) < 2:
        raise UsageError("expected KIND NAME KEY=VALUE... or KIND/NAME KEY=VALUE...")
    if "/" in args[0]:
        kinds, names = parse_targets(args[:1])
        changes = args[1:]
    else:
        kinds, names = parse_targets(args[:2])
        changes = args[2:]
    if len(kinds) != 1 or len(names) != 1:
        raise UsageError(f"{what} one object at a time: KIND NAME or KIND/NAME")
    if not changes:
        raise UsageError(f"at least one {what} update is required", hint="e.g. app=web to set, app- to remove")
    sets, removes = parse_changes(changes)
    info, name = kinds[0], names[0]
    ns = (namespace or "default") if info.namespaced else None
    client = state(ctx).client()
    obj = client.get(info.kind, name, ns)
    current = (obj.get("metadata") or {}).get(field) or {}
    patch, notes = plan_patch(current, sets, removes, overwrite=overwrite, what=what)
    for note in notes:
        typer.echo(note)
    ref = display_name(info, name)
    if not patch:
        typer.echo(f"{ref} not {verb}")
        return
    client.patch(info.kind, name, ns, {"metadata": {field: patch}})
    typer.echo(f"{ref} {verb}")


ArgsArg = Annotated[list[str], typer.Argument(metavar="KIND NAME | KIND/NAME  KEY=VALUE... KEY-...")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Allow replacing existing values.")]


def label(ctx: typer.Context, args: ArgsArg, namespace: NamespaceOpt = None, overwrite: OverwriteOpt = False) -> None:
    """Set (k=v) or remove (k-) labels of an object."""
    _change(ctx, args, namespace, overwrite, "labels")


def annotate(
    ctx: typer.Context, args: ArgsArg, namespace: NamespaceOpt = None, overwrite: OverwriteOpt = False
) -> None:
    """Set (k=v) or remove (k-) annotations of an object."""
    _change(ctx, args, namespace, overwrite, "annotations")


def register(app: typer.Typer) -> None:
    app.command("label", rich_help_panel="Objects")(label)
    app.command("annotate", rich_help_panel="Objects")(annotate)
