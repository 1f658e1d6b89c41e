"""Pure parts of the gRPC port's admission: the decision, the fd budget, settings, peer names."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambient.controlplane.admission import (
    FD_RESERVE,
    FDS_PER_CONNECTION,
    REFUSED_PER_SOURCE,
    REFUSED_TOTAL,
    ServingLimits,
    admit,
    client_address,
    effective_max_connections,
    source_key,
)
from ambient.controlplane.errors import ControlPlaneError

LIMITS = ServingLimits(max_connections=10, max_connections_per_source=3)


@pytest.mark.parametrize(
    ("open_total", "from_source", "cap", "expected"),
    [
        (0, 0, 10, None),
        (9, 2, 10, None),  # the last free slot, the source's last slot
        (10, 0, 10, REFUSED_TOTAL),  # total reached: even a new source is refused
        (5, 3, 10, REFUSED_PER_SOURCE),
        (10, 3, 10, REFUSED_TOTAL),  # both: the total is reported
        (4, 0, 4, REFUSED_TOTAL),  # the effective cap (lowered for the fd limit) counts, not the setting
    ],
)
def test_admit(open_total: int, from_source: int, cap: int, expected: str | None) -> None:
    assert admit(open_total, from_source, LIMITS, cap) == expected


@pytest.mark.parametrize(
    ("configured", "nofile", "expected"),
    [
        (4096, 1_048_576, 4096),  # plenty
        (4096, 10_000, (10_000 - FD_RESERVE) // FDS_PER_CONNECTION),  # lowered to what fits
        (4096, 1024, (1024 - FD_RESERVE) // FDS_PER_CONNECTION),
        (4096, 100, 1),  # never 0: the port stays usable (and the warning says why it is tiny)
    ],
)
def test_effective_max_connections(configured: int, nofile: int, expected: int) -> None:
    assert effective_max_connections(configured, nofile) == expected


def test_limits_from_env_defaults_and_overrides() -> None:
    assert ServingLimits.from_env({}) == ServingLimits()
    limits = ServingLimits.from_env({"AMBIENT_CP_HANDSHAKE_TIMEOUT": "2.5", "AMBIENT_CP_MAX_CONNECTIONS": "100",
                                     "AMBIENT_CP_MAX_CONNECTIONS_PER_SOURCE": " 7 ", "AMBIENT_CP_IDLE_TIMEOUT": ""})
    assert (limits.handshake_timeout, limits.max_connections, limits.max_connections_per_source) == (2.5, 100, 7)
    assert limits.idle_timeout == ServingLimits().idle_timeout  # empty = default


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AMBIENT_CP_MAX_CONNECTIONS": "lots"}, "AMBIENT_CP_MAX_CONNECTIONS='lots' is not an integer"),
        ({"AMBIENT_CP_HANDSHAKE_TIMEOUT": "10s"}, "is not a number of seconds"),
        ({"AMBIENT_CP_HANDSHAKE_TIMEOUT": "0"}, "handshake_timeout must be positive"),
        ({"AMBIENT_CP_MAX_CONNECTIONS": "10", "AMBIENT_CP_MAX_CONNECTIONS_PER_SOURCE": "20"}, "exceeds"),
    ],
)
def test_limits_from_env_refuses_bad_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ControlPlaneError, match=message) as err:
        ServingLimits.from_env(env)
    assert err.value.hint


def test_grpc_options_carry_the_limits() -> None:
    opts = dict(ServingLimits(handshake_timeout=3, idle_timeout=60, max_streams_per_connection=9).grpc_options())
    assert opts["grpc.server_handshake_timeout_ms"] == 3000
    assert opts["grpc.max_connection_idle_ms"] == 60_000
    assert opts["grpc.max_concurrent_streams"] == 9
    assert opts["grpc.keepalive_time_ms"] == 30_000 and opts["grpc.keepalive_timeout_ms"] == 10_000


@pytest.mark.parametrize(
    ("address", "key"),
    [("10.244.1.5", "10.244.1.5"), ("::ffff:10.244.1.5", "10.244.1.5"), ("fd00::1", "fd00::1"),
     ("fe80::1%eth0", "fe80::1"), ("weird", "weird")],
)
def test_source_key(address: str, key: str) -> None:
    assert source_key(address) == key


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("unix-abstract:ambient-cp/123.7/10.244.1.5:40000", "10.244.1.5:40000"),
        ("unix-abstract:ambient-cp/123.7/fd00::1:40000", "fd00::1:40000"),
        ("ipv4:127.0.0.1:5000", "ipv4:127.0.0.1:5000"),  # not through the front: unchanged
        ("unix:/tmp/x.sock", "unix:/tmp/x.sock"),
    ],
)
def test_client_address(peer: str, address: str) -> None:
    assert client_address(peer) == address


def test_the_process_refuses_a_malformed_limit_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ambient.controlplane.__main__ import main

    monkeypatch.setenv("AMBIENT_CP_MAX_CONNECTIONS_PER_SOURCE", "-1")
    assert main(["--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: control plane limit max_connections_per_source must be positive, got -1" in err
    assert "hint: unset AMBIENT_CP_MAX_CONNECTIONS_PER_SOURCE" in err
    assert not (tmp_path / "ca").exists()  # refused before touching any state
