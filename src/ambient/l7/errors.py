"""Errors of the l7 package. `L7Error` is the one base class.

Messages name the object (HTTPRoute `ns/name`, the field path): they surface in the waypoint's log, in
`ambient waypoint status` and in the route's status written by the control plane.
"""

from __future__ import annotations

from ambient.core.errors import AmbientError


class L7Error(AmbientError):
    """Base of every error raised by `ambient.l7`."""


class ConfigError(L7Error):
    """An HTTPRoute (or a filter in it) could not be turned into route config."""
