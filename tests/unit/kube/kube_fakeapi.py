"""A scripted Kubernetes API server on 127.0.0.1 for contract tests of `ambient.kube`.

It serves recorded API responses (tests/unit/kube/recorded/*.json) the way kube-apiserver does: list
responses (paged when `limit` is smaller than the list), watch streams (one JSON event per line, ended by
the server like a `timeoutSeconds` expiry), error `Status` objects, TokenReviews, single objects,
creates (POST to a collection, 409 if the name exists), updates (PUT, 409 on a stale resourceVersion) and
merge patches. Every request is logged so tests can assert what the client sent (query parameters, the
bearer token, the content type of a patch).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

RECORDED = Path(__file__).parent / "recorded"
TOKEN = "test-token-of-the-controlplane"  # the bearer token of the kubeconfig the tests use
Obj = dict[str, Any]


def recorded(name: str) -> Obj:
    return json.loads((RECORDED / f"{name}.json").read_text())  # type: ignore[no-any-return]


def write_kubeconfig(path: Path, server: str, token: str = TOKEN) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "cp", "user": {"token": token}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "cp"}}],
                "current-context": "fake",
            }
        )
    )
    return path


def status(code: int, reason: str, message: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _truthy(value: str | None) -> bool:
    """Go's strconv.ParseBool, as kube-apiserver parses query flags (the Python client sends "True")."""
    return (value or "").lower() in ("1", "t", "true")


def event(etype: str, obj: Obj) -> bytes:
    return json.dumps({"type": etype, "object": obj}).encode() + b"\n"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeKubeApi:
    """Scripts: `lists[path]` = answers for successive list calls (the last one repeats); `watches[path]` =
    successive watch answers: a list of event lines, or an int HTTP status (a Status body). A watch with no
    script left stays open (silent) until the server stops."""

    lists: dict[str, list[Obj | int]] = field(default_factory=dict)
    watches: dict[str, list[list[bytes] | int]] = field(default_factory=dict)
    objects: dict[str, Obj] = field(default_factory=dict)  # path -> object (GET / PATCH)
    token_reviews: dict[str, Obj] = field(default_factory=dict)  # token -> TokenReview answer
    forbidden: set[str] = field(default_factory=set)  # paths answering 403 (missing RBAC)
    log: list[Request] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _rv: int = 1000

    def requests(self, path: str, *, watch: bool | None = None) -> list[Request]:
        out = [r for r in self.log if r.path == path]
        if watch is not None:
            out = [r for r in out if _truthy(r.query.get("watch")) == watch]
        return out

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self._stop.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.log.append(Request(request.method, request.path, dict(request.query), dict(request.headers), body))
        path = request.path
        if path in self.forbidden:
            msg = f'forbidden: User "system:serviceaccount:ambient-system:x" cannot access {path}'
            return web.json_response(status(403, "Forbidden", msg), status=403)
        if request.method == "GET" and _truthy(request.query.get("watch")):
            return await self._watch(request, path)
        if request.method == "GET" and path in self.lists:
            return self._list(request, path)
        if request.method == "POST" and path == "/apis/authentication.k8s.io/v1/tokenreviews":
            spec = (body or {}).get("spec", {})
            answer = self.token_reviews.get(spec.get("token", ""))
            if answer is None:
                answer = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "spec": spec,
                          "status": {"user": {}, "error": "[invalid bearer token, square/go-jose: error in "
                                     "cryptographic primitive]"}}
            return web.json_response(answer, status=201)
        if request.method == "POST" and isinstance(body, dict) and (body.get("metadata") or {}).get("name"):
            target = f"{path}/{body['metadata']['name']}"  # create: POST to the collection
            if target in self.objects:
                msg = f'{path.rsplit("/", 1)[-1]} "{body["metadata"]["name"]}" already exists'
                return web.json_response(status(409, "AlreadyExists", msg), status=409)
            self.objects[target] = self._stored(body)
            return web.json_response(self.objects[target], status=201)
        if request.method == "PUT" and path in self.objects and isinstance(body, dict):
            current = self.objects[path]["metadata"].get("resourceVersion")
            sent = (body.get("metadata") or {}).get("resourceVersion")
            if sent != current:  # optimistic concurrency, as kube-apiserver does for an update
                msg = "the object has been modified; please apply your changes to the latest version and try again"
                return web.json_response(status(409, "Conflict", msg), status=409)
            self.objects[path] = self._stored(body)
            return web.json_response(self.objects[path])
        if path in self.objects:
            if request.method == "PATCH":
                patch = body or {}
                obj = self.objects[path]
                meta = obj.setdefault("metadata", {})
                for k, v in (patch.get("metadata") or {}).get("annotations", {}).items():
                    meta.setdefault("annotations", {})[k] = v
                return web.json_response(obj)
            if request.method == "GET":
                return web.json_response(self.objects[path])
        name = path.rsplit("/", 1)[-1]
        return web.json_response(status(404, "NotFound", f'pods "{name}" not found'), status=404)

    def _stored(self, body: Obj) -> Obj:
        """A created / replaced object as the server keeps it: a fresh resourceVersion (and a uid)."""
        self._rv += 1
        meta = dict(body.get("metadata") or {})
        meta["resourceVersion"] = str(self._rv)
        meta.setdefault("uid", f"uid-{self._rv}")
        return dict(body, metadata=meta)

    def _list(self, request: web.Request, path: str) -> web.Response:
        script = self.lists[path]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, int):
            return web.json_response(status(answer, "Expired", "too old resource version"), status=answer)
        limit = int(request.query.get("limit") or 0)
        start = int(request.query.get("continue") or 0)
        items = answer["items"]
        if limit and len(items) > limit:
            page = dict(answer, items=items[start : start + limit])
            meta = dict(answer["metadata"])
            if start + limit < len(items):
                meta["continue"] = str(start + limit)
                script.insert(0, answer)  # the next page comes from the same snapshot
            page["metadata"] = meta
            return web.json_response(page)
        return web.json_response(answer)

    async def _watch(self, request: web.Request, path: str) -> web.StreamResponse:
        if path not in self.watches and path not in self.lists:  # an unknown collection (CRD not installed)
            return web.json_response(status(404, "NotFound", "the server could not find the requested resource"),
                                     status=404)
        script = self.watches.get(path) or []
        if script and isinstance(script[0], int):
            code = script.pop(0)
            assert isinstance(code, int)
            return web.json_response(status(code, "Expired", "too old resource version: 1 (100)"), status=code)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if not script:
            await self._stop.wait()  # an idle watch: stays open until the test ends
            return resp
        lines = script.pop(0)
        assert isinstance(lines, list)
        for line in lines:
            await resp.write(line)
            await asyncio.sleep(0)
        await resp.write_eof()  # the server ends the watch (timeoutSeconds)
        return resp
