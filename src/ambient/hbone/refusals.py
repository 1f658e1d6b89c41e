"""Process-wide counts of what the HBONE layer refused, by reason.

Role: the HBONE server (handshake limits, failed handshakes, identity) and every HBONE connection (header
block cap, HTTP/2 flood guards) count each refusal here; the node proxy's metrics endpoint exports the
counts (`ambient_hbone_refusals_total{reason=...}`, see `ambient.ztunnel.metrics`).

Invariants: the reasons are the fixed set `REASONS` (a bounded label set; counting an unknown reason is a
programming error and raises KeyError); counting is one dict increment, never on the DATA path.
"""

from __future__ import annotations

REASONS: tuple[str, ...] = (
    "handshake_timeout",  # no ClientHello, or an unfinished TLS handshake, within the handshake timeout
    "handshake_failed",  # TLS handshake failed (bad certificate, no common protocol, reset, ...)
    "too_many_handshakes",  # the listener's cap on pending handshakes was reached
    "too_many_handshakes_from_source",  # the per-source-address cap on pending handshakes was reached
    "identity_rejected",  # verified certificate, but the peer is not acceptable (trust domain, SAN)
    "no_certificate",  # the local workload has no certificate (yet): nothing to handshake with
    "header_block_too_large",  # HEADERS + CONTINUATION past the header list limit (CONTINUATION flood)
    "rapid_reset",  # too many streams reset before their response (CVE-2023-44487)
    "ping_flood",
    "settings_flood",
)

_counts: dict[str, int] = dict.fromkeys(REASONS, 0)


def count(reason: str) -> None:
    """Count one refusal; `reason` must be one of `REASONS`."""
    _counts[reason] += 1


def snapshot() -> dict[str, int]:
    """The counts so far, every reason present (0 when never seen)."""
    return dict(_counts)
