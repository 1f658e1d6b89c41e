"""The error base of the `runtime` package (what proxy processes share at run time)."""

from __future__ import annotations

from ambient.core.errors import AmbientError


class ProcessRuntimeError(AmbientError):
    """Base of the errors raised by `ambient.runtime`."""
