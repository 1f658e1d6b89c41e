"""Pure rendering helpers: ages, plain tables, printer columns, wait argument parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ambient.api.kinds import resolve_kind
from ambient.cli.errors import UsageError
from ambient.cli.output import age, format_table, human_duration
from ambient.cli.printers import build_table
from ambient.cli.wait import condition_met, parse_for, parse_timeout


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "5s"), (119, "119s"), (150, "2m30s"), (600, "10m"), (7200, "120m"), (4 * 3600 + 60, "4h1m"),
     (30 * 3600, "30h"), (3 * 86400 + 3600, "3d1h"), (40 * 86400, "40d"), (800 * 86400, "2y"), (-3, "0s")],
)
def test_human_duration_like_kubectl(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_age_of_object() -> None:
    now = datetime(2026, 1, 1, 0, 5, 0, tzinfo=UTC)
    assert age({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}}, now) == "5m"
    assert age({"metadata": {}}, now) == "<unknown>"


def test_plain_table_alignment_and_no_trailing_spaces() -> None:
    text = format_table(["NAME", "STATUS", "AGE"], [["a-long-name", "Active", "1d"], ["b", "", "2s"]])
    assert text == (
        "NAME          STATUS   AGE\n"
        "a-long-name   Active   1d\n"
        "b                      2s\n"
    )


def test_node_and_gateway_columns() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    node = {"metadata": {"name": "node-1", "creationTimestamp": "2025-12-31T23:59:00Z"},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}}
    headers, rows = build_table(resolve_kind("nodes"), [node], now=now)
    assert headers == ["NAME", "STATUS", "INTERNAL-IP", "POD-CIDR", "AGE"]
    assert rows == [["node-1", "Ready", "172.18.0.2", "10.244.1.0/24", "60s"]]
    gw = {"metadata": {"name": "waypoint", "namespace": "shop"}, "spec": {"gatewayClassName": "istio-waypoint"},
          "status": {"addresses": [{"value": "10.96.0.20"}], "conditions": [{"type": "Programmed", "status": "True"}]}}
    headers, rows = build_table(resolve_kind("gtw"), [gw], all_namespaces=True, show_labels=True, now=now)
    assert headers == ["NAMESPACE", "NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE", "LABELS"]
    assert rows == [["shop", "waypoint", "istio-waypoint", "10.96.0.20", "True", "<unknown>", "<none>"]]


def test_label_columns_as_kubectl_heads_and_fills_them() -> None:
    sa = {"metadata": {"name": "default", "namespace": "a",
                       "labels": {"app.kubernetes.io/name": "web", "version": "v1"}}}
    headers, rows = build_table(resolve_kind("sa"), [sa, {"metadata": {"name": "bare", "namespace": "a"}}],
                                label_columns=("app.kubernetes.io/name", "version"), show_labels=True)
    assert headers == ["NAME", "AGE", "NAME", "VERSION", "LABELS"]
    assert rows == [["default", "<unknown>", "web", "v1", "app.kubernetes.io/name=web,version=v1"],
                    ["bare", "<unknown>", "", "", "<none>"]]


def test_generic_columns_for_kinds_without_printer() -> None:
    headers, rows = build_table(resolve_kind("sa"), [{"metadata": {"name": "default", "namespace": "a"}}])
    assert headers == ["NAME", "AGE"]
    assert rows == [["default", "<unknown>"]]


def test_wait_arguments() -> None:
    assert parse_timeout("60s") == 60
    assert parse_timeout("1m30s") == 90
    assert parse_timeout("500ms") == 0.5
    assert parse_timeout("45") == 45
    with pytest.raises(UsageError):
        parse_timeout("1x")
    assert parse_for("delete") == ("delete", None, "")
    assert parse_for("condition=Ready") == ("condition", "Ready", "True")
    assert parse_for("condition=Available=false") == ("condition", "Available", "false")
    with pytest.raises(UsageError):
        parse_for("condition=")
    assert condition_met({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, "ready", "true")
    assert not condition_met({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}, "Ready", "True")
    assert not condition_met({}, "Ready", "True")
