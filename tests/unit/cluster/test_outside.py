"""The outside world: its names in the cluster DNS, its links only to the underlay (pure parts)."""

from __future__ import annotations

import json
from pathlib import Path

from ambient.cluster import dns, outside
from ambient.cluster import layout as L
from ambient.protocol import dnswire


def _no_services(name: str, namespace: str) -> list[str] | None:
    return None


def test_outside_names_are_answered_and_others_of_the_domain_are_nxdomain() -> None:
    records = outside.records_of(outside.OUTSIDE_HOSTS)
    reply = dns.answer(dnswire.build_query("HTTPBIN.example.test."), _no_services, records.get, udp=True)
    assert reply is not None
    parsed = dnswire.parse_response(reply)
    assert (parsed.rcode, parsed.addresses) == (dnswire.RCODE_NOERROR, ["172.18.200.1"])
    missing = dns.answer(dnswire.build_query("nope.example.test"), _no_services, records.get, udp=True)
    assert missing is not None and dnswire.parse_response(missing).rcode == dnswire.RCODE_NXDOMAIN
    # Other names are still refused (never forwarded), and without an outside world so is example.test.
    other = dns.answer(dnswire.build_query("example.com"), _no_services, records.get, udp=True)
    assert other is not None and dnswire.parse_response(other).rcode == dnswire.RCODE_REFUSED
    bare = dns.answer(dnswire.build_query("httpbin.example.test"), _no_services, None, udp=True)
    assert bare is not None and dnswire.parse_response(bare).rcode == dnswire.RCODE_REFUSED


def test_records_file_is_read_and_reloaded(tmp_path: Path) -> None:
    table = dns.OutsideRecords(tmp_path)
    assert table.lookup("httpbin.example.test") is None
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "hosts.json").write_text(json.dumps({"httpbin.example.test": ["172.18.200.1"]}))
    table._checked = 0.0  # the next lookup checks the file again
    assert table.lookup("httpbin.example.test") == ["172.18.200.1"]


def test_links_are_made_in_the_underlay_and_routes_lead_back_to_every_node(tmp_path: Path) -> None:
    layout = L.build_layout("out1", 2, tmp_path)
    host = outside.OUTSIDE_HOSTS[0]
    under, inside = outside.network_commands(host, layout)
    assert under[0] == "link add veth-o1 type veth peer name eth0 netns amb-out1-outside-1"
    assert "link set veth-o1 master br0" in under
    assert f"route add {layout.nodes[1].pod_cidr} via {layout.nodes[1].ip}" in inside
    assert inside[-1] == "route add unreachable default"
    assert host.netns("out1").startswith(L.netns_prefix("out1"))
