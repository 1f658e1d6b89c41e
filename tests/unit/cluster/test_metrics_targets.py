"""Loopback forwarders to the cluster's metrics endpoints: one per endpoint found, on 127.0.0.1 only, closed
when the endpoint goes or the owner stops; a connection the forwarder cannot carry leaves its reason."""

from __future__ import annotations

import asyncio
import socket

from ambient.cluster import metrics_targets as mt
from helpers import eventually


def _ep(netns: str, pod: str = "") -> mt.Endpoint:
    labels: tuple[tuple[str, str], ...] = (("cluster", "c"), ("component", "waypoint" if pod else "ztunnel"))
    labels += (("namespace", "ns"), ("pod", pod)) if pod else (("node", "node-1"),)
    return mt.Endpoint(netns, "127.0.0.1", mt.METRICS_PORT, labels, name="x")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def test_the_name_is_shown_not_part_of_an_endpoints_identity() -> None:
    a = _ep("amb-c-pod-1", "w")
    assert a == mt.Endpoint(a.netns, a.ip, a.port, a.labels, name="another name") and a.label("pod") == "w"


async def test_forwarders_follow_the_endpoints_found_and_close_with_their_owner() -> None:
    one, two = _ep("amb-test-nonexistent-1"), _ep("amb-test-nonexistent-2", "w")
    async with mt.Forwarders() as fwd:
        ports = await fwd.sync([one, two])
        assert set(ports) == {one, two}
        for port in ports.values():
            assert await asyncio.to_thread(_accepts, port)
            assert _listening(port) == ["127.0.0.1"]  # loopback only
        assert await fwd.sync([two, one]) == ports  # kept, not restarted
        assert await fwd.sync([two]) == {two: ports[two]}
        assert not await asyncio.to_thread(_accepts, ports[one])  # the gone endpoint's listener is closed
        # a connection the forwarder cannot carry (the netns does not exist) is closed, and says why
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[two])
        assert await reader.read() == b""
        writer.close()
        why = await eventually(lambda: fwd.last_error(two), 5, "the forwarder's reason")
        assert "amb-test-nonexistent-2 does not exist" in why, why
    assert not await asyncio.to_thread(_accepts, ports[two])  # closed with its owner


def _listening(port: int) -> list[str]:
    """The addresses a TCP socket of this netns listens on at `port` (/proc/net/tcp, tcp6)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, _, hexport = local.partition(":")
                if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                    out.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]) if len(addr) == 8 else addr)
    return out
