"""The node proxy's on/off settings (AMBIENT_TRACE_IDS, AMBIENT_UVLOOP) take every spelling of off, and
refuse a value that is neither on nor off instead of silently keeping the default."""

from __future__ import annotations

import pytest

from ambient.ztunnel.errors import ConfigError
from ambient.ztunnel.settings import Settings

FIELDS = {"AMBIENT_TRACE_IDS": "trace_ids", "AMBIENT_UVLOOP": "uvloop"}


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize(("raw", "on"), [("0", False), ("false", False), ("No", False), ("off", False),
                                         ("1", True), ("true", True), ("", True)])
def test_on_off_spellings(name: str, raw: str, on: bool) -> None:
    assert getattr(Settings.from_env({name: raw}), FIELDS[name]) is on


@pytest.mark.parametrize("name", FIELDS)
def test_other_values_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}: expected an on/off value, got 'disable'"):
        Settings.from_env({name: "disable"})
