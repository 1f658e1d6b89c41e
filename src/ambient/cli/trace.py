"""`ambient trace`: run a request in a pod of the local cluster and show its life hop by hop.

    ambient trace -n client deploy/curl -- curl -s http://httpbin.demo:8000/get
    ambient trace 4bf92f3577b34da6a3ce929d0e0e4736          # a connection already logged (its trace id)
    ambient trace --follow -n client deploy/curl --count 5  # its next 5 connections, each when complete

Evidence, not packet capture: the redirect rule that matched in the source pod (packet counter delta of the
pod's iptables / nftables rules around the command), the DNS proxy's answer that gave the dialled address
(when the app resolved a name through it), then the access lines every hop wrote for the connection, joined
by their `trace_id` (the W3C trace id of the HBONE CONNECT's `traceparent`, see `ambient.runtime.trace`), and
who closed first. Output: a Rich tree, or `-o json`.

Heavy imports happen inside the command (the CLI's start-up time rule).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ambient.cli.context import state
from ambient.cli.errors import CliError, UsageError

_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def _log_files(log_dir: Path) -> list[Path]:
    files = sorted(log_dir.glob("ztunnel*.log"))
    pods = log_dir / "pods"
    if pods.is_dir():
        files += sorted(pods.glob("*.log"))
    return files


def _sizes(files: list[Path]) -> dict[Path, int]:
    out = {}
    for f in files:
        try:
            out[f] = f.stat().st_size
        except OSError:
            continue
    return out


def _entries(log_dir: Path, since: dict[Path, int] | None = None) -> list[Any]:
    from ambient.runtime.trace import parse_lines

    out = []
    for f in _log_files(log_dir):
        start = (since or {}).get(f, 0)
        try:
            with f.open("rb") as fh:
                fh.seek(start)
                text = fh.read().decode(errors="replace")
        except OSError:
            continue
        component = f.stem if f.parent.name != "pods" else f"pod {f.stem}"
        out += parse_lines(component, text.splitlines())
    return out


def _rules(netns: str) -> str:
    """The pod's redirect rules with counters: iptables-save -c (nat and mangle), and nft's ruleset."""
    text = ""
    for argv in (["iptables-save", "-c"], ["nft", "list", "ruleset"]):
        try:
            run = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                                 timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if run.returncode == 0:
            text += run.stdout
    return text


def _complete(trace_id: str, entries: list[Any], strict: bool = True) -> bool:
    """Every hop the source proxy's decision implies has logged (or the path stopped with an error)."""
    mine = [e for e in entries if e.trace_id == trace_id]
    out = [e for e in mine if e.direction == "outbound"]
    if not out:
        return False
    route = out[0].fields.get("route", "")
    if out[0].level != "info" or route.startswith("passthrough"):
        return True
    inbound = [e for e in mine if e.direction == "inbound"]
    if route.startswith("waypoint"):
        # the waypoint's upstream connection may be pooled: its destination line comes when it closes
        return any(e.direction == "waypoint" for e in mine) and (bool(inbound) or not strict)
    return bool(inbound)


_TITLES = {"redirect": "redirect", "dns": "source node proxy: DNS answer", "source-proxy": "source node proxy",
           "waypoint": "waypoint", "destination-proxy": "destination node proxy", "app": "the app's answer"}


def hop_label(hop: Any) -> str:
    """A hop's line in the tree (Rich markup): what it is, then who logged it and when ("redirect in the
    source pod", "waypoint pod w-1 2026-...Z (4ms)"); a red x when it failed."""
    mark = "" if hop.ok else " [red]x[/red]"
    when = " ".join(x for x in (hop.time, f"({hop.duration})" if hop.duration else "") if x)
    who = f"in the {hop.component}" if hop.kind == "redirect" else hop.component
    detail = " ".join(x for x in (who, when) if x)
    return f"[bold]{_TITLES.get(hop.kind, hop.kind)}[/bold]" + (f" [dim]{detail}[/dim]" if detail else "") + mark


def _render(traces: list[Any], output: str) -> None:
    if output == "json":
        sys.stdout.write(json.dumps([t.to_json() for t in traces], indent=2) + "\n")
        return
    from rich.console import Console
    from rich.tree import Tree

    console = Console()
    for t in traces:
        colour = {"completed": "green", "denied": "red"}.get(t.outcome, "yellow")
        head = f"[bold]connection {t.trace_id}[/bold]  [{colour}]{t.outcome}[/{colour}]"
        if t.stopped_at:
            head += f"  stopped at {t.stopped_at}: {t.reason}"
        tree = Tree(head)
        for hop in t.hops:
            node = tree.add(hop_label(hop))
            for k, v in hop.facts.items():
                node.add(f"{k}: {v}", style="red" if k == "error" else None)
        console.print(tree)


def trace_command(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="Pod (NAME, pod/NAME, deploy/NAME, svc/NAME) to run the command "
                                          "in, or the trace id of a logged connection.")],
    command: Annotated[list[str] | None, typer.Argument(help="Command and arguments (after --).")] = None,
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "default",
    output: Annotated[str, typer.Option("--output", "-o", help="tree (default) or json.")] = "tree",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every hop's access line (with --follow: "
                                           "for the N connections).")] = 10.0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Trace the pod's next connections as they are "
                                         "logged, printing each when complete (json: one object per line).")] = False,
    count: Annotated[int, typer.Option(help="With --follow: stop after this many connections.")] = 1,
) -> None:
    """Run a request and show its life hop by hop (or show a logged connection by its trace id)."""
    from ambient.cluster import layout as L
    from ambient.runtime.trace import assemble, redirect_delta, redirect_facts, trace_ids_from

    if output not in ("tree", "json"):
        raise UsageError(f"unknown output format {output!r}", hint="-o tree or -o json")
    if command and command[0] == "--":
        command = command[1:]
    st = state(ctx)
    layout = L.load_layout(st.socket_path.parent)
    log_dir = layout.log_dir
    if _TRACE_ID.fullmatch(target) and not command:
        entries = _entries(log_dir)
        if not any(e.trace_id == target for e in entries):
            raise CliError(f"no access line carries trace id {target}",
                           hint="node proxies log trace ids unless AMBIENT_TRACE_IDS=0")
        _render([assemble(target, entries)], output)
        return
    if follow:
        if command:
            raise UsageError("--follow takes no command", hint=f"ambient trace --follow -n {namespace} {target}")
        if count < 1:
            raise UsageError(f"--count must be at least 1, not {count}")
        _follow(st, layout, target, namespace, count, timeout, output)
        return
    if not command:
        raise UsageError("no command given", hint=f"ambient trace {target} -n {namespace} -- CMD [ARGS...]")
    from ambient.cli.workloads import _running_pod

    pod = _running_pod(st, target, namespace)
    netns = L.pod_netns_name(layout.name, pod["metadata"]["uid"])
    pod_ip = pod["status"]["podIP"]
    since = _sizes(_log_files(log_dir))
    rules_before = _rules(netns)
    started = time.monotonic()
    run = subprocess.run(["ip", "netns", "exec", netns, *command], capture_output=True, timeout=300, check=False)
    elapsed = time.monotonic() - started
    rules_after = _rules(netns)
    sys.stderr.write(f"command exited {run.returncode} after {elapsed * 1000:.0f}ms, "
                     f"{len(run.stdout)} bytes on stdout\n")
    deadline = time.monotonic() + timeout
    grace = 0.0
    while True:
        entries = _entries(log_dir, since)
        ids = trace_ids_from(entries, pod_ip)
        if ids and all(_complete(i, entries) for i in ids):
            break
        if ids and all(_complete(i, entries, strict=False) for i in ids):
            grace = grace or time.monotonic() + 2.0  # a pooled waypoint upstream: its line may come later
            if time.monotonic() > grace:
                break
        if time.monotonic() > deadline:
            if not ids:
                raise CliError(f"no connection from {namespace}/{pod['metadata']['name']} ({pod_ip}) was logged "
                               "by its node proxy", hint="is the pod enrolled in the mesh (ambient get pods -L "
                               "istio.io/dataplane-mode)? Do the node proxies log trace ids (AMBIENT_TRACE_IDS)?")
            break
        time.sleep(0.2)
    redirect = redirect_facts(redirect_delta(rules_before, rules_after))
    app = {"command exit": str(run.returncode), "command stdout bytes": str(len(run.stdout))}
    _render([assemble(i, entries, redirect=redirect, app=app) for i in ids], output)


def _follow(st: Any, layout: Any, target: str, namespace: str, count: int, timeout: float, output: str) -> None:
    """Print each of the pod's next `count` connections once every hop has logged (2 s of grace for a
    pooled waypoint upstream), within `timeout` seconds. Only new log bytes are read."""
    from ambient.cli.workloads import _running_pod
    from ambient.runtime.trace import assemble, trace_ids_from

    pod = _running_pod(st, target, namespace)
    pod_ip = pod["status"]["podIP"]
    since = _sizes(_log_files(layout.log_dir))
    sys.stderr.write(f"following connections from {namespace}/{pod['metadata']['name']} ({pod_ip})\n")
    sys.stderr.flush()
    deadline = time.monotonic() + timeout
    shown: set[str] = set()
    first_seen: dict[str, float] = {}
    while len(shown) < count:
        entries = _entries(layout.log_dir, since)
        now = time.monotonic()
        for i in trace_ids_from(entries, pod_ip):
            if i in shown or len(shown) >= count:
                continue
            first_seen.setdefault(i, now)
            if _complete(i, entries) or (_complete(i, entries, strict=False) and now > first_seen[i] + 2.0):
                t = assemble(i, entries)
                if output == "json":
                    sys.stdout.write(json.dumps(t.to_json()) + "\n")
                else:
                    _render([t], output)
                sys.stdout.flush()
                shown.add(i)
        if len(shown) >= count:
            break
        if now > deadline:
            raise CliError(f"{len(shown)} of {count} connection(s) from {namespace}/{pod['metadata']['name']} "
                           f"({pod_ip}) traced within {timeout:g}s", hint="raise --timeout, or check that the pod "
                           "is enrolled and the node proxies log trace ids (AMBIENT_TRACE_IDS)")
        time.sleep(0.2)


def register(root: typer.Typer) -> None:
    root.command("trace")(trace_command)
