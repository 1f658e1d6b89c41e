"""Sans-IO pieces of HBONE: CONNECT request building and parsing, authorities, the standard headers,
response status handling and the HTTP/2 settings (protocols.md section 2). No sockets here: every
function is pure and tested on its own.

Invariants:
- `:authority` is always `<ip>:<port>` with IPv6 in brackets; parsing rejects host names, zone ids,
  ports outside 1..65535 and anything with extra characters.
- Identity never comes from headers: `ConnectRequest` carries the headers only for logging/telemetry.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast

from hpack.struct import NeverIndexedHeaderTuple

from ambient.hbone.errors import BadConnectRequest, HboneStatusError

# HTTP/2 settings of the reference implementation.
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_FRAME_SIZE = 1024 * 1024
SERVER_MAX_CONCURRENT_STREAMS = 200
CLIENT_STREAMS_PER_CONNECTION = 100
SERVER_MAX_HEADER_LIST = 64 * 1024
CLIENT_MAX_HEADER_LIST = 16 * 1024
PING_INTERVAL = 10.0
PING_TIMEOUT = 20.0
POOL_IDLE_TIMEOUT = 300.0
POOL_SPARE_IDLE_TIMEOUT = 1.0  # an idle connection beside another one of its key closes after this

BAGGAGE_KEYS = (
    "k8s.cluster.name",
    "k8s.namespace.name",
    "k8s.deployment.name",
    "k8s.pod.name",
    "k8s.job.name",
    "k8s.cronjob.name",
    "service.name",
    "service.version",
)

_STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    503: "Service Unavailable",
}


@lru_cache(maxsize=1024)
def _host(ip: str) -> str:
    """The authority's host part of an IP string (bracketed for IPv6); raises ValueError. Cached: the
    proxy formats the same few pod addresses for every connection."""
    addr = ipaddress.ip_address(ip)
    return f"[{addr.compressed}]" if addr.version == 6 else addr.compressed


def format_authority(ip: str, port: int) -> str:
    """`10.0.0.1:80` / `[fd00::1]:80`."""
    host = _host(ip)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return f"{host}:{port}"


def parse_authority(authority: str) -> tuple[str, int]:
    """Parse `<ip>:<port>` (IPv6 bracketed) into (ip, port); raise `BadConnectRequest` (400)."""
    return _parse_authority(authority) if isinstance(authority, str) else _parse_authority_uncached(authority)


def _parse_authority_uncached(authority: str) -> tuple[str, int]:
    if not authority or len(authority) > 64:
        raise BadConnectRequest(f"bad authority {authority!r}: expected <ip>:<port>")
    if authority.startswith("["):
        host, sep, port_s = authority[1:].partition("]:")
        if not sep:
            raise BadConnectRequest(f"bad authority {authority!r}: expected [<ipv6>]:<port>")
    else:
        host, sep, port_s = authority.rpartition(":")
        if not sep or ":" in host:
            raise BadConnectRequest(f"bad authority {authority!r}: expected <ip>:<port>")
    if "%" in host:  # IPv6 zone ids are local to a host: never a valid tunnel target
        raise BadConnectRequest(f"bad authority {authority!r}: zone ids are not allowed")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise BadConnectRequest(f"bad authority {authority!r}: {host!r} is not an IP address") from None
    if authority.startswith("[") != (addr.version == 6):
        raise BadConnectRequest(f"bad authority {authority!r}: IPv6 must be bracketed, IPv4 must not")
    if not port_s.isdigit() or len(port_s) > 5 or not 0 < int(port_s) < 65536:
        raise BadConnectRequest(f"bad authority {authority!r}: port must be 1..65535")
    return addr.compressed, int(port_s)


# Pure and called for every CONNECT on both sides with a handful of distinct values (pod ip:port):
# successes are cached (a malformed authority raises and is never cached).
_parse_authority = lru_cache(maxsize=4096)(_parse_authority_uncached)


def make_baggage(values: Mapping[str, str | None]) -> str:
    """Comma-joined `k=v` in the reference key order; empty values omitted; unknown keys appended."""
    order = [k for k in BAGGAGE_KEYS if k in values] + sorted(k for k in values if k not in BAGGAGE_KEYS)
    return ",".join(f"{k}={values[k]}" for k in order if values[k])


def parse_baggage(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep and key:
            out[key.strip()] = value.split(";", 1)[0].strip()
    return out


def make_forwarded(src_ip: str, src_port: int, host: str | None = None) -> str:
    """`for="<src ip:port>"` (+ `;host=<svc hostname>` when the target is a known Service)."""
    value = f'for="{format_authority(src_ip, src_port)}"'
    return f"{value};host={host}" if host else value


def make_traceparent() -> str:
    """W3C traceparent `00-<32 hex>-<16 hex>-00`, random per connection (os.urandom, as `secrets` uses;
    one call for both ids)."""
    ids = os.urandom(24).hex()
    return f"00-{ids[:32]}-{ids[32:]}-00"


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def trace_id_of(traceparent: str | None) -> str:
    """The 32-hex trace id of a W3C `traceparent` (the connection's correlation id, logged by every hop),
    or "" when the header is absent or malformed (a peer's value is never logged unchecked)."""
    if not traceparent:
        return ""
    m = _TRACEPARENT.fullmatch(traceparent)
    return m.group(1) if m is not None and m.group(1) != "0" * 32 else ""


def child_traceparent(trace_id: str) -> str:
    """A new `traceparent` continuing trace `trace_id` (a new parent id; a hop that opens its own
    upstream connection, the waypoint, keeps the correlation id); a fresh one when `trace_id` is empty."""
    if not trace_id:
        return make_traceparent()
    return f"00-{trace_id}-{os.urandom(8).hex()}-00"


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A parsed CONNECT: the target from `:authority` and the other (non-pseudo) headers."""

    authority: str
    target_ip: str
    target_port: int
    headers: Mapping[str, str] = field(default_factory=dict)
    # Set by the server: the address the client dialled (ours) and the client's address.
    local_addr: tuple[Any, ...] | None = None
    remote_addr: tuple[Any, ...] | None = None

    @property
    def baggage(self) -> dict[str, str]:
        return parse_baggage(self.headers.get("baggage", ""))

    @property
    def forwarded(self) -> str | None:
        return self.headers.get("forwarded")

    @property
    def traceparent(self) -> str | None:
        return self.headers.get("traceparent")


_BAD_NAME_CHARS = frozenset(" \t\r\n\0:")
_BAD_VALUE_CHARS = frozenset("\r\n\0")


def _never_indexed(name: str, value: str) -> tuple[str, str]:
    """A header tuple HPACK encodes as a literal that is never added to the dynamic table."""
    return cast(tuple[str, str], NeverIndexedHeaderTuple(name, value))


def build_connect_headers(
    authority: str,
    *,
    baggage: Mapping[str, str | None] | str | None = None,
    forwarded: str | None = None,
    traceparent: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """Header list of a CONNECT request. `baggage`, `forwarded`, `traceparent` are always sent
    (traceparent generated when not given)."""
    parse_authority(authority)  # never send what our own server would reject
    bag = baggage if isinstance(baggage, str) else make_baggage(baggage or {})
    headers = [
        (":method", "CONNECT"),
        (":authority", authority),
        ("baggage", bag),
        # Unique per connection (client port, trace id): never put into the HPACK dynamic table. Indexing
        # them only evicted the stable entries (authority, baggage) and made every encode search and
        # shrink a full table.
        _never_indexed("forwarded", forwarded or ""),
        _never_indexed("traceparent", traceparent or make_traceparent()),
    ]
    taken = {"baggage", "forwarded", "traceparent"}
    for k, v in (extra or {}).items():
        lk = k.lower()
        if lk.startswith(":") or lk in taken:
            continue
        # h2 does not re-validate our outbound headers (connection.py): refuse what HTTP/2 forbids here.
        if not lk or any(c in lk for c in _BAD_NAME_CHARS) or any(c in v for c in _BAD_VALUE_CHARS):
            raise ValueError(f"invalid CONNECT header {k!r}")
        headers.append((lk, v))
    return headers


def parse_connect_request(headers: Iterable[tuple[str, str]]) -> ConnectRequest:
    """Validate an incoming request header list; raise `BadConnectRequest` (400) unless it is a
    CONNECT with an `<ip>:<port>` authority or a `<hostname>:<port>` one (a Service hostname, as ztunnel
    accepts; then `target_ip` is empty and the handler resolves the name)."""
    method = authority = None
    regular: dict[str, str] = {}
    for name, value in headers:
        if name == ":method":
            method = value
        elif name == ":authority":
            authority = value
        elif not name.startswith(":"):
            # Repeated headers are joined like HTTP does; they are informational only.
            regular[name] = f"{regular[name]}, {value}" if name in regular else value
    if method != "CONNECT":
        raise BadConnectRequest(f"method {method!r} is not CONNECT")
    if authority is None:
        raise BadConnectRequest("CONNECT without :authority")
    try:
        ip, port = parse_authority(authority)
    except BadConnectRequest:
        named = _hostname_authority(authority)
        if named is None:
            raise
        ip, port = "", named  # a Service hostname: the receiver resolves it (target_ip stays empty)
    return ConnectRequest(authority, ip, port, regular)


_HOSTNAME = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?:([0-9]{1,5})",
                       re.IGNORECASE)


def _hostname_authority(authority: str) -> int | None:
    """The port of a `<dns name>:<port>` authority (`web.shop.svc.cluster.local:80`), else None."""
    m = _HOSTNAME.fullmatch(authority) if len(authority) <= 260 else None
    return int(m.group(1)) if m is not None and 0 < int(m.group(1)) < 65536 else None


def response_headers(status: int) -> list[tuple[str, str]]:
    return [(":status", str(status))]


def check_response(headers: Iterable[tuple[str, str]], *, peer: str, authority: str) -> None:
    """Raise `HboneStatusError` unless the response status is 200."""
    status_s = next((v for k, v in headers if k == ":status"), None)
    try:
        status = int(status_s or "")
    except ValueError:
        raise HboneStatusError(0, f"HBONE peer {peer} sent an invalid status {status_s!r}") from None
    if status == 200:
        return
    text = _STATUS_TEXT.get(status, "")
    why = {
        400: "the CONNECT was malformed or its authority does not match the dialled address",
        401: "denied by authorization policy at the destination",
        503: "the destination could not reach the target (unknown workload, port, or upstream down)",
    }.get(status, "unexpected status")
    raise HboneStatusError(
        status, f"HBONE CONNECT to {authority} via {peer} failed: {status} {text}: {why}".replace("  ", " ")
    )
