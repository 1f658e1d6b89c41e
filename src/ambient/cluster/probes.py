"""Container probes of the kubelet: startupProbe, livenessProbe, readinessProbe (httpGet, tcpSocket, exec).

What a probe is (`probe_spec`, pure) and how its results turn into a state (`ProbeTracker`, pure) follow the
Kubernetes kubelet; running one probe (`run_probe`) is the only I/O here. The kubelet owns the schedule.

Semantics (as the kubelet's prober):
- fields and defaults: initialDelaySeconds 0, periodSeconds 10, timeoutSeconds 1, successThreshold 1,
  failureThreshold 3; a result only counts once it repeated `successThreshold` / `failureThreshold` times
  in a row. Initial results: readiness = failure (not Ready), liveness = success, startup = failure.
- A startupProbe gates the other two: neither runs before it succeeded once; after that it never runs
  again for that container run. A liveness or startup result of failure kills the container (it is then
  restarted per restartPolicy with the crash back-off); the probe holds until the container restarted.
- httpGet succeeds on 200-399 (HTTP/1.1 GET, `User-Agent: kube-probe/...`, httpHeaders, scheme HTTP or
  HTTPS without verification); tcpSocket when the connection is accepted; exec when the command exits 0
  inside the pod netns. Each within timeoutSeconds. Failure messages are worded like the kubelet's events
  (`HTTP probe failed with statuscode: 500`).
- Local-cluster deviation: a readinessProbe without periodSeconds runs every 0.5 s (so pods turn Ready
  promptly in demos and tests); a container without a readinessProbe is Ready once every declared TCP
  containerPort accepts a connection (the kubelet would say Ready as soon as it runs).

Invariants: probes connect from the NODE netns to the pod IP (as a kubelet does), never from elsewhere, so
on a meshed pod they take the node's probe bypass (SNAT to the link-local probe address the pod's rules
skip); a socket for that is created on a thread switched into the node netns when this process lives in
another one (tests run the kubelet in the root netns); every probe failure is a result, never an exception.
"""

from __future__ import annotations

import asyncio
import shlex
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("startup", "liveness", "readiness")
FIELD = {"startup": "startupProbe", "liveness": "livenessProbe", "readiness": "readinessProbe"}
TITLE = {"startup": "Startup", "liveness": "Liveness", "readiness": "Readiness"}
HANDLERS = ("httpGet", "tcpSocket", "exec", "grpc")
DEFAULT_PERIOD = 10.0
LOCAL_READINESS_PERIOD = 0.5  # readinessProbe without periodSeconds, and the implicit port check
IMPLICIT_MIN_DELAY = 0.5  # the implicit port check waits this long after start (the app binds its ports)
USER_AGENT = "kube-probe/1.31"


@dataclass(frozen=True)
class ProbeContext:
    pod_ip: str
    pod_netns: str
    node_netns_path: Path
    in_node_netns: bool


@dataclass(frozen=True)
class ProbeSpec:
    kind: str  # startup | liveness | readiness
    handler: str  # httpGet | tcpSocket | exec | ports (the implicit readiness check) | unsupported
    initial_delay: float = 0.0
    period: float = DEFAULT_PERIOD
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    port: int | None = None
    path: str = "/"
    scheme: str = "HTTP"
    host: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    grace: float | None = None  # probe-level terminationGracePeriodSeconds (liveness/startup kills)
    problem: str = ""  # why the probe cannot run (unsupported handler, unknown named port): always fails

    @property
    def title(self) -> str:
        return TITLE[self.kind]


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str = ""


def _port(value: Any, container: dict[str, Any]) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        for p in container.get("ports") or []:
            if p.get("name") == value:
                return int(p["containerPort"])
    return None


def _num(probe: dict[str, Any], key: str, default: float, low: float) -> float:
    value = probe.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return max(low, float(value))


def probe_spec(kind: str, container: dict[str, Any]) -> ProbeSpec | None:
    """The probe of `kind` a container declares (pure); None when it declares none (readiness: the
    implicit port check instead). Malformed handlers give a spec with `problem` set (it always fails)."""
    probe = container.get(FIELD[kind])
    if not isinstance(probe, dict):
        if kind != "readiness":
            return None
        ports = tuple(int(p["containerPort"]) for p in container.get("ports") or []
                      if (p.get("protocol") or "TCP") == "TCP" and p.get("containerPort"))
        return ProbeSpec(kind, "ports", initial_delay=IMPLICIT_MIN_DELAY, period=LOCAL_READINESS_PERIOD,
                         failure_threshold=1, ports=ports)
    default_period = LOCAL_READINESS_PERIOD if kind == "readiness" else DEFAULT_PERIOD
    success = int(_num(probe, "successThreshold", 1, 1))
    if kind != "readiness":
        success = 1  # Kubernetes requires 1 for liveness and startup
    grace = probe.get("terminationGracePeriodSeconds")
    common: dict[str, Any] = {
        "initial_delay": _num(probe, "initialDelaySeconds", 0.0, 0.0),
        "period": _num(probe, "periodSeconds", default_period, 0.1),
        "timeout": _num(probe, "timeoutSeconds", 1.0, 0.1),
        "success_threshold": success,
        "failure_threshold": int(_num(probe, "failureThreshold", 3, 1)),
        "grace": float(grace) if isinstance(grace, int | float) and not isinstance(grace, bool) else None,
    }
    present = [h for h in HANDLERS if probe.get(h) is not None]
    if len(present) != 1:
        return ProbeSpec(kind, "unsupported", problem=f"{FIELD[kind]} needs exactly one of httpGet, tcpSocket, "
                         f"exec (found {', '.join(present) or 'none'})", **common)
    handler = present[0]
    body = probe[handler] if isinstance(probe[handler], dict) else {}
    if handler == "grpc":
        return ProbeSpec(kind, "unsupported", problem="grpc probes are not supported by the local kubelet",
                         **common)
    if handler == "exec":
        command = tuple(str(a) for a in body.get("command") or [])
        return ProbeSpec(kind, "exec", command=command, problem="" if command else "exec probe without a command",
                         **common)
    port = _port(body.get("port"), container)
    problem = "" if port is not None else f"port {body.get('port')!r} is not a number or a named containerPort"
    if handler == "tcpSocket":
        return ProbeSpec(kind, "tcpSocket", port=port, host=str(body.get("host") or ""), problem=problem, **common)
    headers = tuple((str(h.get("name")), str(h.get("value", ""))) for h in body.get("httpHeaders") or []
                    if isinstance(h, dict) and h.get("name"))
    path = str(body.get("path") or "/")
    return ProbeSpec(kind, "httpGet", port=port, path=path if path.startswith("/") else "/" + path,
                     scheme=str(body.get("scheme") or "HTTP").upper(), host=str(body.get("host") or ""),
                     headers=headers, problem=problem, **common)


class ProbeTracker:
    """Consecutive-result accounting of one probe for one container run (the kubelet's worker, pure).

    `observe(ok)` returns the new result when it changes what the kubelet acts on, else None.
    """

    def __init__(self, spec: ProbeSpec) -> None:
        self.spec = spec
        self.result = spec.kind == "liveness"  # readiness and startup start as failure
        self._last: bool | None = None
        self._run = 0
        self.on_hold = False  # liveness/startup failed: nothing more until the container restarts

    @property
    def failing(self) -> bool:
        """The last observed result was a failure (a failure now continues a streak)."""
        return self._last is False

    def observe(self, ok: bool) -> bool | None:
        if self.on_hold:
            return None
        if ok == self._last:
            self._run += 1
        else:
            self._last, self._run = ok, 1
        needed = self.spec.success_threshold if ok else self.spec.failure_threshold
        if self._run < needed:
            return None
        changed = ok != self.result
        self.result = ok
        if not ok and self.spec.kind in ("liveness", "startup"):
            self.on_hold, self._run = True, 0
            return False  # act on it (kill) even when it was already a failure (startup's initial value)
        return ok if changed else None


# ------------------------------------------------------------------ running one probe


async def _socket(ctx: ProbeContext) -> socket.socket:
    if ctx.in_node_netns:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    else:
        from ambient.inpod.netns import run_in_netns

        sock = await asyncio.to_thread(run_in_netns, ctx.node_netns_path,
                                       lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.setblocking(False)
    return sock


def _dial_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "i/o timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect: connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return f"connect: {exc.strerror.lower()}"
    return f"connect: {exc}"


async def _connect(ctx: ProbeContext, host: str, port: int, limit: float) -> socket.socket:
    """A connected socket from the node netns; raises OSError/TimeoutError."""
    sock = await _socket(ctx)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout=limit)
    except BaseException:
        sock.close()
        raise
    return sock


async def tcp_probe(ctx: ProbeContext, port: int, limit: float = 1.0, host: str = "") -> ProbeResult:
    target = host or ctx.pod_ip
    try:
        sock = await _connect(ctx, target, port, limit)
    except (OSError, TimeoutError) as exc:
        return ProbeResult(False, f"dial tcp {target}:{port}: {_dial_error(exc)}")
    sock.close()
    return ProbeResult(True)


async def http_probe(ctx: ProbeContext, spec: ProbeSpec) -> ProbeResult:
    assert spec.port is not None
    host = spec.host or ctx.pod_ip
    scheme = "https" if spec.scheme == "HTTPS" else "http"
    url = f"{scheme}://{host}:{spec.port}{spec.path}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + spec.timeout
    try:
        sock = await _connect(ctx, host, spec.port, spec.timeout)
    except (OSError, TimeoutError) as exc:
        return ProbeResult(False, f'Get "{url}": dial tcp {host}:{spec.port}: {_dial_error(exc)}')
    writer: asyncio.StreamWriter | None = None
    try:
        tls = None
        if scheme == "https":  # the kubelet does not verify the pod's certificate
            tls = ssl.create_default_context()
            tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        reader, stream = await asyncio.wait_for(
            asyncio.open_connection(sock=sock, ssl=tls, server_hostname=host if tls else None), timeout=spec.timeout)
        writer = stream
        headers = {"Host": f"{host}:{spec.port}", "User-Agent": USER_AGENT, "Accept": "*/*"}
        for name, value in spec.headers:
            headers[name] = value
        headers["Connection"] = "close"
        head = f"GET {spec.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        stream.write(head.encode("latin-1", "replace"))
        line = await asyncio.wait_for(reader.readline(), timeout=max(0.01, deadline - loop.time()))
    except TimeoutError:
        return ProbeResult(False, f'Get "{url}": context deadline exceeded '
                                  "(Client.Timeout exceeded while awaiting headers)")
    except (OSError, ssl.SSLError) as exc:
        return ProbeResult(False, f'Get "{url}": {exc}')
    finally:
        if writer is not None:
            writer.close()
        else:
            sock.close()
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return ProbeResult(False, f'Get "{url}": malformed HTTP response {line[:60]!r}')
    code = int(parts[1])
    if 200 <= code < 400:
        return ProbeResult(True)
    return ProbeResult(False, f"HTTP probe failed with statuscode: {code}")


async def exec_probe(ctx: ProbeContext, command: tuple[str, ...], limit: float = 1.0) -> ProbeResult:
    def run() -> ProbeResult:
        try:
            proc = subprocess.run(["ip", "netns", "exec", ctx.pod_netns, *command], capture_output=True,
                                  timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            return ProbeResult(False, f"command {shlex.join(command)!r} timed out")
        except OSError as exc:
            return ProbeResult(False, f"command {shlex.join(command)!r} could not run: {exc.strerror}")
        if proc.returncode == 0:
            return ProbeResult(True)
        output = (proc.stdout + proc.stderr).decode(errors="replace").strip()
        return ProbeResult(False, output[:1024] or f"command {shlex.join(command)!r} exited with {proc.returncode}")

    return await asyncio.to_thread(run)


async def run_probe(spec: ProbeSpec, ctx: ProbeContext) -> ProbeResult:
    """Run one probe once; never raises (every failure is a result, a bug included: it shows in the log)."""
    try:
        return await _run_probe(spec, ctx)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # never let one probe take the pod worker down
        return ProbeResult(False, f"probe error: {type(exc).__name__}: {exc}")


async def _run_probe(spec: ProbeSpec, ctx: ProbeContext) -> ProbeResult:
    if spec.problem:
        return ProbeResult(False, spec.problem)
    if spec.handler == "tcpSocket":
        assert spec.port is not None
        return await tcp_probe(ctx, spec.port, spec.timeout, spec.host)
    if spec.handler == "httpGet":
        return await http_probe(ctx, spec)
    if spec.handler == "exec":
        return await exec_probe(ctx, spec.command, spec.timeout)
    for port in spec.ports:  # the implicit readiness check
        result = await tcp_probe(ctx, port, spec.timeout)
        if not result.ok:
            return result
    return ProbeResult(True)
