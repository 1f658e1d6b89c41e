"""Errors of the Kubernetes support package. One base: `KubeError`.

`KubeGoneError` also derives from the local API's `GoneError`, so a consumer written against the local
source (catch `GoneError`, re-list) handles an expired Kubernetes watch the same way.
"""

from __future__ import annotations

from ambient.api.errors import GoneError
from ambient.core.errors import AmbientError


class KubeError(AmbientError):
    """Base of every error raised on purpose by `ambient.kube`. `status` is the HTTP status, if any."""

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class KubeConfigError(KubeError):
    """No usable cluster configuration (neither in-cluster service account nor kubeconfig)."""


class KubeApiError(KubeError):
    """The Kubernetes API answered with an error status, or could not be reached (status None)."""


class KubeGoneError(KubeApiError, GoneError):
    """410 Gone / Expired: the resource version is too old; list again and watch from the new version."""


class KubeAuthError(KubeError):
    """A token was refused (invalid, wrong audience, not bound to a live pod). The message says why."""
