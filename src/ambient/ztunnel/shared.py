"""Shared mode (tests, single-netns setups): one set of listeners in the proxy's OWN netns for a set of
local workloads, instead of one per pod netns.

Outbound 15001 and plaintext 15006 listen on the wildcard address; the source / local workload is found
by the connection's addresses. HBONE 15008 listens once per local workload address (`ip:15008`), so each
listener presents that workload's certificate (HBONE has no SNI to pick one).

Local workloads: the uids given (`--workload`), else every workload in the state whose address is
assigned in this netns (computed once, when the state is first ready).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from ambient.identity.certs import CertBundle
from ambient.runtime.drain import Drain
from ambient.state.model import Workload
from ambient.ztunnel.errors import ConfigError
from ambient.ztunnel.proxy import (
    ListenerSpec,
    LocalSockets,
    PodContext,
    ProxyCore,
    SharedScope,
    WorkloadProxy,
    local_addresses,
)

log = logging.getLogger("ambient.ztunnel.shared")


def local_workloads(core: ProxyCore, uids: Iterable[str]) -> list[Workload]:
    view = core.view()
    wanted = set(uids)
    if wanted:
        found = [wl for wl in view.workloads() if wl.uid in wanted]
        missing = wanted - {wl.uid for wl in found}
        if missing:
            raise ConfigError(f"shared mode: workload(s) {sorted(missing)} not in the state",
                              hint="check the uids against `ambient zc workloads -o json`")
        return found
    found = [wl for wl in view.workloads() if local_addresses(wl.addresses)]
    if core.settings.node:
        found = [wl for wl in found if not wl.node or wl.node == core.settings.node]
    return found


def build_shared(
    core: ProxyCore,
    workloads: list[Workload],
    drain: Drain,
    build: Callable[[PodContext, Drain, list[ListenerSpec], Callable[[str], Callable[[], CertBundle]]], WorkloadProxy],
) -> WorkloadProxy:
    if not workloads:
        raise ConfigError(
            "shared mode: no local workload (no workload address of the state is assigned in this netns)",
            hint="pass --workload UID, or run the proxy in the netns that holds the workloads' addresses",
        )
    ports = core.settings.ports
    host = core.settings.shared_host
    transparent = core.settings.transparent_inbound
    specs = [
        ListenerSpec("outbound", host, ports.outbound, False),
        ListenerSpec("inbound_plaintext", host, ports.inbound_plaintext, transparent),
    ]
    by_ip: dict[str, Workload] = {}
    for wl in workloads:
        for ip in local_addresses(wl.addresses):
            by_ip[str(ip)] = wl
            specs.append(ListenerSpec("inbound", str(ip), ports.inbound, transparent))
    certs = core.certs

    def provider(host: str) -> Callable[[], CertBundle]:
        identity = by_ip[host].identity

        def current() -> CertBundle:
            bundle = certs.cached(identity)
            if bundle is None:
                raise ConfigError(f"no certificate yet for {identity}")
            return bundle

        return current

    scope = SharedScope(frozenset(wl.uid for wl in workloads))
    log.info("shared mode: serving %s", ", ".join(f"{w.namespace}/{w.name}" for w in workloads))
    return build(PodContext(core, scope, LocalSockets()), drain, specs, provider)
