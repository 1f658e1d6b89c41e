"""The delta-ADS surface of the mesh, in one import.

Role: re-export the Envoy discovery messages and the AggregatedDiscoveryService gRPC stub/servicer (from the
PyPI package `xds-protos`, which ships them pre-generated as `envoy.service.discovery.v3.*`), together with
the two Istio resource type URLs a node proxy subscribes to and the project's own Istio message modules.
The control plane (server) and the node proxy (client) import from here, so the third-party module layout
is named in exactly one place.

Invariants: type URLs are `type.googleapis.com/<full proto name>`; the full names are checked against our
generated descriptors at import time (a renamed message fails loudly here rather than silently on the wire).
"""

from __future__ import annotations

from envoy.service.discovery.v3.ads_pb2_grpc import (
    AggregatedDiscoveryServiceServicer,
    AggregatedDiscoveryServiceStub,
    add_AggregatedDiscoveryServiceServicer_to_server,
)
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    Resource,
)

from ambient.protocol.gen.istio.security import authorization_pb2
from ambient.protocol.gen.istio.workload import workload_pb2

TYPE_URL_PREFIX = "type.googleapis.com/"
ADDRESS_TYPE_URL = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE_URL = "type.googleapis.com/istio.security.Authorization"
# The types a node proxy subscribes to (wildcard); it is ready once both were ACKed once.
NODE_PROXY_TYPE_URLS: tuple[str, ...] = (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL)
# Full gRPC method path, e.g. for logs and for a generic handler.
DELTA_ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

if TYPE_URL_PREFIX + workload_pb2.Address.DESCRIPTOR.full_name != ADDRESS_TYPE_URL:  # pragma: no cover
    raise ImportError("istio.workload.Address was renamed: type URL no longer matches the reference")
if TYPE_URL_PREFIX + authorization_pb2.Authorization.DESCRIPTOR.full_name != AUTHORIZATION_TYPE_URL:  # pragma: no cover
    raise ImportError("istio.security.Authorization was renamed: type URL no longer matches the reference")


def type_url_of(message_cls: type) -> str:
    """`type.googleapis.com/<full name>` of a generated message class."""
    return TYPE_URL_PREFIX + message_cls.DESCRIPTOR.full_name  # type: ignore[attr-defined]


__all__ = [
    "ADDRESS_TYPE_URL",
    "AUTHORIZATION_TYPE_URL",
    "DELTA_ADS_METHOD",
    "NODE_PROXY_TYPE_URLS",
    "TYPE_URL_PREFIX",
    "AggregatedDiscoveryServiceServicer",
    "AggregatedDiscoveryServiceStub",
    "DeltaDiscoveryRequest",
    "DeltaDiscoveryResponse",
    "Resource",
    "add_AggregatedDiscoveryServiceServicer_to_server",
    "authorization_pb2",
    "type_url_of",
    "workload_pb2",
]
