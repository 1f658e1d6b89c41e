"""Errors of the waypoint package. `WaypointError` is the one base class.

Messages name the object (HTTPRoute / AuthorizationPolicy `ns/name`, the field path) or the peer, because
they surface in the waypoint's log and in `ambient waypoint status`.
"""

from __future__ import annotations

from ambient.core.errors import AmbientError


class WaypointError(AmbientError):
    """Base of every error raised by `ambient.waypoint`."""


class ConfigError(WaypointError):
    """An HTTPRoute / AuthorizationPolicy / static file could not be turned into waypoint config."""


class HttpProtocolError(WaypointError):
    """The downstream or upstream peer broke HTTP/1.1 or HTTP/2 (malformed, oversized, abusive)."""

    def __init__(self, message: str, *, status: int = 400, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class UpstreamError(WaypointError):
    """Forwarding a request to a backend failed (no endpoint, HBONE connect, upstream protocol)."""

    def __init__(
        self, message: str, *, status: int = 503, flags: str = "UF", hint: str | None = None,
        before_response: bool = True,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.flags = flags
        self.before_response = before_response  # nothing came back: safe to replay on another connection
