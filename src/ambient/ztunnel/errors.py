"""Errors of the node proxy package. `ZtunnelError` is the one base class.

Messages name the pod, the address and the reason, because they surface in lifecycle logs and in the
access log `error=` field a user debugs from.
"""

from __future__ import annotations

from ambient.core.errors import AmbientError


class ZtunnelError(AmbientError):
    """Base of every error raised by `ambient.ztunnel` (outside the pure route/accesslog modules)."""


class ConfigError(ZtunnelError):
    """The proxy's settings or inputs (static file, CA dir, flags) are unusable."""


class UpstreamError(ZtunnelError):
    """Connecting to the destination (app, peer proxy, passthrough target) failed."""


class ListenerError(ZtunnelError):
    """A listener could not be created (in a pod netns or in the proxy's own netns)."""
