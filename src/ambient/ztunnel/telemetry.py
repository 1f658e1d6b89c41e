"""Access log emission, metric labels and the live connection table of the node proxy.

- `AccessLog` writes one line per finished connection (`connection complete`, INFO or ERROR with
  `error=`) or early rejection (`connection failed`, WARN) in the reference format (accesslog.py), text
  or JSON, to the `access` logger (its own handler: the line is already fully formatted); with trace ids on,
  also the DNS proxy's `query answered` lines (`dns`).
- `labels_for(...)` builds the bounded metric label set of a connection from workloads and identities.
- `Connections` is the table behind `zc connections` and config_dump `workloadState`: live connections
  per pod uid with their byte counters.

Byte directions follow ztunnel (`src/copy.rs`, `src/proxy/metrics.rs`) for both reporters: the request
direction (client -> server) counts in `istio_tcp_received_bytes_total`, the response direction (server ->
client) in `istio_tcp_sent_bytes_total` (Istio's convention, istio/istio#32399). The access line gives each
reporter's own view: `bytes_sent` is what the client sent for the source proxy ("outbound") and what the
server sent for the destination proxy ("inbound"); `bytes_recv` the other direction. As in ztunnel, the
line names identities (src.identity, dst.identity) only for mutual-TLS connections.

Invariant: one `finish()` per opened connection: opened/closed counters always pair up.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ambient.authz.evaluate import ConnectionInfo, evaluate
from ambient.runtime.accesslog import (
    ConnectionRecord,
    Direction,
    DnsAnswerRecord,
    format_dns,
    format_dns_json,
    format_failed,
    format_json,
    format_text,
)
from ambient.state.model import Service, Workload
from ambient.state.store import StateChange
from ambient.ztunnel.copy import CopyStats, close_reason
from ambient.ztunnel.metrics import LABELS, ConnectionLabels, ProxyMetrics

ACCESS_LOGGER = "access"
log = logging.getLogger("ambient.ztunnel.telemetry")


class AccessLog:
    def __init__(self, fmt: str = "text", logger: logging.Logger | None = None) -> None:
        self.fmt = fmt
        self.log = logger or logging.getLogger(ACCESS_LOGGER)

    def complete(self, record: ConnectionRecord) -> None:
        if record.ended is None:
            record.ended = time.monotonic()
        line = format_json(record) if self.fmt == "json" else format_text(record)
        self._emit(logging.ERROR if record.error else logging.INFO, line)

    def _emit(self, level: int, line: str) -> None:
        """One line per connection: when the logger has just our verbatim handler (the normal case),
        write it straight to that handler's stream, the same bytes the logging machinery would write
        (format "%(message)s" + terminator) without a LogRecord per connection; otherwise (tests with
        extra handlers or filters, a changed level) go through logging."""
        logger = self.log
        handlers = logger.handlers
        if len(handlers) == 1 and not logger.filters and not logger.disabled:
            handler = handlers[0]
            if (
                getattr(handler, "_ambient_access", False)
                and isinstance(handler, logging.StreamHandler)
                and not handler.filters
                and level >= handler.level
                and logger.isEnabledFor(level)
            ):
                handler.acquire()
                try:
                    handler.stream.write(line + handler.terminator)
                    handler.flush()
                except Exception:  # same policy as logging: an access line never breaks a connection
                    handler.handleError(logger.makeRecord(logger.name, level, "", 0, line, (), None))
                finally:
                    handler.release()
                return
        logger.log(level, line)

    def dns(self, record: DnsAnswerRecord, *, now: float | None = None) -> None:
        """One answered DNS query (the DNS proxy calls this only with trace ids on), stamped `now` (when the
        answer was ready: before the client could act on it)."""
        line = format_dns_json(record, now=now) if self.fmt == "json" else format_dns(record, now=now)
        self._emit(logging.INFO, line)

    def failed(self, *, src_addr: str, dst_addr: str, direction: Direction, error: str, trace_id: str = "") -> None:
        self.log.warning(format_failed(src_addr=src_addr, dst_addr=dst_addr, direction=direction, error=error,
                                       trace_id=trace_id))


def install_access_handler(stream: Any = None) -> None:
    """Access lines are pre-formatted: print them verbatim (to stdout by default), not via the root format."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if any(getattr(h, "_ambient_access", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._ambient_access = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)


def _app(wl: Workload | None) -> str:
    if wl is None:
        return ""
    return wl.canonical_name or wl.workload_name or wl.name


def labels_for(
    reporter: str,
    src: Workload | None,
    src_identity: str,
    dst: Workload | None,
    dst_identity: str,
    service: Service | None,
    mtls: bool,
) -> ConnectionLabels:
    """The connection's metric labels (protocols.md s.6): workload names, never addresses or ports."""
    return ConnectionLabels.build(
        reporter=reporter,
        source_workload=(src.workload_name or src.name) if src else "",
        source_canonical_service=_app(src),
        source_canonical_revision=src.canonical_revision if src else "",
        source_workload_namespace=src.namespace if src else "",
        source_principal=src_identity,
        source_app=_app(src),
        source_version=src.canonical_revision if src else "",
        source_cluster=src.cluster_id if src else "",
        destination_service=service.hostname if service else "",
        destination_service_namespace=service.namespace if service else "",
        destination_service_name=service.name if service else "",
        destination_workload=(dst.workload_name or dst.name) if dst else "",
        destination_canonical_service=_app(dst),
        destination_canonical_revision=dst.canonical_revision if dst else "",
        destination_workload_namespace=dst.namespace if dst else "",
        destination_principal=dst_identity,
        destination_app=_app(dst),
        destination_version=dst.canonical_revision if dst else "",
        destination_cluster=dst.cluster_id if dst else "",
        connection_security_policy="mutual_tls" if mtls else "unknown",
    )


@dataclass
class ConnectionEntry:
    id: int
    workload: str  # "ns/name" of the local pod
    pod_uid: str
    direction: Direction
    local: str
    remote: str
    remote_target: str
    protocol: str  # HBONE | TCP
    stats: CopyStats = field(default_factory=CopyStats)
    started: float = field(default_factory=time.time)
    # inbound only: what authorization saw, to re-check on policy changes (live revocation)
    authz: ConnectionInfo | None = None
    dst_uid: str = ""
    cut: Callable[[str], None] | None = None

    def dump(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "direction": self.direction,
            "local": self.local,
            "remote": self.remote,
            "remoteTarget": self.remote_target,
            "protocol": self.protocol,
            "bytesSent": self.stats.sent,
            "bytesReceived": self.stats.received,
            "startTime": self.started,
        }


class Connections:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._live: dict[int, ConnectionEntry] = {}
        self.revoked = 0  # connections closed by live policy revocation

    def open(self, **kwargs: Any) -> ConnectionEntry:
        entry = ConnectionEntry(id=next(self._ids), **kwargs)
        self._live[entry.id] = entry
        return entry

    def close(self, entry: ConnectionEntry) -> None:
        self._live.pop(entry.id, None)

    def __iter__(self) -> Iterator[ConnectionEntry]:
        return iter(list(self._live.values()))

    def revoke(self, change: StateChange) -> None:
        """State listener: close live inbound connections that the new policies deny."""
        if not change.policies_changed and not change.workloads_removed:
            return
        view = change.current
        cut = 0
        for entry in list(self._live.values()):
            if entry.authz is None or entry.cut is None:
                continue
            wl = view.workload(entry.dst_uid)
            verdict = evaluate(entry.authz, wl, view) if wl is not None else None
            if verdict is None or verdict.denied:
                reason = verdict.error if verdict is not None else "destination workload removed"
                log.info("closing live connection %s -> %s: %s", entry.remote, entry.local, reason)
                entry.stats.closed_by = "policy"  # whatever had half-closed before, this ended it
                entry.cut(reason)
                cut += 1
        self.revoked += cut


@dataclass
class Telemetry:
    """What every connection handler reports to (one per proxy process)."""

    metrics: ProxyMetrics
    access: AccessLog
    connections: Connections

    def opened(self, labels: ConnectionLabels) -> None:
        self.metrics.connection_opened(labels)

    def finish(self, record: ConnectionRecord, labels: ConnectionLabels, stats: CopyStats) -> None:
        # CopyStats: `sent` = towards the destination (request bytes), `received` = back to the client
        request, response = stats.sent, stats.received
        if record.direction == "outbound":
            record.bytes_sent, record.bytes_recv = request, response
        else:
            record.bytes_sent, record.bytes_recv = response, request
        values = labels.values
        if values[_SECURITY_POLICY] != "mutual_tls":  # ztunnel logs identities of mTLS connections only
            record.src_identity = record.dst_identity = ""
        if not record.src_cluster and (cluster := values[_SOURCE_CLUSTER]) != "unknown":
            record.src_cluster = cluster
        if not record.dst_cluster and (cluster := values[_DESTINATION_CLUSTER]) != "unknown":
            record.dst_cluster = cluster
        if record.trace_id:  # a tracing field: written with the trace id only
            record.closed_by = close_reason(stats.closed_by, record.error)
        self.metrics.connection_closed(labels, response, request)
        self.access.complete(record)


_SECURITY_POLICY = LABELS.index("connection_security_policy")
_SOURCE_CLUSTER = LABELS.index("source_cluster")
_DESTINATION_CLUSTER = LABELS.index("destination_cluster")
