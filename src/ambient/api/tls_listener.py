"""The API server's TLS listener for kubectl and Kubernetes clients: certificates, credentials, kubeconfig.

The cluster's root CA (`<state>/ca/root-{cert,key}.pem`, shared with the control plane's Istio CA) signs:
- a serving certificate for `localhost` and the listen address, made anew at every start (it is cheap,
  and a changed address or an expired certificate heals by restarting);
- an admin client certificate (subject O=system:masters, CN=ambient-admin, clientAuth only), kept in
  `<state>/apiserver/`.
A request on the TLS listener is authenticated by `Authorization: Bearer <admin token>` (the token is
`<state>/apiserver/admin-token`, 32 random bytes hex, mode 0600) or by a client certificate of the cluster's
CA whose subject organisation is `system:masters` (workload SPIFFE certificates have none, so a pod's
certificate is never an API credential). Anything else is answered 401. The Unix socket is not affected
(its file mode is its access control).

The listener binds loopback in the root network namespace: nothing in the cluster's namespaces can reach
it, so the cluster stays hermetic. Its port is kept in `<state>/apiserver/tls-port` so a restarted server
listens where the kubeconfig points; `<state>/kubeconfig` (context, cluster and user named after the
cluster) is rewritten at each start.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import os
import secrets
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ambient.api.errors import ApiError
from ambient.identity.ca import CA_CERT_FILE, CA_KEY_FILE, LocalCA

KUBECONFIG_NAME = "kubeconfig"
CREDENTIALS_DIR = "apiserver"
ADMIN_GROUP = "system:masters"
ADMIN_USER = "ambient-admin"
SERVING_TTL = timedelta(days=365)
CLIENT_TTL = timedelta(days=3650)
_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class TlsMaterial:
    """What the TLS listener needs: paths of its serving pair, the CA bundle and the admin token."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    token: str
    client_cert_file: Path
    client_key_file: Path


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _load_ca(state_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca = LocalCA.load_or_create(state_dir / "ca")
    key = serialization.load_pem_private_key((state_dir / "ca" / CA_KEY_FILE).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ApiError("the cluster CA key is not an EC key", hint=f"check {state_dir / 'ca' / CA_KEY_FILE}")
    return ca.root_cert, key


def _sign(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    ttl: timedelta,
    san: list[x509.GeneralName] | None = None,
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(min(now + ttl, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def prepare(state_dir: Path, host: str) -> TlsMaterial:
    """Make (or reuse) the listener's certificates and the admin credentials under `<state>/apiserver/`."""
    ca_cert, ca_key = _load_ca(state_dir)
    d = state_dir / CREDENTIALS_DIR
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    san: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for addr in {"127.0.0.1", host}:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(addr)))
        except ValueError:
            san.append(x509.DNSName(addr))
    cert_pem, key_pem = _sign(
        ca_cert, ca_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ambient-apiserver")]),
        ExtendedKeyUsageOID.SERVER_AUTH, SERVING_TTL, san,
    )
    _write_private(d / "serving-key.pem", key_pem)
    _write_private(d / "serving-cert.pem", cert_pem)
    token_path = d / "admin-token"
    if not token_path.exists():
        _write_private(token_path, secrets.token_hex(32).encode())
    client_cert, client_key = d / "admin-cert.pem", d / "admin-key.pem"
    if not (client_cert.exists() and client_key.exists()):
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ADMIN_GROUP),
            x509.NameAttribute(NameOID.COMMON_NAME, ADMIN_USER),
        ])
        c_pem, k_pem = _sign(ca_cert, ca_key, subject, ExtendedKeyUsageOID.CLIENT_AUTH, CLIENT_TTL)
        _write_private(client_key, k_pem)
        _write_private(client_cert, c_pem)
    return TlsMaterial(
        ca_file=state_dir / "ca" / CA_CERT_FILE, cert_file=d / "serving-cert.pem", key_file=d / "serving-key.pem",
        token=token_path.read_text().strip(), client_cert_file=client_cert, client_key_file=client_key,
    )


def server_context(material: TlsMaterial) -> ssl.SSLContext:
    """TLS 1.2+ (Go's default client offers 1.3), client certificates of the cluster CA optional."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(material.cert_file, material.key_file)
    ctx.load_verify_locations(cafile=str(material.ca_file))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["http/1.1"])  # aiohttp serves HTTP/1.1; Go falls back from h2 when asked
    return ctx


def remembered_port(state_dir: Path) -> int:
    """The port the last TLS listener of this state dir bound (0: none yet)."""
    try:
        return int((state_dir / CREDENTIALS_DIR / "tls-port").read_text().strip())
    except (OSError, ValueError):
        return 0


def remember_port(state_dir: Path, port: int) -> None:
    (state_dir / CREDENTIALS_DIR / "tls-port").write_text(f"{port}\n")


def is_admin_cert(peer: dict[str, Any] | None) -> bool:
    """A verified client certificate (ssl's getpeercert() dict) whose subject organisation is system:masters."""
    if not peer:
        return False
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "organizationName" and value == ADMIN_GROUP:
                return True
    return False


def bearer_ok(header: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>` with the admin token (constant-time comparison)."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), token.encode())


def cluster_name(state_dir: Path) -> str:
    """The cluster's name from `<state>/cluster.json` (written before anything starts), else the dir name."""
    try:
        name = json.loads((state_dir / "cluster.json").read_text()).get("name")
        if isinstance(name, str) and name:
            return name
    except (OSError, ValueError, AttributeError):
        pass
    return state_dir.name or "ambient"


def kubeconfig(name: str, server: str, material: TlsMaterial) -> dict[str, Any]:
    """A kubeconfig document with one cluster, user and context, all called `name`; pure."""
    ca = base64.b64encode(material.ca_file.read_bytes()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": name, "user": {"token": material.token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
    }


def write_kubeconfig(state_dir: Path, server: str, material: TlsMaterial) -> Path:
    """Write `<state>/kubeconfig` (0600: it holds the admin token) atomically; returns its path."""
    path = state_dir / KUBECONFIG_NAME
    doc = kubeconfig(cluster_name(state_dir), server, material)
    _write_private(path, json.dumps(doc, indent=2).encode() + b"\n")
    return path
