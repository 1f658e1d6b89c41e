"""HTTP/1.1 protocol upgrades (WebSocket) through the waypoint, as Envoy does them.

A downstream HTTP/1.1 request with `Upgrade: <protocols>` and `Connection: upgrade` is routed and authorized
like any request, then forwarded on a new dedicated upstream connection with its `Upgrade` and
`Connection: upgrade` headers (Sec-WebSocket-* are end-to-end headers and pass as they are). When the backend
answers `101 Switching Protocols`, the 101 goes downstream and the two connections are spliced byte for byte
(`splice`) until both directions ended; any other answer is an ordinary response.

The decisions are pure functions here (`requested_upgrade`, `upstream_headers`, `switching_headers`);
`ambient.waypoint.http1` and `ambient.waypoint.server` do the I/O.

Invariants:
- An upgraded upstream connection is never pooled and never reused; the upgraded downstream connection
  carries no further HTTP request.
- An upgrade request with a body (Content-Length > 0 or chunked) is refused with 400, as Envoy does: the
  bytes after its head belong to the new protocol, not to a body.
- `h2c` is not an upgrade the waypoint performs (it speaks HTTP/2 by prior knowledge only): such a request
  is forwarded as a plain request with the hop-by-hop headers removed, as before upgrades existed.
- Only WebSocket is upgraded (`allowed`), as Istio configures Envoy by default: a request for any other
  protocol is answered 403 without reaching a backend.
- HTTP/2 downstream (extended CONNECT, RFC 8441) is not supported: its requests never carry `upgrade`.
"""

from __future__ import annotations

from ambient.hbone.pipe import ByteStream, CopyResult, copy_bidirectional
from ambient.waypoint.messages import strip_hop_by_hop

# Upgrade tokens never performed (see the module docstring)
_NOT_UPGRADES = frozenset({"h2c"})
ALLOWED_UPGRADES = frozenset({"websocket"})


def _tokens(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [t.strip() for k, v in headers if k == name for t in v.split(",") if t.strip()]


def requested_upgrade(headers: list[tuple[str, str]]) -> str | None:
    """The `Upgrade` value of a request asking for an upgrade (lower-cased header names, as received, hop-by-hop
    headers still present), or None: both `Upgrade` and a `Connection` naming `upgrade` are required."""
    if not any(t.lower() == "upgrade" for t in _tokens(headers, "connection")):
        return None
    protocols = _tokens(headers, "upgrade")
    if not protocols or all(p.split("/", 1)[0].lower() in _NOT_UPGRADES for p in protocols):
        return None
    return ", ".join(p for p in protocols if p.split("/", 1)[0].lower() not in _NOT_UPGRADES)


def allowed(protocols: str) -> bool:
    """Whether every protocol of a requested upgrade (`requested_upgrade`'s value) may be performed."""
    return all(p.strip().split("/", 1)[0].lower() in ALLOWED_UPGRADES for p in protocols.split(","))


def upstream_headers(headers: list[tuple[str, str]], protocol: str) -> list[tuple[str, str]]:
    """The forwarded request's headers (already free of hop-by-hop headers) plus the upgrade ones."""
    return [*headers, ("connection", "upgrade"), ("upgrade", protocol)]


def switching_headers(headers: list[tuple[str, str]], requested: str) -> list[tuple[str, str]]:
    """The downstream 101's headers from the backend's 101: its end-to-end headers (Sec-WebSocket-Accept ...),
    `Connection: upgrade` and the backend's `Upgrade` (the requested one when the backend named none)."""
    chosen = ", ".join(_tokens(headers, "upgrade")) or requested
    return [*strip_hop_by_hop(headers), ("connection", "upgrade"), ("upgrade", chosen)]


async def splice(down: ByteStream, down_buffered: bytes, up: ByteStream, up_buffered: bytes) -> CopyResult:
    """Copy bytes both ways until both directions ended (EOF propagated as a half-close), starting with what
    either side's HTTP parser had already buffered after the heads. `a_to_b` counts downstream -> upstream.
    Raises the first I/O error (the other direction is cancelled); the caller closes the streams."""
    if up_buffered:
        await down.write(up_buffered)
    if down_buffered:
        await up.write(down_buffered)
    result = await copy_bidirectional(down, up)
    result.a_to_b += len(down_buffered)
    result.b_to_a += len(up_buffered)
    return result
