"""On/off environment settings: one vocabulary, and a value that is neither is refused (never the default)."""

from __future__ import annotations

import logging

import pytest

from ambient.core import fastpaths
from ambient.core.flags import FlagError, parse_flag


@pytest.mark.parametrize(("raw", "default", "expected"), [
    (None, True, True), (None, False, False), ("", True, True), ("  ", False, False),
    ("1", False, True), ("true", False, True), ("On", False, True), (" YES ", False, True),
    ("0", True, False), ("false", True, False), ("OFF", True, False), ("no", True, False),
])
def test_parse_flag(raw: str | None, default: bool, expected: bool) -> None:
    assert parse_flag(raw, "AMBIENT_X", default) is expected


@pytest.mark.parametrize("raw", ["flase", "2", "disabled", "n"])
def test_parse_flag_refuses_other_values(raw: str) -> None:
    with pytest.raises(FlagError) as info:
        parse_flag(raw, "AMBIENT_X", True)
    assert info.value.message == f"AMBIENT_X: expected an on/off value, got {raw!r}"
    assert info.value.hint is not None and "0, false, off, no" in info.value.hint


def test_fast_paths_setting_that_is_no_flag_turns_them_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=fastpaths.__name__)
    assert fastpaths.setting_enabled({fastpaths.SETTING: "flase"}) is False
    assert "AMBIENT_FAST_PATHS: expected an on/off value, got 'flase'" in caplog.records[-1].getMessage()
