"""Certificate bundles: a workload's private key, its chain and the mesh roots it trusts.

Role: the one value type that TLS contexts are built from and that the certificate manager caches and
rotates. Construction validates it (PEM parses, the key matches the leaf, the leaf carries exactly one
SPIFFE URI SAN), so holders of a `CertBundle` never re-check.

Invariants: `chain_pem[0]` is the leaf; the chain never contains a root; `roots_pem` is non-empty.
Expiry helpers use UTC-aware datetimes. Renewal is due at half the lifetime (protocols.md section 3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ambient.identity.errors import CertificateBundleError, IdentityError
from ambient.identity.spiffe import SpiffeId


def split_pem(data: bytes | str | Iterable[bytes | str]) -> list[bytes]:
    """Split concatenated PEM certificates (or a list of PEMs) into one PEM per certificate."""
    if isinstance(data, (bytes, str)):
        items: list[bytes | str] = [data]
    else:
        items = list(data)
    out: list[bytes] = []
    for item in items:
        raw = item.encode() if isinstance(item, str) else bytes(item)
        for cert in x509.load_pem_x509_certificates(raw):
            out.append(cert.public_bytes(serialization.Encoding.PEM))
    return out


def spiffe_id_from_cert(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE id of a workload certificate, strictly: exactly one URI SAN, no other-name SANs, no
    NUL bytes in any SAN. Raises `IdentityError` naming the problem."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateBundleError("certificate has no subjectAltName extension (no SPIFFE id)") from None
    except ValueError as exc:  # malformed extension encoding
        raise CertificateBundleError(f"certificate subjectAltName cannot be parsed: {exc}") from None
    if san.get_values_for_type(x509.OtherName):
        raise CertificateBundleError("certificate subjectAltName contains an otherName entry")
    for name in san:
        value = getattr(name, "value", None)
        if isinstance(value, str) and "\x00" in value:
            raise CertificateBundleError(f"certificate subjectAltName {value!r} contains a NUL byte")
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise CertificateBundleError(f"certificate must carry exactly one URI SAN, found {len(uris)}: {uris}")
    return SpiffeId.parse(uris[0])


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


@dataclass(frozen=True, eq=False)
class CertBundle:
    """Key + chain (leaf first, intermediates, no root) + trusted roots, all PEM bytes."""

    key_pem: bytes
    chain_pem: tuple[bytes, ...]
    roots_pem: tuple[bytes, ...]
    identity: SpiffeId = field(init=False)
    leaf: x509.Certificate = field(init=False, repr=False)
    fingerprint: str = field(init=False, repr=False)
    """SHA-256 (hex) of the leaf DER and the roots: identifies this exact bundle (cache key)."""

    def __post_init__(self) -> None:
        if not self.chain_pem:
            raise CertificateBundleError("certificate bundle has an empty chain")
        if not self.roots_pem:
            raise CertificateBundleError(
                "certificate bundle has no trusted root", hint="pass the mesh root CA certificate"
            )
        try:
            leaf = x509.load_pem_x509_certificate(self.chain_pem[0])
            key = serialization.load_pem_private_key(self.key_pem, password=None)
            for pem in (*self.chain_pem[1:], *self.roots_pem):
                x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise CertificateBundleError(f"certificate bundle does not parse: {exc}") from None
        if key.public_key() != leaf.public_key():
            raise CertificateBundleError("private key does not match the leaf certificate")
        try:
            ident = spiffe_id_from_cert(leaf)
        except IdentityError as exc:
            raise CertificateBundleError(f"leaf certificate: {exc.message}") from None
        object.__setattr__(self, "leaf", leaf)
        object.__setattr__(self, "identity", ident)
        digest = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER))
        for root in self.roots_pem:
            digest.update(root)
        object.__setattr__(self, "fingerprint", digest.hexdigest())

    @classmethod
    def from_pem(
        cls,
        key_pem: bytes | str,
        chain: bytes | str | Sequence[bytes | str],
        roots: bytes | str | Sequence[bytes | str] | None = None,
    ) -> CertBundle:
        """Build from PEM text. `chain` may be a CA response (leaf first, root last): a trailing
        self-signed certificate is moved to the roots when `roots` is not given."""
        certs = split_pem(chain)
        root_list = split_pem(roots) if roots is not None else []
        if len(certs) > 1 and _is_self_signed(x509.load_pem_x509_certificate(certs[-1])):
            last = certs.pop()
            if roots is None:
                root_list.append(last)
        key = key_pem.encode() if isinstance(key_pem, str) else key_pem
        return cls(key, tuple(certs), tuple(root_list))

    # -- expiry helpers -------------------------------------------------------------------------------
    @property
    def not_before(self) -> datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    @property
    def lifetime(self) -> timedelta:
        return self.not_after - self.not_before

    @property
    def refresh_at(self) -> datetime:
        """When renewal is due: half of the lifetime."""
        return self.not_before + self.lifetime / 2

    def is_valid_at(self, when: datetime | None = None) -> bool:
        when = when or datetime.now(UTC)
        return self.not_before <= when < self.not_after

    def is_expired(self, when: datetime | None = None) -> bool:
        return (when or datetime.now(UTC)) >= self.not_after

    def expires_in(self, when: datetime | None = None) -> timedelta:
        return self.not_after - (when or datetime.now(UTC))

    @property
    def serial_number(self) -> int:
        return self.leaf.serial_number

    def chain_bytes(self) -> bytes:
        return b"".join(self.chain_pem)

    def roots_bytes(self) -> bytes:
        return b"".join(self.roots_pem)

    def __repr__(self) -> str:
        return (
            f"CertBundle(identity={self.identity}, serial={self.serial_number:x}, "
            f"not_after={self.not_after.isoformat()})"
        )
