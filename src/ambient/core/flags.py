"""On/off settings from the environment: one vocabulary for every boolean `AMBIENT_*` variable.

Accepted (case-insensitive, surrounding blanks ignored): `1` / `true` / `on` / `yes` and `0` / `false` /
`off` / `no`; unset or empty means the default. Any other value is refused with an error naming the
variable and the accepted values, never read as the default: `AMBIENT_UVLOOP=flase` must not keep uvloop on
silently.
"""

from __future__ import annotations

from collections.abc import Mapping

from ambient.core.errors import AmbientError

ON = ("1", "true", "on", "yes")
OFF = ("0", "false", "off", "no")


class FlagError(AmbientError):
    """An on/off setting has a value that is neither on nor off."""


def parse_flag(raw: str | None, name: str, default: bool) -> bool:
    """`raw` (the variable's value, None when unset) as a boolean; FlagError when it is not one."""
    value = (raw or "").strip().lower()
    if not value:
        return default
    if value in ON:
        return True
    if value in OFF:
        return False
    raise FlagError(f"{name}: expected an on/off value, got {raw!r}",
                    hint=f"use one of {', '.join(ON)} (on) or {', '.join(OFF)} (off)")


def env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """The on/off setting `name` of `env` (see `parse_flag`)."""
    return parse_flag(env.get(name), name, default)
