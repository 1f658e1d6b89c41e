"""Fast paths that rely on third-party internals: one switch, a version and name check, one log line.

Role: the HBONE (`hbone.h2fast`: h2 / hpack / hyperframe) and waypoint (`waypoint.h1fast`: h11's grammar)
fast paths reach into private names of libraries pinned in pyproject.toml. Each asks `enabled(...)` once, at
first use, and falls back to the plain library path when:
- the setting `AMBIENT_FAST_PATHS` is `0` / `false` / `off` / `no` (default: on; a value that is not an
  on/off value counts as off, with a warning), or
- an installed library's version is not the pinned one, or
- one of the private names it uses is missing.
The decision is logged once per fast path (a warning when the check failed, info when switched off) and
cached for the process; `reset()` forgets it (tests).

Invariants: the decision (`fallback_reason`) is pure and tested with tables; nothing here patches another
library; a fast path never runs when its check failed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Iterable, Mapping

from ambient.core.flags import FlagError, env_flag

log = logging.getLogger(__name__)

SETTING = "AMBIENT_FAST_PATHS"

_decided: dict[str, bool] = {}


def setting_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """`AMBIENT_FAST_PATHS` (default on; the on/off values of `ambient.core.flags`). A value that is neither
    turns the fast paths off (the plain library path is always correct), with a warning."""
    try:
        return env_flag(os.environ if environ is None else environ, SETTING, True)
    except FlagError as exc:
        log.warning("%s; fast paths off", exc)
        return False


def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_names(names: Iterable[str], resolve: Callable[[str], object] = importlib.import_module) -> list[str]:
    """The dotted names (`module:attr.attr`) that cannot be resolved."""
    missing = []
    for spec in names:
        module, _, attrs = spec.partition(":")
        try:
            obj = resolve(module)
            for attr in attrs.split(".") if attrs else ():
                obj = getattr(obj, attr)
        except (ImportError, AttributeError):
            missing.append(spec)
    return missing


def fallback_reason(*, setting: bool, pins: Mapping[str, str], installed: Mapping[str, str | None],
                    missing: list[str]) -> str | None:
    """Why a fast path must not run (None: it may). Pure."""
    if not setting:
        return f"{SETTING}=0"
    wrong = [f"{dist} {installed.get(dist) or 'not installed'} (pinned {pin})"
             for dist, pin in sorted(pins.items()) if installed.get(dist) != pin]
    if wrong:
        return "unexpected version: " + ", ".join(wrong)
    if missing:
        return "private names missing: " + ", ".join(missing)
    return None


def enabled(name: str, pins: Mapping[str, str], names: Iterable[str],
            extra_check: Callable[[], list[str]] | None = None) -> bool:
    """Whether fast path `name` may run in this process (decided once; see the module docstring).
    `extra_check` returns more missing names (e.g. instance attributes of a freshly built library object)."""
    if name in _decided:
        return _decided[name]
    setting = setting_enabled()
    missing: list[str] = []
    installed: dict[str, str | None] = dict(pins)
    if setting:
        installed = {dist: installed_version(dist) for dist in pins}
        missing = missing_names(names)
        if extra_check is not None and not missing:
            try:
                missing = extra_check()
            except Exception as exc:  # a library that changed shape: the plain path, never a crash
                missing = [f"{type(exc).__name__}: {exc}"]
    reason = fallback_reason(setting=setting, pins=pins, installed=installed, missing=missing)
    if reason is None:
        _decided[name] = True
    else:
        _decided[name] = False
        (log.info if not setting else log.warning)("%s fast path off (%s): using the plain library path", name,
                                                   reason)
    return _decided[name]


def reset() -> None:
    """Forget every decision (tests switch fast paths on and off)."""
    _decided.clear()
