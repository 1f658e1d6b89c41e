"""Waypoint telemetry: one L7 access-log line per request and the Istio HTTP metric family.

Access log (same shape as the node proxy's, protocols.md section 6, target `access`, message
`request complete`): `src.addr src.workload src.namespace src.identity dst.addr dst.hbone_addr dst.service
dst.workload dst.namespace dst.identity direction="waypoint" http.method http.path http.status request_id
protocol route audit response_flags response_code_details duration error`, missing values omitted, the fields
shared with the node proxy quoted as it quotes them, other strings quoted when they contain spaces; `audit`
names the AUDIT AuthorizationPolicies that matched the request (they never change the decision);
`response_code_details` is set on RBAC denials as Envoy's (`rbac_access_denied_matched_policy[ns[NS]-policy[NAME]]`
or `[none]`); an upgraded
(WebSocket) session adds `bytes_sent bytes_recv` (to / from the backend, over the whole session). INFO for
answered requests, ERROR (with `error=`) when the waypoint itself failed the request (5xx it produced).

Metrics (reporter="waypoint"): `istio_requests_total` (counter) and `istio_request_duration_milliseconds`
(histogram). `source_workload` / `destination_workload` are the owning workloads' names (the Deployment,
Istio's `workload_name`), not the pods'. Labels are bounded: workloads, services, principals, the response
code, the protocol (`http` | `grpc`) and flags; never paths, addresses or ids. Empty values become `unknown`.
"""

from __future__ import annotations

import json
import logging
import operator
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest

from ambient.runtime.accesslog import CONNECTION_FIELDS, timestamp

access_log = logging.getLogger("ambient.waypoint.access")
# Envoy exports no `<counter>_created` / `<histogram>_created` series (prometheus_client: process-wide switch)
disable_created_metrics()

LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_canonical_service",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_canonical_service",
    "request_protocol",
    "response_code",
    "response_flags",
    "connection_security_policy",
)
DURATION_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)

_FIELDS: tuple[tuple[str, str, bool], ...] = (
    *CONNECTION_FIELDS,
    ("http.method", "method", False),
    ("http.path", "path", True),
    ("http.status", "status", False),
    ("request_id", "request_id", True),
    ("protocol", "protocol", False),
    ("route", "route", False),
    ("audit", "audit", True),
    ("response_flags", "flags", False),
    ("response_code_details", "details", False),
    ("duration", "duration", True),
    ("trace_id", "trace_id", False),
    ("error", "error", True),
)


@dataclass
class RequestRecord:
    """What the waypoint knows about one request; filled in as it progresses."""

    src_addr: str = ""
    src_workload: str = ""  # the pod (access log, as ztunnel's src.workload)
    src_workload_name: str = ""  # its owning workload, e.g. the Deployment (metrics: source_workload)
    src_namespace: str = ""
    src_identity: str = ""
    src_canonical: str = ""
    src_cluster: str = ""
    dst_addr: str = ""  # the endpoint's HBONE address (ip:15008) or plain address
    dst_hbone_addr: str = ""  # the endpoint's ip:targetPort
    dst_service: str = ""  # hostname of the backend service
    dst_service_name: str = ""
    dst_service_namespace: str = ""
    dst_workload: str = ""  # the endpoint pod
    dst_workload_name: str = ""  # its owning workload (metrics: destination_workload)
    dst_namespace: str = ""
    dst_identity: str = ""
    dst_canonical: str = ""
    dst_cluster: str = ""
    direction: str = "waypoint"
    method: str = ""
    path: str = ""
    status: int = 0
    protocol: str = ""  # HTTP/1.1 | HTTP/2 | tcp
    grpc: bool = False
    request_id: str = ""  # the x-request-id forwarded (generated when the client sent none), as Envoy logs it
    route: str = ""
    trace_id: str = ""  # the downstream CONNECT's traceparent trace id: the connection's correlation id
    audit: str = ""  # AUDIT policies ("ns/name", comma-separated) that matched the request
    flags: str = ""
    details: str = ""  # Envoy's response_code_details, set for RBAC denials (which policy denied)
    error: str = ""
    bytes_sent: int = 0  # upgraded sessions only: client -> backend after the 101
    bytes_recv: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def duration_ms(self) -> float:
        end = self.ended if self.ended is not None else time.monotonic()
        return (end - self.started) * 1000.0

    @property
    def duration(self) -> str:
        return f"{round(self.duration_ms)}ms"

    def fields(self) -> list[tuple[str, Any, bool]]:
        out: list[tuple[str, Any, bool]] = []
        for name, attr, quoted in _FIELDS:
            value = getattr(self, attr)
            if value in ("", None, 0):
                continue
            out.append((name, value, quoted))
        if self.status == 101:  # an upgraded session: its bytes (0 is printed) before its duration, as ztunnel
            at = next(i for i, (name, _, _) in enumerate(out) if name == "duration")
            out[at:at] = [("bytes_sent", self.bytes_sent, False), ("bytes_recv", self.bytes_recv, False)]
        return out


# json.dumps(str) with the default ensure_ascii is exactly this C function (without the encoder set-up)
_quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _pair(name: str, value: Any, quoted: bool) -> str:
    """One `name=value`: quoted when the field always is, or when the text holds a space or a quote."""
    text = value if type(value) is str else str(value)
    return f"{name}={_quote(text)}" if quoted or " " in text or '"' in text else f"{name}={text}"


# The fields after src.addr that name the two ends (src.workload .. direction) are the same for every request
# of one source/endpoint pair: their rendering is reused (bounded; emptied when full). src.addr (a client
# port per connection) and the request's own fields are rendered per line.
_ENDS = _FIELDS[1:len(CONNECTION_FIELDS)]
_ends_of = operator.attrgetter(*(attr for _n, attr, _q in _ENDS))
_ends_cache: dict[tuple[Any, ...], str] = {}
_ENDS_CACHE_LIMIT = 4096
_REQUEST = _FIELDS[len(CONNECTION_FIELDS):]
_AT_DURATION = next(i for i, (name, _a, _q) in enumerate(_REQUEST) if name == "duration")
_BEFORE_DURATION, _FROM_DURATION = _REQUEST[:_AT_DURATION], _REQUEST[_AT_DURATION:]
_before_duration_of = operator.attrgetter(*(attr for _n, attr, _q in _BEFORE_DURATION))
_from_duration_of = operator.attrgetter(*(attr for _n, attr, _q in _FROM_DURATION))
_EMPTY = ("", None, 0)


def _render_ends(key: tuple[Any, ...]) -> str:
    return " ".join([_pair(name, value, quoted) for (name, _a, quoted), value in zip(_ENDS, key, strict=True)
                     if value not in _EMPTY])


def format_request(record: RequestRecord, *, now: float | None = None) -> str:
    """The record's access line: the fields of `RequestRecord.fields` in order, missing values omitted."""
    level = "error" if record.error else "info"
    parts = []
    if record.src_addr not in _EMPTY:
        parts.append(_pair("src.addr", record.src_addr, False))
    key = _ends_of(record)
    ends = _ends_cache.get(key)
    if ends is None:
        if len(_ends_cache) >= _ENDS_CACHE_LIMIT:
            _ends_cache.clear()
        ends = _ends_cache[key] = _render_ends(key)
    if ends:
        parts.append(ends)
    for (name, _a, quoted), value in zip(_BEFORE_DURATION, _before_duration_of(record), strict=True):
        if value not in _EMPTY:
            parts.append(_pair(name, value, quoted))
    if record.status == 101:  # an upgraded session: its bytes (0 is printed) before its duration, as ztunnel
        parts.append(f"bytes_sent={record.bytes_sent} bytes_recv={record.bytes_recv}")
    for (name, _a, quoted), value in zip(_FROM_DURATION, _from_duration_of(record), strict=True):
        if value not in _EMPTY:
            parts.append(_pair(name, value, quoted))
    message = "request complete" if record.protocol != "tcp" else "connection complete"
    return f"{timestamp(now)}\t{level}\taccess\t{message}\t{' '.join(parts)}"


class WaypointMetrics:
    """The waypoint's metric families in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter("istio_requests", "Requests handled by the waypoint", LABELS, registry=self.registry)
        self.duration = Histogram(
            "istio_request_duration_milliseconds", "Request duration in milliseconds", LABELS,
            buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self._children: dict[tuple[str, ...], tuple[Any, Any]] = {}

    @staticmethod
    def labels(record: RequestRecord) -> tuple[str, ...]:
        """The series' label values, in the order of LABELS (empty values are `unknown`)."""
        return (
            "waypoint",
            record.src_workload_name or record.src_workload or "unknown",
            record.src_namespace or "unknown",
            record.src_identity or "unknown",
            record.src_canonical or "unknown",
            record.dst_service or "unknown",
            record.dst_service_name or "unknown",
            record.dst_service_namespace or "unknown",
            record.dst_workload_name or record.dst_workload or "unknown",
            record.dst_namespace or "unknown",
            record.dst_identity or "unknown",
            record.dst_canonical or "unknown",
            "grpc" if record.grpc else ("tcp" if record.protocol == "tcp" else "http"),
            str(record.status or 0),
            record.flags or "-",
            "mutual_tls",
        )

    def observe(self, record: RequestRecord) -> None:
        labels = self.labels(record)
        children = self._children.get(labels)
        if children is None:  # label lookups cost more than the increments: keep the series' children
            children = self._children[labels] = (self.requests.labels(*labels), self.duration.labels(*labels))
        children[0].inc()
        children[1].observe(record.duration_ms)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def emit(record: RequestRecord, metrics: WaypointMetrics | None) -> None:
    """Finish `record`: log its line and count it."""
    if record.ended is None:
        record.ended = time.monotonic()
    level = logging.ERROR if record.error else logging.INFO
    if access_log.isEnabledFor(level):
        # Logger.log's record without its caller lookup (a walk up the stack per line): the line says where
        # it comes from, and the access handlers print the message only
        access_log.handle(access_log.makeRecord(access_log.name, level, "(unknown file)", 0, format_request(record),
                                                (), None, "(unknown function)"))
    if metrics is not None:
        metrics.observe(record)
