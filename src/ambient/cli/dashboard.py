"""`ambient dashboard`: the live mesh dashboard on http://127.0.0.1:PORT/, of the local cluster or of a
Kubernetes install.

- local cluster (default): reads the cluster's access logs (`<state>/logs`) and its AuthorizationPolicies,
  and scrapes every node proxy's, waypoint's and ingress gateway's metrics through loopback forwarders into
  their network namespaces (the endpoints `ambient prometheus-targets` forwards; `ambient.dashboard.local`);
- Kubernetes (`--kubeconfig PATH` and/or `--context NAME`): finds the node proxy pods (`--proxy-namespace`,
  label `app=ztunnel`) and the waypoint pods through the API, follows their access lines with
  `kubectl logs -f`, scrapes their metrics through `kubectl port-forward` on loopback (`--no-metrics`: not)
  and lists AuthorizationPolicies with `kubectl get` (`ambient.dashboard.kubernetes`).
  kubectl must be installed (`--kubectl`); the first discovery must succeed, else the command stops with
  kubectl's reason and what to do.

See `ambient.dashboard`. Heavy imports happen inside the command (the CLI's start-up time rule).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ambient.cli.context import state
from ambient.cli.errors import CliError, UsageError


def dashboard_command(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port on the host (0: any free port).")] = 8765,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback unless you mean it).")] = "127.0.0.1",
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open the page in a browser.")] = True,
    window: Annotated[float, typer.Option(help="Seconds of connections shown (graph and table).")] = 60.0,
    kubeconfig: Annotated[Path | None, typer.Option(
        help="Show a Kubernetes install instead of the local cluster, reached with this kubeconfig "
             "(through kubectl: logs -f of the node proxy and waypoint pods, policies from the API).")] = None,
    context: Annotated[str | None, typer.Option(
        help="The kubeconfig context of the Kubernetes install (alone: kubectl's default kubeconfig).")] = None,
    proxy_namespace: Annotated[str, typer.Option(
        help="Kubernetes: the namespace of the node proxy pods (label app=ztunnel; Istio: istio-system).")]
    = "ambient-system",
    kubectl: Annotated[str, typer.Option(help="Kubernetes: the kubectl to run (name on PATH or path).")] = "kubectl",
    refresh: Annotated[float, typer.Option(
        help="Seconds between discoveries of node proxies and waypoints (Kubernetes: and policies) and between "
             "metrics scrapes.")] = 5.0,
    metrics: Annotated[bool, typer.Option(
        "--metrics/--no-metrics", help="Scrape each node proxy's and waypoint's :15020 (loopback only): local "
                                       "cluster through forwarders into their netns, Kubernetes through "
                                       "kubectl port-forward (one kubectl per pod).")] = True,
) -> None:
    """Serve the live mesh dashboard (graph, connections, policies, traces) on localhost."""
    from ambient.core import process
    from ambient.dashboard.server import serve

    if window <= 0:
        raise UsageError(f"--window must be positive, not {window:g}")
    if refresh <= 0:
        raise UsageError(f"--refresh must be positive, not {refresh:g}")

    def ready(url: str) -> None:
        sys.stdout.write(f"dashboard on {url} (Ctrl-C to stop)\n")
        sys.stdout.flush()
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    if kubeconfig is not None or context is not None:
        app, follow = _kubernetes(kubeconfig, context, proxy_namespace, kubectl, refresh, window, metrics)
    else:
        app, follow = _local(ctx, window, refresh, metrics)

    async def main(_shutdown: Any) -> None:
        import asyncio

        # the sources' tasks (log streams, forwarders) end with the server: cancelled on shutdown
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(follow())
            tasks.create_task(serve(app, host, port, ready))

    process.run(main)


def _local(ctx: typer.Context, window: float, refresh: float, metrics: bool) -> tuple[Any, Any]:
    """The app and the run coroutine of the local cluster (its access log files, its API server and the
    metrics endpoints in its network namespaces)."""
    from ambient.cluster import layout as L
    from ambient.dashboard.local import LocalSource
    from ambient.dashboard.server import LogSource, build_app

    st = state(ctx)
    try:
        layout = L.load_layout(st.socket_path.parent)
    except Exception as exc:
        raise CliError(f"no local cluster at {st.socket_path.parent}: {exc}",
                       hint="`ambient cluster create` first, or pass --cluster / --state-dir; for a Kubernetes "
                            "install pass --kubeconfig / --context") from None
    client = st.client()

    def policies() -> list[dict[str, object]]:
        items, _ = client.list("AuthorizationPolicy", None)
        return list(items)

    logs = LogSource(layout.log_dir, window=window)
    source = LocalSource(layout, client, logs, refresh=refresh, metrics=metrics)
    return build_app(logs, policies=policies, status=source.status), source.run


def _kubernetes(kubeconfig: Path | None, context: str | None, proxy_namespace: str, binary: str, refresh: float,
                window: float, metrics: bool) -> tuple[Any, Any]:
    """The app and the follow coroutine of a Kubernetes install; the first discovery runs here, so a missing
    kubectl, kubeconfig or access stops the command before it serves."""
    from ambient.dashboard import kubernetes as K
    from ambient.dashboard.server import EntryStore, build_app

    if kubeconfig is not None and not kubeconfig.is_file():
        raise CliError(f"kubeconfig {kubeconfig} does not exist",
                       hint="for the local cluster's API: --kubeconfig $(ambient cluster kubeconfig)")
    kc = K.Kubectl(K.find_kubectl(binary), str(kubeconfig) if kubeconfig is not None else None, context)
    store = EntryStore(window=window)
    source = K.KubeSource(kc, store, proxy_namespace=proxy_namespace, refresh=refresh, metrics=metrics)
    first = source.discover()
    where = f"context {context}" if context else f"kubeconfig {kubeconfig}"
    proxies = sum(s.kind == "ztunnel" for s in first)
    sys.stderr.write(f"{where}: following {proxies} node proxy pod(s) in {proxy_namespace} and "
                     f"{len(first) - proxies} waypoint pod(s)\n")
    if not proxies:
        sys.stderr.write(f"warning: no Running pod labelled {K.PROXY_SELECTOR} in namespace {proxy_namespace}: "
                         "pass --proxy-namespace (istio-system for Istio); waiting for them\n")
    app = build_app(store, policies=source.policies, status=source.status)
    return app, lambda: source.run(first)


def register(root: typer.Typer) -> None:
    root.command("dashboard")(dashboard_command)
