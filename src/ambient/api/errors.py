"""Errors of the object API (validation, store, server, client). One base: `ApiError`.

Each error maps to an HTTP status on the API server and back to the same class in the client, so that a
CLI user sees the same message whether the error was raised locally or by the server.
"""

from __future__ import annotations

from typing import Any

from ambient.core.errors import AmbientError


class ApiError(AmbientError):
    """Base of the object API's errors. `status` is the HTTP status the server answers with; `details`, when
    set, is sent as the Kubernetes Status `details` (kind, group, causes)."""

    status: int = 500
    reason: str = "InternalError"
    details: dict[str, Any] | None = None


class UnknownKindError(ApiError):
    status = 400
    reason = "UnknownKind"


class ValidationError(ApiError):
    """A manifest or object is malformed. The message names the document, the field and what was expected."""

    status = 422
    reason = "Invalid"


class UnknownFieldError(ValidationError):
    """An object has fields its kind does not define (strict field validation). HTTP 400, reason BadRequest,
    as the Kubernetes API server answers a `strict decoding error`."""

    status = 400
    reason = "BadRequest"


class BadRequestError(ValidationError):
    """A malformed request (not JSON, wrong kind for the URL, a bad query parameter...). HTTP 400, reason
    BadRequest."""

    status = 400
    reason = "BadRequest"


class TooLargeError(ApiError):
    """A request body or an object is over a size limit (HTTP 413, as Kubernetes)."""

    status = 413
    reason = "RequestEntityTooLarge"


class NotFoundError(ApiError):
    status = 404
    reason = "NotFound"


class AlreadyExistsError(ApiError):
    status = 409
    reason = "AlreadyExists"


class ConflictError(ApiError):
    """The object changed since it was read (resourceVersion mismatch): re-read and retry."""

    status = 409
    reason = "Conflict"


class ApplyConflictError(ConflictError):
    """A server-side apply would change fields another field manager owns (HTTP 409, reason Conflict, one
    `FieldManagerConflict` cause per field, as kube-apiserver answers); `force=true` takes them over."""

    def __init__(self, message: str, *, causes: list[dict[str, str]], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.details = {"causes": causes}


class GoneError(ApiError):
    """A watch asked for a resource version older than the store keeps: re-list, then watch again."""

    status = 410
    reason = "Expired"


class UnavailableError(ApiError):
    """The API server cannot be reached."""

    status = 503
    reason = "ServiceUnavailable"
