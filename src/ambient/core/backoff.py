"""Exponential backoff between retries, shared by the reconnect and retry loops (ZDS, xDS, certificates, ...).

Role: a retry loop asks `next()` for how long to sleep before its next attempt and calls `reset()` when an
attempt succeeded. Delays start at `initial` and double after every `next()` up to `maximum`.

Invariants:
- Without jitter (the default) the delays are exactly `initial, 2*initial, 4*initial, ..., maximum, maximum`
  (doubling a float is exact, so the sequence has no rounding drift) and no random number is drawn.
- With `jitter=j` each returned delay is the un-jittered one times `random.uniform(1 - j, 1 + j)`; the
  jitter never feeds back into the sequence, which still doubles from the un-jittered value.
- `current` is the un-jittered delay the next `next()` is based on; reading it changes nothing.
- Never overflows: the stored delay is capped at `maximum` after each doubling.
- `initial` and `maximum` are used as given (no validation): with `maximum` below `initial` the first delay
  is `initial` and every later one `maximum`.
"""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff from `initial` to `maximum` seconds (x2 per `next()`), back to `initial` on `reset()`."""

    def __init__(self, initial: float, maximum: float, *, jitter: float = 0.0) -> None:
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"backoff jitter must be in [0, 1), got {jitter}")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self._next = initial

    def __repr__(self) -> str:
        return f"<Backoff {self.initial}..{self.maximum}s next={self._next}s jitter={self.jitter}>"

    @property
    def current(self) -> float:
        """The un-jittered delay the next `next()` returns (before jitter); does not advance."""
        return self._next

    def next(self) -> float:
        """The delay to wait now (jittered if configured); the following one is twice as long (capped)."""
        delay = self._next
        if self.jitter:
            delay *= random.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        """After a success: the next delay is `initial` again."""
        self._next = self.initial
