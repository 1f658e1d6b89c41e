"""The dashboard's sources on a Kubernetes install, read through `kubectl` and a kubeconfig.

kubectl is the client on purpose: whatever works for `kubectl --kubeconfig K --context C` (exec credential
plugins, OIDC, proxies, certificate authorities) works for the dashboard, and nothing is re-implemented.

- discovery, every `refresh` seconds: the node proxy pods (namespace `proxy_namespace`, default
  `ambient-system`, label `app=ztunnel`) and the waypoint pods (every namespace, label
  `gateway.istio.io/managed=istio.io-mesh-controller`), Running ones only (`streams`, pure);
- access lines: one `kubectl logs -f` per pod's proxy container (`ztunnel`, or `istio-proxy` for waypoints,
  else the first container), started with `--since=<window>s --tail=<max_entries>`; its lines carry the
  component name the model expects (`ztunnel-<node>`; `waypoint <ns>/<gateway>`). A stream that ends (pod
  restarted, connection lost) is started again after 1 s doubling to 30 s while its pod is listed, with
  `--since-time` of its last line; what it replays up to the last line already read is skipped (`Resume`).
  A pod no longer listed has its stream stopped (its lines stay for the window);
- metrics: one `kubectl port-forward --address 127.0.0.1 pod/<pod> :15020` per pod (loopback only, an
  ephemeral port kubectl picks and prints), scraped (`/stats/prometheus`) every `refresh` seconds into the
  pod's source row (`model.metrics_summary`); a forward that exits or fails 3 scrapes in a row is started
  again with the same back-off (`metrics=False`: none, for installs where a kubectl process per pod is
  too many);
- policies: `kubectl get authorizationpolicies.security.istio.io -A -o json` with each discovery.

What went wrong is never hidden: the first discovery's failure stops the command with kubectl's own message
and what to do (`explain`); later failures keep the last good view and show up as `sources` rows of the
snapshot (discovery, policies, each stream's state and last error).

Invariants: kubectl always runs with an argument list (no shell); every task is owned by the source's
TaskGroup; a stream's kubectl process is killed when its task ends.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ambient.dashboard.errors import DashboardError
from ambient.dashboard.model import entry_time, source_row
from ambient.dashboard.scrape import SCRAPE_TIMEOUT, metrics_url, scrape
from ambient.dashboard.server import EntryStore
from ambient.runtime.trace import parse_line

PROXY_NAMESPACE = "ambient-system"
PROXY_SELECTOR = "app=ztunnel"
WAYPOINT_SELECTOR = "gateway.istio.io/managed=istio.io-mesh-controller"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
POLICY_RESOURCE = "authorizationpolicies.security.istio.io"
METRICS_PORT = 15020
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
FORWARD_START_TIMEOUT = 20.0  # kubectl port-forward prints its local port once the API server agreed
SCRAPE_FAILURES = 3  # in a row: the forward is started again
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)")
_LINE_LIMIT = 1 << 20  # one access line is far shorter; a longer one is skipped, not fatal

# what the dashboard needs from RBAC, named in the hint of a Forbidden answer
NEEDED_ACCESS = ("list pods in the proxy namespace and in all namespaces (waypoints), get pods/log, "
                 f"create pods/portforward, list {POLICY_RESOURCE} in all namespaces")


def find_kubectl(binary: str) -> str:
    """The kubectl executable to run (`binary` is a name on PATH or a path)."""
    found = shutil.which(binary)
    if found is None:
        raise DashboardError(f"kubectl not found ({binary!r} is not an executable on PATH)",
                             hint="install kubectl (1.30 or later) or pass --kubectl PATH")
    return found


def explain(stderr: str) -> tuple[str, str | None]:
    """kubectl's error output -> (its meaningful line, a hint for the platform engineer, or None) (pure)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    # kubectl prints retries and warnings (E1206 ... memcache.go) before its final "error: ..." line
    final = next((ln for ln in reversed(lines) if ln.lower().startswith(("error", "unable to connect"))),
                 lines[-1] if lines else "no error output")
    low = stderr.lower()
    if "unauthorized" in low or "must be logged in" in low:
        return final, "the kubeconfig's credentials were refused: renew them, or pick another --context"
    if "forbidden" in low:
        return final, f"your user lacks access; the dashboard needs to {NEEDED_ACCESS}"
    if "context" in low and "does not exist" in low:
        return final, "`kubectl config get-contexts` lists the contexts of the kubeconfig"
    if "doesn't have a resource type" in low:
        return final, "the CRD is not installed in this cluster (Istio's security.istio.io CRDs for policies)"
    if "x509" in low or "certificate" in low:
        return final, "the API server's certificate is not trusted by the kubeconfig (certificate-authority)"
    if any(s in low for s in ("connection refused", "was refused", "unable to connect", "no such host",
                              "i/o timeout", "deadline exceeded", "timeout")):
        return final, "the API server is unreachable: check --context, the cluster, and any VPN or proxy"
    return final, None


@dataclass(frozen=True)
class Kubectl:
    """One kubectl, kubeconfig and context; every call adds `--kubeconfig` / `--context` when set."""

    binary: str
    kubeconfig: str | None = None
    context: str | None = None
    request_timeout: float = 10.0

    def argv(self, *args: str) -> list[str]:
        out = [self.binary]
        if self.kubeconfig:
            out += ["--kubeconfig", self.kubeconfig]
        if self.context:
            out += ["--context", self.context]
        return out + list(args)

    def get_json(self, *args: str) -> dict[str, Any]:
        """`kubectl get ARGS -o json` (blocking), its JSON document; DashboardError with kubectl's reason."""
        argv = self.argv("get", *args, "-o", "json", f"--request-timeout={self.request_timeout:g}s")
        shown = "kubectl get " + " ".join(args)
        try:
            run = subprocess.run(argv, capture_output=True, text=True, timeout=self.request_timeout + 20,
                                 stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise DashboardError(f"`{shown}` did not answer within {self.request_timeout + 20:g}s",
                                 hint="the API server is unreachable or slow: check --context") from None
        except OSError as exc:
            raise DashboardError(f"cannot run {self.binary}: {exc}", hint="pass --kubectl PATH") from None
        if run.returncode != 0:
            reason, hint = explain(run.stderr)
            raise DashboardError(f"`{shown}` failed: {reason}", hint=hint)
        try:
            doc = json.loads(run.stdout)
        except ValueError:
            raise DashboardError(f"`{shown}` printed no JSON: {run.stdout[:200]!r}") from None
        if not isinstance(doc, dict):
            raise DashboardError(f"`{shown}` printed {type(doc).__name__}, not a JSON object")
        return doc


@dataclass(frozen=True)
class Stream:
    """One container's access log to follow."""

    kind: str  # "ztunnel" | "waypoint"
    namespace: str
    pod: str
    uid: str
    container: str
    component: str  # the name its lines carry in the model and the traces

    @property
    def label(self) -> str:
        return f"{self.component} ({self.namespace}/{self.pod})"


def _container(pod: dict[str, Any], preferred: tuple[str, ...]) -> str:
    names = [str(c.get("name", "")) for c in (pod.get("spec") or {}).get("containers") or []]
    return next((n for n in preferred if n in names), names[0] if names else "")


def streams(proxy_pods: Iterable[dict[str, Any]], waypoint_pods: Iterable[dict[str, Any]]) -> list[Stream]:
    """The log streams of the Running node proxy and waypoint pods (pure)."""
    out: list[Stream] = []
    for kind, pods in (("ztunnel", proxy_pods), ("waypoint", waypoint_pods)):
        for pod in pods:
            meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
            if status.get("phase") != "Running":
                continue
            ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
            if kind == "ztunnel":
                container = _container(pod, ("ztunnel", "istio-proxy"))
                component = f"ztunnel-{spec.get('nodeName') or name}"
            else:
                container = _container(pod, ("istio-proxy",))
                gateway = (meta.get("labels") or {}).get(GATEWAY_NAME_LABEL) or name
                component = f"waypoint {ns}/{gateway}"
            if container:
                out.append(Stream(kind, ns, name, str(meta.get("uid", "")), container, component))
    return sorted(out, key=lambda s: (s.kind != "ztunnel", s.component, s.namespace, s.pod))


@dataclass
class Resume:
    """Skips what a restarted `kubectl logs` replays: while replaying, lines older than the last line read,
    and lines at its very time already read; the first newer line ends the replay (pure)."""

    last: float = -math.inf
    at_last: set[str] = field(default_factory=set)
    replaying: bool = False

    def restart(self) -> None:
        self.replaying = self.last > -math.inf

    def accept(self, t: float, line: str) -> bool:
        if self.replaying:
            if t < self.last or (t == self.last and line in self.at_last):
                return False
            if t > self.last:
                self.replaying = False
        if t > self.last:
            self.last, self.at_last = t, {line}
        elif t == self.last:
            self.at_last.add(line)
        return True


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class _StreamState:
    state: str = "starting"
    detail: str = ""
    lines: int = 0
    restarts: int = 0
    metrics: str = "starting"  # starting | up | down | off
    metrics_detail: str = ""
    summary: dict[str, float] | None = None


class KubeSource:
    """Streams a Kubernetes install's access lines into `store` and keeps its AuthorizationPolicies."""

    def __init__(self, kubectl: Kubectl, store: EntryStore, *, proxy_namespace: str = PROXY_NAMESPACE,
                 refresh: float = 5.0, max_entries: int = 20000, metrics: bool = True) -> None:
        self.kubectl = kubectl
        self.metrics = metrics
        self.store = store
        self.proxy_namespace = proxy_namespace
        self.refresh = refresh
        self.max_entries = max_entries
        self._policies: list[dict[str, Any]] = []
        self._policy_error: DashboardError | None = None
        self._discovery_error = ""
        self._found: list[Stream] = []
        self._states: dict[Stream, _StreamState] = {}
        self._tasks: dict[Stream, list[asyncio.Task[None]]] = {}

    # discovery (blocking: run in a thread from the loop)

    def discover(self) -> list[Stream]:
        """List the policies, and the proxy and waypoint pods; DashboardError when the pods cannot be listed
        (policies that cannot be listed are reported by `policies` instead: never a stale list as current)."""
        try:
            self._policies = list(self.kubectl.get_json(POLICY_RESOURCE, "--all-namespaces").get("items") or [])
            self._policy_error = None
        except DashboardError as exc:
            self._policy_error = exc
        proxies = self.kubectl.get_json("pods", "-n", self.proxy_namespace, "-l", PROXY_SELECTOR)
        waypoints = self.kubectl.get_json("pods", "--all-namespaces", "-l", WAYPOINT_SELECTOR)
        found = streams(proxies.get("items") or [], waypoints.get("items") or [])
        self._found = found
        return found

    def policies(self) -> list[dict[str, Any]]:
        if self._policy_error is not None:
            raise self._policy_error
        return list(self._policies)

    def status(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if self._discovery_error:
            rows.append(source_row("discovery", "error", detail=self._discovery_error))
        if not self._found and not self._discovery_error:
            rows.append(source_row("discovery", "empty",
                                   detail=f"no Running pod labelled {PROXY_SELECTOR} in namespace "
                                          f"{self.proxy_namespace} nor {WAYPOINT_SELECTOR} in any namespace"))
        for s, st in sorted(self._states.items(), key=lambda kv: kv[0].label):
            rows.append(source_row(s.label, st.state, kind=s.kind, detail=st.detail, lines=st.lines,
                                   restarts=st.restarts, metrics_state=st.metrics, metrics_detail=st.metrics_detail,
                                   metrics=st.summary))
        return rows

    # the loop

    async def run(self, first: list[Stream] | None = None) -> None:
        """Follow the streams found (`first`: an initial discovery already made), rediscovering every
        `refresh` seconds, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            found = first
            while True:
                if found is None:
                    try:
                        found = await asyncio.to_thread(self.discover)
                        self._discovery_error = ""
                    except DashboardError as exc:  # keep following what was found; say why it is stale
                        self._discovery_error = str(exc)
                if found is not None:
                    for s in found:
                        if s not in self._tasks:
                            self._states[s] = _StreamState(metrics="starting" if self.metrics else "off")
                            self._tasks[s] = [tasks.create_task(self._follow(s))]
                            if self.metrics:
                                self._tasks[s].append(tasks.create_task(self._metrics(s)))
                    for s in [s for s in self._tasks if s not in found]:
                        for task in self._tasks.pop(s):
                            task.cancel()
                        self._states.pop(s, None)
                found = None
                await asyncio.sleep(self.refresh)

    async def _follow(self, s: Stream) -> None:
        resume = Resume()
        delay = RETRY_FIRST
        st = self._states[s]
        while True:
            since = (f"--since-time={_rfc3339(resume.last)}" if resume.last > -math.inf
                     else f"--since={max(1, math.ceil(self.store.window))}s")
            argv = self.kubectl.argv("logs", "-f", "-n", s.namespace, s.pod, "-c", s.container, since,
                                     f"--tail={self.max_entries}")
            started = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    limit=_LINE_LIMIT)
            except OSError as exc:
                st.state, st.detail = "retrying", f"cannot run {self.kubectl.binary}: {exc}"
            else:
                st.state = "streaming"
                try:
                    rc, err = await self._read(s, proc, resume, st)
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                reason, hint = explain(err) if err.strip() else ("the log stream ended", None)
                st.state = "retrying"
                st.detail = f"kubectl logs exited {rc}: {reason}" + (f" ({hint})" if hint else "")
            resume.restart()
            st.restarts += 1
            if time.monotonic() - started > RETRY_MAX:  # it had been healthy: retry soon
                delay = RETRY_FIRST
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _read(self, s: Stream, proc: asyncio.subprocess.Process, resume: Resume,
                    st: _StreamState) -> tuple[int, str]:
        assert proc.stdout is not None and proc.stderr is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line beyond the limit: the reader dropped what it buffered of it
                continue
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip("\n")
            e = parse_line(s.component, line)
            if e is None or not resume.accept(entry_time(e), line):
                continue
            self.store.add([e])
            st.lines += 1
        err = (await proc.stderr.read()).decode(errors="replace")
        return await proc.wait(), err

    async def _metrics(self, s: Stream) -> None:
        st = self._states[s]
        delay = RETRY_FIRST
        timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                started = time.monotonic()
                try:
                    why = await self._forward_once(s, st, http)
                except OSError as exc:
                    why = f"cannot run {self.kubectl.binary}: {exc}"
                st.metrics, st.metrics_detail = "down", why
                if time.monotonic() - started > RETRY_MAX:
                    delay = RETRY_FIRST
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _forward_once(self, s: Stream, st: _StreamState, http: aiohttp.ClientSession) -> str:
        """Run one `kubectl port-forward` of the pod's metrics port and scrape through it until it ends;
        returns why it ended."""
        argv = self.kubectl.argv("port-forward", "--address", "127.0.0.1", "-n", s.namespace, f"pod/{s.pod}",
                                 f":{METRICS_PORT}")
        proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        errors: deque[str] = deque(maxlen=10)
        why = ""
        async with asyncio.TaskGroup() as pumps:  # kubectl's output is read to its end, never left to block it
            pumps.create_task(_pump(proc.stdout, None, port))
            pumps.create_task(_pump(proc.stderr, errors, None))
            try:
                exited = pumps.create_task(proc.wait())
                await asyncio.wait([port, exited], timeout=FORWARD_START_TIMEOUT,
                                   return_when=asyncio.FIRST_COMPLETED)
                if not port.done():
                    why = ("kubectl port-forward printed no local port within "
                           f"{FORWARD_START_TIMEOUT:g}s" if not exited.done() else "")
                else:
                    why = await self._scrape_until(st, http, port.result(), exited)
            finally:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
                if not port.done():
                    port.cancel()
        if not why:
            reason, hint = explain("\n".join(errors)) if errors else ("it exited", None)
            why = f"kubectl port-forward exited {proc.returncode}: {reason}" + (f" ({hint})" if hint else "")
        return why

    async def _scrape_until(self, st: _StreamState, http: aiohttp.ClientSession, port: int,
                            exited: asyncio.Task[int]) -> str:
        """Scrape through the forward every `refresh` seconds until kubectl exits ("") or the scrapes fail
        `SCRAPE_FAILURES` times in a row (the reason)."""
        url = metrics_url(port)
        failures = 0
        while not exited.done():
            try:
                st.summary = await scrape(http, port)
                st.metrics, st.metrics_detail, failures = "up", f"via 127.0.0.1:{port}", 0
            except (TimeoutError, aiohttp.ClientError) as exc:
                failures += 1
                st.metrics, st.metrics_detail = "down", f"scrape of {url} failed: {exc or type(exc).__name__}"
                if failures >= SCRAPE_FAILURES:
                    return f"{SCRAPE_FAILURES} scrapes failed in a row ({st.metrics_detail})"
            await asyncio.wait([exited], timeout=self.refresh)
        return ""


async def _pump(stream: asyncio.StreamReader, keep: deque[str] | None, port: asyncio.Future[int] | None) -> None:
    """Read a kubectl output stream to its end: the forwarded local port into `port`, lines into `keep`."""
    while line := await stream.readline():
        text = line.decode(errors="replace").strip()
        if port is not None and not port.done() and (m := _FORWARDING.search(text)):
            port.set_result(int(m[1]))
        if keep is not None and text:
            keep.append(text)
