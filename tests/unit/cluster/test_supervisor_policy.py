"""The supervisor's restart policy (pure): delays, crash counting, exit descriptions, settings."""

from __future__ import annotations

import pytest

from ambient.cluster.errors import SupervisorSettingsError
from ambient.cluster.supervisor import RestartPolicy, crashes_after_exit, describe_exit, restart_delay

DEFAULT = RestartPolicy()


@pytest.mark.parametrize(("crashes", "delay"), [
    (1, 0.0), (2, 0.0), (3, 0.0),  # the first restarts in a row are immediate
    (4, 10.0), (5, 20.0), (6, 40.0), (7, 80.0), (8, 160.0),  # then the kubelet's back-off
    (9, 300.0), (10, 300.0), (1000, 300.0),  # capped at 5 min, never overflowing
])
def test_default_delays(crashes: int, delay: float) -> None:
    assert restart_delay(DEFAULT, crashes) == delay


def test_no_fast_restarts_is_the_kubelet_curve() -> None:
    kubelet = RestartPolicy(fast_restarts=0)
    assert [restart_delay(kubelet, n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]


@pytest.mark.parametrize(("before", "ran_for", "after"), [
    (0, 0.1, 1), (3, 5.0, 4), (3, 599.9, 4),
    (7, 600.0, 1), (7, 3600.0, 1),  # a long run forgets the earlier crashes
])
def test_crash_count(before: int, ran_for: float, after: int) -> None:
    assert crashes_after_exit(DEFAULT, before, ran_for) == after


@pytest.mark.parametrize(("code", "text"), [
    (0, "exit code 0"), (1, "exit code 1"), (-9, "signal 9 (SIGKILL)"), (-15, "signal 15 (SIGTERM)"),
    (None, "unknown (not started by this supervisor)"),
])
def test_describe_exit(code: int | None, text: str) -> None:
    assert describe_exit(code) == text


def test_policy_from_env() -> None:
    assert RestartPolicy.from_env({}) == DEFAULT
    p = RestartPolicy.from_env({"AMBIENT_RESTART_FAST": "1", "AMBIENT_RESTART_BACKOFF": "0.5",
                                "AMBIENT_RESTART_BACKOFF_MAX": "2", "AMBIENT_RESTART_RESET_AFTER": "60"})
    assert p == RestartPolicy(1, 0.5, 2.0, 60.0)
    assert [restart_delay(p, n) for n in range(1, 6)] == [0, 0.5, 1, 2, 2]


@pytest.mark.parametrize("env", [{"AMBIENT_RESTART_FAST": "x"}, {"AMBIENT_RESTART_BACKOFF": "-1"},
                                 {"AMBIENT_RESTART_FAST": "1.5"}])
def test_bad_policy_settings_are_clear_errors(env: dict[str, str]) -> None:
    with pytest.raises(SupervisorSettingsError, match="AMBIENT_RESTART_"):
        RestartPolicy.from_env(env)
