"""The pod subresources that reach into a running pod: `pods/log`, `pods/exec` and `pods/portforward`.

What a pod's runtime offers (its log file, a process started in its network namespace, a connection from
inside it) is supplied by a `PodConnector` that the cluster layer passes to the API server (the API package
knows objects and protocols, not network namespaces). Without one, these subresources answer 501.

Protocols (as kubectl 1.32 speaks them):
- `log`: `text/plain`, `container`, `sinceSeconds` / `sinceTime`, `tailLines`, `limitBytes`, `timestamps`, `follow` (new
  bytes until the pod is gone or the client leaves). A log file has no per-line timestamps of its own (the
  kubelet's CRI files do), so `since` goes by the time each line starts with (`line_time`: RFC 3339, or
  Python logging's `YYYY-MM-DD HH:MM:SS,mmm` in local time, also after the supervisor's `==== ` marker and
  as a JSON line's leading `"time"`); a line without one belongs with the line before it, and a file with
  no timestamped line at all is kept or dropped whole by its modification time. Order as the kubelet's:
  since, then tail, then the byte limit. `timestamps` prefixes each line with that time in RFC 3339 with
  nanoseconds (the kubelet's format, kubectl --timestamps); a line without one gets the line before it's
  (the first timed line's, or the file's modification time, before any), and a followed line without one
  the time it was read. `previous`: the container's previous run where the runtime can tell runs apart
  (`PreviousLogs`: a node component's log, split at the supervisor's start markers), else 400 as Kubernetes
  words it (`previous terminated container "x" in pod "y" not found`).
- `exec`: WebSocket with subprotocol `v5.channel.k8s.io` or `v4.channel.k8s.io` (kubectl's default since
  1.30; SPDY is not served, so kubectl's fallback ends in a clear error). Binary messages, first byte the
  channel: 0 stdin, 1 stdout, 2 stderr, 3 error (a `Status`, `NonZeroExitCode` with the exit code as its
  cause, which kubectl exits with), 4 resize; v5 adds 255 close (`[255, 0]`: stdin is done). With `tty`
  (kubectl -t) the command runs on a pseudo-terminal (stdout carries its output, stderr merged as on a
  terminal), and resize messages set its window size.
- `portforward`: see `ambient.api.portforward` (SPDY/3.1 tunnelled over WebSocket).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import fcntl
import json
import os
import re
import struct
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from ambient.api.errors import ApiError, ValidationError

Obj = dict[str, Any]
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
_FOLLOW_POLL = 0.25
_FOLLOW_CHECK = 2.0


class PodConnector(Protocol):
    """What the API server needs from the pod runtime (implemented by the cluster layer)."""

    def log_path(self, pod: Obj, container: str) -> Path: ...

    async def exec(
        self, pod: Obj, container: Obj, command: list[str], stdin: bool, tty: int | None = None
    ) -> asyncio.subprocess.Process:
        """A process started in the pod's network namespace with the container's environment; stdout and
        stderr piped (stdin piped when asked), or all three on the terminal `tty` (a pty slave fd) when given."""
        ...

    async def connect(self, pod: Obj, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to `port` of the pod, made from inside its network namespace."""
        ...


class PreviousLogs(Protocol):
    """Optional part of a `PodConnector`: the output of a container's previous run, when the runtime can
    tell the runs apart."""

    def previous_log(self, pod: Obj, container: str) -> bytes | None:
        """The previous run's output; None when there was none (or it cannot be told apart)."""
        ...


class NotImplementedApiError(ApiError):
    status = 501
    reason = "NotImplemented"


class UpgradeRequiredError(ApiError):
    status = 400
    reason = "BadRequest"


def pick_container(pod: Obj, name: str | None) -> Obj:
    """The container a request means: the named one, else the only one, else the
    `kubectl.kubernetes.io/default-container` one; errors as Kubernetes words them."""
    containers = [c for c in (pod.get("spec") or {}).get("containers") or [] if isinstance(c, dict)]
    pod_name = (pod.get("metadata") or {}).get("name")
    if name:
        for c in containers:
            if c.get("name") == name:
                return c
        raise ValidationError(f"container {name} is not valid for pod {pod_name}")
    if len(containers) == 1:
        return containers[0]
    default = ((pod.get("metadata") or {}).get("annotations") or {}).get("kubectl.kubernetes.io/default-container")
    for c in containers:
        if c.get("name") == default:
            return c
    names = " ".join(str(c.get("name")) for c in containers)
    raise ValidationError(f"a container name must be specified for pod {pod_name}, choose one of: [{names}]")


def _int_param(query: Any, key: str) -> int | None:
    text = query.get(key)
    if text in (None, ""):
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValidationError(f"{key}: expected an integer, got {text!r}") from None
    if value < 0:
        raise ValidationError(f"{key}: must be >= 0")
    return value


_LINE_TIME = re.compile(
    rb'(?:==== |\{"time": ?")?(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?(Z|[+-]\d\d:?\d\d)?')


def line_time(line: bytes) -> float | None:
    """The time (epoch seconds) a log line starts with, or None. A zone (`Z`, `+02:00`) is honoured; without
    one the time is local (Python logging's asctime), as the writing process on this machine saw it."""
    m = _LINE_TIME.match(line)
    if m is None:
        return None
    year, month, day, hour, minute, sec = (int(g) for g in m.groups()[:6])
    frac = float(b"0." + m[7]) if m[7] else 0.0
    try:
        if m[8] is None:
            return time.mktime((year, month, day, hour, minute, sec, 0, 0, -1)) + frac
        stamp = calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0)) + frac
    except (OverflowError, ValueError):
        return None
    zone = m[8]
    if zone != b"Z":
        sign = -1 if zone[:1] == b"+" else 1
        digits = zone[1:].replace(b":", b"")
        stamp += sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return stamp


def since_offset(data: bytes, since: float, mtime: float) -> int:
    """Where the lines written at or after `since` begin in `data` (len(data): none). See the module
    docstring: lines without a time go with the timed line before them (a traceback with its record), lines
    before the first timed one with it; without any timed line the file's `mtime` decides for all of it.
    Walks back from the end, so asking for the recent lines of a long log reads only those."""
    end = len(data)
    cut, pos, timed = end, end, False
    stop = end
    while stop > 0:
        start = data.rfind(b"\n", 0, stop - 1) + 1 if stop > 1 else 0
        line = data[start:stop]
        stop = pos = start
        t = line_time(line)
        if t is None:
            continue
        timed = True
        if t < since:
            return cut
        cut = pos
    if timed:
        return 0
    return 0 if mtime >= since else end


def parse_since(query: Any, now: float) -> float | None:
    """`sinceSeconds` / `sinceTime` as an epoch time (None: all), with Kubernetes' validation messages."""
    seconds, stamp = query.get("sinceSeconds"), query.get("sinceTime")
    if seconds not in (None, "") and stamp not in (None, ""):
        raise ValidationError("at most one of sinceTime or sinceSeconds may be specified")
    if seconds not in (None, ""):
        try:
            value = int(seconds)
        except ValueError:
            raise ValidationError(f"sinceSeconds: expected an integer, got {seconds!r}") from None
        if value < 1:
            raise ValidationError("sinceSeconds: must be greater than 0")
        return now - value
    if stamp not in (None, ""):
        parsed = line_time(str(stamp).encode())
        if parsed is None or not _RFC3339.fullmatch(str(stamp)):
            raise ValidationError(f"sinceTime: {stamp!r} is not an RFC 3339 time",
                                  hint="e.g. 2024-05-01T12:00:00Z (kubectl --since-time)")
        return parsed
    return None


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)")


def rfc3339_nano(stamp: float) -> str:
    """The kubelet's log timestamp (Go's RFC3339Nano: trailing zeros of the fraction dropped), UTC."""
    whole = int(stamp)
    micros = round((stamp - whole) * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, 0
    frac = f"{micros * 1000:09d}".rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + (f".{frac}" if frac else "") + "Z"


class LineStamper:
    """Prefixes each complete line with its time (see the module docstring: `timestamps`); a partial last
    line is held back until its end arrives (`flush` gives it at the end of the stream)."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._partial = b""

    def carry(self, last: float | None) -> None:
        """The time of the last timed line before what will be fed (None: none)."""
        self._last = last

    def feed(self, chunk: bytes, untimed: float) -> bytes:
        """`untimed`: the time of a line without one when no line before it had one."""
        data = self._partial + chunk
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        return self._stamp(data[:cut], untimed)

    def flush(self, untimed: float) -> bytes:
        rest, self._partial = self._partial, b""
        return self._stamp(rest, untimed)

    def _stamp(self, data: bytes, untimed: float) -> bytes:
        out = []
        for line in data.splitlines(keepends=True):
            t = line_time(line)
            if t is not None:
                self._last = t
            out.append(f"{rfc3339_nano(t if t is not None else self._last or untimed)} ".encode() + line)
        return b"".join(out)


def _last_time(data: bytes) -> float | None:
    stop = len(data)
    while stop > 0:
        start = data.rfind(b"\n", 0, stop - 1) + 1 if stop > 1 else 0
        t = line_time(data[start:stop])
        if t is not None:
            return t
        stop = start
    return None


def _first_time(data: bytes) -> float | None:
    for line in data.splitlines():
        t = line_time(line)
        if t is not None:
            return t
    return None


def _tail(data: bytes, lines: int | None) -> bytes:
    if lines is None:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


async def serve_log(
    request: web.Request, pod: Obj, path: Path, still_there: Callable[[], Any]
) -> web.StreamResponse:
    """Answer `pods/log` from the container's log file; `still_there()` (awaitable -> bool) ends a follow."""
    q = request.query
    tail_lines = _int_param(q, "tailLines")
    limit = _int_param(q, "limitBytes")
    since = parse_since(q, time.time())
    follow = q.get("follow", "").lower() in ("1", "true")
    stamper = LineStamper() if q.get("timestamps", "").lower() in ("1", "true") else None
    whole, mtime = await asyncio.to_thread(_read_all, path)
    recent = whole if since is None else whole[since_offset(whole, since, mtime):]
    data, offset = _tail(recent, tail_lines), len(whole)
    if stamper is not None:
        # `data` is a suffix of the file: its first lines go with the last timed line before it, else with
        # its own first timed line (as for `since`), else with the file's modification time
        stamper.carry(_last_time(whole[: len(whole) - len(data)]))
        before = _first_time(data)
        data = stamper.feed(data, before if before is not None else mtime)
        if not follow:
            data += stamper.flush(before if before is not None else mtime)
    if not follow:
        if limit is not None:
            data = data[:limit]
        return web.Response(body=data, content_type="text/plain")
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    sent = 0
    try:
        if data:
            first = data[:limit] if limit is not None else data
            await response.write(first)
            sent += len(first)
        loop = asyncio.get_running_loop()
        next_check = loop.time() + _FOLLOW_CHECK
        while limit is None or sent < limit:
            chunk = await asyncio.to_thread(_read_from, path, offset)
            if chunk:
                offset += len(chunk)
                if stamper is not None:
                    chunk = stamper.feed(chunk, time.time())
                if limit is not None:
                    chunk = chunk[: limit - sent]
                if chunk:
                    await response.write(chunk)
                    sent += len(chunk)
                continue
            if loop.time() >= next_check:
                if not await still_there():
                    break
                next_check = loop.time() + _FOLLOW_CHECK
            await asyncio.sleep(_FOLLOW_POLL)
        if stamper is not None and (limit is None or sent < limit):
            tail = stamper.flush(time.time())
            if tail:
                await response.write(tail[: limit - sent] if limit is not None else tail)
        await response.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        pass  # the client left
    return response


async def serve_previous_log(request: web.Request, pod: Obj, container: str, connector: Any) -> web.Response:
    """`previous=true`: the container's previous run (see `PreviousLogs`), with since, tail, the byte limit
    and timestamps as for the current run; `follow` ends with it (that run is over)."""
    reader = getattr(connector, "previous_log", None)
    data = await asyncio.to_thread(reader, pod, container) if reader is not None else None
    if data is None:
        name = (pod.get("metadata") or {}).get("name")
        restarts = next((int(s.get("restartCount") or 0) for s in (pod.get("status") or {}).get(
            "containerStatuses") or [] if isinstance(s, dict) and s.get("name") == container), 0)
        if restarts:
            raise ValidationError(
                f'previous terminated container "{container}" in pod "{name}" cannot be told apart from its '
                "current run: the local cluster appends a container's runs to one log",
                hint="kubectl logs without --previous shows every run")
        raise ValidationError(f'previous terminated container "{container}" in pod "{name}" not found')
    q = request.query
    since = parse_since(q, time.time())
    end = _last_time(data)
    recent = data if since is None else data[since_offset(data, since, end if end is not None else 0.0):]
    out = _tail(recent, _int_param(q, "tailLines"))
    if q.get("timestamps", "").lower() in ("1", "true"):
        stamper = LineStamper()
        stamper.carry(_last_time(data[: len(data) - len(out)]))
        first = _first_time(out)
        fallback = first if first is not None else end if end is not None else 0.0
        out = stamper.feed(out, fallback) + stamper.flush(fallback)
    limit = _int_param(q, "limitBytes")
    return web.Response(body=out[:limit] if limit is not None else out, content_type="text/plain")


def _read_all(path: Path) -> tuple[bytes, float]:
    try:
        with path.open("rb") as f:
            return f.read(), os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return b"", 0.0


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as f:
            if f.seek(0, 2) < offset:
                offset = 0  # truncated (container restarted): start over
            f.seek(offset)
            return f.read(1 << 16)
    except FileNotFoundError:
        return b""


def exit_status(code: int) -> Obj:
    """The Status kubectl reads on the error channel when a command has ended."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {}, "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def failure_status(message: str) -> Obj:
    return {"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500}


async def serve_exec(request: web.Request, pod: Obj, connector: PodConnector) -> web.StreamResponse:
    """Run `command` in the pod over the channel WebSocket protocol (see the module docstring)."""
    q = request.query
    command = q.getall("command", [])
    if not command:
        raise ValidationError("you must specify at least one command for the container")
    container = pick_container(pod, q.get("container"))
    want_stdin = q.get("stdin", "").lower() in ("1", "true")
    want_tty = q.get("tty", "").lower() in ("1", "true")
    ws = web.WebSocketResponse(protocols=EXEC_PROTOCOLS, autoping=True, heartbeat=None)
    if not ws.can_prepare(request).ok:
        raise UpgradeRequiredError(
            "exec needs a WebSocket upgrade with subprotocol v5.channel.k8s.io or v4.channel.k8s.io",
            hint="use kubectl 1.30 or later (SPDY is not served), or `ambient exec`",
        )
    await ws.prepare(request)
    v5 = ws.ws_protocol == "v5.channel.k8s.io"
    master: int | None = None
    slave: int | None = None
    if want_tty:  # a terminal for the command: kubectl -t (line discipline, echo, window size)
        master, slave = os.openpty()
    try:
        proc = await connector.exec(pod, container, list(command), want_stdin, slave)
    except (ApiError, OSError) as exc:
        if master is not None and slave is not None:
            os.close(master)
            os.close(slave)
        message = getattr(exc, "message", None) or str(exc)
        await ws.send_bytes(bytes([ERROR]) + json.dumps(failure_status(message)).encode())
        await ws.close()
        return ws

    if slave is not None:
        os.close(slave)  # the command holds it now: reading the master ends (EIO) when the command is gone

    async def pump(stream: asyncio.StreamReader | None, channel: int) -> None:
        if stream is None:
            return
        while chunk := await stream.read(1 << 15):
            await ws.send_bytes(bytes([channel]) + chunk)

    async def pump_tty() -> None:
        assert master is not None
        while True:
            try:
                chunk = await asyncio.to_thread(os.read, master, 1 << 15)
            except OSError:  # EIO: every holder of the slave side has gone
                return
            if not chunk:
                return
            await ws.send_bytes(bytes([STDOUT]) + chunk)

    def write_stdin(payload: bytes) -> None:
        if master is not None:
            with contextlib.suppress(OSError):
                os.write(master, payload)
        elif proc.stdin is not None:
            proc.stdin.write(payload)

    async def read_client() -> None:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY or not msg.data:
                continue
            channel, payload = msg.data[0], msg.data[1:]
            if channel == STDIN:
                write_stdin(payload)
                if proc.stdin is not None:
                    with contextlib.suppress(ConnectionError):
                        await proc.stdin.drain()
            elif channel == RESIZE and master is not None:
                resize(master, payload)
            elif channel == CLOSE and v5 and payload[:1] == bytes([STDIN]) and proc.stdin is not None:
                proc.stdin.close()
        # the client went away: the command has nobody to talk to
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    try:
        await ws.send_bytes(bytes([STDOUT]))  # an empty message: the streams are open
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(read_client())
            if master is not None:
                await pump_tty()
            else:
                await asyncio.gather(pump(proc.stdout, STDOUT), pump(proc.stderr, STDERR))
            code = await proc.wait()
            await ws.send_bytes(bytes([ERROR]) + json.dumps(exit_status(code)).encode())
            await ws.close()
            reader.cancel()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if master is not None:
            os.close(master)
    return ws


def resize(master: int, payload: bytes) -> None:
    """A resize message (`{"Width": w, "Height": h}`) applied to the terminal."""
    try:
        size = json.loads(payload)
        width, height = int(size.get("Width", 0)), int(size.get("Height", 0))
    except (ValueError, TypeError, AttributeError):
        return
    if 0 < width < 65536 and 0 < height < 65536:
        with contextlib.suppress(OSError):
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def require(connector: PodConnector | None) -> PodConnector:
    if connector is None:
        raise NotImplementedApiError(
            "this API server has no pod runtime attached (logs, exec and port-forward need a cluster)",
            hint="run it as part of a cluster (`ambient cluster create`)",
        )
    return connector
