"""Errors of the Kubernetes support package. One base: `KubeError`.

The API-level errors also derive from the local API's classes (`KubeApiError` is an `ApiError`,
`KubeUnavailableError` an `UnavailableError`, `KubeGoneError` a `GoneError`), so a consumer written against
the local source (`ambient.api.informer.inform`: re-list on GoneError, back off on
UnavailableError) handles the Kubernetes source the same way.
"""

from __future__ import annotations

from ambient.api.errors import ApiError, GoneError, UnavailableError
from ambient.core.errors import AmbientError


class KubeError(AmbientError):
    """Base of every error raised on purpose by `ambient.kube`. `http_status`: the API's HTTP status, if any."""

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.http_status = status


class KubeConfigError(KubeError):
    """No usable cluster configuration (neither in-cluster service account nor kubeconfig)."""


class KubeApiError(KubeError, ApiError):
    """The Kubernetes API answered with an error status (`http_status`)."""


class KubeUnavailableError(KubeApiError, UnavailableError):
    """The Kubernetes API could not be reached, or a stream broke (`http_status` None)."""


class KubeGoneError(KubeApiError, GoneError):
    """410 Gone / Expired: the resource version is too old; list again and watch from the new version."""


class KubeAuthError(KubeError):
    """A token was refused (invalid, wrong audience, not bound to a live pod). The message says why."""
