"""Errors of the command line. One base: `CliError`; `UsageError` exits 2 like a bad option does."""

from __future__ import annotations

from ambient.core.errors import AmbientError


class CliError(AmbientError):
    """A failure the CLI detected itself (bad arguments, unreadable file, timeout)."""


class UsageError(CliError):
    """The command line itself is wrong (exit code 2, like a usage error reported by the parser)."""

    exit_code = 2


class WaitTimeoutError(CliError):
    """`ambient wait` gave up before the condition was met."""
