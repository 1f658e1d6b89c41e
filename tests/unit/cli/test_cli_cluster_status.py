"""`ambient cluster status` rows: every cell filled, so each column holds what its header says."""

from __future__ import annotations

import re

import pytest

from ambient.cli.cluster import status_rows
from ambient.cli.output import format_table
from ambient.cluster.lifecycle import ComponentStatus

HEADERS = ["COMPONENT", "STATUS", "PID", "RESTARTS", "AGE", "LAST-EXIT"]
NOW = 10_000.0
EXITED = "signal 9 (SIGKILL) at 2026-01-01T00:00:00Z after 1.0s"


@pytest.mark.parametrize(("sup", "since", "row"), [
    (41, NOW - 300, ["supervisor", "running", "41", "-", "5m", "-"]),
    (41, None, ["supervisor", "running", "41", "-", "-", "-"]),  # pid file gone between the two reads
    (None, None, ["supervisor", "down", "-", "-", "-", "-"]),
])
def test_supervisor_row(sup: int | None, since: float | None, row: list[str]) -> None:
    assert status_rows(sup, since, [], NOW) == [row]


def test_columns_line_up() -> None:
    comps = [ComponentStatus("apiserver", "running", 42, 2, EXITED, NOW - 30),
             ComponentStatus("dns", "waiting", None, 5, EXITED, None, restart_at=NOW + 20),
             ComponentStatus("kubelet-node-1", "running", 43, 0, "", NOW - 7200)]
    rows = status_rows(41, NOW - 60, comps, NOW)
    assert rows[1:] == [["apiserver", "running", "42", "2", "30s", EXITED],
                        ["dns", "waiting(20s)", "-", "5", "-", EXITED],
                        ["kubelet-node-1", "running", "43", "0", "2h", "-"]]
    for line in format_table(HEADERS, rows).splitlines():
        assert len(re.split(r"\s{2,}", line.strip())) == len(HEADERS), line
