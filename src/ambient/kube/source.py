"""The Kubernetes object source: list+watch of the mesh's kinds through kubernetes-asyncio.

Role: give the control plane and the node agent the same objects the local cluster API gives them,
from a real Kubernetes API server. It implements `ambient.controlplane.source.ObjectSource`, so
`ambient.api.informer.inform(KubeSource(...), kind, ...)` is the informer (list -> replace, watch, resume,
re-list on 410):
- `list(kind)` -> (items, resourceVersion) and `watch(kind, rv)` -> async iterator of
  `ambient.api.client.WatchEvent`: the same contract as the local `AsyncApiClient.list/watch` (a too-old
  version raises `KubeGoneError`, which is also the local API's `GoneError`; a lost connection
  `KubeUnavailableError`, also an `UnavailableError`). Optional namespace / label / field selectors
  (the node agent watches `spec.nodeName=<node>` pods).
- `get` / `patch` for the node agent (read a pod, set its status annotation) and the CA (read the pod a
  token is bound to).

Invariants:
- Objects are the API's own camelCase JSON (every request uses `_preload_content=False`), normalized
  only by `normalize`: `apiVersion`/`kind` filled in (list items lack them), `metadata.managedFields`
  dropped (bulky, never read). Nothing else is renamed, so the translation code sees exactly what the
  local source gives it.
- Watches ask for BOOKMARKs (`allowWatchBookmarks`), whose resourceVersion lets the caller resume after an
  ordinary watch timeout without a re-list; 410 Gone (as an HTTP status or as an ERROR event in the
  stream) raises `KubeGoneError`. The library's own `Watch` helper is not used: it retries a 410 with the
  same stale version, and turns objects into models.
- Watch lines are split by this module, not by aiohttp's `readline` (which refuses lines > 128 KiB, and
  large objects do exist).
- A custom kind whose CRD is not installed (404 on the collection; e.g. no Gateway API CRDs) is an empty
  list, and its watch waits `missing_crd_poll` seconds and ends; once the CRD appears, the next watch
  (from version "") delivers the existing objects as ADDED events. A cluster without optional CRDs thus
  never blocks a consumer that waits for every kind to sync.
- API errors are `KubeApiError`s carrying the HTTP status and the API's own message; transport failures
  are `KubeUnavailableError`s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from ambient.api.client import WatchEvent
from ambient.kube.errors import KubeApiError, KubeConfigError, KubeGoneError, KubeUnavailableError
from ambient.kube.resources import Call, Resource, get_call, list_call, patch_call, resource

log = logging.getLogger(__name__)

Obj = dict[str, Any]

LIST_PAGE_SIZE = 500
DEFAULT_WATCH_TIMEOUT = 300.0  # server-side end of one watch call
MISSING_CRD_POLL = 30.0
REQUEST_TIMEOUT = 30.0


def normalize(res: Resource, obj: Obj) -> Obj:
    """The object as the local API would hold it (see module invariants). Does not modify `obj`."""
    out = dict(obj)
    out.setdefault("apiVersion", res.api_version)
    out.setdefault("kind", res.kind)
    meta = out.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        out["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    return out


def _status_error(status: int, body: bytes, what: str) -> KubeApiError:
    """Map an error answer (ideally a `Status` object) to our error, keeping the API's own message."""
    message = body.decode(errors="replace").strip()[:300]
    reason = ""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            message = str(parsed.get("message") or message)
            reason = str(parsed.get("reason") or "")
    except ValueError:
        pass
    text = f"{what}: HTTP {status}{' ' + reason if reason else ''}: {message}"
    if status == 410:
        return KubeGoneError(text, hint="list again and watch from the list's resourceVersion", status=410)
    hint = None
    if status in (401, 403):
        hint = "check the ClusterRole/ClusterRoleBinding of this component's service account (deploy/kubernetes)"
    elif status == 404:
        hint = "is the CRD installed? (kubectl get crd)" if "/apis/" in what else None
    return KubeApiError(text, hint=hint, status=status)


def _event_error(status_obj: Obj, what: str) -> KubeApiError:
    code = int(status_obj.get("code") or 500)
    return _status_error(code, json.dumps(status_obj).encode(), what)


async def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> k8s.ApiClient:
    """An API client from the pod's service account (in-cluster) or from a kubeconfig file.

    In-cluster is chosen when no kubeconfig is given and `KUBERNETES_SERVICE_HOST` is set; the client then
    re-reads the (rotating, projected) token file by itself.
    """
    cfg = k8s.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=cfg)
        else:
            await k8s_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    except Exception as exc:  # the library raises ConfigException, FileNotFoundError, yaml errors ...
        raise KubeConfigError(
            f"no usable Kubernetes configuration: {exc}",
            hint="run inside a pod with a service account, or pass a kubeconfig (KUBECONFIG)",
        ) from exc
    return k8s.ApiClient(configuration=cfg)


class KubeSource:
    """List, watch, get and patch Kubernetes objects as plain dicts (see module docstring)."""

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        watch_timeout: float = DEFAULT_WATCH_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        page_size: int = LIST_PAGE_SIZE,
        missing_crd_poll: float = MISSING_CRD_POLL,
    ) -> None:
        self.api = api
        self.missing_crd_poll = missing_crd_poll
        self._missing: set[str] = set()  # custom kinds whose CRD was absent at the last list
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self.page_size = page_size

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, context: str | None = None, **kw: Any) -> KubeSource:
        return cls(await load_api_client(kubeconfig, context), **kw)

    async def aclose(self) -> None:
        await self.api.close()

    async def __aenter__(self) -> KubeSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ requests
    async def _open(self, call: Call, what: str, deadline: aiohttp.ClientTimeout | float, **kw: Any) -> Any:
        """Issue one request; return the open aiohttp response (status < 400) or raise KubeApiError."""
        try:
            resp = await call(_preload_content=False, _request_timeout=deadline, **kw)
        except ApiException as exc:  # raised by the library before any I/O (bad arguments)
            raise KubeApiError(f"{what}: {exc.reason}", status=exc.status or None) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubeUnavailableError(
                f"{what}: Kubernetes API not reachable: {exc or type(exc).__name__}",
                hint="check the API server address and the network policy towards it",
            ) from exc
        if resp.status >= 400:
            try:
                body = await resp.read()
            finally:
                resp.release()
            raise _status_error(resp.status, body, what)
        return resp

    async def request_json(self, call: Call, what: str, **kw: Any) -> Obj:
        """One request with a JSON object answer (`call` is a bound library method); errors as `_open`."""
        resp = await self._open(call, what, self.request_timeout, **kw)
        try:
            body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeUnavailableError(f"{what}: connection lost while reading the answer: {exc}") from exc
        finally:
            resp.release()
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise KubeApiError(f"{what}: the API sent invalid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise KubeApiError(f"{what}: expected a JSON object, got {type(obj).__name__}")
        return obj

    # ------------------------------------------------------------------ list / get / patch
    async def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[Obj], str]:
        """All objects of `kind` (paged) and the list's resourceVersion to watch from."""
        res = resource(kind)
        call = list_call(self.api, res, namespace)
        what = f"list {res.plural}"
        selectors = {k: v for k, v in (("label_selector", label_selector), ("field_selector", field_selector)) if v}
        for _attempt in range(3):
            items: list[Obj] = []
            cont: str | None = None
            try:
                while True:
                    kw: dict[str, Any] = dict(selectors, limit=self.page_size)
                    if cont:
                        kw["_continue"] = cont
                    page = await self.request_json(call, what, **kw)
                    items.extend(normalize(res, o) for o in page.get("items") or [])
                    meta = page.get("metadata") or {}
                    cont = meta.get("continue")
                    if not cont:
                        self._missing.discard(kind)
                        return items, str(meta.get("resourceVersion") or "")
            except KubeGoneError:
                # the continue token expired between pages: a consistent list must start over
                log.info("%s: continue token expired, listing again from the start", what)
            except KubeApiError as exc:
                if exc.http_status == 404 and res.typed is None:
                    if kind not in self._missing:
                        log.warning("%s: CRD %s.%s not installed; treating it as empty until it is",
                                    what, res.plural, res.group)
                    self._missing.add(kind)
                    return [], ""
                raise
        raise KubeApiError(f"{what}: the list kept expiring between pages", hint="lower the page size")

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Obj:
        res = resource(kind)
        what = f"get {res.plural} {namespace + '/' if namespace and res.namespaced else ''}{name}"
        return normalize(res, await self.request_json(get_call(self.api, res, name, namespace), what))

    async def patch(self, kind: str, name: str, namespace: str | None, patch: Obj) -> Obj:
        """A JSON merge patch (RFC 7386), e.g. `{"metadata": {"annotations": {k: v}}}`."""
        res = resource(kind)
        what = f"patch {res.plural} {namespace + '/' if namespace and res.namespaced else ''}{name}"
        call = patch_call(self.api, res, name, namespace)
        answer = await self.request_json(call, what, body=patch, _content_type="application/merge-patch+json")
        return normalize(res, answer)

    # ------------------------------------------------------------------ watch
    async def watch(
        self,
        kind: str,
        resource_version: str | None,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the watch's duration, sent to the server
    ) -> AsyncGenerator[WatchEvent, None]:
        """Events after `resource_version` until the server ends the watch (iteration then ends).

        Raises `KubeGoneError` when the version is too old, `KubeApiError` when the stream breaks.
        Close it with `contextlib.aclosing` when leaving early.
        """
        res = resource(kind)
        what = f"watch {res.plural}"
        duration = self.watch_timeout if timeout is None else timeout
        kw: dict[str, Any] = {"watch": True, "allow_watch_bookmarks": True, "timeout_seconds": max(1, int(duration))}
        if resource_version:
            kw["resource_version"] = resource_version
        if label_selector:
            kw["label_selector"] = label_selector
        if field_selector:
            kw["field_selector"] = field_selector
        # No total timeout: the server ends the watch after timeout_seconds; a read silence much longer than
        # that means a dead connection.
        client_timeout = aiohttp.ClientTimeout(
            total=None, connect=self.request_timeout, sock_connect=self.request_timeout, sock_read=duration + 60
        )
        try:
            resp = await self._open(list_call(self.api, res, namespace), what, client_timeout, **kw)
        except KubeApiError as exc:
            if exc.http_status == 404 and res.typed is None:  # CRD not installed: look again later
                await asyncio.sleep(self.missing_crd_poll)
                return
            raise
        try:
            buf = b""
            try:
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    if b"\n" not in chunk:
                        continue
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        event = self._event(res, line, what)
                        if event is not None:
                            yield event
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise KubeUnavailableError(f"{what}: stream broken: {exc or type(exc).__name__}") from exc
            if buf.strip():
                event = self._event(res, buf, what)
                if event is not None:
                    yield event
        finally:
            resp.close()  # never pool a watch connection: it may be left mid-stream

    @staticmethod
    def _event(res: Resource, line: bytes, what: str) -> WatchEvent | None:
        if not line.strip():
            return None
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise KubeApiError(f"{what}: malformed watch event: {exc}") from exc
        etype = str(raw.get("type") or "")
        obj = raw.get("object")
        if not isinstance(obj, dict):
            raise KubeApiError(f"{what}: watch event without an object: {line[:200]!r}")
        if etype == "ERROR":
            raise _event_error(obj, what)
        if etype not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            log.warning("%s: ignoring unknown watch event type %r", what, etype)
            return None
        return WatchEvent(etype, normalize(res, obj))
