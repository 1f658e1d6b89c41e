"""`python -m ambient.bench [--only SECTION ...] [--quick]`: run the benchmarks, write JSON and the doc.

Writes `bench-results/<timestamp>.json` (gitignored) and, for a full run of every section, regenerates the
marked block of docs/performance.md (`--docs` forces it for a partial or quick run, `--no-docs` skips it).
`--from-json FILE` regenerates the doc from a stored result without measuring anything.
`--hog` runs the whole bench with a CPU hog beside it (one busy-loop process, bounded in time, stopped
when the run ends): the robustness figures ("with a CPU hog running").

Invariants: SIGTERM/SIGHUP are turned into SystemExit so every namespace and process the baselines
created is cleaned up by their `with` blocks; stale `bench-<pid>-*` namespaces of dead runs are removed
first. Exit status is 0 even when some sections are "not available" (they are reported), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from ambient.bench import baselines, components, haproxy
from ambient.bench.harness import (
    BenchContext,
    BenchRun,
    Section,
    from_json,
    machine_facts,
    now_iso,
    run_sections,
    select,
    write_json,
)
from ambient.bench.nsenv import remove_stale
from ambient.bench.report import format_ratio, format_value, update_document

ROOT = Path(__file__).resolve().parents[3]  # the repository (src/ambient/bench/__main__.py)


def all_sections() -> list[Section]:
    """The registry, in run order: baselines first (the mesh sections compare against them)."""
    return [*baselines.SECTIONS, haproxy.SECTION, *components.SECTIONS]


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _print_summary(run: BenchRun) -> None:
    for result in run.sections:
        print(f"\n== {result.name}: {result.title}")
        if result.status != "ok":
            print(f"   not available: {result.reason}")
            continue
        for fig in result.figures:
            base = ""
            if fig.baseline is not None and fig.baseline_value is not None:
                base = f"   vs {fig.baseline} {format_value(fig.baseline_value, fig.unit)} = {format_ratio(fig)}"
            print(f"   {fig.name:<44} {format_value(fig.value, fig.unit):>14}{base}")


HOG_MAX_SECONDS = 3600  # the hog ends by itself even if the bench is killed without cleanup
_HOG = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"


def start_hog(limit: float = HOG_MAX_SECONDS) -> subprocess.Popen[bytes]:
    """One busy-loop process (a bounded CPU hog) competing with the bench for the machine's cores."""
    return subprocess.Popen([sys.executable, "-c", _HOG.format(limit=limit)], stdin=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    sections = all_sections()
    parser = argparse.ArgumentParser(prog="python -m ambient.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", metavar="SECTION", help="run only these sections")
    parser.add_argument("--quick", action="store_true", help="short durations (a smoke run)")
    parser.add_argument("--hog", action="store_true", help="run with a CPU hog (one busy-loop process)")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument("--docs", dest="docs", action="store_true", default=None, help="always update the doc")
    parser.add_argument("--no-docs", dest="docs", action="store_false", help="never update the doc")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results", help="directory for the JSON")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "performance.md", help="markdown to update")
    parser.add_argument("--from-json", type=Path, help="regenerate the doc from a stored result and exit")
    args = parser.parse_args(argv)

    if args.list:
        for s in sections:
            print(f"{s.name:<22} {s.title}")
        return 0
    if args.from_json:
        run = from_json(json.loads(args.from_json.read_text()))
        update_document(args.doc, run)
        print(f"updated {args.doc}")
        return 0
    try:
        chosen = select(sections, args.only)
    except ValueError as e:
        parser.error(str(e))

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if os.geteuid() == 0:
        remove_stale()
    started = now_iso()
    t0 = time.monotonic()
    ctx = BenchContext(quick=args.quick)
    hog = start_hog() if args.hog else None
    try:
        results = run_sections(chosen, ctx, progress=lambda line: print(line, flush=True))
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    run = BenchRun(
        started,
        machine_facts(),
        {"quick": args.quick, "only": args.only or [], "cpu_hog": args.hog},
        results,
        round(time.monotonic() - t0, 1),
    )
    _print_summary(run)
    path = write_json(run, args.out)
    print(f"\nresults: {path}")
    update_docs = args.docs if args.docs is not None else not (args.quick or args.only or args.hog)
    if update_docs:
        update_document(args.doc, run)
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
