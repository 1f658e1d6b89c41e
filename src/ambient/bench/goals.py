"""The performance goals, checked against a run's figures (pure; rendered at the top of the block).

A goal finds its figure by section, unit family and name tokens (the component benches name their own
figures, so matching is deliberately loose: "p99" and "added" as words, "cpu", "conn"), then compares.
A goal whose figure is absent reads "not measured", never "missed".

Goals: node proxy throughput >= 1.0x the stunnel pair (floor 0.5x); added p99 latency
<= 2x the stunnel pair's; <= 0.1 core per 1,000 req/s; >= 2,000 new connections/s; control plane
change-to-applied p99 <= 100 ms; waypoint <= 0.25 core per 1,000 req/s.
Ratios to in-run baselines: HBONE stream >= 0.88x plain TLS; single-stream throughput
>= 1.2x the stunnel pair quiet, >= 1.0x with a CPU hog (`--hog`; a goal with `hog` set is checked only in
runs of that kind); CPU per 1,000 req/s <= 1.0x stunnel's; 4 streams >= 1.7x one; capacity connections
>= 4x stunnel's; <= 16 KiB per idle meshed connection; waypoint CPU <= 1.5x HAProxy's; waypoint req/s
>= 0.6x the path without it. The correlation id (trace ids on / off, median of per-round ratios) costs
under 3%: connections/s and single-stream throughput >= 0.97x, CPU per connection <= 1.03x.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ambient.bench.harness import BenchRun, Figure, SectionResult

_MS = {"ms": 1.0, "µs": 1e-3, "us": 1e-3, "s": 1e3, "ns": 1e-6}


def _words(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", name.lower()))


def _mesh(fig: Figure) -> bool:
    """Not one of the bench's own baselines."""
    return not ({"direct", "stunnel", "baseline", "without"} & _words(fig.name))


@dataclass(frozen=True)
class Goal:
    section: str
    what: str
    target: str
    find: Callable[[Figure], bool]
    check: Callable[[Figure], tuple[str, bool | None]]  # (measured, met); met None = partly ("floor met")
    hog: bool | None = None  # True: only in runs with a CPU hog; False: only in quiet runs; None: always


@dataclass(frozen=True)
class GoalResult:
    what: str
    target: str
    measured: str
    verdict: str  # "met", "floor met", "missed", "not measured"


def _throughput(fig: Figure) -> tuple[str, bool | None]:
    r = fig.ratio
    if r is None:
        return f"{fig.value:.2f} {fig.unit} (no stunnel baseline)", False
    return f"{r:#.3g}x stunnel", True if r >= 1.0 else (None if r >= 0.5 else False)


def _added_p99(fig: Figure) -> tuple[str, bool | None]:
    r = fig.ratio
    if r is None:
        return f"{fig.value:.3g} {fig.unit} (no stunnel baseline)", False
    return f"{r:#.3g}x stunnel's added p99", r <= 2.0


def _beside(fig: Figure, text: str) -> str:
    """An absolute goal's figure with its in-run baseline beside it: on a noisy shared VM the baseline
    says whether a miss is the path's or the machine's."""
    if fig.baseline is None or fig.baseline_value is None:
        return text
    value = f"{fig.baseline_value:,.0f}" if fig.baseline_value >= 100 else f"{fig.baseline_value:.3g}"
    return f"{text} ({fig.baseline}: {value})"


def _at_most(limit: float, unit: str) -> Callable[[Figure], tuple[str, bool | None]]:
    def check(fig: Figure) -> tuple[str, bool | None]:
        value = fig.value * _MS[fig.unit] if unit == "ms" and fig.unit in _MS else fig.value
        return _beside(fig, f"{value:.3g} {unit}"), value <= limit

    return check


def _at_least(limit: float, unit: str) -> Callable[[Figure], tuple[str, bool | None]]:
    def check(fig: Figure) -> tuple[str, bool | None]:
        return _beside(fig, f"{fig.value:,.0f} {unit}"), fig.value >= limit

    return check


def _ratio(limit: float, most: bool) -> Callable[[Figure], tuple[str, bool | None]]:
    """A ratio goal: value / in-run baseline at most (or at least) `limit`, the baseline named beside it."""

    def check(fig: Figure) -> tuple[str, bool | None]:
        r = fig.ratio
        if r is None:
            return f"{fig.value:.3g} {fig.unit} (no in-run baseline)", False
        return f"{r:.2f}x ({fig.baseline})", r <= limit if most else r >= limit

    return check


def _on_off(limit: float, most: bool) -> Callable[[Figure], tuple[str, bool | None]]:
    """A with/without goal read from a unit-less ratio figure (the note says how it was taken)."""

    def check(fig: Figure) -> tuple[str, bool | None]:
        note = f" ({fig.note})" if fig.note else ""
        return f"{fig.value:.3f}x{note}", fig.value <= limit if most else fig.value >= limit

    return check


def _per_round(token: str) -> Callable[[Figure], bool]:
    return lambda f: f.unit == "x" and token in _words(f.name) and "round" in _words(f.name)


def _capacity(f: Figure) -> bool:
    return f.unit in ("/s", "conn/s") and "conn" in f.name.lower() and "capacity" in _words(f.name) and _mesh(f)


def _cpu(fig: Figure) -> bool:
    return fig.unit == "cores" and "cpu" in _words(fig.name) and _mesh(fig)


GOALS = [
    Goal(
        "ztunnel",
        "node proxy single-stream throughput",
        ">= 1.0x the stunnel pair (floor 0.5x)",
        lambda f: f.unit in ("Gb/s", "Mb/s") and _mesh(f),
        _throughput,
    ),
    Goal(
        "ztunnel",
        "node proxy added p99 latency",
        "<= 2x the stunnel pair's added p99",
        lambda f: {"added", "p99"} <= _words(f.name) and f.unit in _MS and _mesh(f),
        _added_p99,
    ),
    Goal("ztunnel", "node proxy CPU per 1,000 req/s", "<= 0.1 core", _cpu, _at_most(0.1, "cores")),
    Goal(
        "ztunnel",
        "node proxy new connections (capacity: 32 concurrent clients)",
        ">= 2,000 /s",
        lambda f: f.unit in ("/s", "conn/s") and "conn" in f.name.lower() and "capacity" in _words(f.name)
        and _mesh(f),
        _at_least(2000, "conn/s"),
    ),
    Goal(
        "controlplane",
        "control plane change-to-applied p99",
        "<= 100 ms",
        lambda f: "p99" in _words(f.name) and f.unit in _MS,
        _at_most(100.0, "ms"),
    ),
    Goal("waypoint", "waypoint CPU per 1,000 req/s", "<= 0.25 core", _cpu, _at_most(0.25, "cores")),
    # ratios to baselines measured in the same run
    Goal("hbone", "HBONE stream / plain TLS (loopback)", ">= 0.88x",
         lambda f: f.unit in ("Gb/s", "Mb/s") and "hbone" in _words(f.name), _ratio(0.88, most=False)),
    Goal("ztunnel", "single-stream throughput / stunnel pair, quiet", ">= 1.2x",
         lambda f: f.unit in ("Gb/s", "Mb/s") and _mesh(f) and "aggregate" not in _words(f.name),
         _ratio(1.2, most=False), hog=False),
    Goal("ztunnel", "single-stream throughput / stunnel pair, CPU hog running", ">= 1.0x",
         lambda f: f.unit in ("Gb/s", "Mb/s") and _mesh(f) and "aggregate" not in _words(f.name),
         _ratio(1.0, most=False), hog=True),
    Goal("ztunnel", "node proxy CPU per 1,000 req/s / stunnel pair's", "<= 1.0x", _cpu, _ratio(1.0, most=True)),
    Goal("ztunnel", "aggregate throughput, 4 streams / 1 stream", ">= 1.7x",
         lambda f: f.unit in ("Gb/s", "Mb/s") and "aggregate" in _words(f.name), _ratio(1.7, most=False)),
    Goal("ztunnel", "new connections/s (capacity) / stunnel pair's", ">= 4x", _capacity, _ratio(4.0, most=False)),
    Goal("ztunnel", "memory per idle meshed connection", "<= 16 KiB",
         lambda f: "idle" in _words(f.name) and f.unit in ("KiB", "KB"), _at_most(16.0, "KiB")),
    Goal("waypoint", "waypoint CPU per 1,000 req/s / HAProxy's (mTLS in and out)", "<= 1.5x",
         lambda f: _cpu(f) and f.baseline is not None and "haproxy" in _words(f.baseline), _ratio(1.5, most=True)),
    Goal("waypoint", "waypoint requests/s / path without it", ">= 0.6x",
         lambda f: f.name == "through waypoint" and f.unit == "req/s", _ratio(0.6, most=False)),
    # the correlation id's cost: on/off per round (both modes measured at the same instant), under 3%
    Goal("trace-overhead", "node proxy connections/s, trace ids on / off", ">= 0.97x",
         _per_round("connections"), _on_off(0.97, most=False)),
    Goal("trace-overhead", "node proxy CPU per connection, trace ids on / off", "<= 1.03x",
         _per_round("cpu"), _on_off(1.03, most=True)),
    Goal("trace-overhead", "node proxy single-stream throughput, trace ids on / off", ">= 0.97x",
         _per_round("throughput"), _on_off(0.97, most=False)),
]


def _section(run: BenchRun, name: str) -> SectionResult | None:
    return next((s for s in run.sections if s.name == name and s.status == "ok"), None)


def evaluate(run: BenchRun, goals: list[Goal] | None = None) -> list[GoalResult]:
    out = []
    hog = bool(run.options.get("cpu_hog"))
    for goal in goals if goals is not None else GOALS:
        if goal.hog is not None and goal.hog != hog:
            continue
        section = _section(run, goal.section)
        fig = next((f for f in section.figures if goal.find(f)), None) if section else None
        if fig is None:
            out.append(GoalResult(goal.what, goal.target, "-", "not measured"))
            continue
        measured, met = goal.check(fig)
        verdict = "met" if met else ("floor met" if met is None else "missed")
        out.append(GoalResult(goal.what, goal.target, measured, verdict))
    return out
