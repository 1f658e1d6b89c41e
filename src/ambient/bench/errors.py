"""Errors of the benchmark harness (`make bench`).

`BenchError` is the one base class of this package. A section that raises it (or anything else) is
reported as "not available: <reason>" in the results; it never aborts the other sections.
"""

from __future__ import annotations

from ambient.core.errors import AmbientError


class BenchError(AmbientError):
    """A benchmark could not be set up or did not produce a figure."""


class ToolMissing(BenchError):
    """An external tool (iperf3, stunnel4, ...) the benchmark needs is not installed."""

    def __init__(self, tool: str) -> None:
        super().__init__(f"{tool} is not installed", hint="run scripts/bootstrap.sh (make bootstrap)")
