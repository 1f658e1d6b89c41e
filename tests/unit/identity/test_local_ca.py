from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ambient.identity.ca import LocalCA
from ambient.identity.certs import CertBundle, spiffe_id_from_cert
from ambient.identity.csr import generate_key, make_csr
from ambient.identity.errors import CertificateBundleError, CsrRejectedError, IdentityError

WEB = "spiffe://cluster.local/ns/shop/sa/web"


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create()


def test_csr_has_no_subject_and_one_uri_san() -> None:
    req = make_csr(WEB)
    csr = x509.load_pem_x509_csr(req.csr_pem)
    assert list(csr.subject) == []
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert [n.value for n in san.value] == [WEB]
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
    assert csr.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)


def test_sign_csr_returns_leaf_then_root(ca: LocalCA) -> None:
    req = make_csr(WEB)
    chain = ca.sign_csr(req.csr_pem, ttl=3600)
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    assert chain[1].encode() == ca.root_pem
    assert str(spiffe_id_from_cert(leaf)) == WEB
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert timedelta(minutes=59) < life <= timedelta(hours=1, minutes=1)
    leaf.verify_directly_issued_by(ca.root_cert)


def test_ttl_is_capped_at_max(ca: LocalCA) -> None:
    bundle = ca.issue(WEB, ttl=timedelta(days=30))
    assert bundle.lifetime <= timedelta(hours=24, minutes=1)
    assert bundle.refresh_at == bundle.not_before + bundle.lifetime / 2


@pytest.mark.parametrize("curve", ["P-256", "P-384"])
def test_curves(curve: str) -> None:
    ca = LocalCA.create(curve=curve)
    assert ca.root_cert.public_key().curve.name == {"P-256": "secp256r1", "P-384": "secp384r1"}[curve]  # type: ignore[union-attr]
    assert ca.issue(WEB).identity.uri == WEB


def test_unknown_curve_rejected() -> None:
    with pytest.raises(IdentityError, match="unsupported"):
        LocalCA.create(curve="P-192")


def test_rejects_foreign_trust_domain(ca: LocalCA) -> None:
    with pytest.raises(CsrRejectedError, match="trust domain"):
        ca.sign_csr(make_csr("spiffe://evil.local/ns/a/sa/b").csr_pem)


def test_rejects_identity_other_than_allowed(ca: LocalCA) -> None:
    with pytest.raises(CsrRejectedError, match="differs"):
        ca.sign_csr(make_csr(WEB).csr_pem, allowed_identity="spiffe://cluster.local/ns/shop/sa/db")


def _custom_csr(names: list[x509.GeneralName]) -> bytes:
    key = generate_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("names", "match"),
    [
        ([], "no subjectAltName"),
        ([x509.UniformResourceIdentifier(WEB), x509.UniformResourceIdentifier(WEB + "x")], "exactly one"),
        ([x509.UniformResourceIdentifier(WEB), x509.DNSName("web.shop")], "exactly one"),
        ([x509.DNSName("web.shop")], "exactly one"),
        ([x509.UniformResourceIdentifier("https://example.com/")], "not a SPIFFE id"),
    ],
)
def test_rejects_bad_sans(ca: LocalCA, names: list[x509.GeneralName], match: str) -> None:
    with pytest.raises(CsrRejectedError, match=match):
        ca.sign_csr(_custom_csr(names))


def test_rejects_garbage_csr(ca: LocalCA) -> None:
    with pytest.raises(CsrRejectedError, match="does not parse"):
        ca.sign_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")


def test_load_or_create_persists_with_private_key_mode(tmp_path: Path) -> None:
    first = LocalCA.load_or_create(tmp_path / "ca")
    key_path = tmp_path / "ca" / "root-key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    second = LocalCA.load_or_create(tmp_path / "ca")
    assert second.root_pem == first.root_pem
    second.issue(WEB).leaf.verify_directly_issued_by(first.root_cert)


def test_load_or_create_refuses_half_a_pair(tmp_path: Path) -> None:
    LocalCA.load_or_create(tmp_path)
    (tmp_path / "root-key.pem").unlink()
    with pytest.raises(IdentityError, match="only one"):
        LocalCA.load_or_create(tmp_path)


def test_bundle_expiry_helpers(ca: LocalCA) -> None:
    now = datetime.now(UTC)
    old = ca.issue(WEB, ttl=3600, now=now - timedelta(days=2))
    assert old.is_expired() and not old.is_valid_at()
    future = ca.issue(WEB, ttl=3600, now=now + timedelta(days=1))
    assert not future.is_valid_at() and not future.is_expired()
    fresh = ca.issue(WEB, ttl=3600)
    assert fresh.is_valid_at() and timedelta(minutes=58) < fresh.expires_in() <= timedelta(hours=1)


def test_bundle_from_pem_splits_root_and_checks_key(ca: LocalCA) -> None:
    req = make_csr(WEB)
    chain = ca.sign_csr(req.csr_pem)
    bundle = CertBundle.from_pem(req.key_pem, "".join(chain))
    assert bundle.roots_pem == (ca.root_pem,)
    assert len(bundle.chain_pem) == 1
    other = make_csr(WEB)
    with pytest.raises(CertificateBundleError, match="does not match"):
        CertBundle.from_pem(other.key_pem, chain)
    with pytest.raises(CertificateBundleError, match="no trusted root"):
        CertBundle(req.key_pem, (chain[0].encode(),), ())
