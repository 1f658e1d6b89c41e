"""Schema facts that the wire bytes alone do not show: enum numbers, reserved fields, packages, the gRPC
service path, the xds re-exports, and that the committed generated code matches the .proto sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import google.protobuf
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor

from ambient.protocol import xds
from ambient.protocol.gen.istio.security import authorization_pb2 as az
from ambient.protocol.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from ambient.protocol.gen.istio.workload import workload_pb2 as wl
from ambient.protocol.gen.istio.workload.zds import zds_pb2 as zds

ROOT = Path(__file__).resolve().parents[3]


def values(enum: EnumDescriptor) -> dict[str, int]:
    return {v.name: v.number for v in enum.values}


@pytest.mark.parametrize(
    ("enum", "expected"),
    [
        (wl.TunnelProtocol.DESCRIPTOR, {"NONE": 0, "HBONE": 1, "LEGACY_ISTIO_MTLS": 2}),
        (wl.WorkloadType.DESCRIPTOR, {"DEPLOYMENT": 0, "CRONJOB": 1, "POD": 2, "JOB": 3}),
        (wl.WorkloadStatus.DESCRIPTOR, {"HEALTHY": 0, "UNHEALTHY": 1}),
        (wl.AppProtocol.DESCRIPTOR, {"UNKNOWN": 0, "HTTP11": 1, "HTTP2": 2, "GRPC": 3, "TCP": 4, "TLS": 5}),
        (wl.NetworkMode.DESCRIPTOR, {"STANDARD": 0, "HOST_NETWORK": 1}),
        (wl.IPFamilies.DESCRIPTOR, {"AUTOMATIC": 0, "IPV4_ONLY": 1, "IPV6_ONLY": 2, "DUAL": 3}),
        (wl.Service.Visibility.DESCRIPTOR, {"PUBLIC": 0, "NAMESPACE": 1}),
        (wl.ApplicationTunnel.Protocol.DESCRIPTOR, {"NONE": 0, "PROXY": 1}),
        (
            wl.LoadBalancing.Scope.DESCRIPTOR,
            {"UNSPECIFIED_SCOPE": 0, "REGION": 1, "ZONE": 2, "SUBZONE": 3, "NODE": 4, "CLUSTER": 5, "NETWORK": 6},
        ),
        (wl.LoadBalancing.Mode.DESCRIPTOR, {"UNSPECIFIED_MODE": 0, "STRICT": 1, "FAILOVER": 2, "PASSTHROUGH": 3}),
        (wl.LoadBalancing.HealthPolicy.DESCRIPTOR, {"ONLY_HEALTHY": 0, "ALLOW_ALL": 1}),
        (az.Scope.DESCRIPTOR, {"GLOBAL": 0, "NAMESPACE": 1, "WORKLOAD_SELECTOR": 2}),
        (az.Action.DESCRIPTOR, {"ALLOW": 0, "DENY": 1}),
        (zds.Version.DESCRIPTOR, {"NOT_USED": 0, "V1": 1}),
    ],
    ids=lambda e: e.full_name if isinstance(e, EnumDescriptor) else "",
)
def test_enum_numbers(enum: EnumDescriptor, expected: dict[str, int]) -> None:
    assert values(enum) == expected


def _reserved(msg: Descriptor) -> set[int]:
    proto = descriptor_pb2.DescriptorProto()
    msg.CopyToProto(proto)
    return {n for r in proto.reserved_range for n in range(r.start, r.end)}


def test_reserved_fields_are_never_reused() -> None:
    assert _reserved(wl.Workload.DESCRIPTOR) == {15}
    assert 15 not in wl.Workload.DESCRIPTOR.fields_by_number
    assert _reserved(zds.WorkloadInfo.DESCRIPTOR) == {4}
    # DelWorkload.uid is field 2 on the wire (1 unused by the reference).
    assert zds.DelWorkload.DESCRIPTOR.fields_by_name["uid"].number == 2


def test_full_names_and_packages() -> None:
    assert wl.Address.DESCRIPTOR.full_name == "istio.workload.Address"
    assert wl.Workload.DESCRIPTOR.full_name == "istio.workload.Workload"
    assert az.Authorization.DESCRIPTOR.full_name == "istio.security.Authorization"
    assert zds.WorkloadRequest.DESCRIPTOR.full_name == "istio.workload.zds.WorkloadRequest"
    assert ca_pb2.IstioCertificateRequest.DESCRIPTOR.full_name == "istio.v1.auth.IstioCertificateRequest"
    oneof = zds.WorkloadRequest.DESCRIPTOR.oneofs[0]
    assert {f.name: f.number for f in oneof.fields} == {"add": 1, "del": 2, "snapshot_sent": 3, "keep": 5}


def test_ca_service_path() -> None:
    svc = ca_pb2.DESCRIPTOR.services_by_name["IstioCertificateService"]
    method = svc.methods_by_name["CreateCertificate"]
    assert svc.full_name == "istio.v1.auth.IstioCertificateService"
    assert method.input_type.full_name == "istio.v1.auth.IstioCertificateRequest"
    assert method.output_type.full_name == "istio.v1.auth.IstioCertificateResponse"
    assert hasattr(ca_pb2_grpc, "IstioCertificateServiceStub")
    assert hasattr(ca_pb2_grpc, "add_IstioCertificateServiceServicer_to_server")


def test_xds_reexports_work_with_protobuf_7() -> None:
    assert google.protobuf.__version__.split(".")[0] == "7"
    assert xds.ADDRESS_TYPE_URL == "type.googleapis.com/istio.workload.Address"
    assert xds.AUTHORIZATION_TYPE_URL == "type.googleapis.com/istio.security.Authorization"
    assert xds.type_url_of(wl.Address) == xds.ADDRESS_TYPE_URL
    # A delta response carrying one of our resources round-trips through the Envoy messages.
    res = xds.Resource(name="uid-1", version="v1")
    res.resource.Pack(wl.Address(workload=wl.Workload(uid="uid-1")))
    resp = xds.DeltaDiscoveryResponse(type_url=xds.ADDRESS_TYPE_URL, resources=[res], nonce="n1")
    back = xds.DeltaDiscoveryResponse.FromString(resp.SerializeToString())
    assert back.resources[0].resource.type_url == xds.ADDRESS_TYPE_URL
    unpacked = wl.Address()
    assert back.resources[0].resource.Unpack(unpacked)
    assert unpacked.workload.uid == "uid-1"
    req = xds.DeltaDiscoveryRequest(type_url=xds.AUTHORIZATION_TYPE_URL, response_nonce="n1")
    assert xds.DeltaDiscoveryRequest.FromString(req.SerializeToString()) == req
    assert callable(xds.add_AggregatedDiscoveryServiceServicer_to_server)
    assert hasattr(xds.AggregatedDiscoveryServiceStub, "__init__")
    assert hasattr(xds.AggregatedDiscoveryServiceServicer, "DeltaAggregatedResources")


def test_generated_code_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
