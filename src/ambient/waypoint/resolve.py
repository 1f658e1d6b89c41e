"""Hostname endpoints at the waypoint: ServiceEntry resolution DNS endpoints named by host, not address.

Role: an egress waypoint in front of a resolution-DNS ServiceEntry receives its Service's Workloads with a
`hostname` and no address (as ztunnel does, Istio leaves their resolution to the proxy that dials). The
waypoint picks one of them (`pick_hostname_endpoint`, pure), resolves the name through the pod's resolver
when it opens an upstream connection (`resolve_host`: the cluster DNS, which answers the real address; the
waypoint's own DNS is not captured, so it never sees the entry's VIP) and connects plain TCP to the first
IPv4 address (hosts outside the mesh do not speak HBONE).

Invariants: resolution happens only when a new upstream connection is opened (pooled connections are
reused without it), is bounded by `within` seconds (the waypoint's `resolve_timeout`), and a name that does
not resolve is a 503 naming it (response flag UF), never a fall back to the VIP.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Sequence

from ambient.state.model import HealthPolicy, LoadBalancing, Port, Service, Workload, WorkloadStatus
from ambient.state.route import resolve_target_port
from ambient.waypoint.errors import UpstreamError


def is_hostname_only(endpoints: Sequence[Workload]) -> bool:
    """Are all of a Service's endpoints named by host (a resolution-DNS ServiceEntry)?"""
    return bool(endpoints) and all(wl.hostname and not wl.addresses for wl in endpoints)


def pick_hostname_endpoint(
    svc: Service, port: Port, endpoints: Sequence[Workload], rng: random.Random
) -> tuple[Workload, int] | None:
    """One usable hostname endpoint and its target port, weighted random by capacity (None when none fit:
    unhealthy, zero weight or no target port)."""
    allow_unhealthy = (svc.load_balancing or LoadBalancing()).health_policy == HealthPolicy.ALLOW_ALL
    usable = [(wl, target) for wl in endpoints
              if (wl.status == WorkloadStatus.HEALTHY or allow_unhealthy) and wl.weight > 0
              and (target := resolve_target_port(svc, port, wl)) is not None]
    if not usable:
        return None
    return usable[0] if len(usable) == 1 else rng.choices(usable, weights=[w.weight for w, _ in usable])[0]


async def resolve_host(hostname: str, port: int, within: float) -> str:
    """The first IPv4 address of `hostname` from the pod's resolver (raises UpstreamError 503 / UF)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(hostname, port, family=socket.AF_INET, type=socket.SOCK_STREAM), within)
    except TimeoutError:
        raise UpstreamError(f"endpoint {hostname} did not resolve within {within:g}s", status=503,
                            flags="UF") from None
    except OSError as exc:
        raise UpstreamError(f"endpoint {hostname} does not resolve: {exc.strerror or exc}", status=503,
                            flags="UF") from None
    if not infos:
        raise UpstreamError(f"endpoint {hostname} does not resolve", status=503, flags="UF")
    return str(infos[0][4][0])
