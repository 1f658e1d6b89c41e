"""The trace's DNS answer hop and its end hop's "closed by": the DNS proxy's `query answered` line read back,
the rule joining a connection to the answer that gave its destination, and who closed in words."""

from __future__ import annotations

import json

import pytest

from ambient.runtime.accesslog import (
    CLOSED_BY,
    ConnectionRecord,
    DnsAnswerRecord,
    format_dns,
    format_dns_json,
    format_json,
    format_text,
)
from ambient.runtime.trace import AccessEntry, assemble, dns_answer_for, host_of, parse_line, parse_lines, who_closed

T0 = 1_800_000_000.0  # the connection's log time in these tests (it ends here)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
VIP = "10.96.0.20"
CLIENT = "10.244.1.5"


def _dns(at: float, *, client: str = CLIENT, answer: tuple[str, ...] = (VIP,), query: str = "A",
         by: str = "Service demo/httpbin", domain: str = "httpbin.demo.svc.cluster.local") -> str:
    rec = DnsAnswerRecord(f"{client}:41000", "curl-1", "client", query, domain, "success" if answer else "no records",
                          answer, by, "NOERROR", 0.00031)
    return format_dns(rec, now=at)


def _out(*, original: str = f"{VIP}:8000", duration_ms: int = 40, closed_by: str = "client") -> str:
    rec = ConnectionRecord("outbound", src_addr=f"{CLIENT}:50000", src_workload="curl-1", src_namespace="client",
                           dst_addr="10.244.2.7:15008", dst_hbone_addr="10.244.2.7:80", route="hbone",
                           original=original, closed_by=closed_by, trace_id=TRACE, bytes_sent=80, bytes_recv=300)
    rec.started, rec.ended = 0.0, duration_ms / 1000
    return format_text(rec, now=T0)


def _in(closed_by: str = "server") -> str:
    rec = ConnectionRecord("inbound", src_addr=f"{CLIENT}:50001", dst_hbone_addr="10.244.2.7:80",
                           authz="no allow policies", closed_by=closed_by, trace_id=TRACE, bytes_sent=300,
                           bytes_recv=80)
    rec.started, rec.ended = 0.0, 0.03
    return format_text(rec, now=T0 - 0.002)


def test_dns_answer_line_reads_back_with_every_field() -> None:
    line = _dns(T0)
    assert "\tinfo\tdns\tquery answered\t" in line
    e = parse_line("ztunnel-node1", "pod prefix " + line)
    assert e is not None and e.message == "query answered" and e.trace_id == "" and e.direction == ""
    assert e.fields == {"src.addr": f"{CLIENT}:41000", "src.workload": "curl-1", "src.namespace": "client",
                        "query": "A", "domain": "httpbin.demo.svc.cluster.local", "result": "success",
                        "answer": VIP, "answered_by": "Service demo/httpbin", "rcode": "NOERROR",
                        "duration": "0.3ms"}


@pytest.mark.parametrize(("answer", "by", "result", "present", "absent"), [
    ((VIP, "10.96.0.21"), "Service demo/httpbin", "success", [f"answer={VIP},10.96.0.21"], []),
    ((), "upstream 10.96.0.10:53", "forwarded", ['answered_by="upstream 10.96.0.10:53"'], ["answer="]),
    ((), "upstream 10.96.0.10:53", "forwarding failed (no answer within 2s)",
     ['result="forwarding failed (no answer within 2s)"'], ["answer="]),
])
def test_dns_line_table(answer: tuple[str, ...], by: str, result: str, present: list[str], absent: list[str]) -> None:
    rec = DnsAnswerRecord("10.244.1.5:1", "w", "ns", "A", "x.example", result, answer, by, "NOERROR", 0.002)
    line = format_dns(rec, now=T0)
    for text in present:
        assert text in line, line
    for text in absent:
        assert text not in line, line
    body = json.loads(format_dns_json(rec, now=T0))
    assert body["scope"] == "dns" and body["answered_by"] == by and body["answer"] == list(answer)
    back = parse_line("z", line)
    assert back is not None and back.fields.get("answer", "") == ",".join(answer)
    assert (back.fields["result"], back.fields["answered_by"]) == (result, by)


def test_closed_by_is_a_tracing_field() -> None:
    rec = ConnectionRecord("outbound", src_addr="1.2.3.4:5", closed_by="server")
    assert "closed_by" not in format_text(rec)  # trace ids off: the reference format, nothing more
    rec.trace_id = TRACE
    line = format_text(rec)
    assert f"closed_by=server trace_id={TRACE}" in line
    assert json.loads(format_json(rec))["closed_by"] == "server"


@pytest.mark.parametrize(("addr", "host"), [
    ("10.0.0.1:80", "10.0.0.1"), ("[fd00::1]:80", "fd00::1"), ("10.0.0.1", "10.0.0.1"), ("", ""),
])
def test_host_of(addr: str, host: str) -> None:
    assert host_of(addr) == host


# (DNS lines, expected index of the joined line or None, why): the connection started at T0 - 0.040
START = T0 - 0.040
CORRELATION = [
    ([_dns(START - 0.001)], 0, "the answer just before the connection"),
    ([_dns(START - 5), _dns(START - 0.5)], 1, "the most recent of two answers"),
    ([_dns(START - 0.5), _dns(START - 0.2, answer=())], 0, "an answer without the address (AAAA) is not it"),
    ([_dns(START - 0.5, client="10.244.1.9")], None, "another pod's answer"),
    ([_dns(START - 31)], None, "older than the window"),
    ([_dns(START + 0.5)], None, "given after the connection started"),
    ([_dns(START - 0.5, answer=("10.96.0.99",))], None, "an answer with another address"),
    ([_dns(START - 0.5, by="upstream 10.96.0.10:53")], 0, "an upstream answer counts too"),
]


@pytest.mark.parametrize(("dns", "want", "why"), CORRELATION, ids=[c[2] for c in CORRELATION])
def test_connection_joins_the_answer_that_gave_its_destination(dns: list[str], want: int | None, why: str) -> None:
    entries = parse_lines("ztunnel-node1", dns)
    out = parse_line("ztunnel-node1", _out())
    assert out is not None
    got = dns_answer_for(entries, out)
    assert got is (entries[want] if want is not None else None), why


def test_no_dns_hop_when_the_app_dialled_an_ip_or_the_proxy_did_not_say() -> None:
    dns = parse_lines("ztunnel-node1", [_dns(START - 0.5)])
    by_ip = parse_line("z", _out(original="10.244.2.7:80"))  # a pod IP: no answer gave it
    no_original = AccessEntry("z", "2027-01-15T08:00:00.000000Z", "info", "connection complete",
                              {"src.addr": f"{CLIENT}:5", "trace_id": TRACE, "direction": "outbound"})
    for out in (by_ip, no_original):
        assert out is not None and dns_answer_for(dns, out) is None
        t = assemble(TRACE, [*dns, out])
        assert "dns" not in [h.kind for h in t.hops]


def test_trace_shows_the_dns_answer_before_the_source_proxy_and_who_closed() -> None:
    entries = parse_lines("ztunnel-node1", [_dns(START - 0.012), _out(closed_by="client")])
    entries += parse_lines("ztunnel-node2", [_in(closed_by="client")])
    t = assemble(TRACE, entries, redirect={"rule": "-A X -j REDIRECT --to-ports 15001"})
    assert [h.kind for h in t.hops] == ["redirect", "dns", "source-proxy", "destination-proxy", "app"]
    dns = t.hops[1]
    assert dns.component == "ztunnel-node1" and dns.duration == "0.3ms" and dns.ok
    assert dns.facts["answer"] == f"httpbin.demo.svc.cluster.local A -> {VIP} (Service demo/httpbin), 0.3ms"
    assert dns.facts["answered by"] == "Service demo/httpbin" and dns.facts["pod"] == "client/curl-1"
    assert dns.facts["before the connection"] == "12ms"
    assert t.hops[2].facts["closed by"] == "client" and t.hops[3].facts["closed by"] == "client"
    end = t.hops[-1].facts
    assert end["closed by"] == "the client (source app) ended its side first"
    assert (end["total time"], end["client sent"], end["client received"]) == ("40ms", "80", "300")
    body = json.loads(json.dumps(t.to_json()))
    assert body["hops"][1]["kind"] == "dns" and body["hops"][1]["facts"]["addresses"] == VIP


WHO_CLOSED = [
    ("hbone", "client", "client", "the client (source app) ended its side first"),
    ("hbone", "client_reset", "client_reset", "the client (source app) reset the connection"),
    ("hbone", "server", "server", "the server (destination app) ended its side first"),
    ("hbone", "server_reset", "server_reset", "the server (destination app) reset the connection"),
    ("hbone", "server", "policy", "the destination node proxy cut it: a policy change denies it now"),
    ("hbone", "server", "drain", "the destination node proxy cut it at its drain deadline"),
    ("hbone", "server_error", "client_error", "the tunnel between the node proxies failed"),
    ("hbone", "server", "", "the server ended its side first"),
    ("hbone", "drain", "", "the source node proxy cut it at its drain deadline"),
    ("passthrough (plain TCP)", "server", "", "the server ended its side first"),
    ("waypoint spiffe://cluster.local/ns/w/sa/waypoint", "server", "client",
     "the server side (the waypoint) ended its side first"),
    ("hbone", "", "server", ""),
]


@pytest.mark.parametrize(("route", "source", "destination", "words"), WHO_CLOSED)
def test_who_closed(route: str, source: str, destination: str, words: str) -> None:
    assert who_closed(route, source, destination) == words


def test_every_closed_by_value_is_described() -> None:
    sides = {f"{s}{k}" for s in ("client", "server") for k in ("", "_reset", "_error")}
    assert set(CLOSED_BY) == sides | {"drain", "policy", "error"}
    for value in CLOSED_BY:
        assert who_closed("hbone", value, "server"), value
