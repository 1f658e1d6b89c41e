"""The harness: sections run in order, a failing one is reported (not raised), results round-trip JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ambient.bench.errors import BenchError
from ambient.bench.harness import (
    BenchContext,
    BenchRun,
    Figure,
    Section,
    SectionOutput,
    from_json,
    run_sections,
    select,
    to_json,
    write_json,
)


def _ok(ctx: BenchContext) -> SectionOutput:
    return SectionOutput([Figure("direct", 2.0, "Gb/s")], {"seconds": 1})


def _boom(ctx: BenchContext) -> SectionOutput:
    raise BenchError("stunnel4 is not installed", hint="run make bootstrap")


def _crash(ctx: BenchContext) -> SectionOutput:
    raise ZeroDivisionError("division by zero")


def _uses_earlier(ctx: BenchContext) -> SectionOutput:
    base = ctx.figure("first", "direct")
    assert base is not None
    assert ctx.figure("broken", "anything") is None  # a failed section offers no baseline
    return SectionOutput([Figure("mesh", 1.0, "Gb/s").against(base)])


SECTIONS = [
    Section("first", "First", "how 1", _ok),
    Section("broken", "Broken", "how 2", _boom),
    Section("crash", "Crash", "how 3", _crash),
    Section("later", "Later", "how 4", _uses_earlier),
]


def test_failing_sections_are_reported_and_the_rest_still_run() -> None:
    lines: list[str] = []
    results = run_sections(SECTIONS, BenchContext(), progress=lines.append)
    assert [r.status for r in results] == ["ok", "not available", "not available", "ok"]
    assert results[1].reason == "BenchError: stunnel4 is not installed (hint: run make bootstrap)"
    assert results[2].reason == "ZeroDivisionError: division by zero"
    assert results[3].figures[0].ratio == pytest.approx(0.5)
    assert any("broken: not available: BenchError" in line for line in lines)


def test_keyboard_interrupt_is_not_swallowed() -> None:
    def interrupted(ctx: BenchContext) -> SectionOutput:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sections([Section("x", "X", "", interrupted)], BenchContext())


def test_select_keeps_registry_order_and_rejects_unknown_names() -> None:
    assert [s.name for s in select(SECTIONS, ["later", "first"])] == ["first", "later"]
    assert len(select(SECTIONS, None)) == 4
    with pytest.raises(ValueError, match="nope"):
        select(SECTIONS, ["nope"])


def test_json_round_trip_keeps_figures_baselines_and_failures(tmp_path: Path) -> None:
    results = run_sections(SECTIONS, BenchContext())
    run = BenchRun("2026-11-22T03:00:00Z", {"nproc": 2}, {"quick": True, "only": []}, results, 1.5)
    path = write_json(run, tmp_path / "out")
    assert path.name == "20261122T030000Z.json"
    data = json.loads(path.read_text())
    assert data["sections"][3]["figures"][0]["ratio"] == pytest.approx(0.5)
    assert data["sections"][3]["figures"][0]["unit"] == "Gb/s"
    back = from_json(data)
    assert to_json(back) == data
    # a second run started in the same second does not overwrite the first
    assert write_json(run, tmp_path / "out").name == "20261122T030000Z-2.json"
