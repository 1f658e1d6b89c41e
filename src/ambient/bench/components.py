"""Sections that run the other packages' bench modules, each in a child interpreter with a timeout.

Contract for a component bench module (`ambient.<pkg>.bench`): a function (default `run`) taking keyword
options it understands among those offered (`quick: bool`, plus per-section ones such as `workloads`,
`services`) and returning either
- `{"figures": [{"name", "value", "unit", "better"?, "baseline"?, "baseline_value"?, "note"?}, ...],
  "conditions": {...}}` (explicit), or
- a flat or nested dict of numbers whose key suffix gives the unit (`_gbps`, `_ms`, `_us`, `_per_s`,
  `_mib`, `_cores`, ... see `UNITS`); other values (and numbers without a unit suffix, e.g. `workloads`)
  become conditions.

Invariants:
- A missing module, an import error, a crash, a timeout or an unreadable result makes the section "not
  available: <reason>"; nothing a component does can stop the harness.
- Mesh figures without a baseline of their own are compared with the bench's own stunnel or direct figure
  of the same kind, else with the stunnel baseline measured earlier in this run (same unit family, same
  percentile, "added"/CPU matched); never with published numbers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from ambient.bench.child import RESULT_MARK
from ambient.bench.errors import BenchError
from ambient.bench.harness import BenchContext, Better, Figure, Section, SectionOutput

# key suffix -> (unit, multiplier to that unit, better); longest first. Compound CPU suffixes name the
# figure too ("mesh_proxy_cores_per_1000_rps" -> "mesh proxy CPU per 1,000 req/s", in cores).
CPU_SUFFIXES = {"_cores_per_1000_rps": 1.0, "_cores_per_1k_rps": 1.0, "_cpu_ms_per_request": 1.0}
UNITS: list[tuple[str, str, float, Better]] = [
    ("_bytes_per_s", "Gb/s", 8e-9, "higher"),
    ("_bits_per_s", "Gb/s", 1e-9, "higher"),
    ("_gbps", "Gb/s", 1.0, "higher"),
    ("_mbps", "Mb/s", 1.0, "higher"),
    ("_per_sec", "/s", 1.0, "higher"),
    ("_per_s", "/s", 1.0, "higher"),
    ("_rps", "req/s", 1.0, "higher"),
    ("_cps", "conn/s", 1.0, "higher"),
    ("_ms", "ms", 1.0, "lower"),
    ("_us", "µs", 1.0, "lower"),
    ("_ns", "ns", 1.0, "lower"),
    ("_seconds", "s", 1.0, "lower"),
    ("_sec", "s", 1.0, "lower"),
    ("_s", "s", 1.0, "lower"),
    ("_kib", "KiB", 1.0, "lower"),
    ("_mib", "MiB", 1.0, "lower"),
    ("_mb", "MB", 1.0, "lower"),
    ("_bytes", "B", 1.0, "lower"),
    ("_cores", "cores", 1.0, "lower"),
    ("_cpu", "cores", 1.0, "lower"),
    ("_percent", "%", 1.0, "lower"),
    ("_pct", "%", 1.0, "lower"),
]
# values in the same family can be compared after scaling to the baseline's unit
_SCALE = {"ms": 1e-3, "µs": 1e-6, "ns": 1e-9, "s": 1.0, "Gb/s": 1e9, "Mb/s": 1e6}


def _unit_of(key: str) -> tuple[str, str, float, Better] | None:
    for suffix, mult in CPU_SUFFIXES.items():
        # CPU ms per request == CPU seconds per 1,000 requests == cores per 1,000 req/s
        if key.endswith(suffix) and len(key) > len(suffix):
            return f"{key[: -len(suffix)]} CPU per 1,000 req/s", "cores", mult, "lower"
    for suffix, unit, mult, better in UNITS:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], unit, mult, better
    return None


def _listed(items: list[Any]) -> list[Figure]:
    """Figures given as `{"name", "value", "unit", "better", "baseline", "baseline_value", "note"}` items."""
    figures = []
    for item in items:
        try:
            fig = Figure(str(item["name"]), float(item["value"]), str(item.get("unit", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise BenchError(f"bad figure {item!r}: needs name and numeric value") from e
        fig.better = "lower" if item.get("better") == "lower" else "higher"
        if item.get("baseline_value") is not None:
            fig.baseline = str(item.get("baseline") or "baseline")
            fig.baseline_value = float(item["baseline_value"])
        fig.note = str(item.get("note", ""))
        figures.append(fig)
    return figures


def figures_from_result(result: Any) -> tuple[list[Figure], dict[str, Any]]:
    """Figures and conditions from a component bench's return value (see the module docstring)."""
    if isinstance(result, int | float) and not isinstance(result, bool):
        return [Figure("result", float(result), "")], {}
    if not isinstance(result, dict):
        raise BenchError(f"bench returned {type(result).__name__}, expected a dict")
    conditions: dict[str, Any] = dict(result.get("conditions") or {})
    if isinstance(result.get("figures"), list):
        return _listed(result["figures"]), conditions
    figures = []

    def walk(path: list[str], value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk([*path, str(k)], v)
            return
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        # the unit comes from the innermost key that has a unit suffix: {"throughput_gbps": {"mesh": 3.1}}
        # is "throughput mesh" in Gb/s, {"latency": {"mesh": {"p99_ms": 2}}} is "latency mesh p99" in ms
        for i in range(len(path) - 1, -1, -1):
            parsed = _unit_of(path[i]) if numeric else None
            if parsed is not None:
                stem, unit, mult, better = parsed
                name = " ".join([*path[:i], stem, *path[i + 1 :]]).replace("_", " ")
                figures.append(Figure(" ".join(name.split()), float(value) * mult, unit, better))
                return
        conditions[" ".join(path)] = value

    for k, v in result.items():
        if k not in ("conditions", "extra_figures"):
            walk([str(k)], v)
    figures += _listed(result.get("extra_figures") or [])  # named figures with their own baselines
    if not figures:
        raise BenchError("bench returned no figure with a unit suffix (see ambient.bench.components)")
    return figures, conditions


_RATES = {"/s", "req/s", "conn/s"}
_TOKENS = ("p50", "p90", "p99", "added", "cpu", "capacity")  # a figure is compared only with one of the same tokens


def _tokens(name: str) -> set[str]:
    return {t for t in _TOKENS if t in _words(name)}


def _comparable(fig: Figure, base: Figure) -> float | None:
    """`base`'s value in `fig`'s unit if the two measure the same kind of thing, else None."""
    if _tokens(fig.name) != _tokens(base.name):
        return None
    if fig.unit == base.unit:
        return base.value
    if fig.unit in _SCALE and base.unit in _SCALE:
        same_family = (fig.unit in ("Gb/s", "Mb/s")) == (base.unit in ("Gb/s", "Mb/s"))
        if same_family:
            return base.value * _SCALE[base.unit] / _SCALE[fig.unit]
    if fig.unit in _RATES and base.unit in _RATES:
        kind = "conn" if "conn" in fig.name.lower() or fig.unit == "conn/s" else "req"
        if kind == ("conn" if base.unit == "conn/s" else "req"):
            return base.value
    return None


_TIME = {"ms": 1e-3, "µs": 1e-6, "ns": 1e-9, "s": 1.0}


def derive_added(figures: list[Figure]) -> None:
    """Add "mesh added pNN" (mesh - direct), compared with the stunnel's added pNN when the bench measured
    direct, mesh and stunnel latencies itself; the latency goal is about added latency."""
    for p in ("p50", "p90", "p99"):
        if any({"added", p} <= _words(f.name) for f in figures):
            continue
        found: dict[str, Figure] = {}
        for f in figures:
            words = _words(f.name)
            if f.unit in _TIME and p in words:
                for role in ("direct", "mesh", "stunnel"):
                    if role in words:
                        found.setdefault(role, f)
        direct, mesh = found.get("direct"), found.get("mesh")
        if direct is None or mesh is None:
            continue

        def in_direct_unit(f: Figure, ref: Figure = direct) -> float:
            return f.value * _TIME[f.unit] / _TIME[ref.unit]

        added = Figure(f"mesh added {p}", in_direct_unit(mesh) - direct.value, direct.unit, "lower")
        stunnel = found.get("stunnel")
        if stunnel is not None:
            added.baseline, added.baseline_value = f"stunnel added {p}", in_direct_unit(stunnel) - direct.value
        figures.append(added)


def _words(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", name.lower()))


def aggregate_against_single(figures: list[Figure]) -> None:
    """An "aggregate" throughput (several parallel streams) is compared with the single mesh stream of the
    same run: the question it answers is whether the proxy uses more than one core, not how it fares
    against stunnel."""
    single = next((f for f in figures if f.unit in ("Gb/s", "Mb/s") and "mesh" in _words(f.name)
                   and "aggregate" not in _words(f.name)), None)
    for fig in figures:
        if single is not None and fig.baseline is None and "aggregate" in _words(fig.name):
            value = _comparable(fig, single)
            if value is not None:
                fig.baseline, fig.baseline_value = f"{single.name} (1 stream)", value


def stunnel_baselines(ctx: BenchContext) -> list[Figure]:
    names = {
        "baseline-throughput": ["stunnel mTLS pair"],
        "baseline-latency": [
            "stunnel p50",
            "stunnel p99",
            "stunnel added p50",
            "stunnel added p99",
            "stunnel CPU per 1,000 req/s",
        ],
        "baseline-connections": ["stunnel mTLS pair"],
    }
    found = (ctx.figure(section, name) for section, figs in names.items() for name in figs)
    return [Figure(f.name, f.value, f.unit, f.better) for f in found if f is not None]


def attach_baselines(figures: list[Figure], candidates: list[Figure]) -> None:
    """Give every mesh figure without a baseline the first comparable one among: the bench's own stunnel
    figures, then `candidates` (the stunnel baselines of this run), then its own direct figures. For
    rates (connections/s, req/s) own direct figures come before `candidates`: those depend on the client
    program more than the path, so only a figure from the same client is a fair yardstick."""
    own_stunnel = [f for f in figures if "stunnel" in _words(f.name)]
    own_direct = [f for f in figures if "direct" in _words(f.name)]
    for fig in figures:
        words = _words(fig.name)
        if fig.baseline is not None or "stunnel" in words or "direct" in words:
            continue
        rate = fig.unit in _RATES
        order = [*own_stunnel, *own_direct, *candidates] if rate else [*own_stunnel, *candidates, *own_direct]
        for base in order:
            value = _comparable(fig, base)
            if value is not None:
                fig.baseline, fig.baseline_value = base.name, value
                break


def _stop_group(proc: subprocess.Popen[str]) -> None:
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.communicate(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def call_in_child(module: str, func: str, kwargs: dict[str, Any], timeout: float) -> Any:
    """`module.func(**kwargs)` in a fresh interpreter; its JSON result, or BenchError with the reason."""
    try:
        found = _exists(module)
    except (ImportError, ValueError) as e:
        raise BenchError(f"cannot look up {module}: {e}") from e
    if not found:
        raise BenchError(f"module {module} does not exist (yet)")
    # Own session, so that on timeout the whole group (the bench and anything it started) is stopped:
    # SIGINT first (Python runs its `finally` blocks, e.g. deleting its namespaces), SIGKILL after 10 s.
    proc = subprocess.Popen(
        [sys.executable, "-m", "ambient.bench.child", module, func, json.dumps(kwargs)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        _stop_group(proc)
        raise BenchError(f"{module}.{func} did not finish within {timeout:.0f} s (stopped)") from e
    except BaseException:
        _stop_group(proc)
        raise
    if proc.returncode != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        raise BenchError(f"{module}.{func} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    raise BenchError(f"{module}.{func} printed no result")


# ------------------------------------------------------------------------------------------ sections


def hbone_run(quick: bool = False) -> dict[str, Any]:
    """Runs in the child: the HBONE loopback micro-benchmarks, as explicit figures with their baselines."""
    from ambient.bench import hbone as bench

    seconds = 1.0 if quick else 2.0
    # interleaved rounds (hbone, tls, hbone, ...), median of each: a neighbour's burst on this shared
    # machine hits both paths instead of deciding the ratio
    hbones: list[float] = []
    tlss: list[float] = []
    for _ in range(1 if quick else 3):
        hbones.append(bench.measure_throughput(seconds) * 8 / 1e9)
        tlss.append(bench.measure_plain_tls(seconds) * 8 / 1e9)
    hbone, tls = statistics.median(hbones), statistics.median(tlss)
    lat = bench.measure_latency(500 if quick else 2000)
    rate = bench.measure_stream_rate(min(seconds, 2.0))
    return {
        "figures": [
            {"name": "plain TLS 1.3, one connection", "value": tls, "unit": "Gb/s"},
            {
                "name": "HBONE tunnel, one stream",
                "value": hbone,
                "unit": "Gb/s",
                "baseline": "plain TLS",
                "baseline_value": tls,
            },
            {"name": "echo round trip p50", "value": lat["p50_us"], "unit": "µs", "better": "lower"},
            {"name": "echo round trip p99", "value": lat["p99_us"], "unit": "µs", "better": "lower"},
            {"name": "new tunnels (sequential, pooled connection)", "value": rate, "unit": "/s"},
        ],
        "conditions": {"seconds": seconds, "where": "loopback, client and server in one event loop",
                       "rounds_gbps_hbone_tls": "; ".join(f"{h:.2f}/{t:.2f}"
                                                          for h, t in zip(hbones, tlss, strict=True))},
    }


def waypoint_run(quick: bool = False) -> dict[str, Any]:
    """Runs in the child: the waypoint bench's own figures (`ambient.bench.waypoint.run`)."""
    from ambient.bench import waypoint as bench

    result: dict[str, Any] = bench.run(quick=quick)
    return result


def _component(
    module: str,
    func: str,
    extra: Callable[[bool], dict[str, Any]],
    timeout: Callable[[bool], float],
    *,
    compare_with_stunnel: bool,
    requires: str | None = None,
) -> Callable[[BenchContext], SectionOutput]:
    """A section running `module.func` in a child; `requires` is the component module an adapter needs."""

    def run(ctx: BenchContext) -> SectionOutput:
        if requires is not None and not _exists(requires):
            raise BenchError(f"module {requires} does not exist (yet)")
        result = call_in_child(module, func, {"quick": ctx.quick, **extra(ctx.quick)}, timeout(ctx.quick))
        figures, conditions = figures_from_result(result)
        if compare_with_stunnel:
            aggregate_against_single(figures)
            derive_added(figures)
            attach_baselines(figures, stunnel_baselines(ctx))
        return SectionOutput(figures, conditions)

    return run


def against_haproxy(run: Callable[[BenchContext], SectionOutput]) -> Callable[[BenchContext], SectionOutput]:
    """The waypoint's CPU per 1,000 req/s compared with HAProxy's (mTLS in, mTLS out) from this run."""

    def wrapped(ctx: BenchContext) -> SectionOutput:
        out = run(ctx)
        base = ctx.figure("baseline-haproxy", "haproxy CPU per 1,000 req/s")
        fig = next((f for f in out.figures if f.name == "waypoint CPU per 1,000 req/s"), None)
        if base is not None and fig is not None and fig.baseline is None:
            fig.against(base)
        return out

    return wrapped


def _none(_quick: bool) -> dict[str, Any]:
    return {}


def _zt_args(quick: bool) -> dict[str, Any]:
    return {"seconds": 2, "idle_connections": 1000} if quick else {}


def _cp_size(quick: bool) -> dict[str, Any]:
    return {"workloads": 1000, "services": 100} if quick else {"workloads": 100_000, "services": 10_000}


SECTIONS = [
    Section(
        "hbone",
        "HBONE on loopback (micro-benchmark)",
        "ambient.bench.hbone in a child process: bytes through one HBONE tunnel vs one bare TLS 1.3 "
        "connection with the same certificates, client and server in one event loop on 127.0.0.1.",
        _component(
            "ambient.bench.components",
            "hbone_run",
            _none,
            lambda q: 60 if q else 90,
            compare_with_stunnel=False,
            requires="ambient.bench.hbone",
        ),
    ),
    Section(
        "ztunnel",
        "Node proxy: direct vs mesh vs stunnel",
        "ambient.bench.ztunnel in a child process, on its own node pair: direct, stunnel and mesh paths; mesh "
        "figures are compared with the bench's own stunnel figures (else the stunnel baselines above); CPU is "
        "both node proxies' from /proc.",
        _component(
            "ambient.bench.ztunnel", "run,run_bench", _zt_args, lambda q: 150 if q else 360, compare_with_stunnel=True
        ),
    ),
    Section(
        "trace-overhead",
        "Node proxy: the correlation id's cost",
        "ambient.bench.trace_overhead in a child process: two node pairs built once, proxies with "
        "AMBIENT_TRACE_IDS=1 on one and =0 on the other, both loaded at the same time in rounds (no restarts; "
        "each role pinned to the same CPU in both pairs; the client pods reuse TIME_WAIT ports); connections/s, "
        "the proxies' CPU per connection and single-stream throughput: median per mode, and the median (range) "
        "of the per-round on/off ratios, which the goals read.",
        _component(
            "ambient.bench.trace_overhead", "run", _none, lambda q: 120 if q else 240, compare_with_stunnel=False
        ),
    ),
    Section(
        "controlplane",
        "Control plane at scale",
        "ambient.bench.controlplane.run(workloads, services) in a child process: initial sync time and memory "
        "of a proxy's state, object-change-to-applied latency, certificates issued per second.",
        _component(
            "ambient.bench.controlplane", "run", _cp_size, lambda q: 90 if q else 300, compare_with_stunnel=False
        ),
    ),
    Section(
        "waypoint",
        "Waypoint: requests/s and added latency",
        "ambient.bench.waypoint in a child process: the same loopback HBONE path with and without the waypoint "
        "(closed loop, keep-alive clients): requests/s, p50/p99, and the waypoint's CPU per 1,000 req/s.",
        against_haproxy(
            _component(
                "ambient.bench.components",
                "waypoint_run",
                _none,
                lambda q: 90 if q else 150,
                compare_with_stunnel=False,
                requires="ambient.bench.waypoint",
            )
        ),
    ),
]
