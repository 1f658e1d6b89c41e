"""`ambient waypoint apply|list|delete|status`: manage waypoints (istioctl waypoint-like).

A waypoint is a Gateway API `Gateway` (gatewayClassName `istio-waypoint`, listener `mesh` 15008 HBONE,
label `istio.io/waypoint-for`); the control plane runs its pods and reports `Programmed` in its status.
These commands only write and read objects through the API client; they never touch pods.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from ambient.cli.context import state
from ambient.cli.errors import CliError, UsageError

WAYPOINT_CLASS = "istio-waypoint"
WAYPOINT_FOR = "istio.io/waypoint-for"
USE_WAYPOINT = "istio.io/use-waypoint"
REVISION_LABEL = "istio.io/rev"
TRAFFIC_TYPES = ("service", "workload", "all", "none")

NamespaceOpt = Annotated[str | None, typer.Option("--namespace", "-n", help='Namespace (default "default").',
                                                  show_default=False)]
NameOpt = Annotated[str, typer.Option("--name", help="Name of the waypoint Gateway.")]


def gateway_manifest(name: str, namespace: str, traffic: str, revision: str | None = None) -> dict[str, Any]:
    """The Gateway object of a waypoint (pure: used by `apply` and by tests)."""
    labels = {WAYPOINT_FOR: traffic}
    if revision:
        labels[REVISION_LABEL] = revision
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "gatewayClassName": WAYPOINT_CLASS,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


def _condition(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if isinstance(cond, dict) and cond.get("type") == ctype:
            return cond
    return None


def programmed(obj: dict[str, Any]) -> bool:
    cond = _condition(obj, "Programmed")
    return cond is not None and str(cond.get("status")) == "True"


def list_rows(objs: list[dict[str, Any]], *, with_namespace: bool) -> list[list[str]]:
    rows = []
    for obj in objs:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        row = [meta.get("name", ""), labels.get(REVISION_LABEL, "default"), labels.get(WAYPOINT_FOR, "service"),
               "True" if programmed(obj) else "False"]
        rows.append(([meta.get("namespace", "")] if with_namespace else []) + row)
    return rows


def _waypoints(client: Any, namespace: str | None) -> list[dict[str, Any]]:
    items, _ = client.list("Gateway", namespace)
    return [o for o in items if (o.get("spec") or {}).get("gatewayClassName") == WAYPOINT_CLASS]


def _wait_programmed(client: Any, name: str, namespace: str, timeout: float) -> dict[str, Any]:
    from ambient.api.errors import NotFoundError
    from ambient.core.backoff import Backoff

    deadline = time.monotonic() + timeout
    backoff = Backoff(0.1, 1.0)
    while True:
        try:
            obj = client.get("Gateway", name, namespace)
        except NotFoundError:
            obj = {}
        if obj and programmed(obj):
            return obj  # type: ignore[no-any-return]
        if time.monotonic() >= deadline:
            cond = _condition(obj, "Programmed") if obj else None
            why = f" ({cond.get('reason')}: {cond.get('message')})" if cond else ""
            raise CliError(
                f"waypoint {namespace}/{name} was not programmed within {timeout:.0f}s{why}",
                hint="is the control plane running? `ambient logs controlplane`; "
                f"`ambient waypoint status -n {namespace} --name {name}` shows its conditions",
            )
        time.sleep(backoff.next())


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Manage waypoint (L7) proxies.", no_args_is_help=True)

    @group.command("apply")
    def apply(
        ctx: typer.Context,
        namespace: NamespaceOpt = None,
        name: NameOpt = "waypoint",
        enroll_namespace: Annotated[bool, typer.Option(
            "--enroll-namespace", help=f"Label the namespace {USE_WAYPOINT}=<name> so its services use it.")] = False,
        traffic: Annotated[str, typer.Option("--for", help="Traffic the waypoint handles: service, workload, all "
                                             "or none.")] = "service",
        revision: Annotated[str | None, typer.Option("--revision", "-r", help="Control plane revision.")] = None,
        wait: Annotated[bool, typer.Option("--wait", help="Wait until the waypoint is programmed.")] = False,
        timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait with --wait.")] = 60.0,
    ) -> None:
        """Create or update a waypoint Gateway in a namespace."""
        if traffic not in TRAFFIC_TYPES:
            raise UsageError(f"invalid --for {traffic!r}", hint=f"use one of {', '.join(TRAFFIC_TYPES)}")
        ns = namespace or "default"
        client = state(ctx).client()
        _, action = client.apply(gateway_manifest(name, ns, traffic, revision))
        typer.echo(f"waypoint {ns}/{name} {action}")
        if enroll_namespace:
            client.patch("Namespace", ns, None, {"metadata": {"labels": {USE_WAYPOINT: name}}})
            typer.echo(f'namespace {ns} labeled with "{USE_WAYPOINT}: {name}"')
        if wait:
            _wait_programmed(client, name, ns, timeout)
            typer.echo(f"waypoint {ns}/{name} programmed")

    @group.command("list")
    def list_(
        ctx: typer.Context,
        namespace: NamespaceOpt = None,
        all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="All namespaces.")] = False,
        output: Annotated[str | None, typer.Option("--output", "-o", help="json or yaml.")] = None,
    ) -> None:
        """List waypoints: NAME REVISION TRAFFIC TYPE PROGRAMMED."""
        from ambient.cli.output import print_objects, print_table

        ns = None if all_namespaces else (namespace or "default")
        objs = _waypoints(state(ctx).client(), ns)
        if output in ("json", "yaml"):
            print_objects(objs, output, single=False)
            return
        if output is not None:
            raise UsageError(f"unknown output format {output!r}", hint="use -o json or -o yaml")
        if not objs:
            where = "any namespace" if ns is None else f"{ns} namespace"
            typer.echo(f"No waypoints found in {where}.", err=True)
            return
        headers = ["NAME", "REVISION", "TRAFFIC TYPE", "PROGRAMMED"]
        print_table((["NAMESPACE"] if ns is None else []) + headers, list_rows(objs, with_namespace=ns is None))

    @group.command("delete")
    def delete(
        ctx: typer.Context,
        names: Annotated[list[str] | None, typer.Argument(help="Waypoint names (default: waypoint).")] = None,
        namespace: NamespaceOpt = None,
        all_: Annotated[bool, typer.Option("--all", help="Delete every waypoint of the namespace.")] = False,
    ) -> None:
        """Delete waypoint Gateways (and un-enroll the namespace if it pointed to them)."""
        from ambient.api.errors import NotFoundError

        ns = namespace or "default"
        client = state(ctx).client()
        targets = [o["metadata"]["name"] for o in _waypoints(client, ns)] if all_ else (names or ["waypoint"])
        for name in targets:
            try:
                obj = client.get("Gateway", name, ns)
            except NotFoundError:
                raise CliError(f'waypoint "{name}" not found in namespace "{ns}"',
                               hint=f"`ambient waypoint list -n {ns}` shows the waypoints") from None
            if (obj.get("spec") or {}).get("gatewayClassName") != WAYPOINT_CLASS:
                raise CliError(f'Gateway "{name}" in namespace "{ns}" is not a waypoint (class '
                               f'{(obj.get("spec") or {}).get("gatewayClassName")!r})')
            client.delete("Gateway", name, ns)
            typer.echo(f"waypoint {ns}/{name} deleted")
            try:
                ns_obj = client.get("Namespace", ns)
            except NotFoundError:
                continue
            if ((ns_obj.get("metadata") or {}).get("labels") or {}).get(USE_WAYPOINT) == name:
                client.patch("Namespace", ns, None, {"metadata": {"labels": {USE_WAYPOINT: None}}})
                typer.echo(f'namespace {ns} label "{USE_WAYPOINT}" removed')

    @group.command("status")
    def status(ctx: typer.Context, namespace: NamespaceOpt = None, name: NameOpt = "waypoint") -> None:
        """Show the conditions of a waypoint: NAMESPACE NAME STATUS TYPE REASON MESSAGE."""
        from ambient.api.errors import NotFoundError
        from ambient.cli.output import print_table

        ns = namespace or "default"
        try:
            obj = state(ctx).client().get("Gateway", name, ns)
        except NotFoundError:
            raise CliError(f'waypoint "{name}" not found in namespace "{ns}"',
                           hint=f"create it with `ambient waypoint apply -n {ns} --name {name}`") from None
        conds = [c for c in (obj.get("status") or {}).get("conditions") or () if isinstance(c, dict)]
        if not conds:
            conds = [{"type": "Programmed", "status": "Unknown", "reason": "Pending",
                      "message": "Waiting for controller"}]
        rows = [[ns, name, str(c.get("status", "")), str(c.get("type", "")), str(c.get("reason", "")),
                 str(c.get("message", ""))] for c in conds]
        print_table(["NAMESPACE", "NAME", "STATUS", "TYPE", "REASON", "MESSAGE"], rows)
        if not programmed(obj):
            raise typer.Exit(1)

    app.add_typer(group, name="waypoint")
