"""Merge the Prometheus text expositions of a component's worker processes into one (sans-IO, pure).

A component running as several worker processes (one per core) must still look like one process to a
scraper: one `/metrics` with each series once. Every family the node proxy and the waypoint export is a
counter or an additive gauge (connections, bytes, requests, refusals, active counts), so the merged value
of a series is the sum of its values across workers; `# HELP` / `# TYPE` come from the first exposition
that declares the family, and families and series keep the order in which they first appear.

`WorkerMetrics` keeps the merged counters monotonic across worker restarts: a worker that is down or
unreachable counts with its last exposition, and once its successor answers, the departed process's counter
and histogram families (`monotonic_part`) stay in the sum for good, so Prometheus never reads a reset (only
what it counted after the last read is lost).

Invariants: a series present in one worker only is kept as is; a histogram's `_bucket` / `_sum` / `_count`
series sum like any other (the bucket bounds are the same in every worker); a line that is not a sample
or a comment is refused (`ExpositionError`), never silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ambient.runtime.errors import ProcessRuntimeError


class ExpositionError(ProcessRuntimeError):
    """A worker's exposition could not be parsed."""


def _split_sample(line: str) -> tuple[str, float]:
    """`name{labels} value` -> (series key, value). Label values may contain spaces and braces, so the
    key ends at the closing brace when there is one; a trailing timestamp is not produced by our exporters."""
    if "{" in line:
        end = line.rfind("}")
        if end < 0:
            raise ExpositionError(f"unterminated label set in exposition line {line[:120]!r}")
        key, rest = line[: end + 1], line[end + 1 :].split()
    else:
        key, *rest = line.split()
    if len(rest) != 1:
        raise ExpositionError(f"cannot parse exposition line {line[:120]!r}")
    try:
        return key, float(rest[0])
    except ValueError:
        raise ExpositionError(f"bad sample value in exposition line {line[:120]!r}") from None


def _format(value: float) -> str:
    """The text format's float spelling (as prometheus_client writes it: 3.0, +Inf, NaN)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@dataclass
class _Family:
    """One metric family of an exposition: its `# HELP` / `# TYPE` lines and its sample lines."""

    name: str
    kind: str = ""  # the TYPE (counter, gauge, histogram, ...); "" when undeclared
    headers: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)


def _families(text: bytes) -> list[_Family]:
    """The families of `text`, in order. Samples before any declaration form an untyped family named after
    the first of them; comments other than HELP and TYPE carry nothing and are dropped."""
    out: list[_Family] = []
    for raw in text.decode("utf-8").splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                if not out or out[-1].name != parts[2]:
                    out.append(_Family(parts[2]))
                out[-1].headers.append(line)
                if parts[1] == "TYPE" and len(parts) == 4:
                    out[-1].kind = parts[3].strip()
            continue
        if not out:
            out.append(_Family(line.split("{", 1)[0].split()[0]))
        out[-1].samples.append(line)
    return out


def merge_expositions(texts: Sequence[bytes]) -> bytes:
    """One exposition whose series are the per-series sums of `texts` (see the module docstring)."""
    if len(texts) == 1:
        return texts[0]
    headers: dict[str, list[str]] = {}  # family -> its HELP/TYPE lines (first declaration of each wins)
    samples: dict[str, dict[str, float]] = {}  # family -> series key -> summed value (insertion = output order)
    for text in texts:
        for family in _families(text):
            declared = headers.setdefault(family.name, [])
            series = samples.setdefault(family.name, {})
            for line in family.headers:
                if not any(h.split(None, 2)[1] == line.split(None, 2)[1] for h in declared):
                    declared.append(line)
            for line in family.samples:
                key, value = _split_sample(line)
                series[key] = series.get(key, 0.0) + value
    out: list[str] = []
    for name, series in samples.items():
        out += headers[name]
        out += [f"{key} {_format(value)}" for key, value in series.items()]
    return ("\n".join(out) + "\n").encode("utf-8") if out else b""


_MONOTONIC = frozenset({"counter", "histogram"})


def monotonic_part(text: bytes) -> bytes:
    """The counter and histogram families of a Prometheus text exposition (pure): what a departed worker
    leaves in the merged view. Gauges and untyped families are dropped (a gone process's current values are
    no longer current)."""
    kept = [line for f in _families(text) if f.kind in _MONOTONIC for line in (*f.headers, *f.samples)]
    return ("\n".join(kept) + "\n").encode("utf-8") if kept else b""


class WorkerMetrics:
    """The primary's merged view of its own and its workers' expositions (see the module docstring)."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[int, bytes]] = {}  # worker index -> (pid, its last exposition)
        self._departed = b""  # counters of workers' previous processes, summed

    def merge(self, own: bytes, workers: Mapping[int, tuple[int, bytes | None]]) -> bytes:
        """`workers`: index -> (its current pid, 0 if none; its exposition now, None if unreachable)."""
        texts = [own]
        for index, (pid, body) in workers.items():
            last = self._seen.get(index)
            if body is None:  # down, restarting or not answering: as last seen
                if last is not None:
                    texts.append(monotonic_part(last[1]))
                continue
            if last is not None and last[0] != pid:  # a successor: its predecessor's counts stay in the sum
                self._departed = merge_expositions([t for t in (self._departed, monotonic_part(last[1])) if t])
            self._seen[index] = (pid, body)
            texts.append(body)
        if self._departed:
            texts.append(self._departed)
        return merge_expositions(texts)
