"""A local certificate authority for the mesh (the "local CA key pair on disk" of the node proxy, and the
signer behind the control plane's CA service).

Role: create or load a self-signed root (EC P-256 or P-384) and issue workload leaf certificates from
CSRs. Checks before signing: the CSR signature is valid, its key is one `identity.csr.csr_key_problem`
accepts (EC P-256/P-384/P-521, Ed25519, RSA >= 2048), it carries exactly one SAN which is a URI SAN
holding a SPIFFE id of THIS trust domain, and (when the caller says which identity the requester may
have) it is that identity. Authorization of the requester itself is the caller's job.

Invariants: leaf lifetime = min(requested, max_ttl, root's remaining life); leaves are end-entity
(CA:FALSE) with serverAuth+clientAuth and an empty subject; `sign_csr` returns the chain leaf first
and the root last, like Istio's CreateCertificate.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ambient.identity.certs import CertBundle
from ambient.identity.csr import csr_key_problem, make_csr
from ambient.identity.errors import CsrRejectedError, IdentityError
from ambient.identity.spiffe import DEFAULT_TRUST_DOMAIN, SpiffeId

DEFAULT_LEAF_TTL = timedelta(hours=24)
DEFAULT_ROOT_TTL = timedelta(days=3650)
# Leaves are back-dated a little so that peers whose clocks lag slightly still accept them.
CLOCK_SKEW = timedelta(minutes=1)
_CURVES: dict[str, tuple[ec.EllipticCurve, hashes.SHA256 | hashes.SHA384]] = {
    "P-256": (ec.SECP256R1(), hashes.SHA256()),
    "P-384": (ec.SECP384R1(), hashes.SHA384()),
}
CA_CERT_FILE = "root-cert.pem"
CA_KEY_FILE = "root-key.pem"


def _as_timedelta(ttl: timedelta | float | int | None, default: timedelta) -> timedelta:
    if ttl is None:
        return default
    if isinstance(ttl, timedelta):
        return ttl
    return timedelta(seconds=float(ttl))


class LocalCA:
    """A root CA held in memory. Use `create`, `load` or `load_or_create`."""

    def __init__(
        self,
        root_cert: x509.Certificate,
        root_key: ec.EllipticCurvePrivateKey,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        max_ttl: timedelta = DEFAULT_LEAF_TTL,
    ) -> None:
        if not isinstance(root_key, ec.EllipticCurvePrivateKey):
            raise IdentityError("the CA key must be an EC key (P-256 or P-384)")
        if root_key.public_key() != root_cert.public_key():
            raise IdentityError("the CA key does not match the CA certificate")
        SpiffeId(trust_domain, "x", "x")  # validates the trust domain
        self.root_cert = root_cert
        self._key = root_key
        self.trust_domain = trust_domain
        self.max_ttl = max_ttl
        self._hash: hashes.SHA256 | hashes.SHA384 = (
            hashes.SHA384() if root_key.curve.key_size >= 384 else hashes.SHA256()
        )

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        curve: str = "P-256",
        root_ttl: timedelta = DEFAULT_ROOT_TTL,
        max_ttl: timedelta = DEFAULT_LEAF_TTL,
        common_name: str | None = None,
        now: datetime | None = None,
    ) -> LocalCA:
        if curve not in _CURVES:
            raise IdentityError(f"unsupported CA curve {curve!r}", hint=f"use one of {sorted(_CURVES)}")
        ec_curve, digest = _CURVES[curve]
        key = ec.generate_private_key(ec_curve)
        now = now or datetime.now(UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ambient"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"ambient root CA {trust_domain}"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + root_ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, digest)
        )
        return cls(cert, key, trust_domain=trust_domain, max_ttl=max_ttl)

    @classmethod
    def load(
        cls,
        cert_pem: bytes,
        key_pem: bytes,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        max_ttl: timedelta = DEFAULT_LEAF_TTL,
    ) -> LocalCA:
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as exc:
            raise IdentityError(f"cannot load CA key pair: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError("the CA key must be an EC key (P-256 or P-384)")
        return cls(cert, key, trust_domain=trust_domain, max_ttl=max_ttl)

    @classmethod
    def load_or_create(
        cls,
        directory: Path | str,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        curve: str = "P-256",
        max_ttl: timedelta = DEFAULT_LEAF_TTL,
    ) -> LocalCA:
        """Load `root-cert.pem`/`root-key.pem` from `directory`, creating them (key mode 0600) if absent."""
        d = Path(directory)
        cert_path, key_path = d / CA_CERT_FILE, d / CA_KEY_FILE
        if cert_path.exists() and key_path.exists():
            return cls.load(
                cert_path.read_bytes(), key_path.read_bytes(), trust_domain=trust_domain, max_ttl=max_ttl
            )
        if cert_path.exists() or key_path.exists():
            raise IdentityError(
                f"CA directory {d} holds only one of {CA_CERT_FILE} and {CA_KEY_FILE}",
                hint="restore the missing file or remove both to create a new root",
            )
        ca = cls.create(trust_domain=trust_domain, curve=curve, max_ttl=max_ttl)
        d.mkdir(parents=True, exist_ok=True)
        # Write the key with 0600 from the start (never world-readable, even briefly).
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(ca.key_pem)
        cert_path.write_bytes(ca.root_pem)
        return ca

    # -- accessors ------------------------------------------------------------------------------------
    @property
    def root_pem(self) -> bytes:
        return self.root_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    # -- issuing --------------------------------------------------------------------------------------
    def _check_csr(self, csr: x509.CertificateSigningRequest, allowed: SpiffeId | None) -> SpiffeId:
        if not csr.is_signature_valid:
            raise CsrRejectedError("CSR signature is invalid")
        problem = csr_key_problem(csr.public_key())
        if problem is not None:
            raise CsrRejectedError(problem)
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise CsrRejectedError("CSR has no subjectAltName; it must carry one URI SAN") from None
        names = list(san)
        if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier):
            raise CsrRejectedError(f"CSR must carry exactly one SAN, a URI; it has {names}")
        try:
            ident = SpiffeId.parse(names[0].value)
        except IdentityError as exc:
            raise CsrRejectedError(f"CSR URI SAN is not a SPIFFE id: {exc.message}") from None
        if ident.trust_domain != self.trust_domain:
            raise CsrRejectedError(
                f"CSR identity {ident} is not in this CA's trust domain {self.trust_domain!r}"
            )
        if allowed is not None and ident != allowed:
            raise CsrRejectedError(f"CSR identity {ident} differs from the caller's identity {allowed}")
        return ident

    def sign_csr(
        self,
        csr_pem: bytes | str,
        *,
        ttl: timedelta | float | None = None,
        allowed_identity: SpiffeId | str | None = None,
        now: datetime | None = None,
    ) -> list[str]:
        """Sign a CSR; return `[leaf PEM, root PEM]`. `ttl` is capped at `max_ttl`; `now` moves the
        validity window (tests use it to make expired or not-yet-valid certificates)."""
        raw = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(raw)
        except ValueError as exc:
            raise CsrRejectedError(f"CSR does not parse: {exc}") from None
        allowed = SpiffeId.parse(allowed_identity) if isinstance(allowed_identity, str) else allowed_identity
        ident = self._check_csr(csr, allowed)
        now = now or datetime.now(UTC)
        lifetime = min(_as_timedelta(ttl, self.max_ttl), self.max_ttl)
        if lifetime <= timedelta(0):
            raise CsrRejectedError(f"requested certificate lifetime {lifetime} is not positive")
        not_after = min(now + lifetime, self.root_cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.root_cert.subject)
            .public_key(csr.public_key())
            # 159 random bits: positive, at most 20 octets, unpredictable (RFC 5280 4.1.2.2)
            .serial_number(secrets.randbits(159) | 1)
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=True,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ident.uri)]), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, self._hash)
        )
        return [cert.public_bytes(serialization.Encoding.PEM).decode(), self.root_pem.decode()]

    def issue(
        self,
        identity: SpiffeId | str,
        *,
        ttl: timedelta | float | None = None,
        now: datetime | None = None,
    ) -> CertBundle:
        """Make a key, a CSR and sign it: a ready `CertBundle` (for tests and the standalone proxy)."""
        req = make_csr(identity)
        chain = self.sign_csr(req.csr_pem, ttl=ttl, now=now)
        return CertBundle.from_pem(req.key_pem, chain)
