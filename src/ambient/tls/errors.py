"""Errors of the tls package. `TlsError` is the one base class; subclasses say which check failed."""

from __future__ import annotations

from ambient.core.errors import AmbientError


class TlsError(AmbientError):
    """Base of every error raised by `ambient.tls`."""


class TlsPolicyError(TlsError):
    """The negotiated session breaks the HBONE policy (not TLS 1.3, cipher not allowed, ALPN not h2)."""


class PeerIdentityError(TlsError):
    """The peer certificate is valid TLS-wise but its identity is not acceptable."""


class CredentialError(TlsError):
    """A TLS credential Secret (`credentialName`, a Gateway's `certificateRefs`) is missing or lacks the keys
    it needs. The message names the Secret `namespace/name` and the keys, never their contents."""
