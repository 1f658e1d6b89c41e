"""The dashboard's HTTP server (aiohttp, bound to loopback by default).

    GET /                   the page (static/index.html; app.js and app.css beside it, nothing external)
    GET /api/snapshot       the current view (model.snapshot) as JSON
    GET /events             server-sent events: one `snapshot` event per `interval` seconds
    GET /api/trace/{id}     one connection's trace (runtime.trace.assemble) as JSON, 404 when not logged

Sources: access lines kept in an `EntryStore` for `window` seconds (at most `max_entries`); a trace stays
available while any of its lines is kept. The local cluster's store is a `LogSource`: the log files of the
node proxies and pods (`<state>/logs`), read incrementally (new bytes only; a file that shrank, rotated or
recreated, is read again from its start). On a Kubernetes install `dashboard.kubernetes` streams the same
lines with `kubectl logs -f` into a plain `EntryStore`. AuthorizationPolicies come from `policies` when
given; `status` adds what the sources report about themselves (the `sources` rows of the snapshot:
`dashboard.local` on the local cluster, `dashboard.kubernetes` on a Kubernetes install).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ambient.dashboard.model import entry_time, policy_rows, snapshot
from ambient.runtime.accesslog import DNS_MESSAGE
from ambient.runtime.trace import AccessEntry, assemble, parse_lines

STATIC = Path(__file__).with_name("static")
_CONTENT_TYPES = {".html": "text/html", ".js": "application/javascript", ".css": "text/css"}


class EntryStore:
    """Access lines of the last `window` seconds (at most `max_entries`), indexed by trace id."""

    def __init__(self, *, window: float = 60.0, max_entries: int = 20000) -> None:
        self.window = window
        self.entries: deque[AccessEntry] = deque(maxlen=max_entries)
        self.all_by_trace: dict[str, list[AccessEntry]] = {}

    def poll(self) -> int:
        """Bring the store up to date (a pushed-to store has nothing to read); returns new lines."""
        self._expire(time.time())
        return 0

    def add(self, entries: list[AccessEntry]) -> None:
        for e in entries:
            if len(self.entries) == self.entries.maxlen:  # full: the oldest goes, from the index too
                self._forget(self.entries.popleft())
            self.entries.append(e)
            if e.trace_id:
                self.all_by_trace.setdefault(e.trace_id, []).append(e)

    def _expire(self, now: float) -> None:
        while self.entries and entry_time(self.entries[0]) < now - self.window:
            self._forget(self.entries.popleft())

    def _forget(self, old: AccessEntry) -> None:
        """Drop one expired line from its trace's list; the trace goes only with its last line (a connection
        whose newer hops are still in the window stays traceable)."""
        lines = self.all_by_trace.get(old.trace_id)
        if lines is None:
            return
        for i, e in enumerate(lines):
            if e is old:
                del lines[i]
                break
        if not lines:
            del self.all_by_trace[old.trace_id]


class LogSource(EntryStore):
    """Access lines of every log file under `log_dir` (node proxies: ztunnel*.log; pods: pods/*.log)."""

    def __init__(self, log_dir: Path, *, window: float = 60.0, max_entries: int = 20000) -> None:
        super().__init__(window=window, max_entries=max_entries)
        self.log_dir = log_dir
        self._offsets: dict[Path, int] = {}
        self.lines_read: dict[Path, int] = {}  # access lines read from each file since the start (the sources rows)

    def files(self) -> list[Path]:
        """The log files read: the node proxies' (ztunnel*.log), then the pods' (pods/*.log)."""
        files = sorted(self.log_dir.glob("ztunnel*.log"))
        pods = self.log_dir / "pods"
        if pods.is_dir():
            files += sorted(pods.glob("*.log"))
        return files

    def poll(self) -> int:
        """Read what was appended since the last poll; returns the number of new access lines."""
        new = 0
        for f in self.files():
            try:
                size = f.stat().st_size
                start = self._offsets.get(f, 0)
                if size < start:
                    start = 0
                if size == start:
                    continue
                with f.open("rb") as fh:
                    fh.seek(start)
                    data = fh.read(size - start)
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # a line still being written is read next time
            self._offsets[f] = start + end
            component = f.stem if f.parent.name != "pods" else f"pod {f.stem}"
            parsed = parse_lines(component, data[:end].decode(errors="replace").splitlines())
            self.add(parsed)
            self.lines_read[f] = self.lines_read.get(f, 0) + len(parsed)
            new += len(parsed)
        self._expire(time.time())
        return new


PolicySource = Callable[[], list[dict[str, Any]]]
StatusSource = Callable[[], list[dict[str, Any]]]


def build_app(source: EntryStore, *, policies: PolicySource | None = None, status: StatusSource | None = None,
              interval: float = 1.0) -> web.Application:
    app = web.Application()
    cached: dict[str, Any] = {"policies": [], "at": 0.0}

    def current() -> dict[str, Any]:
        source.poll()
        now = time.time()
        if policies is not None and now - cached["at"] > 5:
            try:
                cached["policies"] = policy_rows(policies())
            except Exception as exc:  # the API server may be down: the page says so, the graph still works
                cached["policies"] = [{"namespace": "", "name": f"(policies unavailable: {exc})",
                                       "action": "", "applies_to": ""}]
            cached["at"] = now
        snap = snapshot(list(source.entries), now, window=source.window, policies=cached["policies"])
        snap["sources"] = status() if status is not None else []
        return snap

    async def index(_request: web.Request) -> web.Response:
        return web.Response(body=(STATIC / "index.html").read_bytes(), content_type="text/html")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or path.suffix not in _CONTENT_TYPES or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type=_CONTENT_TYPES[path.suffix])

    async def api_snapshot(_request: web.Request) -> web.Response:
        return web.json_response(current())

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(f"event: snapshot\ndata: {json.dumps(current())}\n\n".encode())
                await asyncio.sleep(interval)
        except ConnectionResetError:  # the page went away; a cancellation (shutdown) propagates
            pass
        return resp

    async def api_trace(request: web.Request) -> web.Response:
        trace_id = request.match_info["trace_id"]
        source.poll()
        entries = source.all_by_trace.get(trace_id)
        if not entries:
            raise web.HTTPNotFound(text=json.dumps({"error": f"no access line carries trace id {trace_id}"}),
                                   content_type="application/json")
        # the DNS proxy's answers carry no trace id: the assembler picks the one that gave this destination
        answers = [e for e in source.entries if e.message == DNS_MESSAGE]
        return web.json_response(assemble(trace_id, [*entries, *answers]).to_json())

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/snapshot", api_snapshot)
    app.router.add_get("/events", events)
    app.router.add_get("/api/trace/{trace_id:[0-9a-f]{32}}", api_trace)
    return app


async def serve(app: web.Application, host: str, port: int, ready: Callable[[str], None] | None = None) -> None:
    """Serve until cancelled; `ready` gets the URL once listening (port 0: an ephemeral port)."""
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        if ready is not None:
            ready(f"http://{host}:{bound}/")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
