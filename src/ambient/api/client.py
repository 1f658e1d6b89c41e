"""The client of the cluster API: the ONE place components (CLI, cluster, control plane, node agent) talk to it.

`ApiClient` is synchronous (CLI, scripts), `AsyncApiClient` the same API as coroutines. Both speak HTTP+JSON
over the API server's Unix socket (or TCP when given an `http://host:port` URL).

Invariants:
- Requests are built by pure helpers shared by both clients (`_path`, `_Call`), so the two cannot drift.
- A server error comes back as the same `ApiError` subclass, message and hint the server raised; a transport
  failure (no socket, connection reset, timeout) is an `UnavailableError` with a hint.
- `Warning` response headers (e.g. `unknown field "spec.foo"` for a fieldValidation=Warn write) go to the
  client's `on_warning` callback (default: logged), as client-go hands them to its warning handler.
- `field_validation` (Strict, Warn, Ignore) is sent as the `fieldValidation` query parameter on writes;
  None sends nothing, and the server's default (Strict) applies.
- `AsyncApiClient` reads the Unix socket through asyncio streams (`_UnixStreams`), where cancelling a read -
  how every component stops its watches - is safe even while the next event arrives.
- A watch never reconnects by itself: when the stream ends (timeout, server stop) iteration ends; when it
  breaks, `UnavailableError` is raised; a too-old version raises `GoneError`. The caller re-lists or resumes
  from the last version it saw (`WatchEvent.resource_version`, BOOKMARKs included).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpcore
import httpx

from ambient.api.errors import (
    AlreadyExistsError,
    ApiError,
    ConflictError,
    GoneError,
    NotFoundError,
    TooLargeError,
    UnavailableError,
    UnknownKindError,
    ValidationError,
)
from ambient.api.kinds import KindInfo, kind_for_manifest, resolve_kind

Obj = dict[str, Any]

_ERRORS_BY_REASON: dict[str, type[ApiError]] = {
    cls.reason: cls
    for cls in (
        UnknownKindError,
        ValidationError,
        NotFoundError,
        AlreadyExistsError,
        ConflictError,
        GoneError,
        UnavailableError,
        TooLargeError,
    )
}
_ERRORS_BY_REASON["BadRequest"] = ValidationError  # malformed request (server's BadRequestError)
_UNAVAILABLE_HINT = "is the cluster running? `ambient cluster list`"
log = logging.getLogger("ambient.api.client")
_WARNING = re.compile(r'^\s*\d{3}\s+\S+\s+"((?:[^"\\]|\\.)*)"')


def parse_warning(value: str) -> str:
    """The text of one `Warning` header (`299 - "text"`, RFC 7234); the raw value if it is not of that form."""
    match = _WARNING.match(value)
    if match is None:
        return value.strip()
    return re.sub(r"\\(.)", r"\1", match.group(1))


def _log_warning(text: str) -> None:
    log.warning("API server warning: %s", text)


# Read timeout of a watch stream: the server sends a BOOKMARK every few seconds when idle, so a silent
# stream this long means a dead connection.
WATCH_IDLE_TIMEOUT = 60.0


def default_state_dir(cluster: str | None = None) -> Path:
    env = os.environ.get("AMBIENT_STATE_DIR")
    if env:
        return Path(env)
    return Path("/var/lib/ambient") / (cluster or os.environ.get("AMBIENT_CLUSTER") or "ambient")


def default_socket_path(cluster: str | None = None) -> Path:
    """`<state dir>/apiserver.sock`; state dir = $AMBIENT_STATE_DIR or /var/lib/ambient/<cluster>."""
    return default_state_dir(cluster) / "apiserver.sock"


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK
    object: Obj = field(default_factory=dict)

    @property
    def resource_version(self) -> str:
        return str((self.object.get("metadata") or {}).get("resourceVersion", ""))


def _path(info: KindInfo, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    base = "/api/v1" if not info.group else f"/apis/{info.group}/{info.version}"
    if info.namespaced and namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{info.plural}"
    if name is not None:
        base += f"/{name}"
    if sub is not None:
        base += f"/{sub}"
    return base


def _object_path(obj: Obj, sub: str | None = None, item: bool = True) -> str:
    if not isinstance(obj, dict):
        raise ValidationError(f"expected an object (mapping), got {type(obj).__name__}")
    info = kind_for_manifest(obj.get("apiVersion"), obj.get("kind"))
    meta = obj.get("metadata") or {}
    if item and not meta.get("name"):
        raise ValidationError("metadata.name: required")
    ns = (meta.get("namespace") or "default") if info.namespaced else None
    return _path(info, ns, meta.get("name") if item else None, sub)


def error_from_status(status_code: int, body: bytes) -> ApiError:
    """Map a server error response (a k8s Status) back to the ApiError the server raised."""
    try:
        status = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        status = None
    if not isinstance(status, dict) or status.get("kind") != "Status":
        text = body.decode(errors="replace").strip()[:200]
        exc = ApiError(f"API server answered HTTP {status_code}: {text}")
        exc.status = status_code
        return exc
    cls = _ERRORS_BY_REASON.get(str(status.get("reason")), ApiError)
    exc = cls(str(status.get("message") or f"HTTP {status_code}"), hint=status.get("hint"))
    if cls is ApiError:
        exc.status = int(status.get("code") or status_code)
        exc.reason = str(status.get("reason") or exc.reason)
    return exc


@dataclass
class _Call:
    """One request, described without I/O."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: Any = None
    content_type: str = "application/json"

    def content(self) -> bytes | None:
        if self.body is None:
            return None
        return json.dumps(self.body, separators=(",", ":")).encode()


def _list_call(kind: str, namespace: str | None, label_selector: str | None, field_selector: str | None) -> _Call:
    params: dict[str, str] = {}
    if label_selector:
        params["labelSelector"] = label_selector
    if field_selector:
        params["fieldSelector"] = field_selector
    return _Call("GET", _path(resolve_kind(kind), namespace), params)


def _watch_call(
    kind: str,
    namespace: str | None,
    resource_version: str | None,
    label_selector: str | None,
    field_selector: str | None,
    timeout: float | None,
) -> _Call:
    call = _list_call(kind, namespace, label_selector, field_selector)
    call.params["watch"] = "1"
    call.params["allowWatchBookmarks"] = "true"  # idle BOOKMARKs keep the stream's read timeout from firing
    if resource_version:
        call.params["resourceVersion"] = str(resource_version)
    if timeout:
        call.params["timeoutSeconds"] = str(timeout)
    return call


def _item_ns(kind: str, namespace: str | None) -> tuple[KindInfo, str | None]:
    info = resolve_kind(kind)
    return info, ((namespace or "default") if info.namespaced else None)


def _parse_event(line: str) -> WatchEvent | None:
    if not line.strip():
        return None
    data = json.loads(line)
    if data.get("type") == "ERROR":
        obj = data.get("object") or {}
        raise error_from_status(int(obj.get("code") or 500), json.dumps(obj).encode())
    return WatchEvent(str(data.get("type")), data.get("object") or {})


def _transport(socket_path: str | os.PathLike[str] | None) -> tuple[str, str | None]:
    """(base_url, uds path or None)."""
    target = os.fspath(socket_path) if socket_path is not None else str(default_socket_path())
    if target.startswith(("http://", "https://")):
        return target.rstrip("/"), None
    return "http://apiserver", target


def _write_call(method: str, path: str, body: Any, field_validation: str | None,
                content_type: str = "application/json", dry_run: bool = False) -> _Call:
    """A write; `dry_run`: the server runs it whole and answers the object as it would be, storing nothing."""
    params = {"fieldValidation": field_validation} if field_validation else {}
    if dry_run:
        params["dryRun"] = "All"
    return _Call(method, path, params, body=body, content_type=content_type)


class _Base:
    def __init__(self, socket_path: str | os.PathLike[str] | None, timeout: float,
                 on_warning: Callable[[str], None] | None) -> None:
        self.base_url, self.uds = _transport(socket_path)
        self.timeout = timeout
        self.where = self.uds or self.base_url
        self.on_warning = on_warning or _log_warning

    def _unavailable(self, exc: Exception) -> UnavailableError:
        what = type(exc).__name__
        return UnavailableError(f"cannot reach the API server at {self.where}: {what}: {exc}", hint=_UNAVAILABLE_HINT)

    def _decode(self, response: httpx.Response) -> Any:
        for value in response.headers.get_list("warning"):
            self.on_warning(parse_warning(value))
        if response.status_code >= 400:
            raise error_from_status(response.status_code, response.content)
        return response.json()


class ApiClient(_Base):
    """Synchronous client (see module docstring)."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None, timeout: float = 30.0,
                 on_warning: Callable[[str], None] | None = None) -> None:
        super().__init__(socket_path, timeout, on_warning)
        transport = httpx.HTTPTransport(uds=self.uds) if self.uds else httpx.HTTPTransport()
        self._http = httpx.Client(transport=transport, base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: _Call) -> Any:
        try:
            response = self._http.request(
                call.method,
                call.path,
                params=call.params,
                content=call.content(),
                headers={"Content-Type": call.content_type} if call.body is not None else None,
            )
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None
        return self._decode(response)

    def healthy(self) -> bool:
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def create(self, obj: Obj, *, field_validation: str | None = None, dry_run: bool = False) -> Obj:
        call = _write_call("POST", _object_path(obj, item=False), obj, field_validation, dry_run=dry_run)
        return self._send(call)  # type: ignore[no-any-return]

    def apply(self, obj: Obj, *, field_validation: str | None = None, dry_run: bool = False) -> tuple[Obj, str]:
        return self.apply_many([obj], field_validation=field_validation, dry_run=dry_run)[0]

    def apply_many(self, objs: list[Obj], *, field_validation: str | None = None,
                   dry_run: bool = False) -> list[tuple[Obj, str]]:
        """Create or update every object in ONE server transaction (all or nothing)."""
        result = self._send(_write_call("POST", "/ambient/v1/apply", {"items": objs}, field_validation,
                                              dry_run=dry_run))
        return [(item["object"], item["action"]) for item in result["items"]]

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj:
        info, ns = _item_ns(kind, namespace)
        return self._send(_Call("GET", _path(info, ns, name)))  # type: ignore[no-any-return]

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[Obj], str]:
        result = self._send(_list_call(kind, namespace, label_selector, field_selector))
        return result["items"], result["metadata"]["resourceVersion"]

    def update(self, obj: Obj, *, field_validation: str | None = None, dry_run: bool = False) -> Obj:
        return self._send(_write_call("PUT", _object_path(obj), obj, field_validation, dry_run=dry_run))  # type: ignore[no-any-return]

    def update_status(self, obj: Obj) -> Obj:
        return self._send(_Call("PUT", _object_path(obj, "status"), body=obj))  # type: ignore[no-any-return]

    def patch(self, kind: str, name: str, namespace: str | None, patch: Obj, *, status: bool = False,
              field_validation: str | None = None, dry_run: bool = False) -> Obj:
        info, ns = _item_ns(kind, namespace)
        call = _write_call("PATCH", _path(info, ns, name, "status" if status else None), patch, field_validation,
                           "application/merge-patch+json", dry_run=dry_run)
        return self._send(call)  # type: ignore[no-any-return]

    def delete(self, kind: str, name: str, namespace: str | None = None, *, dry_run: bool = False) -> Obj:
        info, ns = _item_ns(kind, namespace)
        return self._send(_Call("DELETE", _path(info, ns, name), {"dryRun": "All"} if dry_run else {}))  # type: ignore[no-any-return]

    def watch(
        self,
        kind: str,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: str | None = None,
        timeout: float | None = None,
        field_selector: str | None = None,
    ) -> Iterator[WatchEvent]:
        """Events after `resource_version` (None: ADDED for every current object first); ends after `timeout`."""
        call = _watch_call(kind, namespace, resource_version, label_selector, field_selector, timeout)
        try:
            with self._http.stream(
                "GET", call.path, params=call.params, timeout=httpx.Timeout(self.timeout, read=WATCH_IDLE_TIMEOUT)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_status(response.status_code, response.content)
                for line in response.iter_lines():
                    event = _parse_event(line)
                    if event is not None:
                        yield event
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None


class _UnixStream(httpcore.AsyncNetworkStream):
    """One connection to the API server's Unix socket, as an asyncio stream pair: the loop's transport reads
    the socket and hands bytes over through the reader's own waiter, so a read cancelled while data comes in
    leaves nothing behind (httpcore's default, anyio's raw-socket stream, registers `Future.set_result` as
    the socket's reader and, under uvloop, has it fire on the cancelled future: "Exception in callback")."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - httpcore's API
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._writer.close()  # not waiting for the close: httpcore closes from cancelled tasks too

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # httpcore asks before reusing an idle connection: has the server closed it?
            return self._reader.at_eof() or self._reader.exception() is not None
        return self._writer.get_extra_info(info)


class _UnixStreams(httpcore.AsyncNetworkBackend):
    """httpcore's network backend for the API server's Unix socket (`_UnixStream`); TCP is not used."""

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return _UnixStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _async_unix_transport(path: str) -> httpx.AsyncHTTPTransport:
    """httpx's transport on `path` whose connections are `_UnixStream`s (httpx takes no network backend: its
    connection pool is replaced by the same pool on ours)."""
    transport = httpx.AsyncHTTPTransport(uds=path)
    transport._pool = httpcore.AsyncConnectionPool(  # httpx's default limits, as its own pool has
        uds=path, network_backend=_UnixStreams(), max_connections=100, max_keepalive_connections=20,
        keepalive_expiry=5.0)
    return transport


class AsyncApiClient(_Base):
    """The same API as `ApiClient`, as coroutines; `watch` is an async iterator (close it with
    `contextlib.aclosing` when leaving it early). Use as `async with AsyncApiClient(path) as api:`."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None, timeout: float = 30.0,
                 on_warning: Callable[[str], None] | None = None) -> None:
        super().__init__(socket_path, timeout, on_warning)
        transport = _async_unix_transport(self.uds) if self.uds else httpx.AsyncHTTPTransport()
        self._http = httpx.AsyncClient(transport=transport, base_url=self.base_url, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncApiClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _send(self, call: _Call) -> Any:
        try:
            response = await self._http.request(
                call.method,
                call.path,
                params=call.params,
                content=call.content(),
                headers={"Content-Type": call.content_type} if call.body is not None else None,
            )
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None
        return self._decode(response)

    async def healthy(self) -> bool:
        try:
            return (await self._http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    async def create(self, obj: Obj, *, field_validation: str | None = None, dry_run: bool = False) -> Obj:
        call = _write_call("POST", _object_path(obj, item=False), obj, field_validation, dry_run=dry_run)
        return await self._send(call)  # type: ignore[no-any-return]

    async def apply(self, obj: Obj, *, field_validation: str | None = None, dry_run: bool = False) -> tuple[Obj, str]:
        return (await self.apply_many([obj], field_validation=field_validation, dry_run=dry_run))[0]

    async def apply_many(self, objs: list[Obj], *, field_validation: str | None = None,
                         dry_run: bool = False) -> list[tuple[Obj, str]]:
        result = await self._send(_write_call("POST", "/ambient/v1/apply", {"items": objs}, field_validation,
                                              dry_run=dry_run))
        return [(item["object"], item["action"]) for item in result["items"]]

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Obj:
        info, ns = _item_ns(kind, namespace)
        return await self._send(_Call("GET", _path(info, ns, name)))  # type: ignore[no-any-return]

    async def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[Obj], str]:
        result = await self._send(_list_call(kind, namespace, label_selector, field_selector))
        return result["items"], result["metadata"]["resourceVersion"]

    async def update(self, obj: Obj, *, field_validation: str | None = None, dry_run: bool = False) -> Obj:
        return await self._send(_write_call("PUT", _object_path(obj), obj, field_validation, dry_run=dry_run))  # type: ignore[no-any-return]

    async def update_status(self, obj: Obj) -> Obj:
        return await self._send(_Call("PUT", _object_path(obj, "status"), body=obj))  # type: ignore[no-any-return]

    async def patch(self, kind: str, name: str, namespace: str | None, patch: Obj, *, status: bool = False,
              field_validation: str | None = None, dry_run: bool = False) -> Obj:
        info, ns = _item_ns(kind, namespace)
        call = _write_call("PATCH", _path(info, ns, name, "status" if status else None), patch, field_validation,
                           "application/merge-patch+json", dry_run=dry_run)
        return await self._send(call)  # type: ignore[no-any-return]

    async def delete(self, kind: str, name: str, namespace: str | None = None, *, dry_run: bool = False) -> Obj:
        info, ns = _item_ns(kind, namespace)
        return await self._send(_Call("DELETE", _path(info, ns, name), {"dryRun": "All"} if dry_run else {}))  # type: ignore[no-any-return]

    async def watch(
        self,
        kind: str,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the watch's duration, sent to the server
        field_selector: str | None = None,
    ) -> AsyncIterator[WatchEvent]:
        call = _watch_call(kind, namespace, resource_version, label_selector, field_selector, timeout)
        try:
            async with self._http.stream(
                "GET", call.path, params=call.params, timeout=httpx.Timeout(self.timeout, read=WATCH_IDLE_TIMEOUT)
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_from_status(response.status_code, response.content)
                async for line in response.aiter_lines():
                    event = _parse_event(line)
                    if event is not None:
                        yield event
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None
