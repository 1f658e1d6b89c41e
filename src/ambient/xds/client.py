"""The delta ADS client both proxies use: keeps a state store in sync with the control plane.

Role: open `DeltaAggregatedResources`, subscribe (wildcard) to `istio.workload.Address` and
`istio.security.Authorization` with the node id `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`, convert
each response to the model and apply it through the store's single writer, then ACK (or NACK with
`error_detail` when conversion fails: nothing of that response is applied). Reconnects forever with
backoff 10 ms -> `RECONNECT_BACKOFF_MAX` (1 s, +-20% jitter; the reference goes up to 15 s, which left
proxies up to 15 s behind a control plane that was back): a dial is one TCP + TLS handshake, cheap for the
control plane, and a proxy re-syncs within about a second of the control plane serving again. Keeps
serving the last state while disconnected; on reconnect it sends `initial_resource_versions` so the server
sends only what differs.

Invariants: `ready` is set once both types were ACKed once and never cleared (a disconnected proxy keeps
working on its last state); all tasks live in `run()`'s TaskGroup; the state is only written here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import status_pb2

from ambient.core.backoff import Backoff
from ambient.core.errors import AmbientError
from ambient.protocol.gen.istio.security import authorization_pb2 as sec
from ambient.protocol.gen.istio.workload import workload_pb2 as wl
from ambient.protocol.xds import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    NODE_PROXY_TYPE_URLS,
    AggregatedDiscoveryServiceStub,
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
)
from ambient.state import convert
from ambient.state.model import Authorization, Service, Workload
from ambient.state.store import StateChange, StateDelta, StateWriter

log = logging.getLogger(__name__)

INVALID_ARGUMENT = 3  # google.rpc.Code
RECONNECT_BACKOFF_MIN = 0.01
RECONNECT_BACKOFF_MAX = 1.0  # bounds the re-sync delay after a control-plane outage (module docstring)
FAILURE_LOG_EVERY = 30


def node_id(ip: str, pod: str, namespace: str) -> str:
    return f"ztunnel~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"


@dataclass
class TypeState:
    versions: dict[str, str] = field(default_factory=dict)  # resource name -> version we hold
    system_version: str = ""
    acked: bool = False
    last_ack_at: float = 0.0
    nacks: int = 0
    last_nack: str = ""


class XdsClient:
    """Delta ADS client. `run()` forever (cancel to stop); `ready` once both types were ACKed."""

    def __init__(
        self,
        address: str,
        writer: StateWriter,
        *,
        node: str,
        token: str | Callable[[], str | None] | None = None,
        root_cert: bytes | None = None,
        server_name: str | None = "istiod.istio-system.svc",
        backoff_min: float = RECONNECT_BACKOFF_MIN,
        backoff_max: float = RECONNECT_BACKOFF_MAX,
        on_applied: Callable[[str, int], None] | None = None,
        on_change: Callable[[StateChange], None] | None = None,
    ) -> None:
        self.address = address
        self.writer = writer
        self.node = node
        self._token = token
        self.root_cert = root_cert
        self.server_name = server_name
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.on_applied = on_applied
        self.on_change = on_change
        self.ready = asyncio.Event()
        self.connected = False
        self.connects = 0
        self.last_error = ""
        self.types: dict[str, TypeState] = {t: TypeState() for t in NODE_PROXY_TYPE_URLS}

    def _metadata(self) -> list[tuple[str, str]]:
        token = self._token() if callable(self._token) else self._token
        md = [("clusterid", "Kubernetes")]
        if token:
            md.append(("authorization", f"Bearer {token}"))
        return md

    def _channel(self) -> grpc.aio.Channel:
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        if self.root_cert is None:
            return grpc.aio.insecure_channel(self.address, options=options)
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        creds = grpc.ssl_channel_credentials(root_certificates=self.root_cert)
        return grpc.aio.secure_channel(self.address, creds, options=options)

    async def run(self) -> None:
        backoff = Backoff(self.backoff_min, self.backoff_max, jitter=0.2)
        failures = 0  # consecutive attempts without a response
        while True:
            got_response = False
            try:
                async with self._channel() as channel:
                    got_response = await self._stream(channel)
                self.last_error = "stream closed by the control plane"
            except grpc.aio.AioRpcError as exc:
                self.last_error = f"{exc.code().name}: {exc.details()}"
                got_response = got_response or self.connected
            except (OSError, AmbientError) as exc:
                self.last_error = str(exc)
            finally:
                self.connected = False
            if got_response:
                backoff.reset()
                failures = 0
            failures += 1
            # With a short back-off cap an outage means a dial a second: warn on the first failure and
            # then every FAILURE_LOG_EVERY-th, not on each.
            level = logging.WARNING if failures == 1 or failures % FAILURE_LOG_EVERY == 0 else logging.DEBUG
            log.log(level, "xDS to %s disconnected (%s); retrying in %.2fs (attempt %d)", self.address,
                    self.last_error, backoff.current, failures)
            await asyncio.sleep(backoff.next())

    async def _stream(self, channel: grpc.aio.Channel) -> bool:
        stub = AggregatedDiscoveryServiceStub(channel)
        call = stub.DeltaAggregatedResources(metadata=self._metadata())
        self.connects += 1
        for type_url, ts in self.types.items():
            req = DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=["*"])
            req.node.id = self.node
            req.initial_resource_versions.update(ts.versions)
            await call.write(req)
        got = False
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return got
            if not got:
                got = True
                self.connected = True
                log.info("xDS connected to %s as %s", self.address, self.node)
            await call.write(self._handle(resp))

    def _handle(self, resp: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest:
        ts = self.types.get(resp.type_url)
        ack = DeltaDiscoveryRequest(type_url=resp.type_url, response_nonce=resp.nonce)
        if ts is None:
            ack.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=f"unknown type {resp.type_url}"))
            return ack
        try:
            delta = self._convert(resp)
        except Exception as exc:  # any decode/convert failure NACKs the whole response
            ts.nacks += 1
            ts.last_nack = f"{type(exc).__name__}: {exc}"
            log.error("xDS NACK %s (nonce %s): %s", resp.type_url, resp.nonce, ts.last_nack)
            ack.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=ts.last_nack))
            return ack
        change = self.writer.apply(delta)
        if self.on_change is not None and not change.empty:
            self.on_change(change)
        for r in resp.resources:
            ts.versions[r.name] = r.version
        for name in resp.removed_resources:
            ts.versions.pop(name, None)
        ts.system_version = resp.system_version_info
        ts.acked = True
        ts.last_ack_at = time.time()
        if self.on_applied is not None:
            self.on_applied(resp.type_url, len(resp.resources) + len(resp.removed_resources))
        if not self.ready.is_set() and all(t.acked for t in self.types.values()):
            log.info("xDS ready: %d resources", sum(len(t.versions) for t in self.types.values()))
            self.ready.set()
        return ack

    @staticmethod
    def _convert(resp: DeltaDiscoveryResponse) -> StateDelta:
        if resp.type_url == ADDRESS_TYPE_URL:
            workloads: list[Workload] = []
            services: list[Service] = []
            for r in resp.resources:
                msg = wl.Address.FromString(r.resource.value)
                value = convert.address(msg)
                (workloads if isinstance(value, Workload) else services).append(value)  # type: ignore[arg-type]
            return StateDelta(
                workloads=tuple(workloads), services=tuple(services), removed_addresses=tuple(resp.removed_resources)
            )
        policies: list[Authorization] = [
            convert.authorization(sec.Authorization.FromString(r.resource.value)) for r in resp.resources
        ]
        assert resp.type_url == AUTHORIZATION_TYPE_URL
        return StateDelta(policies=tuple(policies), removed_policies=tuple(resp.removed_resources))

    def status(self) -> dict[str, Any]:
        """For the proxy's admin/config_dump: connection and per-type versions."""
        return {
            "address": self.address,
            "node": self.node,
            "connected": self.connected,
            "ready": self.ready.is_set(),
            "connects": self.connects,
            "last_error": self.last_error,
            "types": {
                t: {
                    "system_version": s.system_version,
                    "resources": len(s.versions),
                    "nacks": s.nacks,
                    "last_nack": s.last_nack,
                }
                for t, s in self.types.items()
            },
        }
