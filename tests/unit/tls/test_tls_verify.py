from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ObjectIdentifier

from ambient.identity.ca import LocalCA
from ambient.tls.contexts import ContextCache, client_context, server_context
from ambient.tls.errors import PeerIdentityError, TlsPolicyError
from ambient.tls.verify import check_session, identity_from_der, verify_client, verify_server

WEB = "spiffe://cluster.local/ns/shop/sa/web"


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create()


def _leaf_der(ca: LocalCA, names: list[x509.GeneralName] | None) -> bytes:
    """A leaf signed by the CA key with arbitrary SANs (the CA itself refuses such CSRs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = serialization.load_pem_private_key(ca.key_pem, None)
    now = datetime.now(UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
    )
    if names is not None:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]


class FakeSsl:
    def __init__(self, der: bytes | None, version: str = "TLSv1.3",
                 cipher: str = "TLS_AES_256_GCM_SHA384", alpn: str | None = "h2") -> None:
        self.der, self._version, self._cipher, self._alpn = der, version, cipher, alpn

    def version(self) -> str:
        return self._version

    def cipher(self) -> tuple[str, str, int]:
        return (self._cipher, "TLSv1.3", 256)

    def selected_alpn_protocol(self) -> str | None:
        return self._alpn

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self.der


def test_good_certificate(ca: LocalCA) -> None:
    der = _leaf_der(ca, [x509.UniformResourceIdentifier(WEB)])
    assert identity_from_der(der).uri == WEB
    assert verify_client(FakeSsl(der), "cluster.local").uri == WEB  # type: ignore[arg-type]
    assert verify_server(FakeSsl(der), {WEB, "spiffe://cluster.local/ns/x/sa/y"}).uri == WEB  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (None, "no subjectAltName"),
        ([x509.UniformResourceIdentifier(WEB), x509.UniformResourceIdentifier(WEB.replace("web", "db"))],
         "exactly one URI SAN"),
        ([x509.DNSName("web.shop.svc")], "exactly one URI SAN"),
        ([x509.UniformResourceIdentifier(WEB), x509.OtherName(ObjectIdentifier("1.2.3.4"), b"\x0c\x01a")],
         "otherName"),
        ([x509.UniformResourceIdentifier(WEB), x509.DNSName("evil\x00.com")], "NUL"),
        ([x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/web/x")], "not of the form"),
    ],
)
def test_strict_san_rules(ca: LocalCA, names: list[x509.GeneralName] | None, match: str) -> None:
    der = _leaf_der(ca, names)
    with pytest.raises(PeerIdentityError, match=match):
        identity_from_der(der)


def test_server_identity_not_expected(ca: LocalCA) -> None:
    der = _leaf_der(ca, [x509.UniformResourceIdentifier(WEB)])
    with pytest.raises(PeerIdentityError) as info:
        verify_server(FakeSsl(der), {"spiffe://cluster.local/ns/shop/sa/db"})  # type: ignore[arg-type]
    assert f"server identity {WEB} not in expected ['spiffe://cluster.local/ns/shop/sa/db']" in str(info.value)


def test_client_wrong_trust_domain(ca: LocalCA) -> None:
    der = _leaf_der(ca, [x509.UniformResourceIdentifier("spiffe://evil.local/ns/a/sa/b")])
    with pytest.raises(PeerIdentityError, match=r"not in trust domain 'cluster\.local'"):
        verify_client(FakeSsl(der), "cluster.local")  # type: ignore[arg-type]


def test_no_peer_certificate() -> None:
    with pytest.raises(PeerIdentityError, match="no certificate"):
        verify_client(FakeSsl(None), "cluster.local")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"version": "TLSv1.2"}, "TLSv1.3"),
        ({"cipher": "TLS_CHACHA20_POLY1305_SHA256"}, "cipher"),
        ({"alpn": None}, "ALPN"),
        ({"alpn": "http/1.1"}, "ALPN"),
    ],
)
def test_session_policy(ca: LocalCA, kwargs: dict[str, Any], match: str) -> None:
    der = _leaf_der(ca, [x509.UniformResourceIdentifier(WEB)])
    with pytest.raises(TlsPolicyError, match=match):
        check_session(FakeSsl(der, **kwargs))  # type: ignore[arg-type]


def test_contexts_policy(ca: LocalCA) -> None:
    bundle = ca.issue(WEB)
    for ctx in (client_context(bundle), server_context(bundle)):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.check_hostname is False
        assert ctx.options & ssl.OP_NO_TICKET
        suites = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"}
        assert suites == {"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"}
    assert server_context(bundle).num_tickets == 0


def test_context_cache_keyed_by_certificate(ca: LocalCA) -> None:
    cache = ContextCache(max_entries=2)
    a, b = ca.issue(WEB), ca.issue(WEB)
    assert cache.get(a, server=True) is cache.get(a, server=True)
    assert cache.get(a, server=True) is not cache.get(a, server=False)
    assert cache.get(b, server=True) is not cache.get(a, server=True)
