"""The root of every error the project raises on purpose.

Each package defines one base class deriving from `AmbientError` (e.g. `api.errors.ApiError`), and
raises subclasses of it. Every error carries a message that says what went wrong and, where we know it,
a `hint` that says what the user can do about it. The CLI prints `error: <message>` (+ `hint: ...`) and
exits non-zero; it never prints a traceback for an `AmbientError`.
"""

from __future__ import annotations


class AmbientError(Exception):
    """Base of all deliberate errors. `hint` is an optional next step for the user."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message
