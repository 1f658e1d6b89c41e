"""The guard of the library fast paths (`core.fastpaths`, used by `hbone.h2fast` and `waypoint.h1fast`)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ambient.core import fastpaths

PINS = {"h2": "4.4.1", "hpack": "4.2.0"}


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    fastpaths.reset()
    yield
    fastpaths.reset()


@pytest.mark.parametrize(("setting", "installed", "missing", "reason"), [
    (True, {"h2": "4.4.1", "hpack": "4.2.0"}, [], None),
    (False, {"h2": "4.4.1", "hpack": "4.2.0"}, [], "AMBIENT_FAST_PATHS=0"),
    (True, {"h2": "4.5.0", "hpack": "4.2.0"}, [], "unexpected version: h2 4.5.0 (pinned 4.4.1)"),
    (True, {"h2": "4.4.1", "hpack": None}, [], "unexpected version: hpack not installed (pinned 4.2.0)"),
    (True, {"h2": "4.4.1", "hpack": "4.2.0"}, ["h2.connection:_decode_headers"],
     "private names missing: h2.connection:_decode_headers"),
])
def test_fallback_reason(setting: bool, installed: dict[str, str | None], missing: list[str],
                         reason: str | None) -> None:
    assert fastpaths.fallback_reason(setting=setting, pins=PINS, installed=installed, missing=missing) == reason


@pytest.mark.parametrize(("value", "on"), [("", True), ("1", True), ("on", True), ("0", False), ("false", False),
                                           ("OFF", False), ("no", False)])
def test_setting(value: str, on: bool) -> None:
    assert fastpaths.setting_enabled({fastpaths.SETTING: value}) is on


def test_missing_names() -> None:
    assert fastpaths.missing_names(["h2.connection:H2Connection.send_data", "h2.connection:_nope",
                                    "no_such_module:x"]) == ["h2.connection:_nope", "no_such_module:x"]


def test_decided_once_with_one_log_line(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ambient.core.fastpaths")
    assert fastpaths.enabled("demo", {"h2": "0.0.1"}, []) is False
    assert fastpaths.enabled("demo", {"h2": "0.0.1"}, []) is False
    lines = [r for r in caplog.records if "demo fast path off" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "h2 4.4.1 (pinned 0.0.1)" in lines[0].getMessage()
    monkeypatch.setenv(fastpaths.SETTING, "0")
    fastpaths.reset()
    assert fastpaths.enabled("demo", PINS, []) is False
    assert caplog.records[-1].levelno == logging.INFO and "AMBIENT_FAST_PATHS=0" in caplog.records[-1].getMessage()


def test_the_real_fast_paths_follow_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from ambient.hbone import h2fast
    from ambient.waypoint import h1fast

    assert h2fast.enabled() and h1fast.enabled()  # the pinned versions are installed
    monkeypatch.setenv(fastpaths.SETTING, "0")
    fastpaths.reset()
    assert not h2fast.enabled() and not h1fast.enabled()
    assert h2fast.capped_buffer_available()  # the header-block cap stays


def test_importing_the_hbone_fast_path_patches_nothing() -> None:
    code = ("import hyperframe.frame as f; from ambient.hbone import h2fast as h; "
            "print(f._raw_data_repr is h._cheap_raw_data_repr); h.enabled(); "
            "print(f._raw_data_repr is h._cheap_raw_data_repr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.split() == ["False", "True"]
