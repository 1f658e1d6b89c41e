"""Wire compatibility: golden bytes with the reference field numbers, and field numbers of translated
messages checked through `ListFields()` after decoding with the generated classes."""

from __future__ import annotations

from google.protobuf import empty_pb2

from ambient.controlplane import translate as tr
from ambient.protocol.gen.istio.security import authorization_pb2 as sec
from ambient.protocol.gen.istio.v1.auth import ca_pb2
from ambient.protocol.gen.istio.workload import workload_pb2 as wl


def test_workload_golden_bytes() -> None:
    w = wl.Workload(uid="u", name="n", addresses=[b"\x0a\x00\x00\x01"], tunnel_protocol=wl.HBONE)
    # name(1) addresses(3) tunnel_protocol(5) uid(20: tag a2 01)
    assert w.SerializeToString(deterministic=True).hex() == "0a016e1a040a0000012801a2010175"


def test_service_golden_bytes() -> None:
    s = wl.Service(
        name="s",
        namespace="d",
        hostname="h",
        addresses=[wl.NetworkAddress(address=b"\x0a\x60\x00\x01")],
        ports=[wl.Port(service_port=80, target_port=8080, app_protocol=wl.HTTP11)],
    )
    assert s.SerializeToString(deterministic=True).hex() == ("0a01731201641a0168220612040a6000012a07085010903f1801")


def test_authorization_golden_bytes() -> None:
    a = sec.Authorization(
        name="p",
        namespace="ns",
        scope=sec.NAMESPACE,
        action=sec.DENY,
        dry_run=True,
        rules=[
            sec.Rule(
                clauses=[
                    sec.Clause(
                        matches=[
                            sec.Match(
                                not_principals=[sec.StringMatch(presence=empty_pb2.Empty())], destination_ports=[80]
                            )
                        ]
                    )
                ]
            )
        ],
    )
    assert a.SerializeToString(deterministic=True).hex() == ("0a017012026e73180120012a0b0a091207220222004a01503001")


def test_create_certificate_golden_bytes() -> None:
    req = ca_pb2.IstioCertificateRequest(csr="x", validity_duration=3600)
    req.metadata.fields["ImpersonatedIdentity"].string_value = "a"
    assert req.SerializeToString(deterministic=True).hex() == (
        "0a017818901c221d0a1b0a14" + b"ImpersonatedIdentity".hex() + "12031a0161"
    )
    resp = ca_pb2.IstioCertificateResponse(cert_chain=["a", "b"])
    assert resp.SerializeToString().hex() == "0a01610a0162"


def numbers(msg: object) -> list[int]:
    return [f.number for f, _ in msg.ListFields()]  # type: ignore[attr-defined]


def test_translated_messages_decode_with_reference_field_numbers() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "d", "uid": "uid-1", "labels": {"app": "x"}},
        "spec": {"nodeName": "n1", "serviceAccountName": "sa"},
        "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "False"}]},
    }
    svc = {
        "metadata": {"name": "s", "namespace": "d"},
        "spec": {"clusterIP": "10.96.0.1", "selector": {"app": "x"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    w = tr.workload_from_pod(
        pod, tr.PodContext(namespace_labels={"istio.io/dataplane-mode": "ambient"}, services=[svc])
    )
    decoded = wl.Address.FromString(wl.Address(workload=w).SerializeToString())
    assert numbers(decoded) == [1]
    # name 1, namespace 2, addresses 3, tunnel_protocol 5, trust_domain 6, service_account 7, node 9,
    # canonical_name 10, canonical_revision 11, workload_type 12 (POD=2), workload_name 13, status 17,
    # cluster_id 18, uid 20, services 22
    assert numbers(decoded.workload) == [1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 13, 17, 18, 20, 22]
    s = tr.service_from_k8s(svc)
    assert numbers(wl.Service.FromString(s.SerializeToString())) == [1, 2, 3, 4, 5, 9]  # type: ignore[union-attr]
    a = tr.authorization_from_policy(
        {
            "metadata": {"name": "p", "namespace": "d"},
            "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principals": ["x"]}}]}]},
        }
    )
    dec = sec.Authorization.FromString(a.authorization.SerializeToString())  # type: ignore[union-attr]
    assert numbers(dec) == [1, 2, 3, 4, 5]
    assert numbers(dec.rules[0].clauses[0].matches[0]) == [3]
