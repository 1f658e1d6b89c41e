"""The control plane process: object source -> index -> xDS cache -> gRPC (delta ADS + CA), plus admin.

Role: wire the pieces. `Pipeline` feeds watch events into the `MeshIndex` and flushes them, coalesced
(debounce 10 ms, at most 50 ms behind a burst), into the `ResourceCache` that the xDS streams read.
`ControlPlane.run()` loads (or creates) the CA root in `<state>/ca/` (unless the caller passes `ca=`, as
Kubernetes mode does from its Secret), issues per-node tokens for every Node object (local mode only), syncs
every kind once, and only then serves gRPC with TLS (server certificate from the mesh CA:
`server_identity`, default `spiffe://cluster.local/ns/istio-system/sa/istiod`, plus DNS/IP SANs) and the
admin endpoint (`<state>/controlplane-admin.sock`: GET /proxy-status, /healthz, /policies).

The public gRPC address is served by `admission.AdmissionFront` (connection caps in total and per source
IP), which splices admitted connections to the gRPC server on a Unix socket in a private temporary
directory; gRPC itself enforces the handshake timeout, idle timeout, keepalive and streams per connection.
All of these are `ServingLimits` (env `AMBIENT_CP_*`, or `limits=`).

Callers are authenticated by one `CallerAuthenticator` (ca_server.py): by default per-node tokens plus the
kubelet's per-pod tokens (`pod_tokens.py`: a pod gets only its own identity), or the one passed as
`authenticator=` (Kubernetes: TokenReview). With a custom authenticator the xDS stream is
checked by an async gRPC interceptor before the stream starts (the XdsServer's own hook is synchronous).

Invariants: proxies never see a partially synced control plane (an empty cache would tell reconnecting
proxies to delete everything); every task is owned by the TaskGroup of `run()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from ambient.api.client import WatchEvent
from ambient.api.informer import inform
from ambient.controlplane.admission import AdmissionFront, ServingLimits, client_address
from ambient.controlplane.ca_server import (
    PROXY_NAMESPACE,
    PROXY_SERVICE_ACCOUNT,
    CallerAuthenticator,
    CaServicer,
    CertificateAuthority,
    NodeTokenAuthenticator,
    NodeTokens,
    bearer_token,
    issue_server_cert,
)
from ambient.controlplane.errors import CaRefusedError, ControlPlaneError
from ambient.controlplane.index import (
    CONDITION_TYPES,
    KINDS,
    ROUTE_KINDS,
    STATUS_CONDITION,
    IndexDelta,
    MeshIndex,
    route_status,
)
from ambient.controlplane.pod_tokens import LocalAuthenticator, PodTokenAuthenticator, is_pod_token
from ambient.controlplane.source import ApiObjectSource, ObjectSource
from ambient.controlplane.xds_server import ResourceCache, XdsServer
from ambient.core.errors import AmbientError
from ambient.identity.ca import LocalCA
from ambient.protocol.xds import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL

log = logging.getLogger(__name__)

ADMIN_SOCKET = "controlplane-admin.sock"
SERVER_IDENTITY = "spiffe://cluster.local/ns/istio-system/sa/istiod"
SERVER_DNS_NAMES = ["istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local", "istiod", "localhost"]
Obj = dict[str, Any]
# (kind, namespace, name, merge patch of the status subresource)
StatusWriter = Callable[[str, str, str, Obj], Awaitable[Any]]


class Pipeline:
    """Index + cache + coalesced flushing. Event handlers are synchronous; `run()` flushes."""

    def __init__(
        self, index: MeshIndex, cache: ResourceCache, *, debounce: float = 0.01, max_delay: float = 0.05
    ) -> None:
        self.index = index
        self.cache = cache
        self.debounce = debounce
        self.max_delay = max_delay
        self._dirty = asyncio.Event()
        self.flushes = 0

    def on_replace(self, kind: str, items: list[Obj]) -> None:
        self.index.replace(kind, items)
        self._dirty.set()

    def on_event(self, kind: str, event: WatchEvent) -> None:
        if event.type == "DELETED":
            self.index.delete(kind, event.object)
        else:
            self.index.upsert(kind, event.object)
        self._dirty.set()

    def mark_dirty(self) -> None:
        self._dirty.set()

    def flush(self) -> IndexDelta:
        delta = self.index.flush()
        if delta.addresses:
            self.cache.apply(ADDRESS_TYPE_URL, delta.addresses)
        if delta.authorizations:
            self.cache.apply(AUTHORIZATION_TYPE_URL, delta.authorizations)
        self.flushes += 1
        return delta

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            started = time.monotonic()
            # Coalesce a burst: wait for `debounce` of quiet, but never more than `max_delay` in total.
            while True:
                self._dirty.clear()
                await asyncio.sleep(self.debounce)
                if not self._dirty.is_set() or time.monotonic() - started >= self.max_delay:
                    break
            self._dirty.clear()
            self.flush()


CA_SERVICE_PREFIX = "/istio.v1.auth.IstioCertificateService/"


class _TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses every non-CA RPC (xDS) whose bearer token `authenticator` does not accept (UNAUTHENTICATED).
    The CA authenticates on its own (it needs the caller's identity, not just a yes/no)."""

    def __init__(self, authenticator: CallerAuthenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        method = str(details.method or "")
        if method.startswith(CA_SERVICE_PREFIX):
            return await continuation(details)
        md = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        token = bearer_token(md)
        try:
            if token is None:
                raise CaRefusedError("no bearer token: send `authorization: Bearer <token>`", code="UNAUTHENTICATED")
            await self.authenticator.authenticate(token)
        except CaRefusedError as exc:
            reason = exc.message
            log.warning("%s refused: %s", method, reason)

            async def deny(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

            return grpc.stream_stream_rpc_method_handler(deny)
        return await continuation(details)


class ControlPlane:
    def __init__(
        self,
        state_dir: Path | str,
        listen: str = "127.0.0.1:15012",
        *,
        source: ObjectSource | None = None,
        tls: bool = True,
        require_token: bool = True,
        max_ttl: timedelta = timedelta(hours=24),
        root_namespace: str = "istio-system",
        debounce: float = 0.01,
        status_writer: StatusWriter | None = None,
        ca: LocalCA | None = None,
        authenticator: CallerAuthenticator | None = None,
        proxy_namespace: str = PROXY_NAMESPACE,
        proxy_service_account: str = PROXY_SERVICE_ACCOUNT,
        server_identity: str = SERVER_IDENTITY,
        dns_names: Sequence[str] = (),
        limits: ServingLimits | None = None,
    ) -> None:
        """`source`/`status_writer` default to the local API server at `<state>/apiserver.sock`; `ca` to the
        root in `<state>/ca/`; `authenticator` to per-node tokens (then Node objects are watched to mint them).
        `dns_names` are added to the server certificate's SANs. `limits` default to `ServingLimits.from_env()`
        (raises `ControlPlaneError` naming a malformed `AMBIENT_CP_*` variable)."""
        self.limits = limits if limits is not None else ServingLimits.from_env()
        self.state_dir = Path(state_dir)
        self.listen = listen
        self._source = source
        self.tls = tls
        self.require_token = require_token
        self.ca = ca if ca is not None else LocalCA.load_or_create(self.state_dir / "ca", max_ttl=max_ttl)
        self.tokens = NodeTokens(self.state_dir)
        self.node_tokens = authenticator is None  # local mode: mint per-node tokens, check them on xDS
        self.index = MeshIndex(root_namespace)
        self.cache = ResourceCache()
        self.pipeline = Pipeline(self.index, self.cache, debounce=debounce)
        xds_authn = self._authenticate if require_token and self.node_tokens else None
        self.xds = XdsServer(self.cache, authenticator=xds_authn)
        # Local mode: per-node tokens (node proxies) and per-pod tokens minted by the kubelet (pods that fetch
        # their own identity, e.g. waypoints; revoked with the pod). The key is only read on first use.
        self.pod_tokens = PodTokenAuthenticator(self.state_dir, self._pod_alive)
        if authenticator is None:
            authenticator = LocalAuthenticator(
                self.pod_tokens, NodeTokenAuthenticator(self.tokens, proxy_namespace, proxy_service_account)
            )
        self.authority = CertificateAuthority(
            self.ca,
            authenticator,
            self.index.node_service_accounts,
            max_ttl=max_ttl,
            proxy_namespace=proxy_namespace,
            proxy_service_account=proxy_service_account,
        )
        self.server_identity = server_identity
        self.dns_names = [*SERVER_DNS_NAMES, *dns_names]
        self.port: int | None = None
        self.front: AdmissionFront | None = None
        self.ready = asyncio.Event()
        self.admin_socket = self.state_dir / ADMIN_SOCKET
        self.started_at = time.time()
        self._status_writer = status_writer

    async def _status_loop(self) -> None:
        """Write the `ZtunnelAccepted` condition of each AuthorizationPolicy (narrowed, not enforced) and
        PeerAuthentication (DISABLE acts as PERMISSIVE), and the `Accepted` condition of each mesh HTTPRoute's
        Service parents, back to the object's status."""
        assert self._status_writer is not None
        while True:
            await asyncio.sleep(0.2)
            pending, self.index.status_pending = self.index.status_pending, {}
            for (kind, ns, name), (status, reason, message) in pending.items():
                obj = self.index.get(kind, ns, name)
                now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                if kind in ROUTE_KINDS:
                    if obj is None:
                        continue
                    resolved = self.index.route_resolved.get((kind, ns, name))
                    patch = {"status": route_status(obj, (status, reason, message), now, resolved)}
                    try:
                        await self._status_writer(kind, ns, name, patch)
                    except AmbientError as exc:
                        log.info("could not write status of %s %s/%s: %s", kind, ns, name, exc)
                    continue
                condition = {
                    "type": CONDITION_TYPES.get(kind, STATUS_CONDITION),
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": now,
                    "observedGeneration": ((obj or {}).get("metadata") or {}).get("generation"),
                }
                try:
                    extra = self.index.status_extra.get((kind, ns, name), {})
                    await self._status_writer(kind, ns, name, {"status": {"conditions": [condition], **extra}})
                except AmbientError as exc:  # deleted meanwhile, API restarting: the next change retries
                    log.info("could not write status of %s %s/%s: %s", kind, ns, name, exc)

    @property
    def root_cert_path(self) -> Path:
        return self.state_dir / "ca" / "root-cert.pem"

    def _authenticate(self, metadata: dict[str, str] | Any, node_id: str) -> str | None:
        token = bearer_token(metadata)
        if token is None:
            return "no bearer token: send `authorization: Bearer <token>` (the node's token file)"
        if is_pod_token(token):
            try:
                self.pod_tokens.claims(token)
            except CaRefusedError as exc:
                return exc.message
            return None
        if self.tokens.node_for(token) is None:
            return "the bearer token is not valid for any node of this cluster"
        return None

    def _pod_alive(self, namespace: str, name: str, uid: str) -> bool:
        pod = self.index.get("Pod", namespace, name)
        meta = (pod or {}).get("metadata") or {}
        return pod is not None and meta.get("uid") == uid and not meta.get("deletionTimestamp")

    def _on_nodes(self, kind: str, items: list[Obj]) -> None:
        for node in items:
            name = (node.get("metadata") or {}).get("name")
            if name:
                self.tokens.ensure(str(name))

    def _on_node_event(self, kind: str, event: WatchEvent) -> None:
        if event.type != "DELETED":
            self._on_nodes(kind, [event.object])

    async def run(self) -> None:
        """Serve until cancelled."""
        source = self._source or ApiObjectSource(self.state_dir / "apiserver.sock")
        if self._status_writer is None and isinstance(source, ApiObjectSource):
            self._status_writer = source.write_status
        interceptors = []
        if self.require_token and not self.node_tokens:
            interceptors.append(_TokenInterceptor(self.authority.authenticator))
        server = grpc.aio.server(
            options=[("grpc.max_send_message_length", 256 * 1024 * 1024), *self.limits.grpc_options()],
            interceptors=interceptors,
        )
        self.xds.register(server)
        CaServicer(self.authority).register(server)
        host, _, port_text = self.listen.rpartition(":")
        host = host.strip("[]")
        try:
            port = int(port_text)
        except ValueError:
            raise ControlPlaneError(f"listen address {self.listen!r} has no port", hint="use HOST:PORT") from None
        # gRPC listens only on a Unix socket in a private directory; the front owns the public address.
        backend_dir = tempfile.mkdtemp(prefix="ambient-cp-")
        backend = f"{backend_dir}/grpc.sock"
        if self.tls:
            names = list(dict.fromkeys(self.dns_names))  # ordered, without duplicates
            if host not in ("", "0.0.0.0", "::"):  # an unspecified bind address is no name of this server
                names.append(host)
            key, chain = issue_server_cert(self.ca, self.server_identity, names)
            server.add_secure_port(f"unix:{backend}", grpc.ssl_server_credentials([(key, chain)]))
        else:
            server.add_insecure_port(f"unix:{backend}")
        # "" and "::" mean every address, IPv4 included (as gRPC's own "[::]:port" does).
        self.front = front = AdmissionFront(None if host in ("", "::") else host, port, backend, self.limits)
        try:
            await front.start()
        except OSError as exc:
            shutil.rmtree(backend_dir, ignore_errors=True)
            raise ControlPlaneError(f"cannot listen on {self.listen}: {exc.strerror or exc}",
                                    hint="is another control plane running? choose another --listen") from None
        self.port = front.port
        admin = web.Application()
        admin.router.add_get("/proxy-status", self._proxy_status)
        admin.router.add_get("/policies", self._policies)
        admin.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(admin, access_log=None)
        try:
            async with asyncio.TaskGroup() as tg:
                synced = []
                node_synced = asyncio.Event()
                if self.node_tokens:
                    tg.create_task(inform(source, "Node", self._on_nodes, self._on_node_event, synced=node_synced))
                else:
                    node_synced.set()  # callers bring their own tokens (e.g. Kubernetes service accounts)
                for kind in KINDS:
                    ev = asyncio.Event()
                    synced.append(ev)
                    tg.create_task(inform(source, kind, self.pipeline.on_replace, self.pipeline.on_event, synced=ev))
                for ev in [*synced, node_synced]:
                    await ev.wait()
                self.pipeline.flush()
                tg.create_task(self.pipeline.run())
                if self._status_writer is not None:
                    tg.create_task(self._status_loop())
                await server.start()
                tg.create_task(front.run(), name="admission-front")
                await front.started.wait()
                await runner.setup()
                self.admin_socket.unlink(missing_ok=True)
                await web.UnixSite(runner, str(self.admin_socket)).start()
                log.info(
                    "control plane serving xDS+CA on %s (port %s, tls=%s); %d addresses, %d policies",
                    self.listen,
                    self.port,
                    self.tls,
                    self.cache.count(ADDRESS_TYPE_URL),
                    self.cache.count(AUTHORIZATION_TYPE_URL),
                )
                self.ready.set()
                await asyncio.Event().wait()
        finally:
            front.close()
            await server.stop(grace=1.0)
            shutil.rmtree(backend_dir, ignore_errors=True)
            await runner.cleanup()
            self.admin_socket.unlink(missing_ok=True)
            if self._source is None and isinstance(source, ApiObjectSource):
                await source.aclose()

    # ------------------------------------------------------------------ admin
    def proxy_status(self) -> dict[str, Any]:
        return {
            "versions": {t: self.cache.version(t) for t in self.cache.type_urls},
            "resources": {t: self.cache.count(t) for t in self.cache.type_urls},
            "certificates_issued": self.authority.issued,
            "proxies": [{**p, "peer": client_address(str(p.get("peer", "")))} for p in self.xds.status()],
            "connections": self.front.stats() if self.front is not None else {},
        }

    async def _proxy_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.proxy_status(), dumps=lambda o: json.dumps(o, indent=1))

    async def _policies(self, request: web.Request) -> web.Response:
        body = [{"namespace": ns, "name": n, "message": m} for (ns, n), m in sorted(self.index.policy_status.items())]
        return web.json_response(body)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(
            text="ok\n" if self.ready.is_set() else "syncing\n", status=200 if self.ready.is_set() else 503
        )


@dataclass(frozen=True)
class Settings:
    """The control plane's own settings, as its entry points take them from flags (`limits` from the
    environment when not given: `ServingLimits.from_env()`)."""

    state_dir: Path
    listen: str = "127.0.0.1:15012"
    tls: bool = True
    max_ttl: timedelta = timedelta(hours=24)
    root_namespace: str = "istio-system"
    proxy_namespace: str = PROXY_NAMESPACE
    proxy_service_account: str = PROXY_SERVICE_ACCOUNT
    dns_names: tuple[str, ...] = ()
    limits: ServingLimits | None = None


def build(settings: Settings, **wiring: Any) -> ControlPlane:
    """The composition root: a `ControlPlane` for `settings` (not started: `await cp.run()`). `wiring`
    replaces the local cluster's defaults (`source`, `status_writer`, `ca`, `authenticator`, as the
    Kubernetes entry point does)."""
    return ControlPlane(
        settings.state_dir, settings.listen, tls=settings.tls, max_ttl=settings.max_ttl,
        root_namespace=settings.root_namespace, proxy_namespace=settings.proxy_namespace,
        proxy_service_account=settings.proxy_service_account, dns_names=settings.dns_names,
        limits=settings.limits, **wiring,
    )
