"""The trace assembler: access lines of every hop joined by trace id into the life of one connection."""

from __future__ import annotations

import pytest

from ambient.hbone.protocol import child_traceparent, make_traceparent, trace_id_of
from ambient.runtime.accesslog import ConnectionRecord, format_failed, format_text, parse_fields
from ambient.runtime.trace import assemble, parse_line, parse_lines, redirect_delta, redirect_facts, trace_ids_from

OUT = ('2026-12-06T04:20:38.194405Z\terror\taccess\tconnection complete\tsrc.addr=10.244.1.2:55832 '
       'src.workload="client" src.namespace="trc" src.identity="spiffe://cluster.local/ns/trc/sa/default" '
       'dst.addr=10.244.2.3:15008 dst.hbone_addr=10.244.2.3:8080 dst.service="web.trc.svc.cluster.local" '
       'dst.workload="web-1" '
       'dst.namespace="trc" dst.identity="spiffe://cluster.local/ns/trc/sa/default" direction="outbound" '
       'bytes_sent=0 bytes_recv=0 duration="3ms" route="hbone" trace_id=0b22a74cd1c28b98eb5815590056b302 '
       'error="HBONE CONNECT to 10.244.2.3:8080 via 10.244.2.3:15008 failed: 401 Unauthorized"')
DENIED_IN = ('2026-12-06T04:20:38.193294Z\terror\taccess\tconnection complete\tsrc.addr=10.244.1.2:37367 '
             'src.workload="client" src.namespace="trc" src.identity="spiffe://cluster.local/ns/trc/sa/default" '
             'dst.addr=10.244.2.3:15008 dst.hbone_addr=10.244.2.3:8080 dst.workload="web-1" dst.namespace="trc" '
             'dst.identity="spiffe://cluster.local/ns/trc/sa/default" direction="inbound" bytes_sent=0 bytes_recv=0 '
             'duration="0ms" authz="denied by policy trc/deny-client" trace_id=0b22a74cd1c28b98eb5815590056b302 '
             'error="connection closed due to policy rejection: denied by policy trc/deny-client"')
PASS = ('2026-12-06T04:20:38.818347Z\tinfo\taccess\tconnection complete\tsrc.addr=10.244.1.2:45188 '
        'src.workload="client" src.namespace="trc" dst.addr=10.244.2.2:8080 dst.workload="plain" '
        'direction="outbound" bytes_sent=79 bytes_recv=128 duration="8ms" '
        'route="passthrough (plain TCP to a workload outside the mesh)" trace_id=ba511cedb2f04549b1291fa6af6f4bba')
WP_OUT = ('2026-12-06T04:22:12.917428Z\tinfo\taccess\tconnection complete\tsrc.addr=10.244.1.2:53476 '
          'src.identity="spiffe://cluster.local/ns/trc/sa/default" dst.addr=10.244.1.3:15008 '
          'dst.hbone_addr=10.96.0.4:80 dst.identity="spiffe://cluster.local/ns/trw/sa/waypoint" '
          'direction="outbound" bytes_sent=73 bytes_recv=128 '
          'duration="29ms" route="waypoint spiffe://cluster.local/ns/trw/sa/waypoint" '
          'trace_id=e5ced596c5570bc72e09be5e8030337f')
WP = ('2026-12-06T04:22:12.895608Z\tinfo\taccess\trequest complete\tsrc.addr=10.244.1.2:53476 '
      'dst.addr=10.244.2.4:15008 dst.hbone_addr=10.244.2.4:8080 direction="waypoint" http.method=GET http.path="/" '
      'http.status=200 protocol=HTTP/1.1 route=trw/echo-route duration="4ms" trace_id=e5ced596c5570bc72e09be5e8030337f')
WP_IN = ('2026-12-06T04:22:12.897041Z\terror\taccess\tconnection complete\tsrc.addr=10.244.1.3:45604 '
         'dst.hbone_addr=10.244.2.4:8080 direction="inbound" bytes_sent=128 bytes_recv=150 duration="4ms" '
         'authz="no allow policies" trace_id=e5ced596c5570bc72e09be5e8030337f '
         'error="HboneStreamError: stream 219 reset by 10.244.1.3:45604 (CANCEL)"')


def _entries() -> list:
    return (parse_lines("ztunnel-node-1", [OUT, PASS, WP_OUT, "noise"])
            + parse_lines("ztunnel-node-2", [DENIED_IN, WP_IN])
            + parse_lines("pod waypoint", ["prefix " + WP]))


def test_denied_connection_stops_at_the_destination_proxy_naming_the_policy() -> None:
    t = assemble("0b22a74cd1c28b98eb5815590056b302", _entries())
    assert [h.kind for h in t.hops] == ["source-proxy", "destination-proxy"]
    assert (t.outcome, t.stopped_at) == ("denied", "destination-proxy")
    assert t.reason == "denied by policy trc/deny-client"
    assert t.hops[0].facts["endpoint"] == "10.244.2.3:8080" and t.hops[0].facts["hbone target"] == "10.244.2.3:15008"


def test_passthrough_has_no_mesh_hop() -> None:
    t = assemble("ba511cedb2f04549b1291fa6af6f4bba", _entries(), redirect={"rule": "-A X -j REDIRECT"})
    assert [h.kind for h in t.hops] == ["redirect", "source-proxy", "app"]
    assert t.outcome == "completed" and "passthrough" in t.hops[-1].facts["note"]


def test_waypoint_answer_completes_even_if_its_upstream_was_reset() -> None:
    t = assemble("e5ced596c5570bc72e09be5e8030337f", _entries())
    assert [h.kind for h in t.hops] == ["source-proxy", "waypoint", "destination-proxy", "app"]
    assert t.outcome == "completed", t
    assert t.hops[1].facts["route"] == "trw/echo-route" and t.hops[1].facts["status"] == "200"
    assert t.hops[-1].facts["bytes from app"] == "128"


def test_waypoint_rbac_is_a_denial_at_the_waypoint() -> None:
    line = WP.replace("http.status=200", "http.status=403").replace("route=trw/echo-route", "response_flags=RBAC")
    t = assemble("e5ced596c5570bc72e09be5e8030337f", parse_lines("w", [WP_OUT, line]))
    assert (t.outcome, t.stopped_at) == ("denied", "waypoint")
    assert t.reason == "L7 policy (status 403)"


def test_waypoint_rbac_denial_names_the_policy() -> None:
    line = WP.replace("http.status=200", "http.status=403").replace(
        "route=trw/echo-route", "response_flags=RBAC response_code_details=rbac_access_denied_matched_policy"
        "[ns[trw]-policy[no-admin]]")
    t = assemble("e5ced596c5570bc72e09be5e8030337f", parse_lines("w", [WP_OUT, line]))
    assert (t.outcome, t.stopped_at, t.reason) == ("denied", "waypoint", "L7 policy trw/no-admin (status 403)")
    none = line.replace("[ns[trw]-policy[no-admin]]", "[none]")
    t = assemble("e5ced596c5570bc72e09be5e8030337f", parse_lines("w", [WP_OUT, none]))
    assert t.reason == "L7 policy (no allow policy matched) (status 403)"


def test_trace_ids_of_a_client() -> None:
    assert trace_ids_from(_entries(), "10.244.1.2") == [
        "0b22a74cd1c28b98eb5815590056b302", "ba511cedb2f04549b1291fa6af6f4bba", "e5ced596c5570bc72e09be5e8030337f"]
    assert trace_ids_from(_entries(), "10.244.1.3") == []
    assert parse_line("x", "not an access line") is None


def test_redirect_delta_iptables_and_nft() -> None:
    before = ("*nat\n[3:180] -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -j REDIRECT --to-ports 15001\n"
              "[0:0] -A ISTIO_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053\n"
              "[9:9] -A ISTIO_OUTPUT -j ACCEPT\n"
              "\t\tmeta l4proto tcp counter packets 1 bytes 60 redirect to :15001\n")
    after = before.replace("[3:180]", "[4:240]").replace("[9:9]", "[20:20]").replace("packets 1 ", "packets 3 ")
    # iptables-nft: nft's view repeats iptables-save's rules; iptables-save's is the one shown
    assert redirect_delta(before, after) == [
        ("-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -j REDIRECT --to-ports 15001", 1)]
    native = "\t\tmeta l4proto tcp counter packets 1 bytes 60 redirect to :15001\n"
    assert redirect_delta(native, native.replace("packets 1 ", "packets 3 ")) == [
        ("meta l4proto tcp redirect to :15001", 2)]


def test_the_rule_is_the_connections_not_the_busiest_dns_one() -> None:
    before = ("[0:0] -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539 -j REDIRECT --to-ports 15001\n"
              "[0:0] -A ISTIO_OUTPUT ! -o lo -p udp -m udp --dport 53 -m mark ! --mark 0x539 -j REDIRECT "
              "--to-ports 15053\n")
    after = before.replace("[0:0] -A ISTIO_OUTPUT ! -d", "[1:60] -A ISTIO_OUTPUT ! -d").replace(
        "[0:0] -A ISTIO_OUTPUT ! -o", "[4:240] -A ISTIO_OUTPUT ! -o")
    facts = redirect_facts(redirect_delta(before, after))
    assert facts["rule"].endswith("-j REDIRECT --to-ports 15001") and facts["packets"] == "+1"
    assert [k for k in facts if k.startswith("dns rule")] == ["dns rule (+4)"]
    assert not any(k.startswith("also matched") for k in facts)
    nft = {"redirect": redirect_facts([('oifname != "lo" udp dport 53 meta mark != 0x539 redirect to :15053', 2)])}
    assert nft["redirect"]["rule"].startswith("(no TCP redirect counted")


def test_a_waypoint_answer_without_the_destination_line_shows_the_hop_as_not_logged_yet() -> None:
    """A pooled waypoint upstream is logged when it closes: the destination hop is shown, not dropped."""
    t = assemble("e5ced596c5570bc72e09be5e8030337f", parse_lines("w", [WP_OUT, WP]))
    assert [h.kind for h in t.hops] == ["source-proxy", "waypoint", "destination-proxy", "app"]
    assert t.outcome == "completed"
    assert t.hops[2].facts["note"].startswith("not logged yet (pooled upstream connection")
    assert t.hops[2].facts["upstream"] == "10.244.2.4:8080"


@pytest.mark.parametrize(("value", "want"), [
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", ""),
    ('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 x="y"', ""),
    ("", ""),
    (None, ""),
])
def test_trace_id_of_accepts_only_well_formed_traceparents(value: str | None, want: str) -> None:
    assert trace_id_of(value) == want


def test_child_traceparent_keeps_the_trace_id() -> None:
    tp = make_traceparent()
    child = child_traceparent(trace_id_of(tp))
    assert trace_id_of(child) == trace_id_of(tp) and child != tp
    assert trace_id_of(child_traceparent("")) != ""


def test_access_line_tracing_fields_only_with_a_trace_id() -> None:
    rec = ConnectionRecord(direction="inbound", src_addr="10.0.0.1:1", route="hbone", authz="no allow policies",
                           original="10.96.0.10:80", hbone_conn="pooled")
    assert "trace_id" not in format_text(rec) and "authz" not in format_text(rec)
    assert "dst.original" not in format_text(rec)
    rec.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    fields = parse_fields(format_text(rec))
    assert (fields["route"], fields["authz"], fields["trace_id"]) == ("hbone", "no allow policies", rec.trace_id)
    assert (fields["dst.original"], fields["hbone_conn"]) == ("10.96.0.10:80", "pooled")
    failed = format_failed(src_addr="a:1", dst_addr="b:2", direction="inbound", error="x", trace_id=rec.trace_id)
    assert parse_fields(failed)["trace_id"] == rec.trace_id
