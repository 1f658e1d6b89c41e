"""The cluster API server: the object store served as Kubernetes-like HTTP+JSON over a Unix socket (+ TCP).

Routes: `/api/v1/[namespaces/{ns}/]{plural}[/{name}[/status]]` and the same under `/apis/{group}/{version}`
(GET list/get, POST create, PUT update, PATCH: JSON merge, strategic merge, JSON patch or apply patch,
DELETE), `?watch=1` for streaming newline-delimited watch events, `POST /ambient/v1/apply` for a batch apply
in one transaction, and
`GET /healthz`. Errors are answered as a Kubernetes `Status` object carrying the `ApiError` reason, message
and hint, which the client maps back to the same exception class.

Invariants:
- The server is the single writer: every store call (read or write) runs on ONE worker thread, so store
  calls are serialised without blocking the event loop, and watchers are woken after each write.
- A watch from version N delivers every matching event with a version > N exactly once, in order, then
  BOOKMARKs carrying the version it has scanned up to; a version older than the kept change log is answered
  with HTTP 410 (or an ERROR event if the log is compacted past a slow watcher mid-stream).
- `<state dir>/apiserver.lock` (flock) guarantees one server per state dir; the socket is mode 0600.
- Field validation as Kubernetes': create/update/patch and the batch apply honour `?fieldValidation=`
  Strict (the default here: Kubernetes defaults to Warn, but a dropped field of a security policy can
  fail open), Warn (unknown fields dropped, one `Warning: 299 - "unknown field ..."` header each) or Ignore
  (dropped silently). Unknown fields are never stored. Status writes are not schema-checked. A field given
  twice in one JSON object is refused the same way (Warn/Ignore keep the last value).
- Defaults as kube-apiserver's (`ambient.api.defaults`, applied by the store after validation): every
  create, update, patch (any type), server-side apply and batch apply, dry runs included, stores and answers
  the defaulted object, so `kubectl describe`/`get -o yaml` show what Kubernetes would and `kubectl diff`
  shows no difference for an unchanged manifest. Only absent fields are filled.
- Write options as kube-apiserver reads them (`ambient.api.options`): `dryRun=All` (a DELETE also takes it
  from a DeleteOptions body) runs the write whole on the store's thread and rolls it back: the answer is
  the object as it would be, nothing is stored, no version is taken and watchers are not woken. Any other
  dryRun value, a bad fieldManager/fieldValidation, or `force` on a non-apply patch is a 422 naming the
  options kind (`PatchOptions.meta.k8s.io "" is invalid: ...`), never ignored.
- Field managers: server-side apply conflicts between managers are a 409 (`ambient.api.apply`); writes
  that name a `fieldManager` (kubectl's) are recorded in managedFields as `Update` entries.
- Events (core/v1 `Event`, `ambient.api.events`) are objects like any other (list, watch, field selectors on
  involvedObject.*, reason, type; a Table of LAST SEEN, TYPE, REASON, OBJECT, MESSAGE), kept bounded by the
  store (per-object and overall caps) and expired `event_limits.ttl` (1 h) after their last occurrence by a
  sweep every `event_sweep_interval` seconds.
- Limits (`ambient.api.limits`): a body over `max_request_bytes` (3 MiB; batch apply: `max_apply_bytes`,
  32 MiB) is answered 413 before it is read whole; an object over `max_object_bytes` (1.5 MiB) is refused
  by the store with 413; a body nested deeper than 100 levels is answered 400 before any recursive code runs.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import fcntl
import json
import logging
import os
import re
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from multidict import CIMultiDict

from ambient.api import discovery, limits, openapi, pods, protobuf, tables, tls_listener
from ambient.api.apply import server_side_apply
from ambient.api.errors import (
    ApiError,
    BadRequestError,
    NotFoundError,
    TooLargeError,
    UnknownKindError,
)
from ambient.api.events import EventLimits
from ambient.api.kinds import KINDS, KindInfo, by_plural, kind_for_manifest
from ambient.api.options import DeleteBody, WriteOptions, read_delete_body, write_options
from ambient.api.patch import json_patch, strategic_merge
from ambient.api.selectors import compile_selectors
from ambient.api.store import DEFAULT_MAX_EVENTS, Store
from ambient.api.validation.schema import (
    check_duplicates,
    check_fields,
    loads_with_duplicates,
    parse_field_validation,
)
from ambient.core import process

log = logging.getLogger("ambient.apiserver")

SOCKET_NAME = "apiserver.sock"
LOCK_NAME = "apiserver.lock"
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_WATCH_BATCH = 1000
# Warning headers of one response: at most this many (then one saying how many more), each cut to this length.
_MAX_WARNINGS = 20
_MAX_WARNING_CHARS = 512
_ITEM_PATH = re.compile(r"^(?:items)?\[(\d+)\]\.?(.*)$")  # a batch apply path: items[3].spec.action
T = TypeVar("T")


_STRATEGIC = "application/strategic-merge-patch+json"
_APPLY = "application/apply-patch+yaml"
_JSON_PATCH = "application/json-patch+json"
_PATCH_TYPES = ("application/merge-patch+json", "application/json", _STRATEGIC, _APPLY, _JSON_PATCH)
_SUBRESOURCES = {"Pod": ("log", "exec", "portforward"), "Deployment": ("scale",)}


class UnsupportedMediaTypeError(ApiError):
    """A PATCH of a content type this server does not apply. HTTP 415, as Kubernetes."""

    status = 415
    reason = "UnsupportedMediaType"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def status_body(exc: ApiError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": exc.message,
        "reason": exc.reason,
        "code": exc.status,
    }
    if exc.details:
        body["details"] = exc.details
    if exc.hint:
        body["hint"] = exc.hint
    return body


def warning_header(text: str) -> str:
    """A `Warning` header value as Kubernetes sends it (RFC 7234: `299 - "text"`), ASCII, no control characters."""
    text = text[:_MAX_WARNING_CHARS].encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '299 - "' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _warning_headers(warnings: list[str]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for text in warnings[:_MAX_WARNINGS]:
        headers.add("Warning", warning_header(text))
    if len(warnings) > _MAX_WARNINGS:
        headers.add("Warning", warning_header(f"{len(warnings) - _MAX_WARNINGS} more warnings not shown"))
    return headers


def _subject(info: KindInfo, obj: Any) -> str:
    """How an object is named in field validation messages: `AuthorizationPolicy shop/allow-web`."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    name = str(meta.get("name") or "?")[:253]
    if info.namespaced:
        return f"{info.display_kind} {str(meta.get('namespace') or 'default')[:63]}/{name}"
    return f"{info.display_kind} {name}"


def _error_response(exc: ApiError) -> web.Response:
    return web.Response(status=exc.status, text=_dumps(status_body(exc)), content_type="application/json")


def parse_api_path(prefix: str, tail: str) -> tuple[KindInfo, str | None, str | None, str | None]:
    """Decode a resource path into (kind, namespace, name, subresource); pure, raises NotFoundError.

    `prefix` is "api" (core group, tail "v1/...") or "apis" (tail "{group}/{version}/...").
    """
    parts = [p for p in tail.split("/") if p]
    if prefix == "api":
        group, rest = "", parts
    else:
        if not parts:
            raise NotFoundError("the server could not find the requested resource")
        group, rest = parts[0], parts[1:]
    if not rest:
        raise NotFoundError("the server could not find the requested resource")
    version, rest = rest[0], rest[1:]
    namespace: str | None = None
    # "namespaces/{ns}/{plural}..." lists/addresses objects in a namespace, but "namespaces/{name}/status"
    # is the Namespace object's status subresource.
    if len(rest) >= 3 and rest[0] == "namespaces" and not (len(rest) == 3 and rest[2] == "status"):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        raise NotFoundError("the server could not find the requested resource")
    try:
        info = by_plural(rest[0], group)
    except ApiError:
        raise NotFoundError(f'the server has no resource "{rest[0]}"') from None
    if info.group != group or info.version != version:
        raise NotFoundError(f'the server has no resource "{rest[0]}" in {group or "core"}/{version}')
    if namespace is not None and not info.namespaced:
        raise NotFoundError(f"{info.resource} are cluster-scoped: they have no namespace")
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub not in (None, "status") and sub not in _SUBRESOURCES.get(info.kind, ()):
        raise NotFoundError(f'no subresource "{sub}" for {info.resource}')
    return info, namespace, name, sub


def _scale_of(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                     if k in meta},
        "spec": {"replicas": spec.get("replicas", 1)},
        "status": {"replicas": status.get("replicas", 0),
                   "selector": ",".join(f"{k}={v}" for k, v in selector.items())},
    }


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


class ApiServer:
    """One API server over one state dir. `start()` binds, `stop()` drains watchers and closes the store."""

    def __init__(
        self,
        state_dir: str | Path,
        tcp: str | None = None,
        *,
        tls: str | None = None,
        pod_connector: pods.PodConnector | None = None,
        max_events: int = DEFAULT_MAX_EVENTS,
        bookmark_interval: float = 5.0,
        max_request_bytes: int = limits.MAX_REQUEST_BYTES,
        max_apply_bytes: int = limits.MAX_APPLY_BYTES,
        max_object_bytes: int = limits.MAX_OBJECT_BYTES,
        event_limits: EventLimits | None = None,
        event_sweep_interval: float = 60.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.event_limits = event_limits or EventLimits()
        self.event_sweep_interval = event_sweep_interval
        self._sweeper: asyncio.Task[None] | None = None
        self.max_request_bytes = max_request_bytes
        self.max_apply_bytes = max_apply_bytes
        self.max_object_bytes = max_object_bytes
        self.socket_path = self.state_dir / SOCKET_NAME
        self.tcp = tcp
        self.tcp_port: int | None = None
        self.tls = tls
        self.pod_connector = pod_connector
        self.tls_port: int | None = None
        self.kubeconfig_path: Path | None = None
        self._tls_material: tls_listener.TlsMaterial | None = None
        self.max_events = max_events
        self.bookmark_interval = bookmark_interval
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="apistore")
        self._store: Store | None = None
        self._runner: web.AppRunner | None = None
        self._lock_fd: int | None = None
        self._changed = asyncio.Event()
        self._stopping = False
        self._started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # release the lock, the store and the executor of a half-started server
            raise

    async def _start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if len(os.fsencode(self.socket_path)) > _UNIX_PATH_MAX:
            raise ApiError(
                f"socket path {self.socket_path} is longer than {_UNIX_PATH_MAX} bytes",
                hint="use a shorter state directory",
            )
        self._take_lock()
        self._store = await self._run(
            Store, self.state_dir, max_events=self.max_events, max_object_bytes=self.max_object_bytes,
            event_limits=self.event_limits,
        )
        # Bodies are read by `_body` with the limit of their route; this is only a backstop.
        app = web.Application(
            client_max_size=max(self.max_request_bytes, self.max_apply_bytes),
            middlewares=[self._authenticate, self._errors],
        )
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._healthz)
        app.router.add_get("/readyz", self._healthz)
        app.router.add_get("/version", self._version)
        app.router.add_get("/api", self._discovery)
        app.router.add_get("/apis", self._discovery)
        app.router.add_get("/openapi/v3", self._openapi)
        app.router.add_get("/openapi/v3/{tail:.*}", self._openapi)
        app.router.add_post("/ambient/v1/apply", self._apply)
        app.router.add_route("*", "/api/{tail:.*}", self._resource)
        app.router.add_route("*", "/apis/{tail:.*}", self._resource)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        # Only the lock holder may remove a socket file: a stale one is left by a crashed server.
        with suppress(FileNotFoundError):
            self.socket_path.unlink()
        unix_site = web.UnixSite(self._runner, str(self.socket_path))
        await unix_site.start()
        os.chmod(self.socket_path, 0o600)
        if self.tcp:
            host, _, port = self.tcp.rpartition(":")
            tcp_site = web.TCPSite(self._runner, host.strip("[]") or "127.0.0.1", int(port))
            await tcp_site.start()
            ports = [a[1] for a in self._runner.addresses if isinstance(a, tuple) and len(a) >= 2]
            self.tcp_port = ports[0] if ports else int(port)
        if self.tls:
            await self._start_tls(self.tls)
        for line in await self._run(self._store.unknown_fields_report):
            log.warning("stored by an older version, with fields the API does not define (re-apply it): %s", line)
        self._sweeper = asyncio.get_running_loop().create_task(self._expire_events(), name="event-ttl")
        rv = await self._run(self._store.resource_version)
        log.info(
            "API server ready on %s%s (resourceVersion %d)",
            self.socket_path,
            f" and tcp {self.tcp} (port {self.tcp_port})" if self.tcp else "",
            rv,
        )

    async def _start_tls(self, address: str) -> None:
        """The authenticated TLS listener for kubectl (see `tls_listener`), and `<state>/kubeconfig`."""
        assert self._runner is not None
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        material = await asyncio.to_thread(tls_listener.prepare, self.state_dir, host)
        ctx = tls_listener.server_context(material)
        wanted = int(port_text)
        # Port 0: the port of the previous start (the kubeconfig points there), else any free one.
        candidates = [wanted] if wanted else [p for p in (tls_listener.remembered_port(self.state_dir),) if p] + [0]
        for index, port in enumerate(candidates):
            site = web.TCPSite(self._runner, host, port, ssl_context=ctx)
            try:
                await site.start()
            except OSError:
                if index == len(candidates) - 1:
                    raise
                continue
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            self.tls_port = sockets[0].getsockname()[1] if sockets else port
            break
        assert self.tls_port is not None
        tls_listener.remember_port(self.state_dir, self.tls_port)
        self._tls_material = material
        url_host = f"[{host}]" if ":" in host else host
        self.kubeconfig_path = await asyncio.to_thread(
            tls_listener.write_kubeconfig, self.state_dir, f"https://{url_host}:{self.tls_port}", material
        )
        log.info("API server TLS listener on %s:%d (kubeconfig %s)", host, self.tls_port, self.kubeconfig_path)

    async def stop(self) -> None:
        self._stopping = True
        self._notify()  # wakes every watcher, which then ends its stream
        if self._sweeper is not None:
            self._sweeper.cancel()
            with suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._store is not None:
            await self._run(self._store.close)
            self._store = None
        self._executor.shutdown(wait=True)
        if self._lock_fd is not None:
            # Only the lock holder may remove the socket (it could be another server's otherwise).
            with suppress(FileNotFoundError):
                self.socket_path.unlink()
            os.close(self._lock_fd)
            self._lock_fd = None
            log.info("API server stopped")

    async def _expire_events(self) -> None:
        """kube-apiserver's event TTL: every `event_sweep_interval` seconds, Events last seen more than
        `event_limits.ttl` ago are deleted (watchers see them go)."""
        while True:
            await asyncio.sleep(self.event_sweep_interval)
            try:
                await self._write(self.store.expire_events)
            except Exception:  # the next sweep tries again; the server keeps serving
                log.exception("expiring events failed")

    def _take_lock(self) -> None:
        fd = os.open(self.state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ApiError(
                f"another API server is already running on {self.state_dir}",
                hint="stop it first, or use its socket " + str(self.socket_path),
            ) from None
        self._lock_fd = fd

    # ------------------------------------------------------------------ helpers

    @property
    def store(self) -> Store:
        if self._store is None:
            raise ApiError("the API server is not started")
        return self._store

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def _write(self, fn: Callable[..., T], *args: Any, dry_run: bool = False) -> T:
        try:
            return await self._run(fn, *args)
        finally:
            # Notify even on failure: harmless, and a partially failed call never commits anyway. A dry run
            # commits nothing, so watchers are not even woken.
            if not dry_run:
                self._notify()

    async def _delete_options(self, request: web.Request) -> tuple[WriteOptions, dict[str, str] | None]:
        """A DELETE's options and preconditions: from its body (a DeleteOptions object, as kubectl and client-go
        send them) when it has one, else from the query, as kube-apiserver reads them."""
        body = DeleteBody()
        if request.can_read_body:
            raw, _ = await self._body(request, self.max_request_bytes)
            if raw is not None:
                body = read_delete_body(raw)
                if body.dry_run is None:
                    body = DeleteBody([], body.preconditions)
        dry_run = body.dry_run if body.dry_run is not None else request.query.getall("dryRun", [])
        return write_options("DELETE", dry_run=dry_run), body.preconditions

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    @web.middleware
    async def _authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        """Requests on the TLS listener need the admin token or an admin client certificate (401 otherwise)."""
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if isinstance(ssl_object, ssl.SSLObject) and self._tls_material is not None and not (
            tls_listener.bearer_ok(request.headers.get("Authorization"), self._tls_material.token)
            or tls_listener.is_admin_cert(ssl_object.getpeercert())  # type: ignore[arg-type]
        ):
            body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
            return web.Response(status=401, text=_dumps(body), content_type="application/json")
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ApiError as exc:
            return _error_response(exc)
        except web.HTTPException:
            raise
        except Exception as exc:  # the server must answer, and the operator must see why
            log.exception("internal error on %s %s", request.method, request.path)
            return _error_response(ApiError(f"internal error: {exc}"))

    @staticmethod
    async def _body(request: web.Request, limit: int, envelope_levels: int = 0) -> tuple[Any, list[str]]:
        """The JSON body and the paths of its duplicated fields (the last value kept); refused with 413 past
        `limit` bytes (before reading it when Content-Length says so) and with 400 when its objects nest
        deeper than `limits.MAX_NESTING_DEPTH` (`envelope_levels`: the levels the body wraps them in)."""
        is_protobuf = request.content_type == "application/vnd.kubernetes.protobuf"
        if "cbor" in request.content_type or ("protobuf" in request.content_type and not is_protobuf):
            raise UnsupportedMediaTypeError(
                f'request bodies of type "{request.content_type}" are not supported, only JSON (`kubectl '
                'create <kind> NAME` sends protobuf: use `kubectl apply -f` with a manifest instead)',
                hint="send the object as JSON",
            )
        too_large = TooLargeError(
            f"Request entity too large: limit is {limit}",
            hint="split the request, or raise the API server's limit (--max-request-bytes / --max-apply-bytes)",
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        raw = bytearray()
        while chunk := await request.content.readany():
            raw += chunk
            if len(raw) > limit:
                raise too_large
        if is_protobuf:  # kubectl create namespace|serviceaccount NAME
            try:
                return protobuf.decode(bytes(raw)), []
            except protobuf.UnsupportedKindError as exc:
                raise UnsupportedMediaTypeError(exc.message, hint="send the object as JSON") from None
            except (protobuf.ProtobufError, UnicodeDecodeError) as exc:
                raise BadRequestError(f"request body is not a valid protobuf message: {exc}") from None
        try:
            body, duplicates = loads_with_duplicates(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequestError(f"request body is not valid JSON: {exc}") from None
        except RecursionError:  # the C decoder's own depth guard, far below what a real body needs
            raise BadRequestError(f"request body is {limits.too_deep_message()}") from None
        if limits.exceeds_depth(body, limits.MAX_NESTING_DEPTH + envelope_levels):
            raise BadRequestError(f"request body is {limits.too_deep_message()}")
        return body, duplicates

    @staticmethod
    def _json(obj: Any, status: int = 200, warnings: list[str] | None = None) -> web.Response:
        headers = _warning_headers(warnings) if warnings else None
        return web.Response(status=status, text=_dumps(obj), content_type="application/json", headers=headers)

    # ------------------------------------------------------------------ handlers

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _version(self, request: web.Request) -> web.Response:
        return self._json(discovery.VERSION_INFO)

    async def _openapi(self, request: web.Request) -> web.Response:
        tail = request.match_info.get("tail")
        doc = openapi.index() if tail is None else openapi.doc_for_path(tail)
        if doc is None:
            raise NotFoundError("the server could not find the requested resource")
        return self._json(doc)

    async def _discovery(self, request: web.Request) -> web.Response:
        """`/api`, `/apis`, `/api/v1`, `/apis/<group>[/<version>]` (404 for what is not served)."""
        parts = [p for p in request.path.split("/") if p]
        if parts == ["api"]:
            return self._json(discovery.api_versions(request.host))
        if parts == ["apis"]:
            return self._json(discovery.api_group_list())
        if parts[0] == "api" and len(parts) == 2:
            doc = discovery.resource_list("", parts[1])
        elif parts[0] == "apis" and len(parts) == 2:
            versions = [i.version for i in (*KINDS, discovery.CRD_KIND) if i.group == parts[1]]
            if not versions:
                raise NotFoundError("the server could not find the requested resource")
            return self._json(discovery.api_group(parts[1], list(dict.fromkeys(versions))))
        else:
            doc = discovery.resource_list(parts[1], parts[2])
        if doc is None:
            raise NotFoundError("the server could not find the requested resource")
        return self._json(doc)

    async def _crds(self, request: web.Request, tail: list[str]) -> web.Response:
        """`/apis/apiextensions.k8s.io/v1/customresourcedefinitions[/<name>]`: the mesh kinds, read only."""
        if request.method != "GET":
            raise web.HTTPMethodNotAllowed(request.method, ["GET"])
        items = discovery.crds(self._started_at)
        if len(tail) == 1:
            rv = str(await self._run(self.store.resource_version))
            if tables.wants_table(request.headers.get("Accept")):
                return self._json(tables.table(discovery.CRD_KIND, items, rv))
            return self._json({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinitionList",
                               "metadata": {"resourceVersion": rv}, "items": items})
        found = [c for c in items if c["metadata"]["name"] == tail[1]]
        if len(tail) != 2 or not found:
            raise NotFoundError(f'customresourcedefinitions.apiextensions.k8s.io "{tail[-1]}" not found')
        if tables.wants_table(request.headers.get("Accept")):
            return self._json(tables.table(discovery.CRD_KIND, found, "1"))
        return self._json(found[0])

    async def _apply(self, request: web.Request) -> web.Response:
        mode = parse_field_validation(request.query.get("fieldValidation"))
        dry = write_options("POST", dry_run=request.query.getall("dryRun", [])).dry_run
        body, duplicates = await self._body(request, self.max_apply_bytes, envelope_levels=2)  # {"items": [...]}
        items = body.get("items") if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise BadRequestError('apply expects {"items": [object, ...]}')
        warnings: list[str] = []
        by_item: dict[int, list[str]] = {}
        for path in duplicates:
            match = _ITEM_PATH.match(path)
            if match is None:
                check_duplicates([path], mode, warnings, "request body", name_in_warnings=True)
            else:
                by_item.setdefault(int(match[1]), []).append(match[2])
        for index, item in enumerate(items, 1):
            if not isinstance(item, dict):
                continue  # the store names it
            try:
                info = kind_for_manifest(item.get("apiVersion"), item.get("kind"))
            except (UnknownKindError, TypeError, AttributeError):
                continue  # the store names it
            subject = _subject(info, item)
            if mode == "Strict":
                subject = f"item {index} ({subject})"
            check_duplicates(by_item.get(index - 1, []), mode, warnings, subject, name_in_warnings=True)
            check_fields(item, info.kind, mode, warnings, subject, name_in_warnings=True)
        results = await self._write(lambda: self.store.apply_many(items, dry_run=dry), dry_run=dry)
        return self._json({"items": [{"object": obj, "action": action} for obj, action in results]},
                          warnings=warnings)

    async def _resource(self, request: web.Request) -> web.StreamResponse:
        prefix = request.path.split("/", 2)[1]
        tail = [p for p in request.match_info["tail"].split("/") if p]
        if len(tail) <= (1 if prefix == "api" else 2):  # /api/v1, /apis/<group>[/<version>]
            return await self._discovery(request)
        if prefix == "apis" and tail[:2] == [discovery.CRD_GROUP, "v1"] and tail[2:3] == ["customresourcedefinitions"]:
            return await self._crds(request, tail[2:])
        info, namespace, name, sub = parse_api_path(prefix, request.match_info["tail"])
        method = request.method
        q = request.query
        opts = WriteOptions()
        # A PATCH of an unsupported type is a 415 before its options are read (as kube-apiserver).
        if method in ("POST", "PUT", "PATCH") and sub not in ("exec", "portforward") and not (
                method == "PATCH" and request.content_type not in _PATCH_TYPES):
            opts = write_options(method, dry_run=q.getall("dryRun", []), field_manager=q.get("fieldManager"),
                                 force=q.get("force"), patch_type=request.content_type if method == "PATCH" else None,
                                 field_validation=q.get("fieldValidation"))
        dry = opts.dry_run
        # Recorded in managedFields (an `Update`) when the client names itself, as kubectl always does.
        manager = opts.field_manager or None
        table = tables.wants_table(request.headers.get("Accept"))
        if name is None:
            if method == "GET":
                if _truthy(q.get("watch")):
                    return await self._watch(request, info, namespace, table=table is not None)
                return await self._list(
                    info, namespace, q.get("labelSelector"), q.get("fieldSelector"), table=table is not None
                )
            if method == "POST":
                mode = parse_field_validation(q.get("fieldValidation"))
                body, duplicates = await self._body(request, self.max_request_bytes)
                obj = self._target(info, namespace, None, body)
                warnings: list[str] = []
                check_duplicates(duplicates, mode, warnings, _subject(info, obj))
                check_fields(obj, info.kind, mode, warnings, _subject(info, obj))
                new_obj = await self._write(lambda: self.store.create(obj, dry_run=dry, manager=manager), dry_run=dry)
                return self._json(new_obj, 201, warnings)
            raise web.HTTPMethodNotAllowed(method, ["GET", "POST"])
        ns = namespace if info.namespaced else None
        if sub in ("log", "exec", "portforward"):
            return await self._pod_stream(request, sub, name, ns)
        if sub == "scale":
            return await self._scale(request, info, name, ns, dry)
        if method == "GET":
            obj = await self._run(self.store.get, info.kind, name, ns)
            if table is not None and sub is None:
                return self._json(tables.table(info, [obj], str(obj["metadata"].get("resourceVersion", ""))))
            return self._json(obj)
        if method == "PUT":
            mode = parse_field_validation(q.get("fieldValidation"))
            body, duplicates = await self._body(request, self.max_request_bytes)
            obj = self._target(info, namespace, name, body)
            warnings = []
            check_duplicates(duplicates, mode, warnings, _subject(info, obj))
            if sub != "status":  # status is owned by controllers and not schema-checked
                check_fields(obj, info.kind, mode, warnings, _subject(info, obj))
            op = self.store.update_status if sub == "status" else self.store.update
            return self._json(await self._write(lambda: op(obj, dry_run=dry, manager=manager), dry_run=dry),
                              warnings=warnings)
        if method == "PATCH":
            ctype = request.content_type
            if ctype not in _PATCH_TYPES:
                raise UnsupportedMediaTypeError(
                    f'unsupported patch type "{ctype}"',
                    hint=f"send a JSON merge patch (application/merge-patch+json), {_STRATEGIC}, {_APPLY} or "
                    f"{_JSON_PATCH}",
                )
            mode = parse_field_validation(q.get("fieldValidation"))
            if ctype == _APPLY and sub is None:
                applied = await self._apply_body(request)
                obj = self._target(info, namespace, name, applied)
                warnings = []
                check_fields(obj, info.kind, mode, warnings, _subject(info, obj))
                applied_obj, created = await self._write(
                    lambda: self._server_side_apply(info, name, ns, obj, opts), dry_run=dry
                )
                return self._json(applied_obj, 201 if created else 200, warnings)
            patch, duplicates = await self._body(request, self.max_request_bytes)
            warnings = []
            subject = _subject(info, {"metadata": {"name": name, "namespace": ns}})
            check_duplicates(duplicates, mode, warnings, subject)
            if ctype in (_STRATEGIC, _JSON_PATCH):
                transform = strategic_merge if ctype == _STRATEGIC else json_patch
                result = await self._write(
                    lambda: self._read_modify_write(info, name, ns, lambda live: transform(live, patch),
                                                    sub == "status", mode, warnings, subject, dry, manager),
                    dry_run=dry,
                )
                return self._json(result, warnings=warnings)
            if sub != "status" and isinstance(patch, dict):
                # The stored object has known fields only, so the merge result's unknown fields are the patch's.
                check_fields(patch, info.kind, mode, warnings, subject)
            result = await self._write(
                lambda: self.store.patch(info.kind, name, ns, patch, status=sub == "status", dry_run=dry,
                                         manager=manager),
                dry_run=dry,
            )
            return self._json(result, warnings=warnings)
        if method == "DELETE" and sub is None:
            delete_opts, preconditions = await self._delete_options(request)
            dry = delete_opts.dry_run
            return self._json(await self._write(
                lambda: self.store.delete(info.kind, name, ns, dry_run=dry, preconditions=preconditions), dry_run=dry
            ))
        raise web.HTTPMethodNotAllowed(method, ["GET", "PUT", "PATCH", "DELETE"])

    @staticmethod
    def _target(info: KindInfo, namespace: str | None, name: str | None, obj: Any) -> dict[str, Any]:
        """Check a request body against its URL and fill the namespace from the URL."""
        if not isinstance(obj, dict):
            raise BadRequestError(f"request body must be a JSON object, got {type(obj).__name__}")
        body_info = kind_for_manifest(obj.get("apiVersion") or info.api_version, obj.get("kind") or info.wire_kind)
        if body_info != info:
            raise BadRequestError(f"the body is a {body_info.display_kind} but the URL addresses {info.resource}")
        obj.setdefault("apiVersion", info.api_version)
        obj.setdefault("kind", info.wire_kind)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise BadRequestError("metadata: expected an object")
        if name is not None and meta.setdefault("name", name) != name:
            raise BadRequestError(f'metadata.name "{meta["name"]}" does not match the URL ("{name}")')
        if info.namespaced and namespace is not None and meta.setdefault("namespace", namespace) != namespace:
            raise BadRequestError(
                f'metadata.namespace "{meta["namespace"]}" does not match the URL namespace "{namespace}"'
            )
        return obj

    async def _pod_stream(self, request: web.Request, sub: str, name: str, ns: str | None) -> web.StreamResponse:
        """pods/log (GET), pods/exec and pods/portforward (GET or POST with a WebSocket upgrade)."""
        if request.method not in (("GET",) if sub == "log" else ("GET", "POST")):
            raise web.HTTPMethodNotAllowed(request.method, ["GET"])
        connector = pods.require(self.pod_connector)
        pod = await self._run(self.store.get, "Pod", name, ns)
        if sub == "log":
            container = pods.pick_container(pod, request.query.get("container"))
            uid = pod["metadata"].get("uid")

            async def still_there() -> bool:
                try:
                    current = await self._run(self.store.get, "Pod", name, ns)
                except NotFoundError:
                    return False
                return bool(current["metadata"].get("uid") == uid)

            cname = str(container.get("name"))
            if request.query.get("previous", "").lower() in ("1", "true"):
                return await pods.serve_previous_log(request, pod, cname, connector)
            return await pods.serve_log(request, pod, connector.log_path(pod, cname), still_there)
        if (pod.get("status") or {}).get("phase") != "Running":
            raise BadRequestError(
                f"unable to upgrade connection: pod {name} is not running (phase "
                f"{(pod.get('status') or {}).get('phase') or 'Pending'})"
            )
        if sub == "exec":
            return await pods.serve_exec(request, pod, connector)
        from ambient.api.portforward import serve_portforward

        return await serve_portforward(request, pod, connector)

    async def _scale(self, request: web.Request, info: KindInfo, name: str, ns: str | None,
                     dry: bool = False) -> web.Response:
        """deployments/scale as an autoscaling/v1 Scale: GET, PUT and merge/strategic PATCH of spec.replicas."""
        if request.method == "GET":
            return self._json(_scale_of(await self._run(self.store.get, info.kind, name, ns)))
        if request.method not in ("PUT", "PATCH"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "PUT", "PATCH"])
        body, _ = await self._body(request, self.max_request_bytes)
        replicas = ((body or {}).get("spec") or {}).get("replicas") if isinstance(body, dict) else None
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise BadRequestError("spec.replicas: expected a non-negative integer")
        patch = {"spec": {"replicas": replicas}}
        result = await self._write(lambda: self.store.patch(info.kind, name, ns, patch, dry_run=dry), dry_run=dry)
        return self._json(_scale_of(result))

    async def _apply_body(self, request: web.Request) -> Any:
        """An apply patch: YAML (JSON is YAML too), one document, within the request size limit."""
        import yaml

        raw = bytearray()
        while chunk := await request.content.readany():
            raw += chunk
            if len(raw) > self.max_request_bytes:
                raise TooLargeError(f"Request entity too large: limit is {self.max_request_bytes}")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            try:
                body = yaml.safe_load(bytes(raw))
            except yaml.YAMLError as exc:
                raise BadRequestError(f"apply patch is neither JSON nor YAML: {exc}") from None
        if limits.exceeds_depth(body, limits.MAX_NESTING_DEPTH):
            raise BadRequestError(f"request body is {limits.too_deep_message()}")
        return body

    def _server_side_apply(
        self, info: KindInfo, name: str, ns: str | None, applied: dict[str, Any], opts: WriteOptions
    ) -> tuple[dict[str, Any], bool]:
        """Server-side apply on the store's thread: create or merge (`ambient.api.apply`); True if created.
        One writer, so nothing lands between the read and the write."""
        manager, dry = opts.field_manager, opts.dry_run
        try:
            live = self.store.get(info.kind, name, ns)
        except NotFoundError:
            return self.store.create(server_side_apply(None, applied, manager, info.api_version), dry_run=dry), True
        merged = server_side_apply(live, applied, manager, info.api_version, force=opts.force)
        merged["kind"], merged["apiVersion"] = info.wire_kind, info.api_version
        merged["metadata"]["resourceVersion"] = live["metadata"].get("resourceVersion")
        return self.store.update(merged, dry_run=dry), False

    def _read_modify_write(
        self, info: KindInfo, name: str, ns: str | None, transform: Callable[[dict[str, Any]], Any], status: bool,
        mode: str, warnings: list[str], subject: str, dry: bool = False, manager: str | None = None,
    ) -> dict[str, Any]:
        """A strategic merge or JSON patch, on the store's thread: read, patch, check fields, write (one
        writer, so nothing lands between the read and the write)."""
        current = self.store.get(info.kind, name, ns)
        merged = transform(current)
        if not isinstance(merged, dict):
            raise BadRequestError(f"the patched object is not an object ({type(merged).__name__})")
        merged["kind"], merged["apiVersion"] = info.wire_kind, info.api_version
        meta = merged.get("metadata")
        if not isinstance(meta, dict):
            raise BadRequestError("metadata: expected an object")
        for field, want in (("name", name), ("namespace", ns)):
            if meta.get(field) != want and not (field == "namespace" and want is None and field not in meta):
                raise BadRequestError(f"metadata.{field}: cannot be changed by a patch (is {want!r})")
        if status:
            return self.store.update_status(merged, dry_run=dry, manager=manager)
        check_fields(merged, info.kind, mode, warnings, subject)
        return self.store.update(merged, dry_run=dry, manager=manager)

    async def _list(
        self, info: KindInfo, namespace: str | None, label_selector: str | None, field_selector: str | None,
        *, table: bool = False,
    ) -> web.Response:
        def build() -> str:
            items, rv = self.store.list_json(info.kind, namespace, label_selector, field_selector)
            if table:
                return _dumps(tables.table(info, [json.loads(i) for i in items], str(rv)))
            # The stored JSON text is spliced in as is: no decode/encode per object on the hot path.
            head = _dumps(
                {"apiVersion": info.api_version, "kind": f"{info.wire_kind}List",
                 "metadata": {"resourceVersion": str(rv)}}
            )
            return head[:-1] + ',"items":[' + ",".join(items) + "]}"

        return web.Response(text=await self._run(build), content_type="application/json")

    async def _watch(
        self, request: web.Request, info: KindInfo, namespace: str | None, *, table: bool = False
    ) -> web.StreamResponse:
        q = request.query
        bookmarks = _truthy(q.get("allowWatchBookmarks"))  # sent only when asked, as in Kubernetes
        render = self._table_event if table else None
        predicate = compile_selectors(q.get("labelSelector"), q.get("fieldSelector"))
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        deadline = time.monotonic() + timeout if timeout else None
        rv_text = q.get("resourceVersion") or "0"
        try:
            since = int(rv_text)
        except ValueError:
            raise BadRequestError(f'resourceVersion "{rv_text}" is not an integer') from None
        if since < 0:
            raise BadRequestError(f'resourceVersion "{rv_text}" is negative')
        lines: list[str] = []
        # Taken before every read of the store, so a write landing after the read still wakes us.
        changed = self._changed
        events: list[Any] = []
        initial_events = _truthy(q.get("sendInitialEvents"))
        if since == 0 or initial_events:
            # No version (or a streaming list, `sendInitialEvents`): like Kubernetes, start with synthetic ADDED
            # events for the current state.
            items, since = await self._run(self.store.list_json, info.kind, namespace, None, None)
            for item in items:
                if predicate is None or predicate(json.loads(item)):
                    lines.append(render(info, "ADDED", item) if render else '{"type":"ADDED","object":' + item + "}\n")
            if initial_events:
                # The end of the initial state, which a streaming-list client (client-go's WatchList) waits for.
                end = {"apiVersion": info.api_version, "kind": info.wire_kind,
                       "metadata": {"resourceVersion": str(since),
                                    "annotations": {"k8s.io/initial-events-end": "true"}}}
                lines.append(_dumps({"type": "BOOKMARK", "object": end}) + "\n")
        else:
            # Fetched before the response starts so that a too-old version is a plain HTTP 410.
            events, scanned = await self._run(self.store.events_since, since, info.kind, namespace, _WATCH_BATCH)
            lines += self._event_lines(events, predicate, info, render)
            since = scanned
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        last_write = time.monotonic()
        try:
            while True:
                if lines:
                    await response.write("".join(lines).encode())
                    lines = []
                    last_write = time.monotonic()
                if len(events) < _WATCH_BATCH:
                    wait = self.bookmark_interval - (time.monotonic() - last_write)
                    if deadline is not None:
                        wait = min(wait, deadline - time.monotonic())
                    if wait > 0 and not self._stopping:
                        with suppress(TimeoutError):
                            await asyncio.wait_for(changed.wait(), wait)
                if self._stopping or (deadline is not None and time.monotonic() >= deadline):
                    break
                changed = self._changed
                try:
                    events, since_new = await self._run(
                        self.store.events_since, since, info.kind, namespace, _WATCH_BATCH
                    )
                except ApiError as exc:  # compacted past this watcher: tell it to re-list
                    lines.append(_dumps({"type": "ERROR", "object": status_body(exc)}) + "\n")
                    await response.write("".join(lines).encode())
                    break
                lines = self._event_lines(events, predicate, info, render)
                since = since_new
                if bookmarks and not lines and time.monotonic() - last_write >= self.bookmark_interval:
                    bookmark = {
                        "apiVersion": info.api_version,
                        "kind": info.wire_kind,
                        "metadata": {"resourceVersion": str(since)},
                    }
                    lines.append(_dumps({"type": "BOOKMARK", "object": bookmark}) + "\n")
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the watcher went away
        return response

    @staticmethod
    def _table_event(info: KindInfo, kind: str, data: str) -> str:
        """A watch event whose object is a one-row Table (kubectl get --watch asks for Tables)."""
        obj = json.loads(data)
        rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        return _dumps({"type": kind, "object": tables.table(info, [obj], rv)}) + "\n"

    @staticmethod
    def _event_lines(
        events: list[Any],
        predicate: Callable[[dict[str, Any]], bool] | None,
        info: KindInfo | None = None,
        render: Callable[[KindInfo, str, str], str] | None = None,
    ) -> list[str]:
        lines: list[str] = []
        for ev in events:
            if predicate is None:
                if render is not None and info is not None:
                    lines.append(render(info, ev.type, ev.data))
                else:
                    lines.append('{"type":"' + ev.type + '","object":' + ev.data + "}\n")
                continue
            now = predicate(json.loads(ev.data))
            before = ev.prev is not None and predicate(json.loads(ev.prev))
            # Selector transitions, as in Kubernetes: starting to match is ADDED, stopping is DELETED.
            if ev.type == "MODIFIED" and now != before:
                kind = "ADDED" if now else "DELETED"
            elif now:
                kind = ev.type
            else:
                continue
            if render is not None and info is not None:
                lines.append(render(info, kind, ev.data))
            else:
                lines.append('{"type":"' + kind + '","object":' + ev.data + "}\n")
        return lines


async def serve(
    state_dir: str | Path,
    tcp: str | None = None,
    *,
    tls: str | None = None,
    pod_connector: pods.PodConnector | None = None,
    stop: asyncio.Event | None = None,
    max_events: int = DEFAULT_MAX_EVENTS,
    event_limits: EventLimits | None = None,
    **limits_: int,
) -> None:
    """Run an API server until `stop` is set (or forever). `limits_`: max_request_bytes, max_apply_bytes,
    max_object_bytes (see `ApiServer`)."""
    server = ApiServer(state_dir, tcp, tls=tls, pod_connector=pod_connector, max_events=max_events,
                       event_limits=event_limits, **limits_)
    await server.start()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await server.stop()


def run_apiserver(
    state_dir: Path, tcp: str | None = None, *, tls: str | None = None, max_events: int = DEFAULT_MAX_EVENTS,
    pod_connector: pods.PodConnector | None = None, event_limits: EventLimits | None = None, **limits_: int,
) -> None:
    """Blocking entry point (`ambient apiserver`): serve until SIGTERM or SIGINT, then stop gracefully."""
    process.configure_logging("INFO", quiet=())  # no-op when the caller set up logging already

    async def main(shutdown: process.Shutdown) -> None:
        stop = asyncio.Event()
        shutdown.on_signal(stop.set)
        await serve(state_dir, tcp, tls=tls, pod_connector=pod_connector, stop=stop, max_events=max_events,
                    event_limits=event_limits, **limits_)

    process.run(main)


@contextmanager
def serve_in_thread(state_dir: str | Path, tcp: str | None = None, **kwargs: Any) -> Iterator[ApiServer]:
    """Run a server on a background thread's event loop (for tests and synchronous callers)."""
    server = ApiServer(state_dir, tcp, **kwargs)
    ready = threading.Event()
    failure: list[BaseException] = []
    control: dict[str, Any] = {}

    async def main() -> None:
        control["loop"] = asyncio.get_running_loop()
        control["stop"] = stop = asyncio.Event()
        try:
            await server.start()
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        try:
            await stop.wait()
        finally:
            await server.stop()

    thread = threading.Thread(target=lambda: asyncio.run(main()), name="apiserver", daemon=True)
    thread.start()
    ready.wait(60)
    if failure:
        thread.join(10)
        raise failure[0]
    try:
        yield server
    finally:
        control["loop"].call_soon_threadsafe(control["stop"].set)
        thread.join(60)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes, got {text}")
    return value


def main(argv: list[str] | None = None, pod_connector: pods.PodConnector | None = None) -> None:
    """`python -m ambient.api.server`; a cluster runs it through `ambient.cluster.apiserver`, which attaches
    its pod runtime (`pod_connector`) for logs, exec and port-forward."""
    parser = argparse.ArgumentParser(prog="python -m ambient.api.server", description="ambient cluster API server")
    parser.add_argument("--state-dir", required=True, type=Path, help="cluster state directory")
    parser.add_argument("--tcp", default=None,
                        help="also listen on HOST:PORT without TLS or authentication (tests)")
    parser.add_argument("--tls", default=None,
                        help="also listen on HOST:PORT with TLS and authentication for kubectl (port 0: the "
                        "previous start's port, else any) and write <state-dir>/kubeconfig")
    parser.add_argument("--max-events", type=int, default=DEFAULT_MAX_EVENTS, help="change log entries kept")
    parser.add_argument("--event-ttl", type=float, default=EventLimits.ttl,
                        help="seconds an Event is kept after its last occurrence (kube-apiserver's --event-ttl)")
    parser.add_argument("--max-request-bytes", type=_positive, default=limits.MAX_REQUEST_BYTES,
                        help="largest create/update/patch body (413 past it)")
    parser.add_argument("--max-apply-bytes", type=_positive, default=limits.MAX_APPLY_BYTES,
                        help="largest batch apply body (413 past it)")
    parser.add_argument("--max-object-bytes", type=_positive, default=limits.MAX_OBJECT_BYTES,
                        help="largest object as stored, status included (413 past it)")
    args = parser.parse_args(argv)
    try:
        run_apiserver(args.state_dir, args.tcp, tls=args.tls, pod_connector=pod_connector, max_events=args.max_events,
                      event_limits=EventLimits(ttl=args.event_ttl),
                      max_request_bytes=args.max_request_bytes, max_apply_bytes=args.max_apply_bytes,
                      max_object_bytes=args.max_object_bytes)
    except ApiError as exc:
        print(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
