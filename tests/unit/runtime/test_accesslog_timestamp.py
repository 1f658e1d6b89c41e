"""`accesslog.timestamp` (the date and time rendered once per second) writes exactly what
`datetime.fromtimestamp(...).isoformat(timespec="microseconds")` does: rounding half to even, the carry into
the next second, seconds in any order."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import pytest

from ambient.runtime.accesslog import timestamp


def reference(now: float) -> str:
    return datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="microseconds")[:-6] + "Z"


@pytest.mark.parametrize("now", [
    0.0, 1.0, 0.9999995, 0.9999994999, 1.0000005, 1.0000015, 1.0000025,  # ties round to even, carries
    1764000000.0, 1764000000.9999996, 1764000000.0000005, 1764000000.9999995, 1764000001.0,
    1764000000.5, 1764000000.000001, 4102444799.999999,  # the last microsecond of 2099
])
def test_edges(now: float) -> None:
    assert timestamp(now) == reference(now)


def test_random_times_and_second_changes_in_any_order() -> None:
    rng = random.Random(7)
    values = [rng.uniform(0, 4e9) for _ in range(20000)]
    base = float(int(time.time()))
    values += [base + k / 1e6 + d for k in range(0, 1_000_001, 4999) for d in (0.0, 5e-7, -5e-7)]
    rng.shuffle(values)
    assert [timestamp(v) for v in values] == [reference(v) for v in values]


def test_now_by_default() -> None:
    before = reference(time.time())[:16]  # to the minute
    assert timestamp()[:16] >= before
