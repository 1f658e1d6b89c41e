"""`ambient wait KIND/NAME --for=condition=Ready|--for=delete [--timeout 60s]` (kubectl semantics).

Level-triggered: the object is read first (the condition may already hold), then watched from that
resource version, so no change between the read and the watch is missed; a "too old" watch (GoneError)
re-reads and re-watches. Exit 0 with `pod/web condition met`, or exit 1 with a timeout message.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ambient.cli.context import state
from ambient.cli.errors import UsageError, WaitTimeoutError
from ambient.cli.objects import NamespaceOpt, parse_targets

if TYPE_CHECKING:
    from ambient.api.kinds import KindInfo

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_timeout(text: str) -> float:
    """"60s", "1m30s", "500ms", "2h" or plain seconds ("45") -> seconds."""
    text = text.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise UsageError(f'invalid timeout "{text}"', hint='use a duration like 60s, 2m or 1m30s')
    return sum(float(n) * _UNITS[u] for n, u in parts)


def parse_for(text: str) -> tuple[str, str | None, str]:
    """`delete` -> ("delete", None, ""); `condition=Ready[=False]` -> ("condition", "Ready", "True"|"False")."""
    if text == "delete":
        return "delete", None, ""
    if text.startswith("condition="):
        cond, _, value = text[len("condition="):].partition("=")
        if cond:
            return "condition", cond, value or "True"
    raise UsageError(f'unsupported --for "{text}"', hint="use --for=condition=NAME[=VALUE] or --for=delete")


def condition_met(obj: dict[str, Any], ctype: str, want: str) -> bool:
    status = obj.get("status")
    if not isinstance(status, dict):
        return False
    for cond in status.get("conditions") or []:
        if isinstance(cond, dict) and str(cond.get("type", "")).lower() == ctype.lower():
            return str(cond.get("status", "")).lower() == want.lower()
    return False


def _wait_one(client: Any, info: KindInfo, name: str, ns: str | None, mode: str, ctype: str | None,
              want: str, deadline: float) -> None:
    from ambient.api.errors import GoneError, NotFoundError
    from ambient.cli.printers import display_name

    ref = display_name(info, name)

    def satisfied(obj: dict[str, Any] | None) -> bool:
        if mode == "delete":
            return obj is None
        if obj is None:
            return False
        return condition_met(obj, ctype or "", want)

    while True:
        try:
            obj: dict[str, Any] | None = client.get(info.kind, name, ns)
        except NotFoundError:
            if mode != "delete":
                raise
            obj = None
        if satisfied(obj):
            typer.echo(f"{ref} condition met")
            return
        assert obj is not None
        rv = obj["metadata"].get("resourceVersion")
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                for event in client.watch(info.kind, namespace=ns, resource_version=rv, timeout=remaining):
                    current = event.object
                    meta = current.get("metadata") or {}
                    if meta.get("resourceVersion"):
                        rv = meta["resourceVersion"]
                    if event.type == "BOOKMARK" or meta.get("name") != name:
                        continue
                    if event.type == "DELETED":
                        if mode == "delete":
                            typer.echo(f"{ref} condition met")
                            return
                        raise WaitTimeoutError(f"{ref} was deleted while waiting for condition {ctype}")
                    if satisfied(current):
                        typer.echo(f"{ref} condition met")
                        return
                    if time.monotonic() >= deadline:
                        break
        except GoneError:
            continue  # our resource version was compacted away: read again, watch again
        what = "deletion" if mode == "delete" else f"condition {ctype}={want}"
        raise WaitTimeoutError(
            f"timed out waiting for the {what} on {ref}",
            hint=f"inspect it with `ambient get {info.singular} {name} -o yaml"
            + (f" -n {ns}`" if ns and ns != "default" else "`"),
        )


def wait(
    ctx: typer.Context,
    args: Annotated[list[str], typer.Argument(metavar="KIND/NAME... | KIND NAME...")],
    for_: Annotated[str, typer.Option("--for", help="condition=NAME[=VALUE] or delete")],
    namespace: NamespaceOpt = None,
    timeout: Annotated[str, typer.Option("--timeout", help="How long to wait: 30s, 2m, 1m30s.")] = "30s",
) -> None:
    """Wait until objects meet a condition (e.g. Ready) or are deleted."""
    mode, ctype, want = parse_for(for_)
    deadline = time.monotonic() + parse_timeout(timeout)
    kinds, names = parse_targets(args)
    if not names:
        raise UsageError("wait needs object names: KIND/NAME or KIND NAME")
    pairs = zip(kinds if len(kinds) == len(names) else [kinds[0]] * len(names), names, strict=True)
    client = state(ctx).client()
    for info, name in pairs:
        ns = (namespace or "default") if info.namespaced else None
        _wait_one(client, info, name, ns, mode, ctype, want, deadline)


def register(app: typer.Typer) -> None:
    app.command("wait", rich_help_panel="Objects")(wait)
