"""Errors of the local hermetic cluster (network, CNI runtime, component lifecycle, DNS).

`ClusterError` is the one base of this package; every subclass carries an actionable message and, where we
know one, a hint (what command to run next).
"""

from __future__ import annotations

from ambient.core.errors import AmbientError


class ClusterError(AmbientError):
    """Base of every deliberate error raised by `ambient.cluster`."""


class NotRootError(ClusterError):
    """The operation needs root (network namespaces, routes, firewall rules)."""


class ClusterExistsError(ClusterError):
    """A cluster with that name (or leftovers of it) already exists."""


class ClusterNotFoundError(ClusterError):
    """No cluster with that name is known on this machine."""


class InvalidClusterNameError(ClusterError):
    """The cluster name cannot be used to derive namespace and interface names."""


class NetworkSetupError(ClusterError):
    """A command that builds the cluster network failed (ip, nft, sysctl)."""


class CniError(ClusterError):
    """A CNI plugin failed; `code` and `details` come from the plugin's error result."""

    def __init__(self, message: str, *, hint: str | None = None, code: int | None = None,
                 details: str = "") -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.details = details


class ComponentError(ClusterError):
    """A cluster component (apiserver, dns, kubelet, ...) could not be started or did not become healthy."""


class SupervisorSettingsError(ClusterError):
    """A restart-policy setting of the cluster supervisor (AMBIENT_RESTART_*) is not a valid number."""
