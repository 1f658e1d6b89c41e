"""The ingress gateway's metrics on loopback: istio_requests_total (reporter="source", the gateway's
workload and identity, the backend Service, response code and flags) and its own answers counted by reason."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiohttp import web

from ambient.gateway.config import GatewayConfig
from ambient.gateway.metrics import GatewayMetrics
from ambient.gateway.server import Gateway

pytestmark = pytest.mark.timeout(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gateway(port: int) -> dict[str, Any]:
    return {"metadata": {"name": "ingress", "namespace": "web"},
            "spec": {"gatewayClassName": "istio", "listeners": [
                {"name": "http", "port": port, "protocol": "HTTP", "hostname": "web.example.test"}]}}


def _route(name: str, path: str, backend: str, port: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "web"},
            "spec": {"parentRefs": [{"name": "ingress"}], "hostnames": ["web.example.test"],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                                "backendRefs": [{"name": backend, "port": port}]}]}}


async def _get(port: int, path: str, host: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    status = int((await reader.readline()).split()[1])
    await reader.read()
    writer.close()
    return status


async def test_requests_and_refusals_are_counted() -> None:
    backend_port, listen_port = _free_port(), _free_port()
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", backend_port).start()
    services = {("web", "httpbin"): {"spec": {"clusterIP": "127.0.0.1"}}}
    cfg = GatewayConfig.build(_gateway(listen_port), [_route("ok", "/ok", "httpbin", backend_port),
                                                      _route("gone", "/gone", "missing", 80)], {}, services)
    metrics = GatewayMetrics("ingress-istio", "web", "spiffe://cluster.local/ns/web/sa/ingress-istio")
    gw = Gateway("ingress", "web", lambda: cfg, host="127.0.0.1", metrics=metrics)
    try:
        assert await gw.sync_listeners() == [listen_port]
        assert [await _get(listen_port, "/ok", "web.example.test") for _ in range(3)] == [200] * 3
        assert await _get(listen_port, "/ok", "other.example.test") == 404
        assert await _get(listen_port, "/gone", "web.example.test") == 500
        assert await _get(listen_port, "/%zz", "web.example.test") == 400  # a bad escape: refused
    finally:
        await gw.aclose()
        await runner.cleanup()
    text = metrics.exposition().decode()
    served = [ln for ln in text.splitlines() if ln.startswith("istio_requests_total{") and 'response_code="200"' in ln]
    assert len(served) == 1 and served[0].endswith(" 3"), text
    for label in ('reporter="source"', 'source_workload="ingress-istio"', 'source_workload_namespace="web"',
                  'source_principal="spiffe://cluster.local/ns/web/sa/ingress-istio"',
                  'destination_service="httpbin.web.svc.cluster.local"', 'destination_service_name="httpbin"',
                  'destination_service_namespace="web"', 'response_flags="-"'):
        assert label in served[0], (label, served[0])
    assert 'ambient_gateway_refusals_total{reason="no_listener"} 1' in text
    assert 'ambient_gateway_refusals_total{reason="backend_not_found"} 1' in text
    assert 'ambient_gateway_refusals_total{reason="bad_request"} 1' in text
    assert 'ambient_gateway_refusals_total{reason="timeout"} 0' in text
    assert any('response_code="404"' in ln and 'response_flags="NR"' in ln and 'destination_service="unknown"'
               in ln for ln in text.splitlines()), text
