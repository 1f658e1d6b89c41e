"""The benchmark harness: a registry of sections, structured results, machine facts and JSON output.

A `Section` is a named measurement (`baseline-throughput`, `ztunnel`, ...) whose function receives a
`BenchContext` and returns a `SectionOutput`: figures (value + unit, optionally a baseline and therefore a
ratio) and the conditions they were measured under. `run_sections` runs them in order.

Invariants:
- A failing section never aborts the run: any exception (including a missing module or tool) becomes a
  `SectionResult` with status "not available" and the reason; only KeyboardInterrupt/SystemExit propagate.
- Ratios are always `value / baseline_value` of two figures measured in the same run on the same machine
  (absolute numbers on a noisy 2-core VM are not comparable between runs); `better` says which way is good.
- Results are plain data: `to_json` / `from_json` round-trip, so the markdown can be regenerated from a
  stored JSON file.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

Better = Literal["higher", "lower"]
Status = Literal["ok", "not available"]


@dataclass
class Figure:
    """One measured number. `baseline`/`baseline_value` name the figure it is compared against."""

    name: str
    value: float
    unit: str
    better: Better = "higher"
    baseline: str | None = None
    baseline_value: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline_value is None or self.baseline_value == 0:
            return None
        return self.value / self.baseline_value

    def against(self, other: Figure, label: str | None = None) -> Figure:
        """This figure compared with `other` (same unit expected); returns self for chaining."""
        self.baseline = label or other.name
        self.baseline_value = other.value
        return self


@dataclass
class SectionOutput:
    """What a section function returns."""

    figures: list[Figure]
    conditions: dict[str, Any] = field(default_factory=dict)


@dataclass
class SectionResult:
    name: str
    title: str
    status: Status
    how: str
    figures: list[Figure] = field(default_factory=list)
    conditions: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0

    def figure(self, name: str) -> Figure | None:
        return next((f for f in self.figures if f.name == name), None)


@dataclass
class BenchContext:
    """Passed to every section: run options and the results of the sections that already ran."""

    quick: bool = False
    results: dict[str, SectionResult] = field(default_factory=dict)

    def figure(self, section: str, name: str) -> Figure | None:
        """A figure of an earlier section, or None if that section did not run or failed."""
        result = self.results.get(section)
        if result is None or result.status != "ok":
            return None
        return result.figure(name)


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    how: str  # a short "how measured" note, printed under the section's table
    run: Callable[[BenchContext], SectionOutput]


@dataclass
class BenchRun:
    started: str  # ISO 8601 UTC
    machine: dict[str, Any]
    options: dict[str, Any]
    sections: list[SectionResult]
    seconds: float = 0.0


def run_sections(
    sections: Iterable[Section],
    ctx: BenchContext,
    *,
    progress: Callable[[str], None] | None = None,
) -> list[SectionResult]:
    """Run each section in order; a failure is recorded as "not available: <reason>", never raised."""
    out: list[SectionResult] = []
    for section in sections:
        if progress:
            progress(f"[bench] {section.name}: {section.title} ...")
        start = time.monotonic()
        try:
            result_out = section.run(ctx)
            result = SectionResult(
                section.name,
                section.title,
                "ok",
                section.how,
                figures=list(result_out.figures),
                conditions=dict(result_out.conditions),
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # one broken bench must not stop the others
            result = SectionResult(section.name, section.title, "not available", section.how, reason=_reason(e))
        result.seconds = round(time.monotonic() - start, 2)
        ctx.results[section.name] = result
        out.append(result)
        if progress:
            status = "ok" if result.status == "ok" else f"not available: {result.reason}"
            progress(f"[bench] {section.name}: {status} ({result.seconds:.1f} s)")
    return out


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def select(sections: list[Section], only: list[str] | None) -> list[Section]:
    """The sections named in `only` (in registry order), or all. Unknown names raise ValueError."""
    if not only:
        return list(sections)
    known = {s.name for s in sections}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [s for s in sections if s.name in only]


# ---------------------------------------------------------------------------------------------- machine


def _first_line(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    # stunnel prints a configuration banner before its version line
    for line in lines:
        if any(ch.isdigit() for ch in line) and "inetd" not in line:
            return line.strip()
    return lines[0].strip() if lines else None


def machine_facts() -> dict[str, Any]:
    """Facts that explain the numbers: CPUs, kernel, Python, memory, versions of the baseline tools."""
    facts: dict[str, Any] = {
        "hostname": platform.node(),
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    tools = {
        "iperf3": ["iperf3", "--version"],
        "stunnel": ["stunnel", "-version"],
        "openssl": ["openssl", "version"],
    }
    facts["tools"] = {name: _first_line(argv) or "not installed" for name, argv in tools.items()}
    return facts


# ------------------------------------------------------------------------------------------------- JSON


def to_json(run: BenchRun) -> dict[str, Any]:
    data = asdict(run)
    for section, result in zip(data["sections"], run.sections, strict=True):
        for fig, obj in zip(section["figures"], result.figures, strict=True):
            fig["ratio"] = obj.ratio
    return data


def from_json(data: Mapping[str, Any]) -> BenchRun:
    sections = []
    for s in data["sections"]:
        figures = [Figure(**{k: v for k, v in f.items() if k != "ratio"}) for f in s.get("figures", [])]
        sections.append(
            SectionResult(
                s["name"],
                s["title"],
                s["status"],
                s.get("how", ""),
                figures=figures,
                conditions=dict(s.get("conditions", {})),
                reason=s.get("reason", ""),
                seconds=s.get("seconds", 0.0),
            )
        )
    return BenchRun(data["started"], dict(data["machine"]), dict(data["options"]), sections, data.get("seconds", 0.0))


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(run: BenchRun, directory: Path) -> Path:
    """Write `<directory>/<timestamp>.json` (timestamp of the run start) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = run.started.replace("-", "").replace(":", "")
    path = directory / f"{stamp}.json"
    n = 1
    while path.exists():
        n += 1
        path = directory / f"{stamp}-{n}.json"
    path.write_text(json.dumps(to_json(run), indent=2, sort_keys=False) + "\n")
    return path
