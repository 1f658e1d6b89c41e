"""`ambient zc`: the node proxy's view of the mesh (istioctl ztunnel-config equivalents, protocols.md s.7).

Reads the admin `/config_dump` of one node proxy and prints workloads / services / policies /
certificates / connections (or all) with the reference columns, or the raw sections with `-o json|yaml`.

`ambient zc metrics [--node N]` prints the proxy's Prometheus metrics (port 15020, read from inside the node's
network namespace, where the proxy serves it).

Reaching the proxy: in the local cluster the proxy of node N runs in N's netns, so its TCP admin port is
not reachable from the machine. The proxy therefore also serves admin on a Unix socket,
`<state dir>/nodes/<node>/run/ztunnel-admin.sock` (started with `--admin-socket`); `zc` finds it from
the cluster layout (`--node`, default: the first node). `--admin-socket PATH` or `--admin-url URL` override.

The row builders are pure functions of the dump (tested without a proxy).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

VIEWS = ("workloads", "services", "policies", "certificates", "connections")
ADMIN_SOCKET_NAME = "ztunnel-admin.sock"

Rows = tuple[list[str], list[list[str]]]


def _waypoint(gw: Any) -> str:
    if not gw:
        return "None"
    dest = str(gw.get("destination", ""))
    return dest.split("/", 1)[1] if "/" in dest else dest or "None"


def workload_rows(dump: dict[str, Any]) -> Rows:
    rows = [
        [w.get("namespace", ""), w.get("name", ""), ",".join(w.get("workloadIps", [])) or "None",
         w.get("node", "") or "None", _waypoint(w.get("waypoint")), w.get("protocol", "")]
        for w in dump.get("workloads", [])
    ]
    return ["NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"], sorted(rows)


def service_rows(dump: dict[str, Any]) -> Rows:
    rows = []
    for s in dump.get("services", []):
        vips = ",".join(v.split("/", 1)[-1] for v in s.get("vips", [])) or "None"
        eps = list(s.get("endpoints", {}).values())
        healthy = sum(1 for e in eps if e.get("status") == "Healthy")
        rows.append([s.get("namespace", ""), s.get("name", "") or s.get("hostname", ""), vips,
                     _waypoint(s.get("waypoint")), f"{healthy}/{len(eps)}"])
    return ["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"], sorted(rows)


def policy_rows(dump: dict[str, Any]) -> Rows:
    rows = [[p.get("namespace", ""), p.get("name", ""), p.get("action", ""), p.get("scope", "")]
            for p in dump.get("policies", [])]
    return ["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"], sorted(rows)


def certificate_rows(dump: dict[str, Any]) -> Rows:
    rows = []
    for c in dump.get("certificates", []):
        for cert in c.get("certChain", []):
            rows.append([c.get("identity", ""), cert.get("type", ""), c.get("state", ""),
                         str(bool(cert.get("valid"))).lower(), cert.get("serialNumber", ""),
                         cert.get("expirationTime", ""), cert.get("validFrom", "")])
    headers = ["CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"]
    return headers, rows


def connection_rows(dump: dict[str, Any]) -> Rows:
    rows = []
    for _uid, pod in sorted(dump.get("workloadState", {}).items()):
        for direction in ("inbound", "outbound"):
            for c in pod.get("connections", {}).get(direction, []):
                rows.append([c.get("workload", ""), direction, c.get("local", ""), c.get("remote", ""),
                             c.get("remoteTarget", ""), c.get("protocol", "")])
    return ["WORKLOAD", "DIRECTION", "LOCAL", "REMOTE", "REMOTE TARGET", "PROTOCOL"], rows


BUILDERS: dict[str, Callable[[dict[str, Any]], Rows]] = {
    "workloads": workload_rows,
    "services": service_rows,
    "policies": policy_rows,
    "certificates": certificate_rows,
    "connections": connection_rows,
}
SECTION = {"workloads": "workloads", "services": "services", "policies": "policies",
           "certificates": "certificates", "connections": "workloadState"}


def admin_socket_for(state_dir: Path | None, cluster: str, node: str | None) -> Path:
    from ambient.cli.errors import CliError
    from ambient.cluster.layout import load_layout

    try:
        layout = load_layout(state_dir if state_dir is not None else cluster)
    except Exception as exc:
        raise CliError(f"cannot read the layout of cluster {cluster!r}: {exc}",
                       hint="create the cluster first, or pass --admin-socket") from exc
    nodes = layout.nodes
    if not nodes:
        raise CliError(f"cluster {cluster!r} has no nodes")
    chosen = layout.node(node) if node else nodes[0]
    return Path(chosen.run_dir) / ADMIN_SOCKET_NAME


def fetch_dump(socket_path: Path | None, url: str | None) -> dict[str, Any]:
    import httpx

    from ambient.cli.errors import CliError

    try:
        if url:
            resp = httpx.get(url.rstrip("/") + "/config_dump", timeout=10)
        else:
            assert socket_path is not None
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), timeout=10) as client:
                resp = client.get("http://ztunnel/config_dump")
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        where = url or f"unix:{socket_path}"
        raise CliError(f"cannot read the node proxy's config_dump at {where}: {exc}",
                       hint="is the node proxy (ambient ztunnel) running on that node?") from exc
    data: dict[str, Any] = resp.json()
    return data


def fetch_metrics(state_dir: Path | None, cluster: str, node: str | None, port: int = 15020) -> bytes:
    """GET /metrics from the node proxy's metrics port, connecting from inside the node's netns."""
    import socket

    from ambient.cli.errors import CliError
    from ambient.cluster import layout as L
    from ambient.inpod.netns import run_in_netns

    layout = L.load_layout(state_dir if state_dir is not None else cluster)
    chosen = layout.node(node) if node else layout.nodes[0]
    netns = L.netns_path(chosen.netns)

    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=10)

    try:
        sock = run_in_netns(netns, connect, name="zc-metrics")
        with sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: ztunnel\r\n\r\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError as exc:
        raise CliError(f"cannot read the metrics of the node proxy on {chosen.name} (port {port}): {exc}",
                       hint="is the node proxy running? `ambient cluster status`") from exc
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
        status = head.split(b"\r\n")[0].decode(errors="replace")
        raise CliError(f"the node proxy on {chosen.name} answered {status}")
    return body


def register(app: typer.Typer) -> None:
    @app.command("zc")
    def zc(
        ctx: typer.Context,
        view: Annotated[str, typer.Argument(help="workloads | services | policies | certificates | connections | "
                                            "all | metrics")],
        node: Annotated[str | None, typer.Option("--node", help="Node whose proxy to ask (default: first).")] = None,
        output: Annotated[str, typer.Option("--output", "-o", help="short | json | yaml")] = "short",
        admin_socket: Annotated[Path | None, typer.Option("--admin-socket", help="Admin Unix socket.")] = None,
        admin_url: Annotated[str | None, typer.Option("--admin-url", help="Admin base URL.")] = None,
    ) -> None:
        """Show the node proxy's workloads, services, policies, certificates or connections."""
        from ambient.cli.context import state
        from ambient.cli.errors import UsageError
        from ambient.cli.output import dump_json, dump_yaml, print_table

        if view == "metrics":
            st = state(ctx)
            typer.echo(fetch_metrics(st.state_dir, st.cluster, node).decode(), nl=False)
            return
        if view not in (*VIEWS, "all"):
            raise UsageError(f"unknown view {view!r}", hint=f"one of: {', '.join((*VIEWS, 'all', 'metrics'))}")
        if output not in ("short", "json", "yaml"):
            raise UsageError(f"unknown output format {output!r}", hint="use short, json or yaml")
        if admin_socket is None and admin_url is None:
            st = state(ctx)
            admin_socket = admin_socket_for(st.state_dir, st.cluster, node)
        dump = fetch_dump(admin_socket, admin_url)
        views = list(VIEWS) if view == "all" else [view]
        if output != "short":
            doc = {SECTION[v]: dump.get(SECTION[v]) for v in views} if view == "all" else dump.get(SECTION[view])
            typer.echo(dump_json(doc) if output == "json" else dump_yaml(doc), nl=False)
            return
        for i, v in enumerate(views):
            if view == "all":
                typer.echo(("\n" if i else "") + f"{v.upper()}")
            headers, rows = BUILDERS[v](dump)
            print_table(headers, rows)
