"""The `python -m ambient.bench` command: listing, usage errors, regenerating the doc from stored JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ambient.bench.__main__ import all_sections, main
from ambient.bench.harness import BenchRun, Figure, SectionResult, to_json
from ambient.bench.report import BEGIN, END


def test_registry_runs_baselines_before_the_mesh_sections() -> None:
    names = [s.name for s in all_sections()]
    assert names[:3] == ["baseline-throughput", "baseline-latency", "baseline-connections"]
    assert {"hbone", "ztunnel", "controlplane", "waypoint"} <= set(names)


def test_list_names_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(s.name in out for s in all_sections())


def test_unknown_section_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--only", "no-such-section"])
    assert exc.value.code == 2
    assert "unknown section(s) no-such-section" in capsys.readouterr().err


def test_from_json_regenerates_only_the_marked_block(tmp_path: Path) -> None:
    fig = Figure("stunnel mTLS pair", 2.0, "Gb/s", baseline="direct", baseline_value=8.0)
    result = SectionResult("baseline-throughput", "Throughput", "ok", "iperf3", [fig])
    stored = tmp_path / "run.json"
    stored.write_text(json.dumps(to_json(BenchRun("2026-11-22T03:00:00Z", {"nproc": 2}, {"quick": False}, [result]))))
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\nprose\n{BEGIN}\nold\n{END}\nafter\n")
    assert main(["--from-json", str(stored), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Performance\nprose\n" + BEGIN) and text.endswith(END + "\nafter\n")
    assert "| stunnel mTLS pair | 2.00 Gb/s | direct: 8.00 Gb/s | 0.25x (higher is better) |" in text
