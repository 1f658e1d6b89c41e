"""The node proxy's connection to the control plane: xDS state (`ambient.xds.client.XdsClient`) plus the
CA client's certificates for the node's workloads, as one `StateSource` + `CertSource` for `ztunnel.app`.

Invariant: certificates are fetched ahead for exactly the in-mesh workloads scheduled on this node, as the
xDS state names them; `run()` owns the xDS and certificate tasks in one TaskGroup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ambient.identity.ca_client import CaClient
from ambient.identity.manager import CertificateManager
from ambient.state.store import StateChange, StateView, StateWriter
from ambient.xds.client import XdsClient


def local_identities(view: StateView, node: str) -> set[str]:
    """SPIFFE identities of the in-mesh workloads scheduled on `node` (what to fetch certificates for)."""
    return {w.identity for w in view.workloads() if w.node == node and w.in_mesh}


class ControlPlaneSource:
    """The node proxy's connection to the control plane: xDS state + CA certificates.

    Plugs into `ztunnel.app.App` as both its `StateSource` (`run(writer, ready)`) and, via `.certs`, its
    `CertSource` (a `CertificateManager` over a `CaClient`). While running it fetches ahead the
    certificates of the node's workloads as they appear in the state:

        source = ControlPlaneSource("172.18.0.3:15012", node="node-1", node_id=node_id(...),
                                    token=lambda: token_file.read_text().strip(), root_cert=root_pem)
        App(settings, source, source.certs)
    """

    def __init__(
        self,
        address: str,
        *,
        node: str,
        node_id: str,
        token: str | Callable[[], str | None] | None,
        root_cert: bytes | None,
        server_name: str | None = "istiod.istio-system.svc",
    ) -> None:
        self.address = address
        self.node = node
        self.node_id = node_id
        self._token = token
        self.root_cert = root_cert
        self.server_name = server_name
        self.ca = CaClient(address, token=token, root_cert=root_cert, server_name=server_name)
        self.certs = CertificateManager(self.ca.fetch)
        self.client: XdsClient | None = None

    async def run(self, writer: StateWriter, ready: Callable[[], None]) -> None:
        client = XdsClient(
            self.address,
            writer,
            node=self.node_id,
            token=self._token,
            root_cert=self.root_cert,
            server_name=self.server_name,
        )
        self.client = client

        def on_change(change: StateChange) -> None:
            if change.workloads_upserted or change.workloads_removed:
                self.certs.set_identities(local_identities(change.current, self.node))

        client.on_change = on_change
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(client.run(), name="xds")
                tg.create_task(self.certs.run(), name="certificates")
                await client.ready.wait()
                ready()
        finally:
            await self.ca.aclose()
