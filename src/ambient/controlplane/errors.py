"""Errors of the control plane (translation, xDS server, CA server, admin endpoint).

`ControlPlaneError` is the package's one base class; every error says what failed and what to do.
"""

from __future__ import annotations

from ambient.core.errors import AmbientError


class ControlPlaneError(AmbientError):
    """Base of every error raised on purpose by `ambient.controlplane`."""


class CaRefusedError(ControlPlaneError):
    """The CA refused a CreateCertificate call. `code` is the gRPC status code name to answer with."""

    def __init__(self, message: str, *, code: str = "PERMISSION_DENIED", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class AdminUnavailableError(ControlPlaneError):
    """The control plane's admin endpoint (proxy-status) cannot be reached."""
