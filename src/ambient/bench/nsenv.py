"""A pair of network namespaces joined by a veth, and the processes the benchmarks run inside them.

`NetnsPair` creates `bench-<pid>-<n>c` (client) and `bench-<pid>-<n>s` (server) with a veth between them
(10.254.14.1/24 <-> 10.254.14.2/24, both ends inside the pair: the root namespace gets no interface, route
or address) and loopback up in both. Processes are started with `ip netns exec`, which execs the command,
so each `Popen.pid` is the process itself.

Invariants:
- Leaving the `with` block (normally, by exception, or by SIGTERM turned into SystemExit by the CLI) stops
  every process started through the pair (SIGTERM, then SIGKILL after 3 s) and deletes both namespaces.
- Every process started here has a bounded lifetime: callers pass a timeout to `run`, and long-running
  servers are stopped on exit. Output goes to log files in a temporary directory (never an unread pipe that
  could fill up and stall the process); the tail of the log is quoted in errors.
- Traffic stays inside the pair: servers bind the pair's addresses or the namespace's own loopback.
- `remove_stale()` deletes only `bench-<pid>-*` namespaces whose creating process <pid> no longer exists
  (and the leftover processes inside them), so a killed earlier run is cleaned up without touching a
  concurrent run's namespaces.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ambient.bench.errors import BenchError, ToolMissing

PREFIX = "bench-"
CLIENT_ADDR = "10.254.14.1"
SERVER_ADDR = "10.254.14.2"
_counter = itertools.count(1)
_NAME_RE = re.compile(r"^bench-(\d+)-\d+[cs]$")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if check and proc.returncode != 0:
        raise BenchError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}", hint="the benchmark needs root")
    return proc


def list_netns() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def remove_stale() -> list[str]:
    """Delete bench namespaces left by runs whose process is gone (after killing what still runs in
    them: servers and stunnels that run started and could not stop, e.g. after SIGKILL); returns them."""
    removed = []
    for name in list_netns():
        m = _NAME_RE.match(name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            for pid in _ip("netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ValueError, ProcessLookupError):
                    pass
            _ip("netns", "delete", name, check=False)
            removed.append(name)
    return removed


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolMissing(tool)
    return path


class NetnsPair:
    """Two namespaces and a veth; see the module docstring. Use as a context manager."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise BenchError("network namespaces need root", hint="run `make bench` as root")
        require("ip")
        n = next(_counter)
        self.client = f"{PREFIX}{os.getpid()}-{n}c"
        self.server = f"{PREFIX}{os.getpid()}-{n}s"
        self.client_addr = CLIENT_ADDR
        self.server_addr = SERVER_ADDR
        self._procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="ambient-bench-")
        self.tmp = Path(self._tmp.name)

    def __enter__(self) -> NetnsPair:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _create(self) -> None:
        _ip("netns", "add", self.client)
        _ip("netns", "add", self.server)
        # Create the veth inside the client netns and put its peer straight into the server netns, so no
        # interface ever appears in the root namespace (no name clash with other users of the host).
        _ip("-n", self.client, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", self.server)
        for ns, addr in ((self.client, self.client_addr), (self.server, self.server_addr)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "veth0")
            _ip("-n", ns, "link", "set", "veth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            # Per-namespace sysctls: the connection-rate benchmark opens tens of thousands of short
            # connections; without these the client runs out of ephemeral ports (TIME_WAIT).
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.ip_local_port_range=1024 65000",
                    "net.ipv4.tcp_tw_reuse=1",
                ],
                capture_output=True,
                timeout=10,
                check=False,
            )

    def close(self) -> None:
        for proc, _log in self._procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for proc, _log in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._procs.clear()
        for ns in (self.client, self.server):
            _ip("netns", "delete", ns, check=False)
        self._tmp.cleanup()

    # ------------------------------------------------------------------------------------- processes

    def spawn(self, ns: str, argv: list[str], *, label: str) -> subprocess.Popen[bytes]:
        """Start a long-running process in `ns` (stopped when the pair closes)."""
        log = self.tmp / f"{label}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT
            )
        self._procs.append((proc, log))
        return proc

    def run(self, ns: str, argv: list[str], *, timeout: float) -> str:
        """Run a command in `ns` to completion (killed after `timeout`); returns stdout, raises on failure."""
        try:
            proc = subprocess.run(
                ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"`{' '.join(argv[:3])} ...` did not finish within {timeout:.0f} s") from e
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise BenchError(f"`{' '.join(argv[:3])} ...` exited {proc.returncode}: {' | '.join(detail)}")
        return proc.stdout

    def log_tail(self, proc: subprocess.Popen[bytes], lines: int = 5) -> str:
        for p, log in self._procs:
            if p is proc and log.exists():
                return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
        return ""

    def _label(self, proc: subprocess.Popen[bytes]) -> str:
        return next((log.stem for p, log in self._procs if p is proc), "process")

    def wait_listening(self, ns: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """Wait until something listens on TCP `port` in `ns`; fail early if `proc` exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"{self._label(proc)} exited {proc.returncode}: {self.log_tail(proc)}")
            out = subprocess.run(
                ["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise BenchError(
            f"{self._label(proc)}: nothing listens on port {port} in {ns} after {timeout:.0f} s: {self.log_tail(proc)}"
        )


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (a node proxy's or a waypoint's worker processes are its children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:  # the task ended meanwhile
                continue
    return out


def process_environ(pid: int) -> dict[str, str]:
    """The environment a process started with ({} once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def process_gone(pid: int) -> bool:
    """The process exited (reaped, or a zombie waiting for its parent)."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def tree_cpu_seconds(pids: Sequence[int]) -> float:
    """`cpu_seconds` of the processes and their live descendants (workers included)."""
    return cpu_seconds([p for pid in pids for p in process_tree(pid)])


def cpu_seconds(pids: list[int]) -> float:
    """user+system CPU time consumed so far by the processes (all their threads), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the full line)
    return total / ticks
