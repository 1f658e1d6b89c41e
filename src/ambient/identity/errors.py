"""Errors of the identity package (SPIFFE ids, CSRs, the local CA, certificate bundles).

`IdentityError` is the one base class of this package; every error says what is wrong and, where we
know it, what to do about it.
"""

from __future__ import annotations

from ambient.core.errors import AmbientError


class IdentityError(AmbientError):
    """Base of every error raised by `ambient.identity`."""


class InvalidSpiffeIdError(IdentityError):
    """A string is not a mesh SPIFFE id of the form spiffe://<td>/ns/<ns>/sa/<sa>."""


class CsrRejectedError(IdentityError):
    """The CA refused to sign a certificate signing request."""


class CertificateBundleError(IdentityError):
    """A certificate bundle is malformed (bad PEM, key does not match the leaf, no identity...)."""
