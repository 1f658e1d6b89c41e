"""`python -m ambient.cluster.node_proxy --state-dir DIR --node NODE`: the node proxy as the local cluster
runs it (one per node, inside the node's network namespace).

Role: derive the node proxy's `Settings` and `Sources` from the cluster layout and run
`ambient.ztunnel.app.build(...)` under the process bootstrap. Everything comes from the layout:
- pods from the node agent over ZDS (`<node run dir>/ztunnel.sock`), in-pod mode;
- workloads, services, policies and certificates from the control plane (xDS + CA on 172.18.0.3:15012),
  authenticated with the node's token (`<node run dir>/token`) and verified against the mesh root
  (`<state>/ca/root-cert.pem`), with the node id of `ztunnel-<node>` in istio-system at the node's IP;
- `ambient zc` reads the admin endpoint on `<node run dir>/ztunnel-admin.sock`.
Limits and switches are the `ambient ztunnel` environment variables (see `ztunnel.settings`), inherited.

Invariant: the layout is read here, in the cluster layer; the node proxy itself knows nothing of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ambient.cluster import layout as L
from ambient.core import process
from ambient.core.errors import AmbientError

ROOT_CERT_WAIT_S = 30.0  # the control plane writes the mesh root when it first starts
ACCESS_LOG_FORMATS = ("text", "json")


def wait_for_root_cert(path: Path, timeout: float = ROOT_CERT_WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"ztunnel: no mesh root at {path} after {timeout:.0f}s: is the control plane up?")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ambient.cluster.node_proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=ACCESS_LOG_FORMATS, default="text", help="access log format")
    args = parser.parse_args(argv)

    from ambient.ztunnel.app import AppOptions, Sources, build
    from ambient.ztunnel.settings import Settings
    from ambient.ztunnel.telemetry import install_access_handler

    cluster = L.load_layout(args.state_dir)
    node = cluster.node(args.node)
    run_dir = Path(node.run_dir)
    root_cert = cluster.state_path / "ca" / "root-cert.pem"
    wait_for_root_cert(root_cert)
    try:
        settings = Settings.from_env(mode="inpod", node=node.name, admin_socket=str(run_dir / "ztunnel-admin.sock"),
                                     log_format=args.log_format)
    except AmbientError as exc:  # a malformed limit in the environment: name it, no traceback
        raise SystemExit(f"ztunnel: {exc}") from None
    sources = Sources(xds=f"{L.CONTROLPLANE_IP}:{L.CONTROLPLANE_PORT}", token_file=run_dir / "token",
                      root_cert=root_cert, instance_ip=node.ip, pod_name=f"ztunnel-{node.name}",
                      pod_namespace="istio-system")
    options = AppOptions(zds_socket=str(run_dir / "ztunnel.sock"))
    process.configure_logging(args.log_level, fmt="%(asctime)s\t%(levelname)s\t%(name)s\t%(message)s", quiet=())
    install_access_handler(sys.stdout)

    async def run(shutdown: process.Shutdown) -> None:
        app = build(settings, sources, options)
        shutdown.on_signal(app.stop)
        await app.run()

    try:
        process.run(run, use_uvloop=settings.uvloop)
    except AmbientError as exc:
        raise SystemExit(f"ztunnel: {exc}") from None


if __name__ == "__main__":
    main()
