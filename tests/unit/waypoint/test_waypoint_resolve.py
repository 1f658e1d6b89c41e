"""Hostname endpoints at the waypoint (ServiceEntry resolution DNS): picking and resolving (no network:
the resolver is replaced; "localhost" comes from /etc/hosts)."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from typing import Any

import pytest

from ambient.state.model import Port, Service, Workload, WorkloadStatus
from ambient.waypoint.errors import UpstreamError
from ambient.waypoint.resolve import is_hostname_only, pick_hostname_endpoint, resolve_host

SVC = Service(name="httpbin-egress", namespace="egress", hostname="httpbin.example.test", ports=(Port(80, 80),))


def named(host: str, **kw: Any) -> Workload:
    return Workload(uid=f"se/{host}", name=host, namespace="egress", hostname=host, **kw)


@pytest.mark.parametrize(("endpoints", "expected"), [
    ([named("httpbin.example.test")], True),
    ([], False),
    ([Workload(uid="p", name="p", namespace="egress", addresses=(ipaddress.ip_address("10.0.0.1"),))],
     False),
])
def test_is_hostname_only(endpoints: list[Workload], expected: bool) -> None:
    assert is_hostname_only(endpoints) is expected


def test_pick_skips_unhealthy_and_uses_the_service_port() -> None:
    eps = [named("down.example.test", status=WorkloadStatus.UNHEALTHY), named("httpbin.example.test")]
    picked = pick_hostname_endpoint(SVC, SVC.ports[0], eps, random.Random(1))
    assert picked is not None and (picked[0].hostname, picked[1]) == ("httpbin.example.test", 80)
    assert pick_hostname_endpoint(SVC, SVC.ports[0], eps[:1], random.Random(1)) is None


async def test_resolve_host_answers_the_first_ipv4_address() -> None:
    assert await resolve_host("localhost", 80, 5.0) == "127.0.0.1"


async def test_resolve_host_failures_are_503_naming_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def unknown(*_a: Any, **_k: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(loop, "getaddrinfo", unknown)
    with pytest.raises(UpstreamError) as err:
        await resolve_host("nowhere.example.test", 80, 5.0)
    assert err.value.status == 503 and "nowhere.example.test does not resolve" in err.value.message

    async def slow(*_a: Any, **_k: Any) -> Any:
        await asyncio.sleep(10)

    monkeypatch.setattr(loop, "getaddrinfo", slow)
    with pytest.raises(UpstreamError) as err:
        await resolve_host("slow.example.test", 80, 0.05)
    assert err.value.status == 503 and "within 0.05s" in err.value.message
