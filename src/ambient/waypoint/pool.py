"""The waypoint's idle upstream connections: HTTP/1.1 keep-alive connections (each over its own HBONE
tunnel) per endpoint, reused by later requests like Envoy's connection pool.

Invariants: only a connection whose last exchange ended cleanly and that may be reused (`reusable`: no
`Connection: close`, nothing unread, not upgraded) goes back; at most `max_idle_per_key` per key; no
background task: staleness (idle timeout, peer closed) is checked when a connection is taken. A connection
is given back with a `tag` (how it was opened: the DestinationRule TLS origination and credential, None for
plain) and taken only by a request with the same tag: after a DestinationRule or its credential Secret
changes, a request never rides a connection opened the old way (a plain one after TLS was required, one
authenticated with a rotated-out client certificate); such a connection is closed when its key is next taken.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable

from ambient.waypoint.h2client import Http2Upstream
from ambient.waypoint.http1 import Http1Upstream

Upstream = Http1Upstream | Http2Upstream
PoolKey = tuple[str, str, int, bool]  # workload uid, ip, port, HTTP/2


class UpstreamPool:
    """Idle HTTP/1.1 upstream connections per endpoint, reused by later requests (no background task:
    staleness is checked when a connection is taken)."""

    def __init__(self, max_idle_per_key: int = 16, idle_timeout: float = 60.0) -> None:
        self.max_idle = max_idle_per_key
        self.idle_timeout = idle_timeout
        self._idle: dict[PoolKey, deque[tuple[Upstream, float, Hashable]]] = {}

    def take(self, key: PoolKey, tag: Hashable = None) -> Upstream | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            upstream, since, opened_as = idle.pop()
            if opened_as == tag and now - since < self.idle_timeout and not getattr(upstream.stream, "at_eof", False):
                return upstream
            upstream.close()
        return None

    def give(self, key: PoolKey, upstream: Upstream, tag: Hashable = None) -> None:
        idle = self._idle.setdefault(key, deque())
        if not upstream.reusable or len(idle) >= self.max_idle:
            upstream.close()
            return
        idle.append((upstream, time.monotonic(), tag))

    def close_all(self) -> None:
        for idle in self._idle.values():
            for upstream, _, _ in idle:
                upstream.close()
        self._idle.clear()
