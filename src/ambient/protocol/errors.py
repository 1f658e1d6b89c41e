"""The protocol package's error base: malformed wire data (DNS messages today)."""

from __future__ import annotations

from ambient.core.errors import AmbientError


class ProtocolError(AmbientError):
    """Malformed or unsupported wire data."""
