"""Errors of the gateway package. `GatewayError` is the one base class."""

from __future__ import annotations

from ambient.core.errors import AmbientError


class GatewayError(AmbientError):
    """Base of every error raised by `ambient.gateway`."""


class ListenerConfigError(GatewayError):
    """A listener cannot be served (its certificate Secret is missing or unusable)."""
