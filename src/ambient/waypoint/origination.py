"""TLS origination at the waypoint (DestinationRule `trafficPolicy.tls` SIMPLE / MUTUAL), as Istio's egress
TLS origination task: the client speaks plain HTTP to a ServiceEntry host, the waypoint opens TLS to the
endpoint (typically the entry's port 80 with `targetPort: 443`).

Role: `Credentials.resolve(tls, secrets)` reads a `credentialName` from the Secrets of the waypoint's own
namespace (`ambient.tls.credentials`: MUTUAL takes the Secret's key pair; the server is verified with the
Secret's CA, `<name>-cacert` or the Secret's own `cacert` / `ca.crt`); `client_context(tls, credential)`
builds the client SSLContext once per distinct setting (the credential's CA, else the CA file or the system
roots; the credential's key pair, else the certificate and key files for MUTUAL; verification on unless
`insecureSkipVerify`); `open_tls` dials and handshakes with SNI = `sni` or the Service's host; the peer must
present a certificate for that name, or for one of `subjectAltNames` when given.

Semantics of `credentialName` (Istio's ClientTLSSettings): it wins over the file fields (Istio's cluster
builder ignores them; its validation refuses both); the Secret must be in the namespace of the proxy using it,
here the waypoint's; without a CA in the Secret (or a `-cacert` Secret) the server cannot be verified and
nothing is sent (Istio's gateway keeps the CA resource warming: no handshake completes), unless
`insecureSkipVerify`. SIMPLE presents no client certificate. The Secret is read when a connection is
opened: a changed Secret is used by the next connection (pooled connections opened with the previous one
are not reused, see `waypoint.pool`), without a restart.

Invariants: contexts are built when a connection is opened, never per request (pooled connections are
reused); a Secret that is missing or lacks its keys, a file that cannot be read, or a failed handshake is a
503 (flag UF) naming the endpoint or the Secret and the reason, never a fall back to plain text, to an
unverified connection or to another CA; Secret contents are never logged.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from ambient.hbone.pipe import CHUNK, TcpByteStream
from ambient.l7.traffic_policy import OriginationTls
from ambient.tls.contexts import load_pem_key_pair
from ambient.tls.credentials import ClientCredential, client_credential
from ambient.tls.errors import CredentialError, TlsError
from ambient.waypoint.errors import UpstreamError

Secrets = Mapping[tuple[str, str], Mapping[str, Any]]  # (namespace, name) -> Secret object


class Credentials:
    """`credentialName`s of the waypoint's namespace, resolved against the current Secrets. A resolution (or
    its error) is kept until the Secrets mapping is replaced (every Secret event publishes a new one), so
    requests on pooled connections do not decode the Secret again."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._secrets: Secrets | None = None  # held: identity comparison stays sound
        self._resolved: dict[tuple[str, bool, bool], ClientCredential | UpstreamError] = {}

    def resolve(self, tls: OriginationTls, secrets: Secrets) -> ClientCredential | None:
        """The credential of `tls` (None without a credentialName); raises UpstreamError 503 / UF."""
        if not tls.credential_name:
            return None
        if secrets is not self._secrets:
            self._secrets, self._resolved = secrets, {}
        key = (tls.credential_name, tls.mode == "MUTUAL", not tls.insecure_skip_verify)
        found = self._resolved.get(key)
        if found is None:
            found = self._read(key, secrets)
            self._resolved[key] = found
        if isinstance(found, UpstreamError):
            raise UpstreamError(found.message, status=503, flags="UF", hint=found.hint)
        return found

    def _read(self, key: tuple[str, bool, bool], secrets: Secrets) -> ClientCredential | UpstreamError:
        name, mutual, verify = key
        lookup: Callable[[str], Mapping[str, Any] | None] = lambda n: secrets.get((self.namespace, n))  # noqa: E731
        try:
            return client_credential(lookup, self.namespace, name, mutual=mutual, verify=verify)
        except CredentialError as exc:
            return UpstreamError(f"TLS origination: {exc.message}", status=503, flags="UF", hint=exc.hint)


@lru_cache(maxsize=64)
def client_context(tls: OriginationTls, credential: ClientCredential | None = None) -> ssl.SSLContext:
    """The client context for `tls` with `credential` (raises UpstreamError when a file or the Secret's
    contents are unusable)."""
    try:
        if credential is not None:  # credentialName: the Secret's CA only, its key pair for MUTUAL
            ctx = ssl.create_default_context(cadata=credential.ca_pem.decode("ascii", "replace")) \
                if credential.ca_pem is not None else ssl.create_default_context()
            if credential.key_pair is not None:
                load_pem_key_pair(ctx, credential.key_pair.cert_pem, credential.key_pair.key_pem,
                                  f"credentialName Secret {credential.name}")
        else:
            ctx = ssl.create_default_context(cafile=tls.ca_certificates or None)
            if tls.mode == "MUTUAL":
                if not tls.client_certificate or not tls.private_key:
                    raise UpstreamError("tls MUTUAL needs clientCertificate and privateKey (files on the waypoint) "
                                        "or a credentialName", status=503, flags="UF")
                ctx.load_cert_chain(tls.client_certificate, tls.private_key)
    except TlsError as exc:  # the Secret's key pair does not load (names the Secret)
        raise UpstreamError(f"TLS origination: {exc.message}", status=503, flags="UF") from None
    except OSError as exc:  # a file, or the Secret's CA (ssl.SSLError)
        what = f"credentialName Secret {credential.name}" if credential is not None else "settings"
        raise UpstreamError(f"TLS origination {what} unusable: {exc}", status=503, flags="UF") from None
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif tls.subject_alt_names:
        ctx.check_hostname = False  # checked against subjectAltNames after the handshake
    return ctx


def _names(cert: Any) -> set[str]:
    return {str(v) for kind, v in cert.get("subjectAltName", ()) if kind in ("DNS", "URI", "IP Address")}


async def open_tls(ip: str, port: int, tls: OriginationTls, host: str,
                   credential: ClientCredential | None = None) -> TcpByteStream:
    """TLS to `ip:port` with SNI `tls.sni` or `host` (raises UpstreamError 503 / UF). `credential`: what
    `tls.credential_name` resolved to (`Credentials.resolve`); required when it is set."""
    if tls.credential_name and credential is None:  # never fall back to the file fields or no certificate
        raise UpstreamError(f"TLS origination: credentialName {tls.credential_name} was not resolved",
                            status=503, flags="UF")
    ctx = client_context(tls, credential)
    sni = tls.sni or host
    try:
        reader, writer = await asyncio.open_connection(ip, port, ssl=ctx, server_hostname=sni, limit=CHUNK)
    except ssl.SSLError as exc:
        raise UpstreamError(f"TLS origination to {sni} ({ip}:{port}) failed: {exc.reason or exc}", status=503,
                            flags="UF") from None
    except OSError as exc:
        raise UpstreamError(f"cannot connect to {ip}:{port}: {exc.strerror or exc}", flags="UF") from None
    if tls.subject_alt_names and not tls.insecure_skip_verify:
        cert = writer.get_extra_info("peercert") or {}
        if not _names(cert) & set(tls.subject_alt_names):
            writer.close()
            raise UpstreamError(f"TLS origination to {sni}: the certificate names none of "
                                f"{', '.join(tls.subject_alt_names)}", status=503, flags="UF")
    return TcpByteStream(reader, writer)
