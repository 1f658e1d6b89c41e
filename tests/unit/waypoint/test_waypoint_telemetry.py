"""The waypoint's access line and metric labels: `format_request` (the two ends' fields rendered once per
pair) writes what the plain field-by-field rendering of `RequestRecord.fields` does, and `labels` gives the
values of LABELS in order."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from ambient.runtime.accesslog import timestamp
from ambient.waypoint import telemetry
from ambient.waypoint.telemetry import LABELS, RequestRecord, WaypointMetrics, format_request


def reference_line(record: RequestRecord, now: float) -> str:
    """The line as the field list says (every field, in order, omitted when empty)."""
    parts = []
    for name, value, quoted in record.fields():
        text = value if type(value) is str else str(value)
        parts.append(f"{name}={json.dumps(text)}" if quoted or " " in text or '"' in text else f"{name}={text}")
    message = "request complete" if record.protocol != "tcp" else "connection complete"
    return f"{timestamp(now)}\t{'error' if record.error else 'info'}\taccess\t{message}\t{' '.join(parts)}"


BASE: dict[str, Any] = dict(
    src_addr="10.0.0.1:40000", src_workload="curl-7d9", src_workload_name="curl", src_namespace="shop",
    src_identity="spiffe://cluster.local/ns/shop/sa/curl", dst_addr="10.0.0.9:15008",
    dst_hbone_addr="10.0.0.9:8080", dst_service="web.shop.svc.cluster.local", dst_service_name="web",
    dst_service_namespace="shop", dst_workload="web-1", dst_workload_name="web", dst_namespace="shop",
    dst_identity="spiffe://cluster.local/ns/shop/sa/web", method="GET", path="/a", status=200,
    protocol="HTTP/1.1", request_id="0f7c", trace_id="4bf92f3577b34da6a3ce929d0e0e4736", started=10.0, ended=10.0042,
)
CASES: list[dict[str, Any]] = [
    {},
    {"status": 0, "flags": "DC", "error": "downstream reset"},
    {"status": 503, "flags": "UF", "error": 'cannot connect to "x": refused'},
    {"status": 403, "flags": "RBAC", "details": "rbac_access_denied_matched_policy[none]", "audit": "shop/a,shop/b"},
    {"status": 101, "bytes_sent": 0, "bytes_recv": 12},
    {"src_addr": "", "src_workload": "", "src_workload_name": "", "src_namespace": "", "dst_identity": ""},
    {"path": "/a b\"c", "route": "shop/r", "src_canonical": "curl", "dst_canonical": "web", "src_cluster": "c1"},
    {"dst_workload": "has space", "dst_addr": "[fd00::1]:15008", "dst_hbone_addr": "weird\"addr"},
    {"protocol": "tcp", "method": "", "path": "", "status": 0, "request_id": ""},
    {"protocol": "HTTP/2", "grpc": True, "trace_id": "", "request_id": "é-ünïcode"},
]


@pytest.mark.parametrize("changes", CASES)
def test_line_is_the_field_by_field_rendering(changes: dict[str, Any]) -> None:
    record = RequestRecord(**{**BASE, **changes})
    assert format_request(record, now=1764000000.123456) == reference_line(record, 1764000000.123456)
    # again, from the cache of the two ends' rendering, for a record that differs only in its request fields
    again = dataclasses.replace(record, path="/other", status=record.status or 204, request_id="r2")
    assert format_request(again, now=1764000001.5) == reference_line(again, 1764000001.5)


def test_the_ends_cache_is_bounded() -> None:
    for i in range(telemetry._ENDS_CACHE_LIMIT + 10):
        record = RequestRecord(**{**BASE, "dst_workload": f"web-{i}"})
        assert format_request(record, now=5.0) == reference_line(record, 5.0)
    assert len(telemetry._ends_cache) <= telemetry._ENDS_CACHE_LIMIT


def reference_labels(record: RequestRecord) -> tuple[str, ...]:
    values = {
        "reporter": "waypoint",
        "source_workload": record.src_workload_name or record.src_workload,
        "source_workload_namespace": record.src_namespace,
        "source_principal": record.src_identity,
        "source_canonical_service": record.src_canonical,
        "destination_service": record.dst_service,
        "destination_service_name": record.dst_service_name,
        "destination_service_namespace": record.dst_service_namespace,
        "destination_workload": record.dst_workload_name or record.dst_workload,
        "destination_workload_namespace": record.dst_namespace,
        "destination_principal": record.dst_identity,
        "destination_canonical_service": record.dst_canonical,
        "request_protocol": "grpc" if record.grpc else ("tcp" if record.protocol == "tcp" else "http"),
        "response_code": str(record.status or 0),
        "response_flags": record.flags or "-",
        "connection_security_policy": "mutual_tls",
    }
    return tuple(values[name] or "unknown" for name in LABELS)


@pytest.mark.parametrize("changes", CASES)
def test_labels_follow_LABELS(changes: dict[str, Any]) -> None:
    record = RequestRecord(**{**BASE, **changes})
    assert WaypointMetrics.labels(record) == reference_labels(record)
    assert len(WaypointMetrics.labels(record)) == len(LABELS)
