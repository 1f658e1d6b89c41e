"""Access log lines in the reference node proxy's format (protocols.md section 6).

One `ConnectionRecord` per proxied connection leg; `format_text` renders it exactly like the reference:

    <time>  info  access  connection complete  src.addr=.. src.workload=.. ... duration="61ms"

Fields appear in the reference order (ztunnel's `src/proxy/metrics.rs`), missing values are omitted; the
values ztunnel logs as strings are quoted (workload, namespace, identity, cluster, service, direction,
duration, error), addresses and byte counts are not. Byte counts are the reporter's own view: the source
proxy's `bytes_sent` is what the client sent, the destination proxy's `bytes_sent` is what the server sent
back. Successful connections log at INFO as `connection complete`; a connection that ended in an
error logs at ERROR with `error="..."`; an early rejection (before a destination was chosen) logs at WARN as
`connection failed` with only src.addr, dst.addr, direction and error.

Beyond the reference, a proxy running with trace ids (the default) adds `route=`, `authz=`, `dst.original=`
(source leg: the ip:port the app dialled), `hbone_conn=` (source leg: `new` when its CONNECT was the first
stream of the HBONE connection, else `pooled`), `closed_by=` (which side ended the relay first, see
`CLOSED_BY`) and `trace_id=` after `duration` (see `ConnectionRecord`): `ambient trace` joins the hops of one
connection by `trace_id`.

The node proxy's DNS proxy, with trace ids on, writes one `query answered` line per answered query to the same
stream (`format_dns`): ztunnel's DNS access-log fields (src.workload, src.namespace, query, domain, result)
plus the client address, the answer's addresses, who answered (`Service ns/name`, `ServiceEntry ns/name` from
the mesh state, or `upstream host:port`), the rcode and the duration. `ambient trace` joins a connection to
the answer that gave the address its app dialled.

Pure: rendering never touches the network; `parse_fields` lets tests and tools read a line back.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Direction = Literal["inbound", "outbound"]

# (field name in the line, attribute, quoted?) in the reference order. The first part names the two ends of
# a connection and is shared with the waypoint's request lines.
CONNECTION_FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("src.addr", "src_addr", False),
    ("src.workload", "src_workload", True),
    ("src.namespace", "src_namespace", True),
    ("src.identity", "src_identity", True),
    ("src.cluster", "src_cluster", True),
    ("dst.addr", "dst_addr", False),
    ("dst.hbone_addr", "dst_hbone_addr", False),
    ("dst.service", "dst_service", True),
    ("dst.workload", "dst_workload", True),
    ("dst.namespace", "dst_namespace", True),
    ("dst.identity", "dst_identity", True),
    ("dst.cluster", "dst_cluster", True),
    ("direction", "direction", True),
)
_FIELDS: tuple[tuple[str, str, bool], ...] = (
    *CONNECTION_FIELDS,
    ("bytes_sent", "bytes_sent", False),
    ("bytes_recv", "bytes_recv", False),
    ("duration", "duration", True),
    ("route", "route", True),
    ("authz", "authz", True),
    ("dst.original", "original", False),
    ("hbone_conn", "hbone_conn", False),
    ("closed_by", "closed_by", False),
    ("trace_id", "trace_id", False),
    ("error", "error", True),
)


# `closed_by=`: which side of a relayed connection ended first. "client" is the side that opened it (the app
# for the source node proxy, the tunnel for the destination proxy), "server" the other one.
CLOSED_BY: dict[str, str] = {
    "client": "the client ended its side first (FIN / END_STREAM)",
    "server": "the server ended its side first (FIN / END_STREAM)",
    "client_reset": "the client reset the connection (RST / RST_STREAM)",
    "server_reset": "the server reset the connection (RST / RST_STREAM)",
    "client_error": "the client side failed (socket or tunnel error)",
    "server_error": "the server side failed (socket or tunnel error)",
    "drain": "the node proxy cut it at its drain deadline",
    "policy": "the node proxy cut it: a policy change denies it now",
    "error": "the node proxy ended it on an error before either side ended",
}


@dataclass
class ConnectionRecord:
    """What the proxy knows about one connection leg; filled in as the connection progresses."""

    direction: Direction
    src_addr: str = ""
    src_workload: str = ""
    src_namespace: str = ""
    src_identity: str = ""
    src_cluster: str = ""
    dst_addr: str = ""
    dst_hbone_addr: str = ""
    dst_service: str = ""
    dst_workload: str = ""
    dst_namespace: str = ""
    dst_identity: str = ""
    dst_cluster: str = ""
    bytes_sent: int = 0  # what this reporter's side sent: the client (source) or the server (destination)
    bytes_recv: int = 0
    error: str = ""
    # Tracing fields (empty, so not written, when the proxy runs with trace ids off): the routing decision
    # ("hbone", "waypoint <identity>", "direct", "passthrough"), the L4 authorization verdict of an inbound
    # leg ("no allow policies", "allowed by policy ns/name"), and the connection's correlation id (the
    # W3C trace id of the HBONE CONNECT's `traceparent`, the same on every hop).
    route: str = ""
    authz: str = ""
    original: str = ""  # the source leg's original destination (ip:port the app dialled, e.g. a Service VIP)
    hbone_conn: str = ""  # the source leg's HBONE connection: "new" (this CONNECT opened it) or "pooled"
    closed_by: str = ""  # which side ended the relay first (one of CLOSED_BY)
    trace_id: str = ""
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def duration(self) -> str:
        end = self.ended if self.ended is not None else time.monotonic()
        return f"{round((end - self.started) * 1000)}ms"

    def fields(self) -> list[tuple[str, Any, bool]]:
        out: list[tuple[str, Any, bool]] = []
        for name, attr, quoted in _FIELDS:
            value = getattr(self, attr)
            if value == "" or value is None:
                continue
            out.append((name, value, quoted))
        return out


# the last whole second rendered and its "YYYY-MM-DDTHH:MM:SS" (one tuple: replaced whole, safe across threads)
_second: tuple[float, str] = (-1.0, "")


def timestamp(now: float | None = None) -> str:
    """RFC 3339 UTC with microseconds, as the reference proxy writes it."""
    global _second
    t = now if now is not None else time.time()
    # datetime.fromtimestamp's own split: microseconds rounded half-to-even, carried into the second
    frac, whole = math.modf(t)
    micros = round(frac * 1e6)
    if micros >= 1_000_000:
        whole += 1.0
        micros -= 1_000_000
    elif micros < 0:
        whole -= 1.0
        micros += 1_000_000
    second = _second
    if second[0] != whole:  # a new second: its date and time once, not per line (one line per connection)
        # isoformat is strftime("%Y-%m-%dT%H:%M:%S") for these years, at a fraction of the cost
        second = _second = (whole, datetime.fromtimestamp(whole, tz=UTC).isoformat()[:19])
    return f"{second[1]}.{micros:06d}Z"


# json.dumps(str) with the default ensure_ascii is exactly this C function (without the encoder set-up).
_quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _render(pairs: list[tuple[str, Any, bool]]) -> str:
    return " ".join(
        f"{name}={_quote(str(value))}" if quoted else f"{name}={value}" for name, value, quoted in pairs
    )


# The fields between src.addr and bytes_sent name the two ends of the connection: the same for every
# connection of one workload pair, so their rendering is reused (bounded; emptied when full).
_MIDDLE_FIELDS = CONNECTION_FIELDS[1:]
_MIDDLE_ATTRS = tuple(attr for _n, attr, _q in _MIDDLE_FIELDS)
_middle_cache: dict[tuple[Any, ...], str] = {}
_MIDDLE_CACHE_LIMIT = 4096


def _render_middle(key: tuple[Any, ...]) -> str:
    parts = []
    for (name, _attr, quoted), value in zip(_MIDDLE_FIELDS, key, strict=True):
        if value == "" or value is None:
            continue
        parts.append(f"{name}={_quote(str(value))}" if quoted else f"{name}={value}")
    return " ".join(parts)


def format_text(record: ConnectionRecord, *, now: float | None = None) -> str:
    """The `connection complete` line (ERROR level with `error=` when the connection failed)."""
    level = "error" if record.error else "info"
    key = tuple([getattr(record, attr) for attr in _MIDDLE_ATTRS])
    middle = _middle_cache.get(key)
    if middle is None:
        if len(_middle_cache) >= _MIDDLE_CACHE_LIMIT:
            _middle_cache.clear()
        middle = _middle_cache[key] = _render_middle(key)
    parts = []
    if record.src_addr != "" and record.src_addr is not None:
        parts.append(f"src.addr={record.src_addr}")
    if middle:
        parts.append(middle)
    # bytes are ints (0 is printed); duration is never empty
    parts.append(f"bytes_sent={record.bytes_sent} bytes_recv={record.bytes_recv} duration=\"{record.duration}\"")
    if record.trace_id:  # the tracing fields come together (one test on the common path when off)
        if record.route:
            parts.append(f"route={_quote(record.route)}")
        if record.authz:
            parts.append(f"authz={_quote(record.authz)}")
        if record.original:
            parts.append(f"dst.original={record.original}")
        if record.hbone_conn:
            parts.append(f"hbone_conn={record.hbone_conn}")
        if record.closed_by:
            parts.append(f"closed_by={record.closed_by}")
        parts.append(f"trace_id={record.trace_id}")
    if record.error != "" and record.error is not None:
        parts.append(f"error={_quote(str(record.error))}")
    return f"{timestamp(now)}\t{level}\taccess\tconnection complete\t{' '.join(parts)}"


def format_failed(
    *, src_addr: str, dst_addr: str, direction: Direction, error: str, now: float | None = None,
    trace_id: str = "",
) -> str:
    """The WARN `connection failed` line for connections rejected before a destination was chosen."""
    pairs = [
        ("src.addr", src_addr, False),
        ("dst.addr", dst_addr, False),
        ("direction", direction, True),
        ("error", error, True),
        ("trace_id", trace_id, False),
    ]
    return f"{timestamp(now)}\twarn\taccess\tconnection failed\t{_render([p for p in pairs if p[1]])}"


def format_json(record: ConnectionRecord, *, now: float | None = None) -> str:
    """The same record as one JSON object (for `--log-format json`)."""
    body: dict[str, Any] = {
        "time": timestamp(now),
        "level": "error" if record.error else "info",
        "scope": "access",
        "message": "connection complete",
    }
    for name, value, _quoted in record.fields():
        body[name] = value
    return json.dumps(body)


DNS_MESSAGE = "query answered"


@dataclass(frozen=True)
class DnsAnswerRecord:
    """One query the node proxy's DNS proxy answered, as its `query answered` line says."""

    src_addr: str  # ip:port of the querying socket (the pod's address: what its connections come from)
    src_workload: str
    src_namespace: str
    query: str  # the question's type: "A", "AAAA", ...
    domain: str  # the question's name
    result: str  # ztunnel's words: "success", "no records", "forwarded", "forwarding failed (...)"
    answer: tuple[str, ...]  # the addresses answered
    answered_by: str  # "Service ns/name", "ServiceEntry ns/name" or "upstream host:port"
    rcode: str  # "NOERROR", "NXDOMAIN", ...
    duration_s: float


def _dns_duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f}ms"  # answers from state take well under a millisecond


def format_dns(rec: DnsAnswerRecord, *, now: float | None = None) -> str:
    """The `query answered` line (text)."""
    pairs: list[tuple[str, Any, bool]] = [
        ("src.addr", rec.src_addr, False),
        ("src.workload", rec.src_workload, True),
        ("src.namespace", rec.src_namespace, True),
        ("query", rec.query, False),
        ("domain", rec.domain, True),
        ("result", rec.result, True),
        ("answer", ",".join(rec.answer), False),
        ("answered_by", rec.answered_by, True),
        ("rcode", rec.rcode, False),
        ("duration", _dns_duration(rec.duration_s), True),
    ]
    return f"{timestamp(now)}\tinfo\tdns\t{DNS_MESSAGE}\t{_render([p for p in pairs if p[1]])}"


def format_dns_json(rec: DnsAnswerRecord, *, now: float | None = None) -> str:
    """The same answer as one JSON object (for `--log-format json`)."""
    body: dict[str, Any] = {"time": timestamp(now), "level": "info", "scope": "dns", "message": DNS_MESSAGE,
                            "src.addr": rec.src_addr, "src.workload": rec.src_workload,
                            "src.namespace": rec.src_namespace, "query": rec.query, "domain": rec.domain,
                            "result": rec.result, "answer": list(rec.answer), "answered_by": rec.answered_by,
                            "rcode": rec.rcode, "duration": _dns_duration(rec.duration_s)}
    return json.dumps({k: v for k, v in body.items() if v != ""})


_PAIR = re.compile(r'([a-z_.]+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_fields(line: str) -> dict[str, str]:
    """Read `key=value` fields back from a text line (quoted values unquoted)."""
    out: dict[str, str] = {}
    for key, raw in _PAIR.findall(line):
        out[key] = json.loads(raw) if raw.startswith('"') else raw
    return out
