"""Inbound admission control of the node proxy: who may open one more connection or HBONE stream to a
local app, decided before the proxy dials the app.

Limits (one `Admission` per proxy process, shared by every pod it serves; `Settings` holds the values):
- per source IP: at most `per_source` concurrent inbound connections + HBONE streams (one pod cannot take
  the node proxy's file descriptors from the others);
- per proxy: at most `total` concurrent inbound connections + streams across all sources;
- early resets: a source whose streams ended before their tunnel opened (HTTP/2 rapid reset: the client
  resets the CONNECT before the 200) more than `early_resets` times in `window` seconds, across all its
  HBONE connections, is refused until that window ends. The HTTP/2 layer's own per-connection guard
  (GOAWAY) does not stop a client that reconnects.

A refusal is a reason string from `REASONS` (counted by the caller); HBONE answers it with 503, plaintext
resets the connection. Each limit is off when set to 0.

Invariants: every `admit()` that returned None is paired with exactly one `release()` of the same source
(callers release in a `finally`); every operation is O(1) amortised (dict lookups, a counter per source);
the per-source tables hold only sources with live connections or a current reset window, and the reset
table is swept of expired windows when it grows, so memory is bounded by the active sources.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE_LIMIT = "source_limit"
PROXY_LIMIT = "proxy_limit"
EARLY_RESETS = "early_resets"
REASONS = (SOURCE_LIMIT, PROXY_LIMIT, EARLY_RESETS)

DEFAULT_PER_SOURCE = 1024
DEFAULT_TOTAL = 8192
DEFAULT_EARLY_RESETS = 100
DEFAULT_EARLY_RESET_WINDOW = 10.0

_SWEEP_AT = 4096  # reset-window entries before expired ones are dropped


@dataclass(frozen=True)
class Limits:
    per_source: int = DEFAULT_PER_SOURCE
    total: int = DEFAULT_TOTAL
    early_resets: int = DEFAULT_EARLY_RESETS
    window: float = DEFAULT_EARLY_RESET_WINDOW


class _Window:
    __slots__ = ("count", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0


class Admission:
    """Counters for the limits above; `admit(src, now)` -> None (admitted) or a refusal reason."""

    __slots__ = ("_active", "_resets", "limits", "log_gate", "total")

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.log_gate = LogGate()  # refusal log lines: at most one per (source, reason) per second
        self._active: dict[str, int] = {}
        self._resets: dict[str, _Window] = {}
        self.total = 0

    def active(self, src: str) -> int:
        return self._active.get(src, 0)

    def admit(self, src: str, now: float) -> str | None:
        lim = self.limits
        if lim.early_resets:
            w = self._resets.get(src)
            if w is not None:
                if now - w.start >= lim.window:
                    del self._resets[src]
                elif w.count > lim.early_resets:
                    return EARLY_RESETS
        n = self._active.get(src, 0)
        if lim.per_source and n >= lim.per_source:
            return SOURCE_LIMIT
        if lim.total and self.total >= lim.total:
            return PROXY_LIMIT
        self._active[src] = n + 1
        self.total += 1
        return None

    def release(self, src: str) -> None:
        n = self._active.get(src, 0)
        if n <= 1:
            self._active.pop(src, None)
        else:
            self._active[src] = n - 1
        if self.total > 0:
            self.total -= 1

    def early_reset(self, src: str, now: float) -> None:
        """A stream of `src` ended before its tunnel opened."""
        if not self.limits.early_resets:
            return
        w = self._resets.get(src)
        if w is None or now - w.start >= self.limits.window:
            if w is None and len(self._resets) >= _SWEEP_AT:
                self._sweep(now)
            w = self._resets[src] = _Window(now)
        w.count += 1

    def _sweep(self, now: float) -> None:
        window = self.limits.window
        for key in [k for k, w in self._resets.items() if now - w.start >= window]:
            del self._resets[key]


class LogGate:
    """At most one log line per key per `interval` seconds: `allow(key, now)` is None (stay quiet) or the
    number of lines suppressed since the last one. Bounded: a full table is emptied."""

    __slots__ = ("_last", "interval", "limit")

    def __init__(self, interval: float = 1.0, limit: int = 4096) -> None:
        self.interval = interval
        self.limit = limit
        self._last: dict[object, list[float]] = {}  # key -> [time of the last line, suppressed since]

    def allow(self, key: object, now: float) -> int | None:
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        if entry is None and len(self._last) >= self.limit:
            self._last.clear()
        skipped = int(entry[1]) if entry is not None else 0
        self._last[key] = [now, 0]
        return skipped

