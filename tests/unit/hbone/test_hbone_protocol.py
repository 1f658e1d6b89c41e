from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ambient.hbone.errors import BadConnectRequest, HboneStatusError
from ambient.hbone.protocol import (
    build_connect_headers,
    check_response,
    format_authority,
    make_baggage,
    make_forwarded,
    make_traceparent,
    parse_authority,
    parse_baggage,
    parse_connect_request,
)


def test_authority_round_trip() -> None:
    assert format_authority("10.0.0.1", 80) == "10.0.0.1:80"
    assert format_authority("fd00:0::1", 8080) == "[fd00::1]:8080"
    assert parse_authority("10.0.0.1:80") == ("10.0.0.1", 80)
    assert parse_authority("[fd00::1]:8080") == ("fd00::1", 8080)


@pytest.mark.parametrize(
    "bad",
    ["", "10.0.0.1", "10.0.0.1:0", "10.0.0.1:65536", "web.shop:80", "fd00::1:80", "[10.0.0.1]:80",
     "10.0.0.1:8x", "[fd00::1]80", "10.0.0.1:+80", "[fe80::1%eth0]:80", "10.0.0.1: 80"],
)
def test_bad_authorities(bad: str) -> None:
    with pytest.raises(BadConnectRequest) as info:
        parse_authority(bad)
    assert info.value.status == 400


def test_baggage_order_and_empty_values() -> None:
    bag = make_baggage({"service.name": "web", "k8s.namespace.name": "shop", "service.version": "",
                        "k8s.cluster.name": "Kubernetes", "k8s.deployment.name": "web"})
    assert bag == "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=web,service.name=web"
    assert parse_baggage(bag)["service.name"] == "web"


def test_forwarded_and_traceparent() -> None:
    assert make_forwarded("10.0.0.7", 5123) == 'for="10.0.0.7:5123"'
    assert make_forwarded("fd00::7", 1, "web.shop.svc.cluster.local") == (
        'for="[fd00::7]:1";host=web.shop.svc.cluster.local'
    )
    tp = make_traceparent()
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", tp)
    assert tp != make_traceparent()


def test_connect_headers_always_carry_standard_headers() -> None:
    headers = build_connect_headers("10.0.0.1:80", baggage={"k8s.namespace.name": "shop"},
                                    forwarded='for="10.0.0.2:1"', extra={"X-Extra": "1", ":path": "/x"})
    d = dict(headers)
    assert headers[0] == (":method", "CONNECT") and headers[1] == (":authority", "10.0.0.1:80")
    assert d["baggage"] == "k8s.namespace.name=shop"
    assert d["forwarded"] == 'for="10.0.0.2:1"'
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", d["traceparent"])
    assert d["x-extra"] == "1" and ":path" not in d
    with pytest.raises(BadConnectRequest):
        build_connect_headers("web:80")


def test_parse_connect_request() -> None:
    req = parse_connect_request([(":method", "CONNECT"), (":authority", "[fd00::1]:80"), ("baggage", "a=1"),
                                 ("x", "1"), ("x", "2")])
    assert (req.target_ip, req.target_port, req.authority) == ("fd00::1", 80, "[fd00::1]:80")
    assert req.baggage == {"a": "1"} and req.headers["x"] == "1, 2"
    with pytest.raises(BadConnectRequest, match="not CONNECT"):
        parse_connect_request([(":method", "GET"), (":authority", "1.2.3.4:80")])
    with pytest.raises(BadConnectRequest, match="without :authority"):
        parse_connect_request([(":method", "CONNECT")])


@pytest.mark.parametrize(("authority", "port"), [
    ("web.shop.svc.cluster.local:80", 80), ("httpbin:8000", 8000), ("A-1.example:65535", 65535)])
def test_hostname_authority_is_passed_on_for_the_receiver_to_resolve(authority: str, port: int) -> None:
    # ztunnel accepts `<hostname>:<port>` (a Service hostname) and resolves it itself; the target IP is empty
    req = parse_connect_request([(":method", "CONNECT"), (":authority", authority)])
    assert (req.target_ip, req.target_port, req.authority) == ("", port, authority)


@pytest.mark.parametrize("authority", ["web.example", "web.example:0", "web.example:70000", "-web:80", "we b:80",
                                       "web_x:80", "web.:80", "1.2.3:80", "x" * 300 + ":80"])
def test_malformed_authorities_are_400(authority: str) -> None:
    with pytest.raises(BadConnectRequest):
        parse_connect_request([(":method", "CONNECT"), (":authority", authority)])


@pytest.mark.parametrize(("status", "text"), [(400, "400 Bad Request"), (401, "denied by authorization"),
                                              (503, "could not reach"), (302, "unexpected status")])
def test_check_response_errors(status: int, text: str) -> None:
    with pytest.raises(HboneStatusError) as info:
        check_response([(":status", str(status))], peer="10.0.0.1:15008", authority="10.0.0.1:80")
    assert info.value.status == status and text in str(info.value)
    check_response([(":status", "200")], peer="p", authority="a")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_parse_authority_never_crashes(text: str) -> None:
    try:
        ip, port = parse_authority(text)
    except BadConnectRequest:
        return
    assert parse_authority(format_authority(ip, port)) == (ip, port)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([":method", ":authority", ":path", "baggage", "x"]),
                          st.text(max_size=30)), max_size=6))
def test_parse_connect_request_never_crashes(headers: list[tuple[str, str]]) -> None:
    try:
        req = parse_connect_request(headers)
    except BadConnectRequest as exc:
        assert exc.status == 400
        return
    assert dict(headers).get(":method") is not None and req.target_port > 0


def test_connect_headers_refuse_what_http2_forbids_and_never_index_unique_values() -> None:
    from hpack.struct import NeverIndexedHeaderTuple

    from ambient.hbone.protocol import build_connect_headers

    headers = build_connect_headers("10.0.0.1:80", forwarded="for=10.0.0.2", extra={"X-Ok": "v"})
    by_name = {h[0]: h for h in headers}
    assert by_name["x-ok"] == ("x-ok", "v")
    assert isinstance(by_name["forwarded"], NeverIndexedHeaderTuple)
    assert isinstance(by_name["traceparent"], NeverIndexedHeaderTuple)
    assert by_name["forwarded"] == ("forwarded", "for=10.0.0.2")  # still a plain (name, value) pair
    for bad in ({"x-bad": "a\r\nb"}, {"x bad": "v"}, {"x-nul": "a\0"}):
        with pytest.raises(ValueError, match="invalid CONNECT header"):
            build_connect_headers("10.0.0.1:80", extra=bad)
