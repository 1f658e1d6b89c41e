"""The generated markdown: number formatting, the marked block, and text outside the markers kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambient.bench.errors import BenchError
from ambient.bench.harness import BenchRun, Figure, SectionResult
from ambient.bench.report import (
    BEGIN,
    END,
    format_number,
    format_ratio,
    render_run,
    render_section,
    replace_generated,
    update_document,
)


def _run() -> BenchRun:
    direct = Figure("direct", 10.0, "Gb/s")
    stunnel = Figure("stunnel mTLS pair", 2.5, "Gb/s").against(direct)
    ok = SectionResult(
        "baseline-throughput", "Throughput", "ok", "iperf3 one stream", [direct, stunnel], {"seconds_each": 5.0}
    )
    broken = SectionResult("ztunnel", "Node proxy", "not available", "child process", reason="BenchError: no module")
    machine = {"hostname": "vm", "nproc": 2, "kernel": "6.1.0", "python": "3.11.7", "tools": {"iperf3": "iperf 3.12"}}
    return BenchRun("2026-11-22T03:00:00Z", machine, {"quick": False, "only": []}, [ok, broken], 42.0)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (12345.6, "12,346"),
        (123.4, "123"),
        (12.34, "12.3"),
        (1.234, "1.23"),
        (0.1234, "0.123"),
        (0.001234, "0.0012"),
    ],
)
def test_format_number_keeps_three_significant_figures(value: float, text: str) -> None:
    assert format_number(value) == text


def test_ratio_is_value_over_baseline_with_direction() -> None:
    fig = Figure("p99", 3.0, "ms", "lower", baseline="stunnel p99", baseline_value=1.5)
    assert fig.ratio == pytest.approx(2.0)
    assert format_ratio(fig) == "2.00x (lower is better)"
    assert format_ratio(Figure("x", 1.0, "ms")) == "-"
    assert Figure("x", 1.0, "ms", baseline="zero", baseline_value=0.0).ratio is None


def test_section_table_shows_value_baseline_and_ratio() -> None:
    text = render_section(_run().sections[0])
    assert "| stunnel mTLS pair | 2.50 Gb/s | direct: 10.0 Gb/s | 0.25x (higher is better) |" in text
    assert "| direct | 10.0 Gb/s | - | - |" in text
    assert "Conditions: seconds each 5.00." in text
    assert "How measured: iperf3 one stream" in text


def test_failed_section_reads_not_available_with_reason() -> None:
    text = render_section(_run().sections[1])
    assert "not available: BenchError: no module" in text
    assert "|---|" not in text


def test_run_block_has_markers_date_and_machine_facts() -> None:
    text = render_run(_run())
    assert text.startswith(BEGIN) and text.rstrip().endswith(END)
    assert "2026-11-22T03:00:00Z" in text
    assert "2 CPUs" in text and "kernel 6.1.0" in text and "Python 3.11.7" in text
    assert "iperf 3.12" in text


def test_replace_keeps_text_outside_the_markers() -> None:
    doc = f"# Title\n\nintro text\n\n{BEGIN}\nold figures\n{END}\n\n## After\nkept too\n"
    new = replace_generated(doc, f"{BEGIN}\nnew figures\n{END}\n")
    assert new == f"# Title\n\nintro text\n\n{BEGIN}\nnew figures\n{END}\n\n## After\nkept too\n"


def test_replace_appends_block_when_markers_missing() -> None:
    new = replace_generated("# Title\nintro\n", f"{BEGIN}\nx\n{END}\n")
    assert new == f"# Title\nintro\n\n{BEGIN}\nx\n{END}\n"


def test_replace_refuses_begin_without_end() -> None:
    with pytest.raises(BenchError, match="without"):
        replace_generated(f"intro\n{BEGIN}\nhalf", f"{BEGIN}\nx\n{END}\n")


def test_update_document_is_idempotent_and_preserves_prose(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\n\nhand-written method\n\n{BEGIN}\n(old)\n{END}\n\ntrailer\n")
    update_document(doc, _run())
    once = doc.read_text()
    update_document(doc, _run())
    assert doc.read_text() == once
    assert once.startswith("# Performance\n\nhand-written method\n\n" + BEGIN)
    assert once.endswith(END + "\n\ntrailer\n")
    assert "(old)" not in once and "0.25x" in once
