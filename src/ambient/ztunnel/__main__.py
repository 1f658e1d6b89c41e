"""`python -m ambient.ztunnel --state-dir DIR --node NODE`: the node proxy as the local cluster runs it.

The local cluster starts one proxy per node, inside the node's network namespace. Everything it needs is
derived from the cluster layout, so `cluster create` passes only the state dir and the node:
- pods come from the node agent over ZDS (`<node run dir>/ztunnel.sock`), in-pod mode;
- workloads, services, policies and certificates come from the control plane (xDS + CA on
  172.18.0.3:15012), authenticated with the node's token (`<node run dir>/token`) and verified against the
  mesh root (`<state>/ca/root-cert.pem`);
- `ambient zc` reads the admin endpoint on `<node run dir>/ztunnel-admin.sock`.
Extra arguments after `--` are passed to `ambient ztunnel` unchanged (e.g. `-- --log-level debug`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT_CERT_WAIT_S = 30.0  # the control plane writes the mesh root when it first starts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ambient.ztunnel", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    from ambient.cluster import layout as L

    cluster = L.load_layout(args.state_dir)
    node = cluster.node(args.node)
    run_dir = Path(node.run_dir)
    root_cert = cluster.state_path / "ca" / "root-cert.pem"
    deadline = time.monotonic() + ROOT_CERT_WAIT_S
    while not root_cert.exists():
        if time.monotonic() > deadline:
            raise SystemExit(
                f"ztunnel: no mesh root at {root_cert} after {ROOT_CERT_WAIT_S:.0f}s: is the control plane up?"
            )
        time.sleep(0.1)
    os.environ.setdefault("INSTANCE_IP", node.ip)
    os.environ.setdefault("POD_NAME", f"ztunnel-{node.name}")
    os.environ.setdefault("POD_NAMESPACE", "istio-system")
    rest = [a for a in args.rest if a != "--"]
    sys.argv = [
        "ambient", "ztunnel",
        "--mode", "inpod",
        "--node", node.name,
        "--zds-socket", str(run_dir / "ztunnel.sock"),
        "--admin-socket", str(run_dir / "ztunnel-admin.sock"),
        "--xds", f"{L.CONTROLPLANE_IP}:{L.CONTROLPLANE_PORT}",
        "--token-file", str(run_dir / "token"),
        "--root-cert", str(root_cert),
        *rest,
    ]
    from ambient.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
