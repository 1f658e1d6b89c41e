"""The stunnel4 mTLS pair: the C baseline a user would otherwise put in front of a service.

`write_certs(dir, server_ip)` makes a throw-away CA (ECDSA P-256, like the mesh's workload certificates)
and a server and a client certificate signed by it. `start_stunnel_pair(pair, target_port)` starts the
client-side stunnel in the client namespace (listening on its loopback) and the server-side stunnel in the
server namespace (listening on the veth address, forwarding to `target_port` on the server's loopback).

Invariants:
- TLS 1.3 only, both sides verify the peer's chain against the bench CA (`verifyChain`), the server
  requires a client certificate (`requireCert`) and the client checks the server's IP SAN (`checkIP`):
  the same guarantees as mutual TLS between two workloads.
- Keys and configs live in the pair's temporary directory, deleted with the pair; the processes are
  owned by the pair (stopped when it closes).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ambient.bench.nsenv import NetnsPair, require

TLS_PORT = 15443


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ambient bench"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


@dataclass(frozen=True)
class CertFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def write_certs(directory: Path, server_ip: str) -> CertFiles:
    """A CA plus server/client leaf certificates (1 day validity) written as PEM files in `directory`."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("ambient bench CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = CertFiles(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "client.pem",
        directory / "client.key",
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for role, cert_path, key_path in (
        ("server", files.server_cert, files.server_key),
        ("client", files.client_cert, files.client_key),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(f"spiffe://cluster.local/ns/bench/sa/{role}"),
        ]
        if role == "server":
            sans.append(x509.IPAddress(ipaddress.ip_address(server_ip)))
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"bench-{role}"))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
    return files


@dataclass(frozen=True)
class StunnelPair:
    """Where to connect in the client namespace to reach `target_port` in the server namespace over mTLS."""

    host: str
    port: int
    pids: tuple[int, int]  # client-side, server-side (for CPU accounting)


# The [tunnel] head both stunnel configurations share (haproxy.py uses it too): TLS 1.3, verified chain.
STUNNEL_COMMON = """foreground = yes
pid =
debug = 4
[tunnel]
sslVersionMin = TLSv1.3
CAfile = {ca}
verifyChain = yes
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
"""


def start_stunnel_pair(pair: NetnsPair, target_port: int, *, local_port: int = 15000) -> StunnelPair:
    """Start both stunnels; returns once both listen. `local_port` is the client side's loopback port."""
    binary = require("stunnel4") if shutil.which("stunnel4") else require("stunnel")
    certdir = pair.tmp / f"stunnel-{target_port}"
    certdir.mkdir()
    certs = write_certs(certdir, pair.server_addr)
    client_conf = certdir / "client.conf"
    server_conf = certdir / "server.conf"
    client_conf.write_text(
        STUNNEL_COMMON.format(ca=certs.ca)
        + f"client = yes\naccept = 127.0.0.1:{local_port}\nconnect = {pair.server_addr}:{TLS_PORT}\n"
        + f"cert = {certs.client_cert}\nkey = {certs.client_key}\ncheckIP = {pair.server_addr}\n"
    )
    server_conf.write_text(
        STUNNEL_COMMON.format(ca=certs.ca)
        + f"accept = {pair.server_addr}:{TLS_PORT}\nconnect = 127.0.0.1:{target_port}\n"
        + f"cert = {certs.server_cert}\nkey = {certs.server_key}\nrequireCert = yes\n"
    )
    server = pair.spawn(pair.server, [binary, str(server_conf)], label=f"stunnel-server-{target_port}")
    client = pair.spawn(pair.client, [binary, str(client_conf)], label=f"stunnel-client-{target_port}")
    pair.wait_listening(pair.server, TLS_PORT, server)
    pair.wait_listening(pair.client, local_port, client)
    return StunnelPair("127.0.0.1", local_port, (client.pid, server.pid))
