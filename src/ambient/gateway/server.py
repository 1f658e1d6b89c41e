"""The ingress gateway's HTTP(S) listeners and request forwarding.

Per request: the listener of the port serving the Host (`l7.gateway_routing.listener_for`), the rule and
backend chosen by the waypoint's engine (`route_gateway_request`: matches, precedence, weights), the rule's
filters (RequestHeaderModifier, URLRewrite, ResponseHeaderModifier; RequestRedirect answered here), then one
HTTP/1.1 exchange with the backend Service's VIP and port on a stream of its own (`upstream.Dialer`: plain
TCP from a captured pod, or HBONE with the gateway's own identity), with the rule's timeout and retries.

Answers of its own, as Envoy at an Istio gateway: 404 (no route / no rule), 500 (backend Service unknown,
rule without usable backend or with an unsupported filter), 503 (the backend could not be reached or
refused, flag UF), 504 (timeout, flag UT). One access line per request on stderr (`request complete ...`).

Invariants: listener ports follow the config (`sync_listeners` binds new ports and closes unused ones);
certificates (SNI) and routes are read per handshake / request from the latest config, so a change applies
at once; hop-by-hop headers are never forwarded; certificate keys are written to a private temporary file
only for the time of loading them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ambient.gateway.config import Certificate, GatewayConfig
from ambient.gateway.metrics import GatewayMetrics
from ambient.gateway.upstream import Dialer, TcpDialer, UpstreamError, exchange
from ambient.l7.gateway_routing import listener_for, request_host, route_gateway_request
from ambient.l7.routing import NoRoute, Redirect, RequestInfo, RouteDecision, normalize_path

log = logging.getLogger("ambient.gateway")
access = logging.getLogger("ambient.gateway.access")

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te",
                        "trailer", "proxy-authenticate", "proxy-authorization", "host", "content-length"})


class Gateway:
    def __init__(self, name: str, namespace: str, config: Callable[[], GatewayConfig],
                 rng: random.Random | None = None, dialer: Dialer | None = None, host: str = "0.0.0.0",
                 metrics: GatewayMetrics | None = None) -> None:
        self.name, self.namespace = name, namespace
        self.metrics = metrics
        self._config = config
        self._rng = rng or random.Random()
        self._dialer: Dialer = dialer or TcpDialer()
        self._host = host
        self._runners: dict[int, tuple[str, web.AppRunner]] = {}  # port -> (protocol, runner)
        self._cert_dir = tempfile.TemporaryDirectory(prefix="ambient-gateway-")

    # ----------------------------------------------------------------------------------------- listeners
    async def sync_listeners(self) -> list[int]:
        """Bind one server per listener port of the current config (TLS when its listeners are HTTPS) and
        close the ports no listener uses any more; returns the bound ports. A port that cannot be bound is
        logged and tried again at the next change."""
        cfg = self._config()
        ports: dict[int, str] = {}
        for listener in cfg.listeners:
            ports.setdefault(listener.port, listener.protocol)
        for port in [p for p, (proto, _) in self._runners.items() if ports.get(p) != proto]:
            _, runner = self._runners.pop(port)
            await runner.cleanup()
            log.info("gateway %s/%s closed port %d", self.namespace, self.name, port)
        for port, proto in sorted(ports.items()):
            if port in self._runners:
                continue
            app = web.Application(client_max_size=0)
            app.router.add_route("*", "/{tail:.*}", self._handler(port, proto))
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            ctx = self._tls_context(port) if proto == "HTTPS" else None
            try:
                await web.TCPSite(runner, self._host, port, ssl_context=ctx, reuse_port=True).start()
            except OSError as exc:
                await runner.cleanup()
                log.warning("gateway %s/%s cannot listen on port %d: %s", self.namespace, self.name, port, exc)
                continue
            self._runners[port] = (proto, runner)
            log.info("gateway %s/%s listening on %s:%d (%s)", self.namespace, self.name, self._host, port, proto)
        return sorted(self._runners)

    def _tls_context(self, port: int) -> ssl.SSLContext:
        """A server context whose certificate is picked per handshake (SNI) from the latest config."""
        base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        contexts: dict[bytes, ssl.SSLContext] = {}

        def context_for(name: str | None) -> ssl.SSLContext | None:
            cfg = self._config()
            listener = listener_for([x for x in cfg.listeners if x.protocol == "HTTPS"], port, name or "")
            cert = cfg.certificates.get(listener.name) if listener is not None else None
            if cert is None:
                return None
            key = cert.cert_pem + cert.key_pem
            if key not in contexts:
                contexts[key] = self._load(cert)
            return contexts[key]

        def sni(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
            ctx = context_for(name)
            if ctx is None:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            sock.context = ctx
            return None

        base.sni_callback = sni  # type: ignore[assignment]
        first = context_for(None)
        if first is not None:  # clients without SNI get the listener without hostname (or none)
            base = first
            base.sni_callback = sni  # type: ignore[assignment]
        return base

    def _load(self, cert: Certificate) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        d = Path(self._cert_dir.name)
        n = len(list(d.iterdir()))
        crt, key = d / f"{n}.crt", d / f"{n}.key"
        crt.write_bytes(cert.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(cert.key_pem)
        ctx.load_cert_chain(crt, key)
        key.unlink()  # loaded: the key stays in memory only
        return ctx

    async def aclose(self) -> None:
        for _, runner in self._runners.values():
            await runner.cleanup()
        self._runners.clear()
        self._cert_dir.cleanup()

    # ------------------------------------------------------------------------------------------ requests
    def _handler(self, port: int, proto: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            started = time.monotonic()
            record: dict[str, Any] = {"method": request.method, "path": request.raw_path[:256], "status": 0,
                                      "flags": "-", "route": "", "dst_service": "", "error": ""}
            peer = request.transport.get_extra_info("peername") if request.transport else None
            record["src"] = f"{peer[0]}:{peer[1]}" if peer else ""
            try:
                response = await self._route(request, port, proto, record)
            finally:
                took = (time.monotonic() - started) * 1000
                record["duration"] = int(took)
                if self.metrics is not None:
                    if record.get("refusal"):
                        self.metrics.refused(record["refusal"])
                    self.metrics.request(record["dst_service"], record["status"], record["flags"], took)
                access.info('request complete src.addr=%s method=%s path="%s" status=%s flags=%s route=%s '
                            'dst.service="%s" duration=%sms%s', record["src"], record["method"], record["path"],
                            record["status"], record["flags"], record["route"] or "-", record["dst_service"],
                            record["duration"], f' error="{record["error"]}"' if record["error"] else "")
            return response
        return handle

    def _local(self, record: dict[str, Any], status: int, text: str, flags: str, refusal: str) -> web.Response:
        """The gateway's own answer; `refusal` is the reason counted (metrics.REFUSAL_REASONS)."""
        record["status"], record["flags"], record["refusal"] = status, flags, refusal
        if status >= 500:
            record["error"] = text
        return web.Response(status=status, text=text.rstrip("\n") + "\n")

    async def _route(self, request: web.Request, port: int, proto: str, record: dict[str, Any]) -> web.StreamResponse:
        cfg = self._config()
        host = request_host(request.host or "")
        listener = listener_for(cfg.listeners, port, host)
        if listener is None:
            return self._local(record, 404, f"no listener on port {port} serves host {host!r}", "NR",
                               "no_listener")
        raw_path, _, query = request.raw_path.partition("?")
        path = normalize_path(raw_path)
        if path is None:
            return self._local(record, 400, "bad request: invalid path", "-", "bad_request")
        headers = {k.lower(): v for k, v in request.headers.items()}
        info = RequestInfo(request.method, path, headers, query)
        gw_ns, gw_name = cfg.owners.get(listener.name, (self.namespace, self.name))
        routed = route_gateway_request(cfg.routes, gw_name, gw_ns, listener, host, info, self._rng)
        if isinstance(routed, NoRoute):
            return self._local(record, routed.status, routed.reason, "NR", "no_route")
        if isinstance(routed, Redirect):
            record["route"], record["status"] = routed.route.key, routed.status
            out = [("location", routed.location(request.host or host, "https" if proto == "HTTPS" else "http"))]
            if routed.response_headers is not None:
                out = routed.response_headers.apply(out)
            return web.Response(status=routed.status, headers=out)
        assert isinstance(routed, RouteDecision)
        return await self._forward(request, cfg, routed, path, query, proto, record)

    async def _forward(self, request: web.Request, cfg: GatewayConfig, routed: RouteDecision, path: str, query: str,
                       proto: str, record: dict[str, Any]) -> web.StreamResponse:
        backend = routed.backend
        record["route"] = routed.route.key if routed.route is not None else ""
        svc = cfg.services.get((backend.namespace, backend.name))
        ip = ((svc or {}).get("spec") or {}).get("clusterIP")
        record["dst_service"] = f"{backend.name}.{backend.namespace}.svc.cluster.local"
        if svc is None or not ip or ip == "None":
            return self._local(record, 500, f"backend service {backend.namespace}/{backend.name} not found", "NR",
                               "backend_not_found")
        authority = request.host or ""
        fwd_headers = [(k.lower(), v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        fwd_headers.append(("x-forwarded-proto", "https" if proto == "HTTPS" else "http"))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            prior = request.headers.get("x-forwarded-for")
            fwd_headers = [(k, v) for k, v in fwd_headers if k != "x-forwarded-for"]
            fwd_headers.append(("x-forwarded-for", f"{prior}, {peer[0]}" if prior else str(peer[0])))
        filters = routed.filters
        response_mod = None
        if filters is not None:
            if filters.request_headers is not None:
                fwd_headers = filters.request_headers.apply(fwd_headers)
            if filters.rewrite is not None:
                if filters.rewrite.hostname:
                    authority = filters.rewrite.hostname
                if filters.rewrite.path is not None:
                    path = filters.rewrite.path.apply(path)
            response_mod = filters.response_headers
        body = await request.read() if request.can_read_body else None
        target = path + (f"?{query}" if query else "")
        retry = routed.retry
        attempts = 1 + (retry.attempts if retry is not None else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                async with asyncio.timeout(routed.request_timeout or None):
                    stream = await self._dialer.open(str(ip), int(backend.port or 0))
                    upstream = await exchange(stream, request.method, target, [*fwd_headers, ("host", authority)],
                                              body)
                    if retry is not None and not last and upstream.status in retry.codes:
                        async for _ in upstream.body:
                            pass
                        await asyncio.sleep(retry.backoff)
                        continue
                    out = [(k, v) for k, v in upstream.headers if k not in HOP_BY_HOP]
                    if response_mod is not None:
                        out = response_mod.apply(out)
                    response = web.StreamResponse(status=upstream.status, reason=upstream.reason or None,
                                                  headers=out)
                    await response.prepare(request)
                    async for chunk in upstream.body:
                        await response.write(chunk)
                    await response.write_eof()
                    record["status"] = upstream.status
                    return response
            except TimeoutError:
                if last:
                    return self._local(record, 504, "upstream request timeout", "UT", "timeout")
            except UpstreamError as exc:
                if last:
                    return self._local(record, 503, f"upstream connect error: {exc.message}", "UF",
                                       "upstream_unreachable")
            if retry is not None:
                await asyncio.sleep(retry.backoff)
        return self._local(record, 503, "no attempt left", "UF", "upstream_unreachable")
