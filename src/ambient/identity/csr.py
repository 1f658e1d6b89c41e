"""Workload keys and certificate signing requests.

Role: make the EC P-256 key and the CSR a workload (or the node proxy on its behalf) sends to the CA.
Invariants (protocols.md section 3): ECDSA P-256 with SHA-256, an EMPTY subject, and exactly one SAN,
the URI SAN carrying the SPIFFE id. The private key never leaves this process unless the caller writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ambient.identity.spiffe import SpiffeId


@dataclass(frozen=True, slots=True)
class KeyAndCsr:
    """A fresh private key (PKCS#8 PEM) and the matching CSR (PEM)."""

    key_pem: bytes
    csr_pem: bytes
    identity: SpiffeId


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_csr(identity: SpiffeId | str, key: ec.EllipticCurvePrivateKey | None = None) -> KeyAndCsr:
    """Return a new P-256 key and a CSR for `identity` (no subject, one URI SAN)."""
    ident = identity if isinstance(identity, SpiffeId) else SpiffeId.parse(identity)
    key = key or generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ident.uri)]),
            critical=True,  # RFC 5280: SAN must be critical when the subject is empty
        )
        .sign(key, hashes.SHA256())
    )
    return KeyAndCsr(key_to_pem(key), csr.public_bytes(serialization.Encoding.PEM), ident)
