"""ServiceEntry traffic at the node proxy: hostname endpoints are dialled after resolution (plain TCP),
STATIC endpoints directly, resolution NONE passes through; the DNS proxy answers entry hosts with the VIP."""

from __future__ import annotations

import random
from ipaddress import ip_address

from ambient.protocol import dnswire
from ambient.state.model import (
    LoadBalancing,
    LoadBalancingMode,
    NetworkAddress,
    Port,
    Service,
    TunnelProtocol,
    Workload,
)
from ambient.state.route import Direct, DirectHostname, Passthrough, decide_outbound
from ambient.state.store import view_of
from ambient.ztunnel.dnsproxy import answer_from_state

HOST = "httpbin.example.test"
KEY = f"default/{HOST}"
VIP = "240.240.3.4"
CLIENT = Workload(uid="c", name="client", namespace="default", addresses=(ip_address("10.244.1.5"),),
                  tunnel_protocol=TunnelProtocol.HBONE)


def entry_service(**kw: object) -> Service:
    base: dict[str, object] = {"name": "ext", "namespace": "default", "hostname": HOST,
                               "addresses": (NetworkAddress(ip_address(VIP)),),
                               "ports": (Port(service_port=80, target_port=80),)}
    base.update(kw)
    return Service(**base)  # type: ignore[arg-type]


def endpoint(uid: str, *, hostname: str = "", ip: str = "", target: int = 80) -> Workload:
    return Workload(uid=uid, name="ext", namespace="default", hostname=hostname,
                    addresses=(ip_address(ip),) if ip else (), services={KEY: (Port(80, target),)})


def test_hostname_endpoint_is_resolved_at_dial_time() -> None:
    view = view_of(workloads=[CLIENT, endpoint("h", hostname=HOST, target=8080)], services=[entry_service()])
    decision = decide_outbound(CLIENT, ip_address(VIP), 80, view, random.Random(1))
    assert isinstance(decision, DirectHostname)
    assert (decision.hostname, decision.port, str(decision)) == (HOST, 8080, f"{HOST}:8080")
    assert decision.service is not None and decision.service.hostname == HOST


def test_static_endpoint_is_dialled_directly_and_unknown_port_rejected() -> None:
    view = view_of(workloads=[CLIENT, endpoint("s", ip="172.18.200.1")], services=[entry_service()])
    decision = decide_outbound(CLIENT, ip_address(VIP), 80, view, random.Random(1))
    assert isinstance(decision, Direct) and str(decision.address) == "172.18.200.1:80"
    assert "no port 443" in getattr(decide_outbound(CLIENT, ip_address(VIP), 443, view), "reason", "")


def test_resolution_none_passes_through_to_the_address_dialled() -> None:
    svc = entry_service(addresses=(NetworkAddress(ip_address("172.18.200.1")),),
                        load_balancing=LoadBalancing(mode=LoadBalancingMode.PASSTHROUGH))
    decision = decide_outbound(CLIENT, ip_address("172.18.200.1"), 80, view_of(workloads=[CLIENT], services=[svc]))
    assert isinstance(decision, Passthrough)


def test_dns_proxy_answers_entry_hosts_with_the_vip_and_forwards_the_rest() -> None:
    view = view_of(services=[entry_service()])
    response = answer_from_state(dnswire.build_query(HOST, msg_id=9), view)
    assert response is not None
    assert dnswire.parse_response(response).addresses == [VIP]
    aaaa = answer_from_state(dnswire.build_query(HOST, dnswire.TYPE_AAAA), view)
    assert aaaa is not None and dnswire.parse_response(aaaa).addresses == []
    assert answer_from_state(dnswire.build_query("other.example.test"), view) is None
    assert answer_from_state(dnswire.build_query(HOST + ".default.svc.cluster.local"), view) is None
