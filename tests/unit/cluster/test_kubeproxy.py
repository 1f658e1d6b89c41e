"""Golden tests of the kube-proxy rule builder (pure: objects in, iptables-restore text out)."""

from __future__ import annotations

from typing import Any

from ambient.cluster import kubeproxy as kp


def svc(name: str, vip: str | None, ports: list[dict[str, Any]], ns: str = "default") -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": ports}
    if vip is not None:
        spec["clusterIP"] = vip
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def eps(name: str, subsets: list[dict[str, Any]], ns: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns}, "subsets": subsets}


WEB = svc("web", "10.96.0.20", [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}])
WEB_EPS = eps("web", [{"addresses": [{"ip": "10.244.2.2"}, {"ip": "10.244.1.2"}],
                       "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}])

GOLDEN = """*nat
:AMB-SERVICES - [0:0]
:AMB-POSTROUTING - [0:0]
:{svc} - [0:0]
:{sep1} - [0:0]
:{sep2} - [0:0]
-A AMB-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE
-A AMB-SERVICES -d 10.96.0.10/32 -p udp -m udp --dport 53 -m comment --comment "cluster DNS" -j DNAT --to-destination 172.18.0.2:53
-A AMB-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -m comment --comment "cluster DNS" -j DNAT --to-destination 172.18.0.2:53
-A AMB-SERVICES -d 10.96.0.20/32 -p tcp -m tcp --dport 80 -m comment --comment "default/web:http" -j {svc}
-A {svc} -m comment --comment "default/web:http" -m statistic --mode random --probability 0.5000000000 -j {sep1}
-A {sep1} -m comment --comment "default/web:http" -s 10.244.1.2/32 -j MARK --set-xmark 0x4000/0x4000
-A {sep1} -m comment --comment "default/web:http" -p tcp -m tcp -j DNAT --to-destination 10.244.1.2:8080
-A {svc} -m comment --comment "default/web:http" -j {sep2}
-A {sep2} -m comment --comment "default/web:http" -s 10.244.2.2/32 -j MARK --set-xmark 0x4000/0x4000
-A {sep2} -m comment --comment "default/web:http" -p tcp -m tcp -j DNAT --to-destination 10.244.2.2:8080
COMMIT
*filter
:AMB-REJECT - [0:0]
COMMIT
"""  # noqa: E501


def test_golden_two_endpoints() -> None:
    text = kp.build_rules(kp.service_rules([WEB], [WEB_EPS]))
    chains = [line[1:].split()[0] for line in text.splitlines() if line.startswith(":AMB-S")]
    svc_chain = next(c for c in chains if c.startswith("AMB-SVC-"))
    seps = [c for c in chains if c.startswith("AMB-SEP-")]
    assert len(seps) == 2
    assert text == GOLDEN.format(svc=svc_chain, sep1=seps[0], sep2=seps[1])
    assert all(len(c) <= 28 for c in chains)  # iptables' chain name limit


def test_chain_names_are_stable_across_calls() -> None:
    a = kp.build_rules(kp.service_rules([WEB], [WEB_EPS]))
    b = kp.build_rules(kp.service_rules([WEB], [WEB_EPS]))
    assert a == b


def test_probabilities_pick_each_endpoint_uniformly() -> None:
    ips = [f"10.244.1.{i}" for i in range(2, 6)]
    e = eps("web", [{"addresses": [{"ip": ip} for ip in ips],
                     "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}])
    text = kp.build_rules(kp.service_rules([WEB], [e]))
    probs = [line.split("--probability ")[1].split()[0] for line in text.splitlines() if "--probability" in line]
    assert probs == ["0.2500000000", "0.3333333333", "0.5000000000"]  # 1/4, then 1/3 of the rest, ...
    assert sum(1 for line in text.splitlines() if "DNAT --to-destination 10.244.1." in line) == 4


def test_no_endpoints_rejects_fast_instead_of_dnat() -> None:
    empty = svc("empty", "10.96.0.21", [{"port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53,
                                                                          "protocol": "UDP"}])
    text = kp.build_rules(kp.service_rules([empty], []))
    assert "10.96.0.21" not in text.split("*filter")[0]  # no DNAT for it
    filt = text.split("*filter")[1]
    assert ('-A AMB-REJECT -d 10.96.0.21/32 -p tcp -m tcp --dport 80 -m comment --comment '
            '"default/empty has no endpoints" -j REJECT --reject-with tcp-reset') in filt
    assert "-p udp -m udp --dport 53" in filt and "icmp-port-unreachable" in filt


def test_service_without_cluster_ip_or_headless_is_skipped() -> None:
    rules = kp.service_rules([svc("a", None, [{"port": 80}]), svc("b", "None", [{"port": 80}])], [])
    assert rules == []


def test_endpoint_ports_matched_by_service_port_name() -> None:
    two = svc("two", "10.96.0.30", [{"name": "http", "port": 80, "protocol": "TCP"},
                                    {"name": "admin", "port": 9000, "protocol": "TCP"}])
    e = eps("two", [{"addresses": [{"ip": "10.244.1.9"}],
                     "ports": [{"name": "admin", "port": 9901, "protocol": "TCP"},
                               {"name": "http", "port": 8080, "protocol": "TCP"}]}])
    rules = {r.port: r.backends for r in kp.service_rules([two], [e])}
    assert rules == {80: (("10.244.1.9", 8080),), 9000: (("10.244.1.9", 9901),)}


def test_stale_chains_are_flushed_and_deleted() -> None:
    existing = {"AMB-SERVICES", "AMB-POSTROUTING", "AMB-SVC-OLDOLDOLDOLDOLDO", "AMB-SEP-OLDOLDOLDOLDOLDO"}
    text = kp.build_rules([], existing_chains=existing)
    lines = text.splitlines()
    for chain in ("AMB-SVC-OLDOLDOLDOLDOLDO", "AMB-SEP-OLDOLDOLDOLDOLDO"):
        assert f":{chain} - [0:0]" in lines  # declaring flushes it (noflush mode) ...
        assert f"-X {chain}" in lines  # ... so that it can be deleted in the same transaction
    assert "-X AMB-SERVICES" not in lines


def test_parse_chains_from_iptables_save() -> None:
    save = "*nat\n:PREROUTING ACCEPT [0:0]\n:AMB-SERVICES - [0:0]\n:AMB-SVC-ABC - [0:0]\nCOMMIT\n"
    assert kp.parse_chains(save) == {"AMB-SERVICES", "AMB-SVC-ABC"}
