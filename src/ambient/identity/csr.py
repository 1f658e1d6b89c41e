"""Workload keys and certificate signing requests, and which CSR keys the mesh CA signs.

Role: make the key and the CSR a workload (or the node proxy on its behalf) sends to the CA, and decide
(`csr_key_problem`, pure) whether a CSR's public key is one the CA accepts.
Invariants (protocols.md section 3): an EMPTY subject and exactly one SAN, the URI SAN carrying the SPIFFE
id. Our own keys are ECDSA P-256 by default (P-384 on request, like istio-agent's `ECC_CURVE=P384`), and
the CSR is signed with the hash that matches the curve (SHA-256 / SHA-384 / SHA-512), as Go does. The
private key never leaves this process unless the caller writes it.

Accepted CSR keys (what Istio's CA signs, Go `crypto/x509`, minus what HBONE's TLS 1.3 cannot use):
EC P-256, P-384, P-521; Ed25519; RSA of at least 2048 bits (Istio's `MinimumRsaKeySize`). P-224 is
refused: TLS 1.3 has no signature scheme for it, so a certificate for it could never authenticate.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes, PublicKeyTypes

from ambient.identity.spiffe import SpiffeId

# Curve name (cryptography's) -> the name users know, for the EC curves the CA signs.
ALLOWED_EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
MIN_RSA_BITS = 2048
ALLOWED_KEYS_TEXT = "EC P-256, P-384 or P-521, Ed25519, or RSA of at least 2048 bits"
_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}


@dataclass(frozen=True, slots=True)
class KeyAndCsr:
    """A fresh private key (PKCS#8 PEM) and the matching CSR (PEM)."""

    key_pem: bytes
    csr_pem: bytes
    identity: SpiffeId


def csr_key_problem(key: PublicKeyTypes | CertificateIssuerPublicKeyTypes) -> str | None:
    """Why the CA must not sign a CSR carrying `key`, or None when the key type is accepted."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_EC_CURVES:
            return f"CSR key curve {key.curve.name} is not allowed: use {ALLOWED_KEYS_TEXT}"
        return None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return f"CSR RSA key has {key.key_size} bits: at least {MIN_RSA_BITS} are required"
        return None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return None
    return f"CSR key type {type(key).__name__.lstrip('_')} is not allowed: use {ALLOWED_KEYS_TEXT}"


def generate_key(curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    """A new EC key on `curve` ("P-256", "P-384" or "P-521")."""
    if curve not in _CURVES:
        raise ValueError(f"unsupported curve {curve!r}: use one of {sorted(_CURVES)}")
    return ec.generate_private_key(_CURVES[curve])


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _csr_hash(key: ec.EllipticCurvePrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    size = key.curve.key_size
    return hashes.SHA512() if size > 384 else hashes.SHA384() if size > 256 else hashes.SHA256()


def make_csr(
    identity: SpiffeId | str, key: ec.EllipticCurvePrivateKey | None = None, *, curve: str = "P-256"
) -> KeyAndCsr:
    """Return a key (new on `curve` unless given) and a CSR for `identity` (no subject, one URI SAN)."""
    ident = identity if isinstance(identity, SpiffeId) else SpiffeId.parse(identity)
    key = key or generate_key(curve)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ident.uri)]),
            critical=True,  # RFC 5280: SAN must be critical when the subject is empty
        )
        .sign(key, _csr_hash(key))
    )
    return KeyAndCsr(key_to_pem(key), csr.public_bytes(serialization.Encoding.PEM), ident)
