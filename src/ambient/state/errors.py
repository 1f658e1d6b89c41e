"""Errors of the node proxy's state package (model validation, stores). One base: `StateError`."""

from __future__ import annotations

from ambient.core.errors import AmbientError


class StateError(AmbientError):
    """Base of the state package's errors."""


class InvalidResourceError(StateError):
    """A resource handed to the model or the store is malformed (bad address length, empty uid, ...)."""


class WriterTakenError(StateError):
    """A second writer was requested for a store: every store has exactly one writer."""
