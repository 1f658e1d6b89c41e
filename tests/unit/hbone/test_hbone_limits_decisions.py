"""Pure decisions of the HBONE server's handshake limits, the header block cap and ALPN selection."""

from __future__ import annotations

import pytest

from ambient.hbone import refusals
from ambient.hbone.server import HandshakeLimits, admit, handshake_budget
from ambient.tls.contexts import alpn_offset

LIMITS = HandshakeLimits(timeout=10.0, max_pending=8, max_pending_per_source=3, pressure_timeout=2.0)


@pytest.mark.parametrize(
    ("pending", "from_source", "expected"),
    [
        (0, 0, None),
        (7, 2, None),
        (8, 0, "too_many_handshakes"),
        (8, 3, "too_many_handshakes"),  # the listener's cap is reported first
        (2, 3, "too_many_handshakes_from_source"),
    ],
)
def test_admit(pending: int, from_source: int, expected: str | None) -> None:
    reason = admit(LIMITS, pending, from_source)
    assert reason == expected
    assert reason is None or reason in refusals.REASONS


@pytest.mark.parametrize(("pending", "budget"), [(1, 10.0), (3, 10.0), (4, 2.0), (8, 2.0)])
def test_budget_shrinks_under_pressure(pending: int, budget: float) -> None:
    assert LIMITS.pressure_at == 4
    assert handshake_budget(LIMITS, pending) == budget


def test_pressure_timeout_never_exceeds_timeout() -> None:
    assert handshake_budget(HandshakeLimits(timeout=1.0, pressure_timeout=5.0), 10_000) == 1.0


@pytest.mark.parametrize(
    "kwargs", [{"timeout": 0}, {"pressure_timeout": -1}, {"max_pending": 0}, {"max_pending_per_source": 0}]
)
def test_invalid_limits_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HandshakeLimits(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (b"\x02h2", 1),
        (b"\x08http/1.1\x02h2", 10),
        (b"\x08http/1.1", None),
        (b"\x03h2c", None),
        (b"", None),
        (b"\x05h2", None),  # truncated list
        (b"\x00\x02h2", None),  # empty name: malformed
    ],
)
def test_alpn_offset(offered: bytes, expected: int | None) -> None:
    assert alpn_offset(offered) == expected


def test_refusal_counts() -> None:
    before = refusals.snapshot()
    refusals.count("header_block_too_large")
    after = refusals.snapshot()
    assert after["header_block_too_large"] == before["header_block_too_large"] + 1
    assert set(after) == set(refusals.REASONS)
    with pytest.raises(KeyError):
        refusals.count("made_up")


def test_refusals_exported_by_the_node_proxy_metrics() -> None:
    from ambient.ztunnel.metrics import ProxyMetrics

    refusals.count("too_many_handshakes")
    n = refusals.snapshot()["too_many_handshakes"]
    text = ProxyMetrics().exposition().decode()
    assert f'ambient_hbone_refusals_total{{reason="too_many_handshakes"}} {float(n)}' in text
    for reason in refusals.REASONS:
        assert f'ambient_hbone_refusals_total{{reason="{reason}"}}' in text


def test_limits_from_env() -> None:
    limits = HandshakeLimits.from_env({
        "AMBIENT_HBONE_HANDSHAKE_TIMEOUT": "5s",
        "AMBIENT_HBONE_MAX_PENDING_HANDSHAKES": "64",
        "AMBIENT_HBONE_MAX_PENDING_HANDSHAKES_PER_SOURCE": "8",
        "AMBIENT_HBONE_PRESSURE_HANDSHAKE_TIMEOUT": "0.5",
        "UNRELATED": "x",
    })
    assert limits == HandshakeLimits(timeout=5.0, max_pending=64, max_pending_per_source=8, pressure_timeout=0.5)
    assert HandshakeLimits.from_env({}) == HandshakeLimits()


@pytest.mark.parametrize(("name", "value"), [("AMBIENT_HBONE_MAX_PENDING_HANDSHAKES", "many"),
                                             ("AMBIENT_HBONE_MAX_PENDING_HANDSHAKES", "0"),
                                             ("AMBIENT_HBONE_HANDSHAKE_TIMEOUT", "-1")])
def test_limits_from_env_refuses_bad_values(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=r"AMBIENT_HBONE|handshake"):
        HandshakeLimits.from_env({name: value})


def test_node_proxy_settings_carry_the_limits() -> None:
    from ambient.ztunnel.errors import ConfigError
    from ambient.ztunnel.settings import Settings

    assert Settings.from_env({}).hbone_handshake == HandshakeLimits()
    settings = Settings.from_env({"AMBIENT_HBONE_MAX_PENDING_HANDSHAKES_PER_SOURCE": "32"})
    assert settings.hbone_handshake.max_pending_per_source == 32
    with pytest.raises(ConfigError, match="AMBIENT_HBONE_HANDSHAKE_TIMEOUT"):
        Settings.from_env({"AMBIENT_HBONE_HANDSHAKE_TIMEOUT": "soon"})
