"""Errors of the hbone package. `HboneError` is the one base class.

Messages name the peer and the reason, because these surface in the node proxy's access log
(`error=...`) and are what a user debugs a broken tunnel from.
"""

from __future__ import annotations

from ambient.core.errors import AmbientError


class HboneError(AmbientError):
    """Base of every error raised by `ambient.hbone`."""


class HboneConnectError(HboneError):
    """Dialling an HBONE peer failed: TCP connect, TLS handshake, identity check or HTTP/2 setup."""


class HboneStatusError(HboneError):
    """The HBONE server answered the CONNECT with a non-200 status."""

    def __init__(self, status: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class HboneStreamError(HboneError):
    """A tunnel stream failed: reset by the peer, connection lost, or used after close."""

    def __init__(self, message: str, *, error_code: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.error_code = error_code


class BadConnectRequest(HboneError):
    """A CONNECT request is malformed; the server answers it with `status` (400)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
