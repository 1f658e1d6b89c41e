"""The dashboard's one error base: what stops it from reading a cluster (kubectl missing, no access)."""

from __future__ import annotations

from ambient.core.errors import AmbientError


class DashboardError(AmbientError):
    """The dashboard cannot read its sources (the message says which and why; the hint what to do)."""
