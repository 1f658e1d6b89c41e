"""The CA service over real gRPC on 127.0.0.1 (controlplane.ca_server + identity.ca_client)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ambient.controlplane.ca_server import CaServicer, CertificateAuthority, NodeTokens, node_token_path
from ambient.controlplane.index import MeshIndex
from ambient.identity.ca import LocalCA
from ambient.identity.ca_client import CaClient, CaRequestError
from ambient.protocol.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc

pytestmark = pytest.mark.timeout(60)


def pod(name: str, node: str, sa: str, ns: str = "default") -> dict:
    return {
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}"},
        "spec": {"nodeName": node, "serviceAccountName": sa},
        "status": {"podIP": "10.244.1.9"},
    }


@dataclass
class Ca:
    address: str
    tokens: NodeTokens
    ca: LocalCA


@pytest.fixture
async def ca_server(tmp_path: Path) -> AsyncIterator[Ca]:
    ca = LocalCA.load_or_create(tmp_path / "ca", max_ttl=timedelta(hours=1))
    tokens = NodeTokens(tmp_path)
    tokens.ensure("node-1")
    tokens.ensure("node-2")
    index = MeshIndex()
    index.upsert("Pod", pod("web", "node-1", "web-sa"))
    index.upsert("Pod", pod("db", "node-2", "db-sa"))
    authority = CertificateAuthority(ca, tokens, index.node_service_accounts, max_ttl=timedelta(hours=1))
    srv = grpc.aio.server()
    CaServicer(authority).register(srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        yield Ca(f"127.0.0.1:{port}", tokens, ca)
    finally:
        await srv.stop(grace=0)


def test_token_files_are_private_and_stable(tmp_path: Path) -> None:
    tokens = NodeTokens(tmp_path)
    t1 = tokens.ensure("node-1")
    path = node_token_path(tmp_path, "node-1")
    assert path.stat().st_mode & 0o777 == 0o600
    assert NodeTokens(tmp_path).ensure("node-1") == t1  # survives a restart
    assert NodeTokens(tmp_path).node_for(t1) == "node-1"  # found on disk by a fresh instance
    assert tokens.node_for("nope") is None


async def test_issues_for_a_service_account_of_the_callers_node(ca_server: Ca) -> None:
    token = ca_server.tokens.ensure("node-1")
    async with CaClient(ca_server.address, token=token) as client:
        bundle = await client.fetch("spiffe://cluster.local/ns/default/sa/web-sa", ttl=timedelta(hours=48))
    assert bundle.identity.uri == "spiffe://cluster.local/ns/default/sa/web-sa"
    assert bundle.roots_pem[0] == ca_server.ca.root_pem  # chain was leaf first, root last
    assert bundle.lifetime <= timedelta(hours=1, minutes=1)  # 48 h requested, capped at 1 h (+ skew)
    assert bundle.leaf.public_key().public_numbers().curve.name == "secp256r1"  # type: ignore[union-attr]


async def test_own_proxy_identity_without_impersonation(ca_server: Ca) -> None:
    async with CaClient(ca_server.address, token=ca_server.tokens.ensure("node-2")) as client:
        bundle = await client.fetch("spiffe://cluster.local/ns/istio-system/sa/ztunnel", impersonate=False)
    assert bundle.identity.service_account == "ztunnel"


async def test_refuses_a_foreign_nodes_service_account_with_a_reason(ca_server: Ca) -> None:
    async with CaClient(ca_server.address, token=ca_server.tokens.ensure("node-1")) as client:
        with pytest.raises(CaRequestError) as err:
            await client.fetch("spiffe://cluster.local/ns/default/sa/db-sa")
    assert err.value.code == "PERMISSION_DENIED"
    assert "node node-1 may not impersonate" in err.value.message and "default/db-sa" in err.value.message


async def test_refuses_a_bad_or_missing_token(ca_server: Ca) -> None:
    for token in ("not-a-token", None):
        async with CaClient(ca_server.address, token=token) as client:
            with pytest.raises(CaRequestError) as err:
                await client.fetch("spiffe://cluster.local/ns/default/sa/web-sa")
        assert err.value.code == "UNAUTHENTICATED"
        assert "token" in err.value.message


async def test_refuses_a_csr_with_two_sans(ca_server: Ca) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/web-sa"),
                    x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/db-sa"),
                ]
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    req = ca_pb2.IstioCertificateRequest(csr=csr.public_bytes(serialization.Encoding.PEM).decode())
    req.metadata.fields["ImpersonatedIdentity"].string_value = "spiffe://cluster.local/ns/default/sa/web-sa"
    token = ca_server.tokens.ensure("node-1")
    async with grpc.aio.insecure_channel(ca_server.address) as ch:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateCertificate(req, metadata=[("authorization", f"Bearer {token}")])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exactly one SAN" in (err.value.details() or "")


async def test_refuses_a_small_rsa_key_and_a_mismatched_impersonation(ca_server: Ca) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    uri = "spiffe://cluster.local/ns/default/sa/web-sa"
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
        .sign(key, hashes.SHA256())
    )
    token = ca_server.tokens.ensure("node-1")
    async with grpc.aio.insecure_channel(ca_server.address) as ch:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(ch)
        req = ca_pb2.IstioCertificateRequest(csr=csr.public_bytes(serialization.Encoding.PEM).decode())
        req.metadata.fields["ImpersonatedIdentity"].string_value = uri
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateCertificate(req, metadata=[("authorization", f"Bearer {token}")])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "2048" in (err.value.details() or "")
        from ambient.identity.csr import make_csr

        good = make_csr(uri)
        req = ca_pb2.IstioCertificateRequest(csr=good.csr_pem.decode())
        req.metadata.fields["ImpersonatedIdentity"].string_value = "spiffe://cluster.local/ns/default/sa/other"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateCertificate(req, metadata=[("authorization", f"Bearer {token}")])
        assert "differs from the CSR identity" in (err.value.details() or "")


def _csr_pem(key: Any, uri: str, digest: hashes.HashAlgorithm | None) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
        .sign(key, digest)  # type: ignore[arg-type]
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


# (key factory, CSR digest as Go's x509 picks it, expected outcome: the leaf's key description or an error)
KEY_CASES = [
    ("P-256", lambda: ec.generate_private_key(ec.SECP256R1()), hashes.SHA256(), "secp256r1"),
    ("P-384 (istio-agent ECC_CURVE=P384)", lambda: ec.generate_private_key(ec.SECP384R1()), hashes.SHA384(),
     "secp384r1"),
    ("P-384 with SHA-256", lambda: ec.generate_private_key(ec.SECP384R1()), hashes.SHA256(), "secp384r1"),
    ("P-521", lambda: ec.generate_private_key(ec.SECP521R1()), hashes.SHA512(), "secp521r1"),
    ("Ed25519", lambda: ed25519.Ed25519PrivateKey.generate(), None, "Ed25519"),
    ("RSA 2048", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), hashes.SHA256(),
     "RSA2048"),
    ("P-224", lambda: ec.generate_private_key(ec.SECP224R1()), hashes.SHA256(), "error:secp224r1 is not allowed"),
    ("secp256k1", lambda: ec.generate_private_key(ec.SECP256K1()), hashes.SHA256(),
     "error:secp256k1 is not allowed"),
    ("Ed448", lambda: ed448.Ed448PrivateKey.generate(), None, "error:Ed448PublicKey is not allowed"),
]


def _describe(key: Any) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.name
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA{key.key_size}"
    return "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else type(key).__name__


@pytest.mark.parametrize(("name", "make_key", "digest", "expected"), KEY_CASES, ids=[c[0] for c in KEY_CASES])
async def test_csr_key_types_over_grpc(
    ca_server: Ca, name: str, make_key: Callable[[], Any], digest: hashes.HashAlgorithm | None, expected: str
) -> None:
    uri = "spiffe://cluster.local/ns/default/sa/web-sa"
    req = ca_pb2.IstioCertificateRequest(csr=_csr_pem(make_key(), uri, digest))
    req.metadata.fields["ImpersonatedIdentity"].string_value = uri
    token = ca_server.tokens.ensure("node-1")
    async with grpc.aio.insecure_channel(ca_server.address) as ch:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(ch)
        call = stub.CreateCertificate(req, metadata=[("authorization", f"Bearer {token}")])
        if expected.startswith("error:"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = err.value.details() or ""
            assert expected.removeprefix("error:") in details and "P-384" in details  # names what is allowed
            return
        resp = await call
    leaf = x509.load_pem_x509_certificate(resp.cert_chain[0].encode())
    assert _describe(leaf.public_key()) == expected
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier) == [uri]
    leaf.verify_directly_issued_by(ca_server.ca.root_cert)
    assert resp.cert_chain[-1].encode() == ca_server.ca.root_pem


async def test_p384_key_from_make_csr_gives_a_usable_bundle(ca_server: Ca) -> None:
    from ambient.identity.certs import CertBundle
    from ambient.identity.csr import make_csr

    uri = "spiffe://cluster.local/ns/default/sa/web-sa"
    kc = make_csr(uri, curve="P-384")
    req = ca_pb2.IstioCertificateRequest(csr=kc.csr_pem.decode())
    req.metadata.fields["ImpersonatedIdentity"].string_value = uri
    async with grpc.aio.insecure_channel(ca_server.address) as ch:
        resp = await ca_pb2_grpc.IstioCertificateServiceStub(ch).CreateCertificate(
            req, metadata=[("authorization", f"Bearer {ca_server.tokens.ensure('node-1')}")])
    bundle = CertBundle.from_pem(kc.key_pem, list(resp.cert_chain))  # key matches the leaf
    assert bundle.identity.uri == uri


async def test_token_file_bytes_work_verbatim_as_the_bearer_header(ca_server: Ca, tmp_path: Path) -> None:
    # ztunnel sends `Bearer ` + the token file's bytes, unmodified.
    raw = node_token_path(tmp_path, "node-1").read_bytes()
    uri = "spiffe://cluster.local/ns/default/sa/web-sa"
    from ambient.identity.csr import make_csr

    req = ca_pb2.IstioCertificateRequest(csr=make_csr(uri).csr_pem.decode())
    req.metadata.fields["ImpersonatedIdentity"].string_value = uri
    async with grpc.aio.insecure_channel(ca_server.address) as ch:
        resp = await ca_pb2_grpc.IstioCertificateServiceStub(ch).CreateCertificate(
            req, metadata=[("authorization", "Bearer " + raw.decode("ascii"))])
    assert len(resp.cert_chain) == 2
