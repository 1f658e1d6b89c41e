"""The kubelet's hands: pod sandboxes (netns + resolv.conf + CNI) and container processes. Blocking calls.

A sandbox is the pod's network namespace `amb-<cluster>-pod-<uid12>` with the network the node's CNI chain
gives it, plus `/etc/netns/<netns>/resolv.conf` (which `ip netns exec` bind-mounts over /etc/resolv.conf for
every container and every `ambient exec`). A container is a process started with `ip netns exec <netns>`,
in its own session/process group (so the whole tree is signalled at once), logging to
`<state>/logs/pods/<ns>_<pod>_<container>.log`.

Invariants:
- A record `<state>/nodes/<node>/kubelet/<uid>.json` is written BEFORE the netns is created and removed only
  AFTER the netns, the CNI allocation and the resolv.conf are gone: a kubelet restarted after any crash finds
  everything it may have to clean up (no netns and no IP leaks).
- `teardown_sandbox` is idempotent and tolerates every piece being already gone.
- Pod processes are never started before the sandbox network is up (the caller enforces the order).
- Recorded pids carry their /proc start time, so a recycled pid is never signalled or adopted.
- Every container gets env `AMBIENT_TOKEN_FILE`: a token signed for exactly its pod (namespace, service
  account, name, uid, node) that the CA accepts for that pod's own SPIFFE identity only; it is removed with
  the sandbox.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ambient.cluster import layout as L
from ambient.cluster.errors import ClusterError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PodRuntimeError(ClusterError):
    """A pod sandbox or container could not be created or removed."""


class StartError(PodRuntimeError):
    """A container cannot be started (missing executable, bad working dir): shown as its waiting reason."""


@dataclass
class ContainerRecord:
    pid: int = 0
    starttime: int = 0
    restart_count: int = 0
    started_at: str = ""


@dataclass
class PodRecord:
    uid: str
    namespace: str
    name: str
    netns: str
    ip: str = ""
    gateway: str = ""
    containers: dict[str, ContainerRecord] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PodRecord:
        data = json.loads(text)
        containers = {k: ContainerRecord(**v) for k, v in (data.pop("containers", None) or {}).items()}
        return cls(containers=containers, **data)


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot), or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(text.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, starttime: int) -> bool:
    if pid <= 0:
        return False
    st = proc_starttime(pid)
    if st is None or (starttime and st != starttime):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class RecordStore:
    """The kubelet's on-disk records of the pods it runs (one JSON file per pod uid)."""

    def __init__(self, state_dir: Path, node: str) -> None:
        self.dir = state_dir / "nodes" / node / "kubelet"
        self.dir.mkdir(parents=True, exist_ok=True)

    def save(self, rec: PodRecord) -> None:
        path = self.dir / f"{rec.uid}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(rec.to_json())
        os.replace(tmp, path)

    def remove(self, uid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{uid}.json").unlink()

    def load(self, uid: str) -> PodRecord | None:
        try:
            return PodRecord.from_json((self.dir / f"{uid}.json").read_text())
        except (OSError, ValueError, TypeError):
            return None

    def load_all(self) -> list[PodRecord]:
        out = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                out.append(PodRecord.from_json(path.read_text()))
            except (OSError, ValueError, TypeError):
                path.unlink(missing_ok=True)  # a torn record from a crash mid-write of a new pod
        return out


def resolv_conf_text(namespace: str, nameserver: str = L.DNS_SERVICE_IP) -> str:
    domain = L.CLUSTER_DOMAIN
    return (f"nameserver {nameserver}\nsearch {namespace}.svc.{domain} svc.{domain} {domain}\n"
            "options ndots:5\n")


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PodRuntimeError(f"{what} failed: {proc.stderr.strip() or f'exit {proc.returncode}'}",
                              hint=f"command: {' '.join(argv)}")


def create_netns(netns: str, namespace: str) -> None:
    """Create the pod netns (lo stays down until CNI's loopback plugin) and its resolv.conf."""
    etc = L.ETC_NETNS_DIR / netns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(resolv_conf_text(namespace))
    if not L.netns_path(netns).exists():
        _run(["ip", "netns", "add", netns], f"creating network namespace {netns}")


def teardown_sandbox(cni: Any, rec: PodRecord) -> None:
    """CNI DEL, delete the netns and /etc/netns entry (idempotent). Raises only when CNI DEL fails."""
    path = L.netns_path(rec.netns)
    error: Exception | None = None
    try:
        cni.delete(rec.uid, rec.name, rec.namespace, path if path.exists() else None)
    except ClusterError as exc:
        error = exc
    if path.exists():
        subprocess.run(["ip", "netns", "del", rec.netns], capture_output=True, check=False)
    shutil.rmtree(L.ETC_NETNS_DIR / rec.netns, ignore_errors=True)
    if error is not None:
        raise error


def container_env(pod: dict[str, Any], container: dict[str, Any], node_name: str, pod_ip: str) -> dict[str, str]:
    """The environment of a container: a clean base plus its `env` (values and simple fieldRefs)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    # The interpreter's bin dir first, so `python3 -m ambient...` sample apps find the project's venv.
    path = os.pathsep.join([str(Path(sys.executable).parent), DEFAULT_PATH])
    env = {"PATH": path, "HOME": "/root", "HOSTNAME": str(meta.get("name", "")), "LANG": "C.UTF-8"}
    fields = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName"), "status.podIP": pod_ip,
    }
    for item in container.get("env") or []:
        name = item.get("name")
        if not name:
            continue
        if item.get("value") is not None:
            env[name] = str(item["value"])
        else:
            ref = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            env[name] = str(fields.get(ref) or "") if ref else ""
    return env


def write_pod_token(state_dir: Path, node: str, pod: dict[str, Any]) -> Path:
    """Mint the pod's "projected service-account token" (controlplane.pod_tokens) into
    `<state>/nodes/<node>/pods/<uid>/token` (0600) and return its path. Re-minted on every call (cheap), so
    a restarted container always finds a token for its current pod uid."""
    from ambient.controlplane.pod_tokens import PodClaims, load_or_create_key, mint, pod_token_path

    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    claims = PodClaims(namespace=str(meta.get("namespace") or "default"),
                       service_account=str(spec.get("serviceAccountName") or "default"),
                       pod=str(meta.get("name") or ""), uid=str(meta.get("uid") or ""), node=node)
    path = pod_token_path(state_dir, node, claims.uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A private temporary name: the containers of one pod start concurrently and each writes the token.
    tmp = path.with_name(f".token.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(mint(load_or_create_key(state_dir), claims))  # no newline: clients send the bytes verbatim
    os.replace(tmp, path)
    return path


def remove_pod_token(state_dir: Path, node: str, uid: str) -> None:
    from ambient.controlplane.pod_tokens import pod_token_path

    shutil.rmtree(pod_token_path(state_dir, node, uid).parent, ignore_errors=True)


def resolve_command(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The argv of a container (command + args) with argv[0] resolved; raises StartError if impossible."""
    argv = [str(a) for a in (container.get("command") or [])] + [str(a) for a in (container.get("args") or [])]
    if not argv:
        raise StartError("no command: the local cluster runs containers[].command + args "
                         "(image is informational)")
    exe = argv[0]
    if "/" in exe:
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise StartError(f"executable not found: {exe}")
        return argv
    found = shutil.which(exe, path=env.get("PATH", DEFAULT_PATH))
    if found is None:
        raise StartError(f"executable not found: {exe}")
    return [found, *argv[1:]]


def log_path(state_dir: Path, namespace: str, pod: str, container: str) -> Path:
    return state_dir / "logs" / "pods" / f"{namespace}_{pod}_{container}.log"


def start_container(netns: str, argv: list[str], env: dict[str, str], workdir: str | None,
                    log_file: Path) -> subprocess.Popen[bytes]:
    """Start argv inside the pod netns in a new session; stdout+stderr appended to `log_file`."""
    if workdir and not os.path.isdir(workdir):
        raise StartError(f"working directory not found: {workdir}")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log, open(os.devnull, "rb") as devnull:
        try:
            return subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdin=devnull, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, cwd=workdir or "/",
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            raise StartError(f"cannot start {argv[0]}: {exc.strerror}") from exc


def signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_process_group(pid: int, starttime: int, grace: float) -> None:
    """SIGTERM the container's process group, SIGKILL after `grace` seconds (blocking)."""
    if not process_alive(pid, starttime):
        signal_group(pid, signal.SIGKILL)  # stragglers of a group whose leader already exited
        return
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not process_alive(pid, starttime):
            break
        time.sleep(0.05)
    signal_group(pid, signal.SIGKILL)
