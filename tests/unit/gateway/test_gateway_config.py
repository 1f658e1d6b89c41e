"""The ingress gateway's config (pure): Gateway API listeners and certificates, and the classic Istio
ingress (Gateways selecting the pod by labels, VirtualServices bound with `gateways:`)."""

from __future__ import annotations

import base64
import random
from typing import Any

from ambient.gateway.config import GatewayConfig, build_classic
from ambient.l7.gateway_routing import route_gateway_request
from ambient.l7.routing import NoRoute, RequestInfo, RouteDecision

CERT = {("istio-system", "web-cert"): {"type": "kubernetes.io/tls",
                                        "data": {"tls.crt": base64.b64encode(b"C").decode(),
                                                 "tls.key": base64.b64encode(b"K").decode()}}}


def istio_gateway(name: str = "gw", ns: str = "web", selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector if selector is not None else {"istio": "ingressgateway"}, "servers": [
                {"port": {"number": 8081, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]},
                {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["web.example.test"],
                 "tls": {"mode": "SIMPLE", "credentialName": "web-cert"}},
                {"port": {"number": 444, "name": "https2", "protocol": "HTTPS"}, "hosts": ["*"],
                 "tls": {"mode": "SIMPLE", "credentialName": "missing"}}]}}


def vs(gateways: list[str], ns: str = "web") -> dict[str, Any]:
    return {"metadata": {"name": "v", "namespace": ns},
            "spec": {"hosts": ["*"], "gateways": gateways, "http": [
                {"match": [{"uri": {"prefix": "/headers"}}], "route": [{"destination": {"host": "httpbin",
                                                                                       "port": {"number": 8000}}}]}]}}


def test_classic_listeners_come_from_the_selecting_gateways() -> None:
    cfg = build_classic([istio_gateway(), istio_gateway("other", selector={"istio": "eastwest"})],
                        {"istio": "ingressgateway", "app": "istio-ingressgateway"}, "istio-system", [], CERT, {})
    assert sorted((x.port, x.protocol, x.hostname) for x in cfg.listeners) == [
        (443, "HTTPS", "web.example.test"), (8081, "HTTP", None)]
    assert cfg.certificates["web/gw/https/web.example.test"].cert_pem == b"C"
    assert "missing" in cfg.problems["web/gw/https2/*"]
    assert set(cfg.owners.values()) == {("web", "gw")}


def test_virtual_services_bind_by_gateway_name_and_route_in_order() -> None:
    gws = [istio_gateway()]
    labels = {"istio": "ingressgateway"}
    for ref in (["gw"], ["web/gw"]):
        cfg = build_classic(gws, labels, "istio-system", [vs(ref)], CERT, {})
        assert len(cfg.routes) == 1, ref
    assert not build_classic(gws, labels, "istio-system", [vs(["mesh"])], CERT, {}).routes
    assert not build_classic(gws, labels, "istio-system", [vs(["gw"], ns="other")], CERT, {}).routes
    cfg = build_classic(gws, labels, "istio-system", [vs(["gw"])], CERT, {})
    listener = next(x for x in cfg.listeners if x.port == 8081)
    ok = route_gateway_request(cfg.routes, "gw", "web", listener, "localhost", RequestInfo("GET", "/headers"),
                               random.Random(1))
    assert isinstance(ok, RouteDecision) and (ok.backend.name, ok.backend.namespace, ok.backend.port) == (
        "httpbin", "web", 8000)
    miss = route_gateway_request(cfg.routes, "gw", "web", listener, "localhost", RequestInfo("GET", "/ip"),
                                 random.Random(1))
    assert isinstance(miss, NoRoute) and miss.status == 404


def test_gateway_api_config_weights_are_exact_shares() -> None:
    gateway = {"metadata": {"name": "ingress", "namespace": "web"},
               "spec": {"listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}}
    route = {"metadata": {"name": "r", "namespace": "web"},
             "spec": {"parentRefs": [{"name": "ingress"}], "rules": [{"backendRefs": [
                 {"name": "a", "port": 80, "weight": 80}, {"name": "b", "port": 80, "weight": 20}]}]}}
    cfg = GatewayConfig.build(gateway, [route], {}, {})
    picks = [route_gateway_request(cfg.routes, "ingress", "web", cfg.listeners[0], "h", RequestInfo("GET", "/"),
                                   random.Random(0)).backend.name for _ in range(100)]  # type: ignore[union-attr]
    assert picks.count("a") == 80
