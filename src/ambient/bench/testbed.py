"""A small real-netns testbed for the node proxy (root only): nodes and pods joined by veths, the in-pod
redirection rules applied in each pod, a ZDS server per node handing the pods to the proxy, and the proxy
started as `ambient ztunnel` processes. Used by tests/netns/test_ztunnel*.py and `ambient.bench.ztunnel`.

Topology (every address lives inside namespaces this testbed created; prefix given by the caller):
    node i netns: link to node j "n<i>n<j>" on 10.250.0.0/24 (node i = 10.250.0.i), forwarding on;
    pod netns "<prefix>-p<i>-<k>": eth0 10.250.<i>.<k+2>/24, gateway 10.250.<i>.1 (node side "p<k>").
Two nodes are joined directly (no bridge); the capture interface between them is `node_link(1)`.

Invariant: `destroy()` kills every process it started and deletes every netns, and is safe to call on a
half-built testbed (tests call it in `finally`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ambient.inpod.netns import open_netns, run_in_netns

NETNS_DIR = "/var/run/netns"


def sh(*args: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=timeout)


@dataclass
class Pod:
    name: str
    netns: str
    ip: str
    node: int
    namespace: str = "mesh"
    service_account: str = "default"
    in_state: bool = True  # False: enrolled over ZDS but unknown to the proxy's state
    mesh: bool = True  # False ("-plain" names): no redirection, not enrolled, not in the state

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.netns}"

    @property
    def uid(self) -> str:
        return f"uid-{self.name}"


@dataclass
class ProxyProcess:
    node: int
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    admin_socket: Path

    def access_lines(self) -> list[str]:
        return [ln for ln in self.stdout.read_text(errors="replace").splitlines() if "\taccess\t" in ln]

    def log_text(self) -> str:
        return self.stderr.read_text(errors="replace")

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass


class ZdsFeeder:
    """A node agent stand-in: the ZdsServer (inpod.zds) on its own thread + loop, snapshotting this node's pods."""

    def __init__(self, path: Path, pods: Sequence[Pod]) -> None:
        self.path = path
        self.pods = list(pods)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: Any = None
        self._thread = threading.Thread(target=self._main, name=f"zds-{path.name}", daemon=True)

    def start(self) -> ZdsFeeder:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"ZDS feeder {self.path} did not start: {self._error}")
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()/wait_ready
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        from ambient.inpod.zds import SnapshotPod, WorkloadInfo, ZdsServer

        async def provider() -> list[SnapshotPod]:
            return [
                SnapshotPod(p.uid, WorkloadInfo(p.name, p.namespace, p.service_account), open_netns(p.path))
                for p in self.pods
            ]

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with ZdsServer(self.path, provider) as server:
            self.server = server
            self._ready.set()
            await self._stop.wait()

    def call(self, coro: Any, timeout: float = 20.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        async def wait() -> None:
            await self.server.wait_ready(timeout)

        self.call(wait(), timeout + 1)

    def snapshots(self) -> int:
        return int(self.server.snapshots_sent)

    def delete(self, pod: Pod) -> None:
        self.pods = [p for p in self.pods if p.uid != pod.uid]
        self.call(self.server.del_pod(pod.uid))

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)


@dataclass
class Testbed:
    __test__ = False  # not a pytest test class

    prefix: str
    workdir: Path
    nodes: int = 2
    pods: list[Pod] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    backend: str = "iptables"
    namespace: str = "mesh"  # of every pod
    _netns: list[str] = field(default_factory=list)
    _procs: list[ProxyProcess] = field(default_factory=list)
    _feeders: dict[int, ZdsFeeder] = field(default_factory=dict)
    _other: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- topology ----------------------------------------------------------------------------------------
    def node_ns(self, i: int) -> str:
        return f"{self.prefix}-n{i}"

    def node_link(self, i: int) -> str:
        """The interface in node i's netns that leads to the other node (capture point)."""
        return f"n{i}n{2 if i == 1 else 1}"

    def _add_netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self._netns.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def create(self, pods_per_node: dict[int, list[tuple[str, str]]]) -> Testbed:
        """`pods_per_node`: node -> [(pod name, service account)]; names ending in '-ghost' are enrolled
        but kept out of the state; names ending in '-plain' are outside the mesh (no rules, no ZDS)."""
        from ambient.cni.apply import apply_pod_redirection
        from ambient.cni.rules import RedirectConfig

        self.workdir.mkdir(parents=True, exist_ok=True)
        for i in range(1, self.nodes + 1):
            self._add_netns(self.node_ns(i))
            sh("ip", "netns", "exec", self.node_ns(i), "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if self.nodes >= 2:
            sh("ip", "link", "add", "n1n2", "netns", self.node_ns(1), "type", "veth", "peer", "name", "n2n1",
               "netns", self.node_ns(2))
            for i, dev in ((1, "n1n2"), (2, "n2n1")):
                sh("ip", "-n", self.node_ns(i), "addr", "add", f"10.250.0.{i}/24", "dev", dev)
                sh("ip", "-n", self.node_ns(i), "link", "set", dev, "up")
            sh("ip", "-n", self.node_ns(1), "route", "add", "10.250.2.0/24", "via", "10.250.0.2")
            sh("ip", "-n", self.node_ns(2), "route", "add", "10.250.1.0/24", "via", "10.250.0.1")
        for i, specs in pods_per_node.items():
            sh("ip", "-n", self.node_ns(i), "addr", "add", f"10.250.{i}.1/24", "dev", "lo")
            for k, (name, sa) in enumerate(specs):
                plain = name.endswith("-plain")
                pod = Pod(name, f"{self.prefix}-p{i}-{k}", f"10.250.{i}.{k + 2}", i, namespace=self.namespace,
                          service_account=sa, in_state=not name.endswith("-ghost") and not plain, mesh=not plain)
                self._add_netns(pod.netns)
                dev = f"p{k}"
                sh("ip", "link", "add", dev, "netns", self.node_ns(i), "type", "veth", "peer", "name", "eth0",
                   "netns", pod.netns)
                sh("ip", "-n", pod.netns, "addr", "add", f"{pod.ip}/32", "dev", "eth0")
                sh("ip", "-n", pod.netns, "link", "set", "eth0", "up")
                sh("ip", "-n", self.node_ns(i), "link", "set", dev, "up")
                sh("ip", "-n", self.node_ns(i), "route", "add", f"{pod.ip}/32", "dev", dev)
                sh("ip", "-n", pod.netns, "route", "add", f"10.250.{i}.1/32", "dev", "eth0")
                sh("ip", "-n", pod.netns, "route", "add", "default", "via", f"10.250.{i}.1", "dev", "eth0")
                if pod.mesh:
                    apply_pod_redirection(RedirectConfig(dns_capture=False), self.backend, netns=pod.path)  # type: ignore[arg-type]
                self.pods.append(pod)
        return self

    def pod(self, name: str) -> Pod:
        return next(p for p in self.pods if p.name == name)

    # -- config --------------------------------------------------------------------------------------------
    def state_doc(self) -> dict[str, Any]:
        workloads = [
            {
                "uid": p.uid, "name": p.name, "namespace": p.namespace, "workloadIps": [p.ip],
                "protocol": "HBONE", "serviceAccount": p.service_account, "node": f"node{p.node}",
                "workloadName": p.name, "canonicalName": p.name,
                "services": {f"{s['namespace']}/{s['hostname']}": s["ports"] for s in self.services
                             if p.name in s.get("_backends", [])},
            }
            for p in self.pods if p.in_state
        ]
        services = [{k: v for k, v in s.items() if not k.startswith("_")} for s in self.services]
        return {"workloads": workloads, "services": services, "policies": self.policies}

    def write_state(self) -> Path:
        path = self.workdir / "state.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.state_doc()))
        os.replace(tmp, path)
        return path

    @property
    def ca_dir(self) -> Path:
        return self.workdir / "ca"

    def ensure_ca(self) -> None:
        from ambient.identity.ca import LocalCA

        LocalCA.load_or_create(self.ca_dir)

    # -- processes ---------------------------------------------------------------------------------------
    def feeder(self, node: int) -> ZdsFeeder:
        if node not in self._feeders:
            path = self.workdir / f"zds-{node}.sock"
            self._feeders[node] = ZdsFeeder(path, [p for p in self.pods if p.node == node and p.mesh]).start()
        return self._feeders[node]

    def start_proxy(
        self, node: int, *, mode: str = "inpod", netns: str | None = None, env: dict[str, str] | None = None,
        tag: str = "", extra: Sequence[str] = (), wait: bool = True, profile: Path | None = None,
    ) -> ProxyProcess:
        state = self.write_state()
        self.ensure_ca()
        name = f"ztunnel-{node}{tag}"
        admin = self.workdir / f"{name}.admin.sock"
        args = [
            "ip", "netns", "exec", netns or self.node_ns(node), sys.executable,
            *(["-m", "cProfile", "-o", str(profile)] if profile else []), "-m", "ambient", "ztunnel",
            "--static", str(state), "--ca-dir", str(self.ca_dir), "--mode", mode, "--node", f"node{node}",
            "--admin-socket", str(admin), *extra,
        ]
        if mode == "inpod":
            args += ["--zds-socket", str(self.feeder(node).path)]
        out, err = self.workdir / f"{name}.out", self.workdir / f"{name}.err"
        full_env = {**os.environ, "AMBIENT_ZTUNNEL_SOURCE_WAIT": "1", **(env or {})}
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(args, stdout=o, stderr=e, env=full_env, start_new_session=True)
        pp = ProxyProcess(node, proc, out, err, admin)
        self._procs.append(pp)
        if wait:
            raw = full_env.get("AMBIENT_ZTUNNEL_WORKERS", "1")
            self.wait_proxy(pp, mode, processes=int(raw) if raw.isdigit() else 1)
        return pp

    def wait_proxy(self, pp: ProxyProcess, mode: str = "inpod", timeout: float = 30.0, processes: int = 1) -> None:
        """Until the proxy logged readiness and (in-pod) every pod of its node has listeners in each of
        its `processes` (AMBIENT_ZTUNNEL_WORKERS)."""
        want = len([p for p in self.pods if p.node == pp.node and p.mesh]) * processes if mode == "inpod" else 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = pp.log_text()
            if pp.proc.poll() is not None:
                raise RuntimeError(f"proxy on node {pp.node} exited ({pp.proc.returncode}):\n{text[-3000:]}")
            if "node proxy ready" in text and text.count("proxy started for pod") >= want:
                return
            time.sleep(0.05)
        raise TimeoutError(f"proxy on node {pp.node} not ready in {timeout}s:\n{pp.log_text()[-3000:]}")

    def spawn(self, netns: str, args: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *args], start_new_session=True, **kw)
        self._other.append(proc)
        return proc

    def in_pod(self, pod: Pod, fn: Any) -> Any:
        return run_in_netns(pod.path, fn)

    # -- teardown ----------------------------------------------------------------------------------------
    def destroy(self) -> None:
        for pp in self._procs:
            pp.kill()
        for proc in self._other:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        for feeder in self._feeders.values():
            feeder.stop()
        for name in reversed(self._netns):
            sh("ip", "netns", "del", name, check=False)
        self._netns.clear()


@contextlib.contextmanager
def bench_testbed(prefix: str, workdir: str | None = None) -> Iterator[Testbed]:
    """A Testbed named PREFIX<pid> in `workdir` (kept afterwards) or in a fresh temporary dir (removed);
    destroyed (processes killed, namespaces deleted) however the bench ends."""
    base = Path(workdir or tempfile.mkdtemp(prefix=f"{prefix}-bench-"))
    bed = Testbed(f"{prefix}{os.getpid()}", base)
    try:
        yield bed
    finally:
        bed.destroy()
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)


def root_main(what: str, run: Callable[[], Any]) -> None:
    """`python -m` entry of a testbed bench: refuses without root, prints the result as JSON."""
    if os.geteuid() != 0:
        sys.exit(f"the {what} benchmark needs root (network namespaces)")
    print(json.dumps(run(), indent=2))


# -- workloads run inside the pods -------------------------------------------------------------------------


def echo_main(ports: Sequence[int], peers_log: str) -> None:
    """An echo app (blocking, a thread per connection): echoes every byte, propagates the half-close and
    appends each client's address to `peers_log` (what the app SAW as the source)."""
    import socket as s

    def serve(conn: s.socket, addr: Any) -> None:
        with open(peers_log, "a") as f:
            f.write(f"{addr[0]}:{addr[1]}\n")
        buf = bytearray(256 * 1024)
        view = memoryview(buf)
        try:
            while True:
                n = conn.recv_into(buf)
                if not n:
                    conn.shutdown(s.SHUT_WR)
                    break
                conn.sendall(view[:n])
        except OSError:
            pass
        finally:
            conn.close()

    def accept(lsock: s.socket) -> None:
        while True:
            conn, addr = lsock.accept()
            threading.Thread(target=serve, args=(conn, addr), daemon=True).start()

    socks = []
    for port in ports:
        lsock = s.socket()
        lsock.setsockopt(s.SOL_SOCKET, s.SO_REUSEADDR, 1)
        lsock.bind(("0.0.0.0", port))
        lsock.listen(512)
        socks.append(lsock)
    for lsock in socks[1:]:
        threading.Thread(target=accept, args=(lsock,), daemon=True).start()
    print("echo ready", flush=True)
    accept(socks[0])


def start_echo(bed: Testbed, pod: Pod, ports: Sequence[int]) -> Path:
    """Run `echo_main` in `pod`; returns the peers log. Waits until it listens."""
    peers = bed.workdir / f"peers-{pod.name}.log"
    peers.write_text("")
    code = f"from ambient.bench.testbed import echo_main; echo_main({list(ports)!r}, {str(peers)!r})"
    proc = bed.spawn(pod.netns, [sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if b"echo ready" not in line:
        raise RuntimeError(f"echo app in {pod.name} did not start")
    return peers


def pod_socket(pod: Pod, mark: int | None = None) -> Any:
    """A blocking TCP socket created inside the pod netns (the pod's own traffic: redirected)."""
    import socket as s

    def make() -> s.socket:
        sock = s.socket()
        if mark is not None:
            sock.setsockopt(s.SOL_SOCKET, getattr(s, "SO_MARK", 36), mark)
        return sock

    return run_in_netns(pod.path, make)


def echo_transfer(pod: Pod, ip: str, port: int, data: bytes, timeout: float = 60.0) -> bytes:
    """From `pod`: connect, send `data`, half-close, read the echo to EOF."""
    sock = pod_socket(pod)
    sock.settimeout(timeout)
    received = bytearray()
    errors: list[BaseException] = []
    try:
        sock.connect((ip, port))

        def send() -> None:
            try:
                view = memoryview(data)
                for off in range(0, len(view), 1 << 20):
                    sock.sendall(view[off : off + (1 << 20)])
                sock.shutdown(2 - 1)  # SHUT_WR
            except BaseException as exc:
                errors.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        buf = bytearray(1 << 20)
        while True:
            n = sock.recv_into(buf)
            if not n:
                break
            received += buf[:n]
        sender.join(timeout)
    finally:
        sock.close()
    if errors:
        raise errors[0]
    return bytes(received)
