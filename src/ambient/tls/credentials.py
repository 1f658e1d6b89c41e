"""TLS credentials read from Kubernetes Secrets, with Istio's key names: the one Secret reader of the
ingress gateway (a listener's certificate) and the waypoint (`credentialName` of a DestinationRule's TLS
origination).

Role (pure: Secret objects in, PEM bytes or a `CredentialError` out):
- `secret_data`: a Secret's `data` decoded (base64), `stringData` over it (a static file may carry it; the
  API server merges it into `data` on write, as Kubernetes does).
- `key_pair`: the certificate chain and key, `cert` + `key` (a generic Secret) first, else `tls.crt` +
  `tls.key` (a `kubernetes.io/tls` Secret); the Secret's `type` is not looked at, as Istio's credential
  controller does not.
- `ca_certificates`: the CA bundle, `cacert` first, else `ca.crt`.
- `client_credential`: what a `credentialName` gives a TLS client, looked up by name in the proxy's own
  namespace: the key pair (MUTUAL) and the CA verifying the server, taken from a Secret `<name>-cacert` when
  one exists, else from `<name>` itself (Istio's `GetCaCert`: a `-cacert` Secret without the keys is an
  error, not a fall back).

Invariants: the messages name the Secret and its keys, never a value; a key present but empty is reported
as such (Istio: "found keys ... but they were empty"); nothing here falls back to anything weaker (no CA is
never "the system roots", no key pair is never "no client certificate").
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ambient.tls.errors import CredentialError

GENERIC_CERT, GENERIC_KEY, GENERIC_CA = "cert", "key", "cacert"
TLS_CERT, TLS_KEY, TLS_CA = "tls.crt", "tls.key", "ca.crt"
CA_SUFFIX = "-cacert"  # Istio's SdsCaSuffix: a separate Secret holding only the CA of credential <name>

SecretLookup = Callable[[str], Mapping[str, Any] | None]  # Secret name -> object, in the proxy's namespace


@dataclass(frozen=True, slots=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True, slots=True)
class ClientCredential:
    """What a `credentialName` gives a TLS client. Equal contents compare (and hash) equal, so a context
    built from it can be cached by it, and a rotated Secret is a different credential."""

    name: str  # "namespace/name" of the Secret, for messages
    key_pair: KeyPair | None = None  # MUTUAL: the client certificate presented to the server
    ca_pem: bytes | None = None  # the CA verifying the server (None only when verification is skipped)


def _found(data: Mapping[str, bytes]) -> str:
    keys = sorted(data)
    if len(keys) <= 3:
        return ", ".join(keys) or "no keys"
    return f"{', '.join(keys[:3])}, and {len(keys) - 3} more"


def secret_data(secret: Mapping[str, Any], what: str) -> dict[str, bytes]:
    """The decoded contents of `secret` (`what` names it in errors, "Secret ns/name")."""
    out: dict[str, bytes] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[str(key)] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise CredentialError(f"{what}: data key {key!r} is not base64") from None
    for key, value in (secret.get("stringData") or {}).items():
        out[str(key)] = str(value).encode()
    return out


def key_pair(data: Mapping[str, bytes], what: str) -> KeyPair:
    """The certificate chain and private key of a Secret's decoded `data` (Istio's order and messages)."""
    for cert, key in ((GENERIC_CERT, GENERIC_KEY), (TLS_CERT, TLS_KEY)):
        if data.get(cert) and data.get(key):
            return KeyPair(data[cert], data[key])
    for cert, key in ((GENERIC_CERT, GENERIC_KEY), (TLS_CERT, TLS_KEY)):
        if cert in data and key in data:
            raise CredentialError(f"{what}: found keys {cert!r} and {key!r}, but they were empty")
    raise CredentialError(f"{what}: found the Secret, but not the keys ({GENERIC_CERT} and {GENERIC_KEY}) or "
                          f"({TLS_CERT} and {TLS_KEY}); found: {_found(data)}")


def ca_certificates(data: Mapping[str, bytes], what: str) -> bytes:
    """The CA bundle of a Secret's decoded `data`: `cacert`, else `ca.crt`."""
    for key in (GENERIC_CA, TLS_CA):
        if data.get(key):
            return data[key]
    for key in (GENERIC_CA, TLS_CA):
        if key in data:
            raise CredentialError(f"{what}: found key {key!r}, but it was empty")
    raise CredentialError(f"{what}: found the Secret, but not the key {GENERIC_CA} or {TLS_CA}; "
                          f"found: {_found(data)}")


def client_credential(lookup: SecretLookup, namespace: str, name: str, *, mutual: bool,
                      verify: bool) -> ClientCredential:
    """The credential `name` of namespace `namespace` (whose Secrets `lookup` finds by name): the key pair
    when `mutual`, the CA when `verify` (raises CredentialError saying what is missing)."""
    what = f"credentialName Secret {namespace}/{name}"
    secret = lookup(name)
    pair = ca = None
    if mutual:
        if secret is None:
            raise CredentialError(f"{what} not found",
                                  hint=f"create it in namespace {namespace}, the namespace of the proxy using it")
        pair = key_pair(secret_data(secret, what), what)
    if verify:
        separate = lookup(name + CA_SUFFIX)
        if separate is not None:
            ca_what = f"CA Secret {namespace}/{name}{CA_SUFFIX}"
            ca = ca_certificates(secret_data(separate, ca_what), ca_what)
        elif secret is None:
            raise CredentialError(f"{what} not found (nor {namespace}/{name}{CA_SUFFIX})",
                                  hint=f"create it in namespace {namespace}, the namespace of the proxy using it")
        else:
            ca = ca_certificates(secret_data(secret, what), what)
    return ClientCredential(f"{namespace}/{name}", pair, ca)
