"""Prometheus metrics of the node proxy, with the reference names and bounded labels (protocols.md s.6).

Counters: istio_tcp_connections_opened_total, istio_tcp_connections_closed_total,
istio_tcp_sent_bytes_total, istio_tcp_received_bytes_total; and the node proxy's own
ambient_ztunnel_inbound_refused_total{protocol, reason}: inbound connections (protocol "tcp") and HBONE
streams ("hbone") refused by admission control (ambient.ztunnel.admission.REASONS), beside the gauge
ambient_ztunnel_inbound_active (inbound connections + streams admitted and not yet closed); and
ambient_hbone_refusals_total{reason} (the HBONE listener's handshake and HTTP/2 limits,
ambient.hbone.refusals.REASONS). Every label of
`LABELS` is always set; empty values become "unknown". Invariant: no label carries a per-connection or
per-port value (addresses, ports, trace ids), so the number of series is bounded by workloads x services x flags.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ambient.hbone import refusals

# ztunnel and Envoy export no `<counter>_created` series; prometheus_client's switch is process-wide.
disable_created_metrics()

LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
)


@dataclass(frozen=True)
class ConnectionLabels:
    """The label values of one connection's series; build it once per connection."""

    values: tuple[str, ...]

    @classmethod
    def build(cls, **given: str) -> ConnectionLabels:
        unknown = set(given) - set(LABELS)
        if unknown:
            raise ValueError(f"unknown metric labels: {sorted(unknown)}")
        defaults = {"request_protocol": "tcp", "response_flags": "-"}
        values = tuple((given.get(name) or defaults.get(name) or "unknown") for name in LABELS)
        return cls(values)

    def with_flags(self, response_flags: str) -> ConnectionLabels:
        values = list(self.values)
        values[LABELS.index("response_flags")] = response_flags or "-"
        return ConnectionLabels(tuple(values))


class HboneRefusals(Collector):
    """ambient_hbone_refusals_total{reason}: what the HBONE listener refused or cut (pending-handshake
    caps, handshake timeouts and failures, identity, the header-block cap, HTTP/2 floods), read at scrape
    time from the process-wide counts of `ambient.hbone.refusals`; every reason is always exported."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("ambient_hbone_refusals",
                                     "HBONE connections refused or closed by a limit, by reason", labels=["reason"])
        for reason, n in refusals.snapshot().items():
            family.add_metric([reason], n)
        yield family


class ProxyMetrics:
    """The proxy's metric families in a registry of their own (one per proxy process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.opened = Counter(
            "istio_tcp_connections_opened", "TCP connections opened", LABELS, registry=self.registry
        )
        self.closed = Counter(
            "istio_tcp_connections_closed", "TCP connections closed", LABELS, registry=self.registry
        )
        self.sent = Counter(
            "istio_tcp_sent_bytes", "The size of total bytes sent during response in case of a TCP connection",
            LABELS, registry=self.registry
        )
        self.received = Counter(
            "istio_tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection", LABELS,
            registry=self.registry,
        )
        self.refused = Counter(
            "ambient_ztunnel_inbound_refused",
            "Inbound connections and HBONE streams refused by admission control, by reason",
            ("protocol", "reason"), registry=self.registry,
        )
        self._active: Gauge | None = None
        # family -> label values -> child. `Counter.labels()` validates and joins 22 label values on every
        # call; connections of one workload pair reuse one child. A child is created exactly when
        # `labels()` would first have been called, so the exposition is unchanged; the label sets are
        # bounded (workloads, never addresses or ports), and so are these caches.
        self._children: dict[int, dict[tuple[str, ...], Any]] = {}
        self.registry.register(HboneRefusals())

    def _child(self, family: Counter, values: tuple[str, ...]) -> Any:
        cache = self._children.setdefault(id(family), {})
        child = cache.get(values)
        if child is None:
            child = cache[values] = family.labels(*values)
        return child

    def connection_opened(self, labels: ConnectionLabels) -> None:
        self._child(self.opened, labels.values).inc()

    def connection_closed(self, labels: ConnectionLabels, sent: int, received: int) -> None:
        self._child(self.closed, labels.values).inc()
        if sent:
            self._child(self.sent, labels.values).inc(sent)
        if received:
            self._child(self.received, labels.values).inc(received)

    def track_inbound_active(self, read: Callable[[], float]) -> None:
        """Export `read()` (read at scrape time) as ambient_ztunnel_inbound_active (the last one given)."""
        if self._active is None:
            self._active = Gauge("ambient_ztunnel_inbound_active",
                                 "Inbound connections and HBONE streams admitted and not yet closed",
                                 registry=self.registry)
        self._active.set_function(read)

    def inbound_refused(self, protocol: str, reason: str) -> None:
        self._child(self.refused, (protocol, reason)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
