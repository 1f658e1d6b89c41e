"""Run one bench function in a fresh interpreter and print its result as JSON (used by `components`).

`python -m ambient.bench.child MODULE FUNCTION KWARGS_JSON` imports MODULE, calls FUNCTION(**KWARGS) and
prints a line `RESULT_MARK <json>` on stdout. Anything else the function prints is ignored by the parent.

Why a child process: a component's bench may measure its own memory (RSS) or CPU, may leave an event loop
or threads behind, and may hang or crash; in a child, none of that leaks into the harness or the other
sections, and the parent can bound it with a timeout.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import sys
from typing import Any

RESULT_MARK = "@@ambient-bench-result@@"


def _plain(value: Any) -> Any:
    """JSON-friendly copy: dataclasses become dicts, unknown objects their str()."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _accepted(func: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of `kwargs` the function takes: the harness offers options (e.g. `quick`) that a
    component's bench may or may not support."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def main(argv: list[str]) -> int:
    module_name, func_name, kwargs_json = argv
    module = importlib.import_module(module_name)
    # FUNCTION may list fallbacks ("run,run_bench"): the first one the module has is called
    names = func_name.split(",")
    found = [getattr(module, n) for n in names if hasattr(module, n)]
    if not found:
        raise SystemExit(f"{module_name} has none of {', '.join(names)}")
    func = found[0]
    result = func(**_accepted(func, json.loads(kwargs_json)))
    sys.stdout.write(f"\n{RESULT_MARK} {json.dumps(_plain(result))}\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
