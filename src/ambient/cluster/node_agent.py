"""The node agent as the local cluster runs it: `python -m ambient.cluster.node_agent --state-dir DIR
--node NODE` (and `ambient node-agent`).

Role: build `AgentSettings` for one node of the local cluster from its layout, connect to the cluster's
API server and run `ambient.cni.agent.NodeAgent` under the process bootstrap until SIGTERM/SIGINT. The
layout (run dir, pod netns names) is read here, in the cluster layer; the agent itself knows nothing of it.

Invariants:
- Stopping leaves every pod's rules in place (pods stay captured while the agent is down).
- Logs under the logger `ambient.cni.agent`, like the agent itself.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ambient.api.client import AsyncApiClient
from ambient.cluster import layout as L
from ambient.cni import agent_plan as P
from ambient.cni.agent import NodeAgent
from ambient.cni.agent_types import ZDS_SOCKET, AgentSettings, NetnsResolver, NodeAgentError
from ambient.cni.apply import BACKENDS
from ambient.core import process
from ambient.core.errors import AmbientError

log = logging.getLogger("ambient.cni.agent")

# The --help description: the first line of `ambient.cni.agent`'s docstring (the module users run).
DESCRIPTION = ("The node agent (`ambient node-agent`): captures enrolled pods of one node and hands them to the "
               "node proxy.")


def cluster_netns_resolver(cluster: str) -> NetnsResolver:
    """Local cluster: the kubelet names each pod netns from the pod uid (`cluster.layout.pod_netns_name`)."""

    def resolve(pod: Mapping[str, Any]) -> str | None:
        uid = P.pod_uid(pod)
        return str(L.netns_path(L.pod_netns_name(cluster, uid))) if uid else None

    return resolve


def settings_for_node(state_dir: str | os.PathLike[str], node: str, *, backend: str = "iptables",
                      zds_socket: str | None = None, dns_capture: bool = True) -> tuple[AgentSettings, Any]:
    """(settings, cluster layout) for a node of the local cluster at `state_dir`."""
    layout = L.load_layout(state_dir)
    node_layout = layout.node(node)
    run_dir = Path(node_layout.run_dir)
    if backend not in BACKENDS:
        raise NodeAgentError(f"unknown redirection backend {backend!r}", hint=f"use one of {', '.join(BACKENDS)}")
    settings = AgentSettings(node=node, run_dir=run_dir, zds_socket=Path(zds_socket) if zds_socket
                             else run_dir / ZDS_SOCKET, backend=backend, dns_capture=dns_capture)  # type: ignore[arg-type]
    return settings, layout


async def serve(state_dir: str | os.PathLike[str], node: str, *, backend: str = "iptables",
                zds_socket: str | None = None, dns_capture: bool = True) -> None:
    """Run the agent of `node` until SIGTERM/SIGINT (rules stay in place on exit)."""
    settings, layout = settings_for_node(state_dir, node, backend=backend, zds_socket=zds_socket,
                                         dns_capture=dns_capture)
    async with AsyncApiClient(layout.api_socket) as api:
        agent = NodeAgent(api, settings, cluster_netns_resolver(layout.name))
        try:
            await agent.run()
        finally:
            log.info("node agent %s stopped (pods keep their redirection rules)", node)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ambient.cluster.node_agent", description=DESCRIPTION)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--backend", choices=BACKENDS,
                        default=os.environ.get("AMBIENT_REDIRECTION_BACKEND", "iptables"))
    parser.add_argument("--zds-socket", default=None, help="default: <node run dir>/ztunnel.sock")
    parser.add_argument("--no-dns-capture", action="store_true", help="node default; pods may override")
    parser.add_argument("--log-level", default=os.environ.get("AMBIENT_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    process.configure_logging(args.log_level)

    async def run(_: process.Shutdown) -> None:
        await serve(args.state_dir, args.node, backend=args.backend, zds_socket=args.zds_socket,
                    dns_capture=not args.no_dns_capture)

    try:
        process.run(run)
    except AmbientError as e:
        raise SystemExit(f"node-agent: {e}") from e


if __name__ == "__main__":
    main()
