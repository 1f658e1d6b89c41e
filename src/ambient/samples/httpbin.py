"""An httpbin-like HTTP server for demos and tests: `ambient-httpbin [--port 8080] [--host ::]`.

Endpoints (JSON unless noted):
  /            who answered: pod name, namespace, version (from POD_NAME / POD_NAMESPACE / VERSION env)
  /get         method, url, args, headers, origin (the client address this server saw)
  /headers     the request headers
  /ip          {"origin": "<client ip>"} - in the mesh this proves the app sees the real client pod IP
  /status/N    an empty response with status N
  /delay/N     answers after N seconds (capped at 10)
  /bytes/N     N random bytes (application/octet-stream, capped at 100 MiB)
  /stream/N    N JSON lines, one per chunk (capped at 100)
The server binds every IPv4 and IPv6 address by default and logs one line per request to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
from typing import Any

from aiohttp import web

MAX_BYTES = 100 * 1024 * 1024
MAX_DELAY_S = 10.0
MAX_STREAM_LINES = 100


def _origin(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return ""
    host = str(peer[0])
    return host.removeprefix("::ffff:")


# the name `make_app` was given (an outside host's), else the pod's from its env
POD_NAME_KEY = web.AppKey("pod_name", str)


def _who(request: web.Request) -> dict[str, str]:
    return {
        "pod": request.app.get(POD_NAME_KEY) or os.environ.get("POD_NAME", socket.gethostname()),
        "namespace": os.environ.get("POD_NAMESPACE", ""),
        "version": os.environ.get("VERSION", ""),
    }


def _int_arg(request: web.Request, name: str, low: int, high: int) -> int:
    raw = request.match_info[name]
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer, got {raw!r}\n") from None
    if not low <= value <= high:
        raise web.HTTPBadRequest(text=f"{name} must be between {low} and {high}, got {value}\n")
    return value


async def index(request: web.Request) -> web.Response:
    return web.json_response(_who(request))


async def get(request: web.Request) -> web.Response:
    body: dict[str, Any] = {
        "method": request.method,
        "url": str(request.url),
        "args": dict(request.query),
        "headers": dict(request.headers),
        "origin": _origin(request),
        **_who(request),
    }
    return web.json_response(body)


async def headers(request: web.Request) -> web.Response:
    return web.json_response({"headers": dict(request.headers)})


async def ip(request: web.Request) -> web.Response:
    return web.json_response({"origin": _origin(request)})


async def status(request: web.Request) -> web.Response:
    code = _int_arg(request, "code", 100, 599)
    return web.Response(status=code)


async def delay(request: web.Request) -> web.Response:
    seconds = min(float(_int_arg(request, "n", 0, 3600)), MAX_DELAY_S)
    await asyncio.sleep(seconds)
    return web.json_response({"delay": seconds, "origin": _origin(request)})


async def random_bytes(request: web.Request) -> web.Response:
    n = _int_arg(request, "n", 0, MAX_BYTES)
    return web.Response(body=os.urandom(n), content_type="application/octet-stream")


async def stream(request: web.Request) -> web.StreamResponse:
    n = _int_arg(request, "n", 0, MAX_STREAM_LINES)
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    for i in range(n):
        line = json.dumps({"id": i, "origin": _origin(request)}) + "\n"
        await response.write(line.encode())
    await response.write_eof()
    return response


@web.middleware
async def access_log(request: web.Request, handler: Any) -> web.StreamResponse:
    response = await handler(request)
    print(f'{_origin(request)} "{request.method} {request.path_qs}" {response.status}', flush=True)
    return response


def make_app(pod_name: str | None = None) -> web.Application:
    app = web.Application(middlewares=[access_log])
    if pod_name:
        app[POD_NAME_KEY] = pod_name
    app.add_routes(
        [
            web.get("/", index),
            web.route("*", "/get", get),
            web.get("/headers", headers),
            web.get("/ip", ip),
            web.route("*", "/status/{code}", status),
            web.get("/delay/{n}", delay),
            web.get("/bytes/{n}", random_bytes),
            web.get("/stream/{n}", stream),
        ]
    )
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ambient-httpbin", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    # asyncio marks AF_INET6 listeners IPV6_V6ONLY, so "::" would miss IPv4 clients: the default (None)
    # binds every address of both families instead.
    parser.add_argument("--host", default=None, help="address to bind (default: all, IPv4 and IPv6)")
    args = parser.parse_args(argv)
    print(f"httpbin listening on {args.host or '*'}:{args.port}", flush=True)
    web.run_app(make_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
