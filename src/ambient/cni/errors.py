"""Errors of the `cni` package (rule builders, rule application, the chained CNI plugin helpers).

Invariant: every deliberate error raised by `ambient.cni` derives from `CniError`, so callers (the node
agent, the CLI) can catch one class and print its message and hint.
"""

from __future__ import annotations

from ambient.core.errors import AmbientError


class CniError(AmbientError):
    """Base of every error raised on purpose by `ambient.cni`."""


class RuleApplyError(CniError):
    """A firewall/routing command failed while applying, verifying or removing redirection rules."""


class PluginInstallError(CniError):
    """The chained plugin could not be installed into / removed from the node's CNI configuration."""
