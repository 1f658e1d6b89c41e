"""`ambient x authz check`: which L4 decision would the destination's node proxy take, and why.

Reads Namespaces, Pods, Services, AuthorizationPolicies, PeerAuthentications and Gateways from the
cluster API, translates them with the control plane's pure functions and evaluates the connection with
the node proxy's evaluator (`ambient.controlplane.explain`); no traffic is sent. Prints the verdict, the reason
the proxy would log, every applicable policy with its effect, and the control plane's narrowing status
("more restrictive than requested", "not enforced") of the policies involved.

`--compare-proxy` also reads the destination node proxy's `/config_dump` (as `ambient zc` does) and says
which of those policies it has not received yet.

Exit code 0 whatever the verdict (the command worked) unless `--exit-code`: then 1 when denied.
`x` is the group for experimental commands; this module creates it.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer


def _split_target(text: str) -> tuple[str, int | None]:
    from ambient.cli.errors import UsageError

    ref, sep, port = text.rpartition(":")
    if not sep:
        return text, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"bad port in {text!r}", hint="use NAMESPACE/POD:PORT, e.g. shop/web:8080")
    return ref, int(port)


def _default_port(pod: dict[str, Any]) -> int | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("containerPort"):
                return int(p["containerPort"])
    return None


def fetch_objects(client: Any) -> dict[str, list[dict[str, Any]]]:
    from ambient.controlplane.explain import KINDS

    return {kind: client.list(kind)[0] for kind in KINDS}


def _compare(ctx: typer.Context, model: Any, ex: Any) -> Any:
    """Ask the destination node's proxy (admin Unix socket, as `ambient zc` does) which policies it holds."""
    from ambient.cli.context import state
    from ambient.cli.zc import admin_socket_for, fetch_dump
    from ambient.controlplane.explain import compare_with_proxy, proxy_unreachable
    from ambient.core.errors import AmbientError

    ns, name = ex.destination.split("/", 1)
    node = str((model.pods[(ns, name)].get("spec") or {}).get("nodeName") or "")
    st = state(ctx)
    try:
        dump = fetch_dump(admin_socket_for(st.state_dir, st.cluster, node or None), None)
    except AmbientError as exc:
        return proxy_unreachable(ex, node, exc.message)
    return compare_with_proxy(ex, node, dump)


def register(app: typer.Typer) -> None:
    x = typer.Typer(help="Experimental commands.", no_args_is_help=True)
    authz = typer.Typer(help="L4 authorization tools.", no_args_is_help=True)
    x.add_typer(authz, name="authz")
    app.add_typer(x, name="x")

    @authz.command("check")
    def check(
        ctx: typer.Context,
        to: Annotated[str, typer.Option("--to", help="Destination NAMESPACE/POD[:PORT].")],
        source: Annotated[str | None, typer.Option("--from", help="Source NAMESPACE/POD.")] = None,
        from_ip: Annotated[str | None, typer.Option("--from-ip", help="A plaintext source IP instead.")] = None,
        output: Annotated[str, typer.Option("--output", "-o", help="text | json | yaml")] = "text",
        root_namespace: Annotated[
            str, typer.Option("--root-namespace", help="Mesh-wide policy namespace.")
        ] = "istio-system",
        assume_missing: Annotated[
            list[str] | None,
            typer.Option("--assume-missing", help="Treat policy NS/NAME as not yet received (what-if)."),
        ] = None,
        exit_code: Annotated[bool, typer.Option("--exit-code", help="Exit 1 when denied.")] = False,
        compare_proxy: Annotated[
            bool, typer.Option("--compare-proxy", help="Also check that the destination's node proxy has them.")
        ] = False,
    ) -> None:
        """Explain the L4 decision for a connection, without sending traffic."""
        from ambient.cli.context import state
        from ambient.cli.errors import UsageError
        from ambient.cli.output import dump_json, dump_yaml
        from ambient.controlplane.explain import MeshModel, Source, render_text
        from ambient.state.model import parse_ip

        if (source is None) == (from_ip is None):
            raise UsageError("give exactly one of --from NAMESPACE/POD or --from-ip IP")
        if output not in ("text", "json", "yaml"):
            raise UsageError(f"unknown output format {output!r}", hint="use text, json or yaml")
        dst_ref, port = _split_target(to)
        model = MeshModel(fetch_objects(state(ctx).client()), root_namespace)
        if source is not None:
            src = model.source_pod(source)
        else:
            try:
                ip = str(parse_ip(str(from_ip)))
            except Exception as exc:
                raise UsageError(f"bad --from-ip {from_ip!r}: {exc}") from exc
            src = Source(ip, ip)
        if port is None:
            ns, name = model.pod(dst_ref)
            port = _default_port(model.pods[(ns, name)])
            if port is None:
                raise UsageError(f"pod {ns}/{name} declares no container port", hint="add :PORT to --to")
        ex = model.explain(src, dst_ref, port, assume_missing=assume_missing or ())
        if compare_proxy:
            ex = _compare(ctx, model, ex)
        if output == "text":
            typer.echo(render_text(ex))
        else:
            doc = ex.to_dict()
            typer.echo(dump_json(doc) if output == "json" else dump_yaml(doc), nl=False)
        if exit_code and not ex.allowed:
            raise typer.Exit(1)
