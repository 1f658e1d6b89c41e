"""Post-handshake checks of an HBONE TLS session and extraction of the peer's SPIFFE identity.

Role: OpenSSL has already verified the chain to the mesh roots and the validity period; this module
checks what OpenSSL cannot: TLS version / cipher / ALPN policy, the strict shape of the peer's SAN
(exactly one URI SAN, no otherName, no NUL), and then:
- server side: the client identity is in the local trust domain;
- client side: the server identity is one of the expected identities.

Invariant: the identity used for authorization comes ONLY from the peer certificate (never headers).
"""

from __future__ import annotations

import ssl
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from ambient.identity.certs import spiffe_id_from_cert
from ambient.identity.errors import IdentityError
from ambient.identity.spiffe import SpiffeId
from ambient.tls.contexts import ALLOWED_CIPHERS, ALPN_H2
from ambient.tls.errors import PeerIdentityError, TlsPolicyError

SslObj = ssl.SSLObject | ssl.SSLSocket


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is on the other end of a verified HBONE connection."""

    identity: SpiffeId
    serial_number: int
    not_after: datetime

    @property
    def uri(self) -> str:
        return self.identity.uri

    def __str__(self) -> str:
        return self.identity.uri


def check_session(ssl_object: SslObj) -> None:
    """Raise `TlsPolicyError` unless the session is TLS 1.3, an allowed AES-GCM suite, ALPN h2."""
    version = ssl_object.version()
    if version != "TLSv1.3":
        raise TlsPolicyError(f"negotiated {version}, HBONE requires TLSv1.3")
    cipher = ssl_object.cipher()
    name = cipher[0] if cipher else None
    if name not in ALLOWED_CIPHERS:
        raise TlsPolicyError(f"negotiated cipher {name}, HBONE allows only {sorted(ALLOWED_CIPHERS)}")
    alpn = ssl_object.selected_alpn_protocol()
    if alpn != ALPN_H2:
        raise TlsPolicyError(
            f"negotiated ALPN {alpn!r}, HBONE requires {ALPN_H2!r}",
            hint="the peer is not an HBONE endpoint or does not speak HTTP/2",
        )


def identity_from_der(der: bytes) -> PeerIdentity:
    """Strictly parse a peer leaf certificate (DER) into a `PeerIdentity`."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise PeerIdentityError(f"peer certificate does not parse: {exc}") from None
    try:
        ident = spiffe_id_from_cert(cert)
    except IdentityError as exc:
        raise PeerIdentityError(f"peer certificate rejected: {exc.message}") from None
    return PeerIdentity(ident, cert.serial_number, cert.not_valid_after_utc)


def peer_identity(ssl_object: SslObj) -> PeerIdentity:
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PeerIdentityError("peer presented no certificate", hint="HBONE requires mutual TLS")
    return identity_from_der(der)


def verify_client(ssl_object: SslObj, trust_domain: str) -> PeerIdentity:
    """Server side: session policy + the client identity is in `trust_domain`."""
    check_session(ssl_object)
    peer = peer_identity(ssl_object)
    if peer.identity.trust_domain != trust_domain:
        raise PeerIdentityError(
            f"client identity {peer.uri} is not in trust domain {trust_domain!r}",
            hint="client and server must share a trust domain",
        )
    return peer


def verify_server(ssl_object: SslObj, expected: Collection[str]) -> PeerIdentity:
    """Client side: session policy + the server identity is one of `expected` (URI strings)."""
    check_session(ssl_object)
    peer = peer_identity(ssl_object)
    if peer.uri not in expected:
        raise PeerIdentityError(
            f"server identity {peer.uri} not in expected {sorted(expected)}",
            hint="the destination runs under an unexpected service account, or an address was reused",
        )
    return peer
