"""`ambient install ingress`: the walk-through's `istioctl install --set profile=ambient --set
components.ingressGateways[0].enabled=true` for the local cluster: deploys istio-ingressgateway in
istio-system (selector `istio: ingressgateway`), driven by networking.istio.io Gateways and VirtualServices.
Idempotent: existing objects are left as they are (`--wait` waits for the gateway pod to be Ready).
The gateway listens only on the ports a Gateway binds, so the output ends with the next step: the demo's
Gateway + VirtualService (samples/istio-ingress.yaml), then the port-forward."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from ambient.cli.context import state

NEXT_STEP = (
    "Next: route traffic to it (the gateway listens only on ports a Gateway binds), e.g. for the demo's httpbin:\n"
    "  ambient apply -f samples/istio-ingress.yaml\n"
    "  ambient port-forward -n istio-system svc/istio-ingressgateway 8081:8081   # then: curl localhost:8081/headers"
)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Install optional components into the local cluster.", no_args_is_help=True)

    @group.command("ingress")
    def ingress(
        ctx: typer.Context,
        wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the ingress gateway pod is Ready.")]
        = True,
        timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait with --wait.")] = 60.0,
    ) -> None:
        """Deploy istio-ingressgateway in istio-system (the classic Istio ingress)."""
        from ambient.api.errors import AlreadyExistsError
        from ambient.api.kinds import kind_for_manifest
        from ambient.cli.errors import CliError
        from ambient.cli.printers import display_name
        from ambient.cluster.gateways import CLASSIC_NAME, CLASSIC_NAMESPACE, classic_ingress_objects
        from ambient.cluster.waypoints import WaypointConfig

        st = state(ctx)
        client = st.client()
        from ambient.cluster.layout import default_state_dir

        cfg = WaypointConfig.for_state_dir(st.state_dir or default_state_dir(st.cluster))
        for obj in classic_ingress_objects(cfg):
            ref = display_name(kind_for_manifest(obj["apiVersion"], obj["kind"]), obj["metadata"]["name"])
            try:
                client.create(obj)
                typer.echo(f"{ref} created")
            except AlreadyExistsError:
                typer.echo(f"{ref} unchanged")
        if not wait:
            typer.echo(NEXT_STEP)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = client.list("Pod", CLASSIC_NAMESPACE, label_selector="istio=ingressgateway")[0]
            if any(c.get("type") == "Ready" and c.get("status") == "True"
                   for p in pods for c in (p.get("status") or {}).get("conditions") or []):
                typer.echo(f"✔ Ingress gateways installed ({CLASSIC_NAMESPACE}/{CLASSIC_NAME} Ready)")
                typer.echo(NEXT_STEP)
                return
            time.sleep(0.3)
        raise CliError(f"{CLASSIC_NAMESPACE}/{CLASSIC_NAME} is not Ready after {timeout:.0f}s",
                       hint=f"see `ambient get pods -n {CLASSIC_NAMESPACE}` and "
                            f"`ambient logs deploy/{CLASSIC_NAME} -n {CLASSIC_NAMESPACE}`")

    app.add_typer(group, name="install")
