"""Create, delete and list local clusters: the orchestration behind `ambient cluster create|delete|list`.

create = check root and name -> write cluster.json + registry entry (first, so a crash is always
deletable) -> build the network -> prepare each node's CNI -> start the supervisor (`cluster/supervisor.py`:
it starts every component and restarts any that exits) -> have it start the apiserver, wait for /healthz,
register the Node objects and the node components' DaemonSets (`cluster/staticpods.py`) -> start dns,
controller-manager, control plane, node agents, node proxies, kubelets (each only if its module exists) ->
check none of them exited -> wait for the kubelets' mirror pods of the node components. A failure at any
step tears everything down again (state kept for logs).

delete = stop the supervisor first (so nothing is restarted behind our back) -> stop recorded components
-> kill every process that is a component of this cluster (marked by the `AMBIENT_COMPONENT_OF` env var, so
even a supervisor or component whose pid was never recorded is found; supervisors first) or lives in one of
its namespaces -> unmount leftovers -> delete every `amb-<name>-` netns and /etc/netns entry -> remove the
state dir (unless kept) and the registry entry. Idempotent; works on any partial state.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ambient.cluster import layout as L
from ambient.cluster import network, processes
from ambient.cluster.cni import prepare_node
from ambient.cluster.errors import (
    ClusterError,
    ClusterExistsError,
    ClusterNotFoundError,
    ComponentError,
    NotRootError,
)

Progress = Callable[[str], None]
COMPONENT_MARKER_ENV = "AMBIENT_COMPONENT_OF"
API_HEALTH_TIMEOUT = 30.0
SETTLE_TIME = 0.5  # a component that dies on startup (bad import, port in use) does so within this


@dataclass(frozen=True)
class ComponentSpec:
    """A component of every cluster. `per_node` ones get `--node <name>` and run in the node netns."""

    name: str
    module: str
    netns: str = "root"  # "root" | "underlay" | "node"
    per_node: bool = False
    extra_args: tuple[str, ...] = ()

    def argv(self, layout: L.ClusterLayout, node: L.NodeLayout | None) -> list[str]:
        args = ["--state-dir", layout.state_dir]
        if node is not None:
            args += ["--node", node.name]
        return processes.python_module_argv(self.module, *args, *self.extra_args)


# Started in this order after the apiserver. Later issues append (ztunnel, node-agent, controlplane).
COMPONENTS: list[ComponentSpec] = [
    ComponentSpec("dns", "ambient.cluster.dns", netns="underlay"),
    ComponentSpec("controller-manager", "ambient.cluster.controllers"),
    # xDS + CA for the node proxies; in the underlay so every node reaches it over the cluster network.
    ComponentSpec("controlplane", "ambient.controlplane", netns="underlay",
                  extra_args=("--listen", f"{L.CONTROLPLANE_IP}:{L.CONTROLPLANE_PORT}")),
    # Before the kubelets: pods of enrolled namespaces fail CNI ADD (fail closed) until their agent listens.
    ComponentSpec("node-agent", "ambient.cluster.node_agent", netns="node", per_node=True),
    # The node proxy: takes captured pods from its node agent over ZDS, state and certificates from the
    # control plane. Started before the kubelets so the first enrolled pods find it ready.
    ComponentSpec("ztunnel", "ambient.cluster.node_proxy", netns="node", per_node=True),
    ComponentSpec("kubelet", "ambient.cluster.kubelet", netns="node", per_node=True),
]
NODE_AGENT_MODULE = "ambient.cluster.node_agent"
# Pods of these namespaces are never captured (the chained plugin skips them without asking anyone).
CNI_EXCLUDED_NAMESPACES = ("kube-system", "istio-system")
# ambient.api.server with the pod runtime attached (logs/exec/port-forward). Also on loopback with TLS for
# kubectl (root netns: unreachable from the cluster's namespaces); it writes
# <state>/kubeconfig and keeps its port across restarts.
APISERVER = ComponentSpec("apiserver", "ambient.cluster.apiserver", extra_args=("--tls", "127.0.0.1:0"))


@dataclass
class CreateResult:
    layout: L.ClusterLayout
    components: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # components whose module does not exist (yet)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterInfo:
    name: str
    nodes: int
    status: str  # "running" | "degraded" | "stopped"
    state_dir: str
    restarts: int = 0  # restarts done by the supervisor, all components together


def check_root(geteuid: Callable[[], int] | None = None) -> None:
    """Raise NotRootError unless running as root (`geteuid` injectable for tests)."""
    if (geteuid or os.geteuid)() != 0:
        raise NotRootError(
            "the local cluster needs root: it creates network namespaces, links, routes and firewall rules",
            hint="run it with sudo (e.g. `sudo ambient cluster create`)",
        )


def module_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _noop(_: str) -> None:
    pass


def existing_traces(name: str, state_dir: Path) -> list[str]:
    """What already exists of a cluster called `name` (empty: the name is free)."""
    traces = [f"netns {n}" for n in network.cluster_netns(name)]
    reg = L.registered_state_dir(name)
    if reg is not None:
        traces.append(f"registry entry ({reg})")
    running = marked_processes(str(state_dir))
    if running:
        traces.append(f"{len(running)} running component process(es) using {state_dir}")
    return traces


@contextlib.contextmanager
def _creation_lock(name: str) -> Iterator[None]:
    """Serialise concurrent `create` of the same name (the existence check and the first write race)."""
    reg = L.registry_dir()
    reg.mkdir(parents=True, exist_ok=True)
    fd = os.open(reg / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ClusterExistsError(f"cluster {name!r} is being created by another command right now",
                                     hint="wait for it, then `ambient cluster list`") from None
        yield
    finally:
        os.close(fd)


def create_cluster(name: str | None = None, nodes: int = 2, state_dir: str | os.PathLike[str] | None = None,
                   progress: Progress = _noop) -> CreateResult:
    check_root()
    name = L.validate_cluster_name(name or L.default_cluster_name())
    layout = L.build_layout(name, nodes, state_dir)
    _check_socket_paths(layout)
    with _creation_lock(name):
        return _create(layout, progress)


UNIX_PATH_MAX = 107  # bytes of a Unix socket path (sun_path is 108 with its terminating NUL)
LONGEST_SOCKET_NAME = "ztunnel-admin.sock"


def _check_socket_paths(layout: L.ClusterLayout) -> None:
    """Refuse a state dir too long for the components' Unix sockets (they live under it): otherwise a
    component would die at start with `AF_UNIX path too long`."""
    longest = max((Path(n.run_dir) / LONGEST_SOCKET_NAME for n in layout.nodes), key=lambda p: len(bytes(p)))
    if len(bytes(longest)) > UNIX_PATH_MAX:
        raise ClusterError(
            f"state dir {layout.state_dir} is too long for the cluster's Unix sockets ({longest} would be "
            f"{len(bytes(longest))} bytes; the limit is {UNIX_PATH_MAX})",
            hint=f"use a state dir of at most {len(str(layout.state_dir)) - len(bytes(longest)) + UNIX_PATH_MAX} "
                 "characters (--state-dir)",
        )


def _create(layout: L.ClusterLayout, progress: Progress) -> CreateResult:
    name, nodes = layout.name, len(layout.nodes)
    traces = existing_traces(name, layout.state_path)
    if traces:
        raise ClusterExistsError(
            f"cluster {name!r} already exists ({'; '.join(traces)})",
            hint=f"use another --name, or `ambient cluster delete --name {name}` first",
        )
    result = CreateResult(layout=layout)
    t0 = time.monotonic()

    def mark(step: str, started: float) -> None:
        result.timings[step] = round(time.monotonic() - started, 3)

    # Record the cluster before building anything: whatever happens next, `delete` can find it.
    L.save_layout(layout)
    L.register_cluster(name, layout.state_dir)
    try:
        t = time.monotonic()
        progress(f"building network: underlay + {nodes} node(s)")
        network.build_network(layout)
        for node in layout.nodes:
            prepare_node(node)
            if module_available(NODE_AGENT_MODULE):
                install_cni_plugin(layout, node)
        mark("network", t)

        progress("starting the supervisor")
        marker = {COMPONENT_MARKER_ENV: layout.state_dir}
        processes.start_supervisor(layout, env=marker)
        result.components[processes.WATCHDOG] = processes.start_component(
            layout, processes.WATCHDOG,
            processes.python_module_argv("ambient.cluster.supervisor", "--state-dir", layout.state_dir, "--watchdog"),
            env=marker)

        t = time.monotonic()
        if module_available(APISERVER.module):
            progress("starting API server")
            result.components["apiserver"] = _start(layout, APISERVER, None)
            wait_api_healthy(layout)
            register_nodes(layout)
            register_daemonsets(layout)
        else:
            result.skipped.append("apiserver")
        mark("apiserver", t)

        t = time.monotonic()
        started: list[str] = []
        for spec in COMPONENTS:
            if not module_available(spec.module):
                result.skipped.append(spec.name)
                continue
            targets: list[L.NodeLayout | None] = list(layout.nodes) if spec.per_node else [None]
            for target in targets:
                cname = spec.name if target is None else f"{spec.name}-{target.name}"
                progress(f"starting {cname}")
                result.components[cname] = _start(layout, spec, target)
                started.append(cname)
            if spec.module == NODE_AGENT_MODULE:
                wait_node_agents(layout)
        _check_stayed_up(layout, ["apiserver", *started] if "apiserver" in result.components else started)
        if "apiserver" in result.components and any(n.startswith("kubelet-") for n in started):
            wait_mirror_pods(layout)
        mark("components", t)
    except BaseException:
        progress("creation failed: cleaning up")
        delete_cluster(name, layout.state_dir, keep_state=True, _unregister=True)
        raise
    result.timings["total"] = round(time.monotonic() - t0, 3)
    return result


def install_cni_plugin(layout: L.ClusterLayout, node: L.NodeLayout) -> None:
    """Chain the mesh's CNI plugin after the node's primary network: it hands enrolled pods to the node
    agent over `<node run dir>/pluginevent.sock` and fails their ADD while the agent is away."""
    from ambient.cni.install import install_plugin

    install_plugin(node.cni_bin_dir, node.cni_conflist_path, {
        "log_level": "info",
        "agent_run_dir": node.run_dir,
        "api_socket": str(layout.api_socket),
        "ambient_enabled": True,
        "exclude_namespaces": list(CNI_EXCLUDED_NAMESPACES),
    })


def wait_node_agents(layout: L.ClusterLayout, timeout: float = 20.0) -> None:
    """Wait until every node agent listens for CNI events, so the first pods do not bounce off a closed door."""
    deadline = time.monotonic() + timeout
    for node in layout.nodes:
        sock = Path(node.run_dir) / "pluginevent.sock"
        while not sock.exists():
            if component_failed(layout, f"node-agent-{node.name}"):
                raise _died(layout, f"node-agent-{node.name}")
            if time.monotonic() > deadline:
                raise ComponentError(f"node agent of {node.name} did not listen on {sock} within {timeout:.0f}s",
                                     hint=f"see {processes.log_file(layout, f'node-agent-{node.name}')}")
            time.sleep(0.05)


def _start(layout: L.ClusterLayout, spec: ComponentSpec, node: L.NodeLayout | None) -> int:
    netns: str | None = None
    if spec.netns == "underlay":
        netns = layout.underlay_netns
    elif spec.netns == "node":
        assert node is not None
        netns = node.netns
    name = spec.name if node is None else f"{spec.name}-{node.name}"
    return processes.start_component(layout, name, spec.argv(layout, node), netns=netns,
                                     env={COMPONENT_MARKER_ENV: layout.state_dir})


def component_spec(layout: L.ClusterLayout, name: str) -> tuple[ComponentSpec, L.NodeLayout | None]:
    """The spec (and node) of a running cluster's component by its process name, e.g. "ztunnel-node-2"."""
    for spec in [APISERVER, *COMPONENTS]:
        if not spec.per_node and spec.name == name:
            return spec, None
        if spec.per_node:
            for node in layout.nodes:
                if name == f"{spec.name}-{node.name}":
                    return spec, node
    known = [APISERVER.name, *(s.name + ("-<node>" if s.per_node else "") for s in COMPONENTS)]
    raise ComponentError(f"no component named {name!r}", hint=f"components: {', '.join(known)}")


def restart_component(layout: L.ClusterLayout, name: str, *, kill: bool = False, timeout: float = 15.0) -> int:
    """Stop (SIGKILL when `kill`, else gracefully) and start one component again; returns the new pid.

    What a crash-and-restart looks like to the rest of the cluster (used by the restart tests). With `kill`
    and the supervisor running, the restart is the supervisor's (counted in `ambient cluster status`)."""
    spec, node = component_spec(layout, name)
    pid = processes.running_components(layout).get(name)
    if kill and pid is not None and processes.supervisor_pid(layout) is not None and processes.has_spec(layout, name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = processes.running_components(layout).get(name)
            if new is not None and new != pid:
                return new
            time.sleep(0.02)
        raise ComponentError(f"the supervisor did not restart {name} within {timeout:.0f}s",
                             hint=f"see {processes.log_file(layout, processes.SUPERVISOR)}")
    if pid is not None:
        if kill:
            processes.kill_component(layout, name)
        else:
            processes.stop_component(layout, name)
    return _start(layout, spec, node)


def component_failed(layout: L.ClusterLayout, name: str) -> bool:
    """Has `name` exited (even if the supervisor restarted it since)? For the checks during `create`."""
    from ambient.cluster.supervisor import read_status

    if processes.component_exited(layout, name):
        return True
    st = (read_status(layout).get("components") or {}).get(name) or {}
    return bool(st.get("last_exit"))


def _log_tail(layout: L.ClusterLayout, name: str, lines: int = 8) -> str:
    try:
        text = processes.log_file(layout, name).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _died(layout: L.ClusterLayout, name: str) -> ComponentError:
    tail = _log_tail(layout, name)
    return ComponentError(f"component {name} exited during startup" + (f":\n{tail}" if tail else ""),
                          hint=f"full log: {processes.log_file(layout, name)}")


def wait_api_healthy(layout: L.ClusterLayout, timeout: float = API_HEALTH_TIMEOUT) -> None:
    from ambient.api.client import ApiClient

    deadline = time.monotonic() + timeout
    with ApiClient(layout.api_socket, timeout=2.0) as api:
        while time.monotonic() < deadline:
            if layout.api_socket.exists() and api.healthy():
                return
            if component_failed(layout, "apiserver"):
                raise _died(layout, "apiserver")
            time.sleep(0.05)
    raise ComponentError(f"the API server did not become healthy within {timeout:.0f}s",
                         hint=f"see {processes.log_file(layout, 'apiserver')}")


def node_object(node: L.NodeLayout) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name,
                                                   "kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
    }


def node_status(node: L.NodeLayout) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "addresses": [{"type": "InternalIP", "address": node.ip}, {"type": "Hostname", "address": node.name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "NetworkReady",
                        "message": "node network namespace is up", "lastTransitionTime": now}],
    }


def register_nodes(layout: L.ClusterLayout) -> None:
    """Create (or refresh) the Node objects; their kubelets keep the status current afterwards."""
    from ambient.api.client import ApiClient

    with ApiClient(layout.api_socket) as api:
        api.apply_many([node_object(n) for n in layout.nodes])
        for n in layout.nodes:
            api.patch("Node", n.name, None, {"status": node_status(n)}, status=True)


def register_daemonsets(layout: L.ClusterLayout) -> None:
    """The DaemonSets `ztunnel` and `ambient-node-agent` in `ambient-system` (with the namespace and their
    ServiceAccounts), as a Kubernetes install has them; they describe what the supervisor runs, and the
    kubelets publish each node's processes as their mirror pods (`cluster.staticpods`)."""
    from ambient.api.client import ApiClient
    from ambient.cluster.staticpods import daemonsets

    with ApiClient(layout.api_socket) as api:
        api.apply_many(daemonsets(layout))


def wait_mirror_pods(layout: L.ClusterLayout, timeout: float = 20.0) -> None:
    """Wait until every kubelet published its node components' mirror pods, so `cluster create` returns with
    `kubectl -n ambient-system get pods` complete (they only appear once the kubelets run)."""
    from ambient.api.client import ApiClient
    from ambient.cluster.staticpods import NAMESPACE, STATIC_COMPONENTS, pod_name

    want = {pod_name(c, n.name) for c in STATIC_COMPONENTS for n in layout.nodes
            if processes.has_spec(layout, f"{c.component}-{n.name}")}
    deadline = time.monotonic() + timeout
    with ApiClient(layout.api_socket, timeout=2.0) as api:
        while True:
            have = {p["metadata"]["name"] for p in api.list("Pod", NAMESPACE)[0]}
            missing = sorted(want - have)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ComponentError(f"the kubelets did not publish the mirror pods {', '.join(missing)} within "
                                     f"{timeout:.0f}s", hint=f"see {processes.log_file(layout, 'kubelet-node-1')}")
            time.sleep(0.05)


def _check_stayed_up(layout: L.ClusterLayout, names: list[str]) -> None:
    if not names:
        return
    time.sleep(SETTLE_TIME)
    for name in names:
        if component_failed(layout, name):
            raise _died(layout, name)


# --- delete ---------------------------------------------------------------------------------------------

def marked_processes(state_dir: str) -> list[int]:
    """Pids whose environment marks them as components (or their children) of the cluster at `state_dir`."""
    marker = f"{COMPONENT_MARKER_ENV}={state_dir}".encode()
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            found.append(int(entry))
    return found


def _is_supervisor(pid: int) -> bool:
    try:
        return b"ambient.cluster.supervisor" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def _unmount_under(paths: list[str]) -> None:
    """Lazily unmount anything mounted at or below the given paths (deepest first)."""
    try:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return
    targets = [m for m in mounts if any(m == p or m.startswith(p.rstrip("/") + "/") for p in paths)]
    for m in sorted(set(targets), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True, check=False)


def delete_cluster(name: str | None = None, state_dir: str | os.PathLike[str] | None = None,
                   keep_state: bool = False, progress: Progress = _noop, *, _unregister: bool = True) -> bool:
    """Remove everything of cluster `name`; True if anything existed. Never fails on partial state."""
    check_root()
    name = L.validate_cluster_name(name or L.default_cluster_name())
    state = Path(state_dir) if state_dir is not None else (L.registered_state_dir(name)
                                                          or L.default_state_dir(name))
    state = state.absolute()
    try:
        layout: L.ClusterLayout | None = L.load_layout(state)
    except ClusterError:
        layout = None
    found = layout is not None or bool(network.cluster_netns(name)) or L.registered_state_dir(name) is not None

    if layout is not None:
        progress("stopping components")
        processes.stop_all_components(layout)
    # A supervisor whose pid file is lost (crash) would restart what we kill next: supervisors (and their
    # watchdogs, same module) go first, after the stopping flag that keeps a watchdog from starting another.
    processes.set_stopping(state)
    for _ in range(5):
        supervisors = [p for p in marked_processes(str(state)) if _is_supervisor(p)]
        if not supervisors:
            break
        found = True
        progress(f"stopping {len(supervisors)} leftover supervisor(s)")
        processes.terminate(supervisors, 1.0)
    stray = marked_processes(str(state))
    if stray:
        found = True
        progress(f"killing {len(stray)} leftover component process(es)")
        processes.terminate(stray, 1.0)
    names = network.cluster_netns(name)
    if names:
        progress(f"killing processes in {len(names)} network namespace(s)")
        processes.kill_netns_processes(names)
    _unmount_under([str(state)])
    progress("deleting network namespaces")
    network.destroy_network(name)
    if not keep_state and state.exists():
        progress(f"removing state {state}")
        shutil.rmtree(state, ignore_errors=True)
    if _unregister:
        L.unregister_cluster(name)
        _remove_lock(name)
    return found


def _remove_lock(name: str) -> None:
    """Remove the creation lock file unless a `create` holds it right now."""
    path = L.registry_dir() / f".{name}.lock"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


def delete_all(progress: Progress = _noop) -> list[str]:
    deleted = []
    for info in list_clusters():
        delete_cluster(info.name, info.state_dir, progress=progress)
        deleted.append(info.name)
    return deleted


# --- list -----------------------------------------------------------------------------------------------

def list_clusters() -> list[ClusterInfo]:
    """Clusters known on this machine: registered, in the default state root, or with namespaces."""
    candidates: dict[str, Path] = dict(L.registered_clusters())
    if L.DEFAULT_STATE_ROOT.is_dir():
        for d in sorted(L.DEFAULT_STATE_ROOT.iterdir()):
            if (d / "cluster.json").exists() and d.name not in candidates:
                candidates[d.name] = d
    for ns in network.list_netns():
        owner = L.cluster_of_netns(ns)
        if owner and owner not in candidates:
            candidates[owner] = L.default_state_dir(owner)
    out = []
    for name, state in sorted(candidates.items()):
        try:
            layout: L.ClusterLayout | None = L.load_layout(state)
        except ClusterError:
            layout = None
        have = set(network.cluster_netns(name))
        if layout is None:
            out.append(ClusterInfo(name, 0, "degraded" if have else "stopped", str(state)))
            continue
        wanted = {layout.underlay_netns, *(n.netns for n in layout.nodes)}
        running = processes.running_components(layout)
        supervised = set(processes.read_specs(layout))
        if not wanted & have and not running:
            status = "stopped"
        elif (wanted <= have and ("apiserver" in running or not module_available(APISERVER.module))
              and supervised <= set(running) and (not supervised or processes.supervisor_pid(layout) is not None)):
            status = "running"
        else:
            status = "degraded"  # `ambient cluster status` says which component is down
        out.append(ClusterInfo(name, len(layout.nodes), status, str(state), _restarts(layout)))
    return out


def _restarts(layout: L.ClusterLayout) -> int:
    from ambient.cluster.supervisor import read_status

    comps = read_status(layout).get("components") or {}
    return sum(int(c.get("restarts") or 0) for c in comps.values() if isinstance(c, dict))


@dataclass(frozen=True)
class ComponentStatus:
    """One row of `ambient cluster status`."""

    name: str
    status: str  # running | restarting | waiting (back-off) | down | stopped
    pid: int | None
    restarts: int
    last_exit: str  # "signal 9 (SIGKILL) at <time> after 12.3s" or ""
    since: float | None  # wall clock the current run started
    restart_at: float | None = None


def component_statuses(layout: L.ClusterLayout) -> tuple[int | None, list[ComponentStatus]]:
    """(supervisor pid or None, one row per component: wanted, running, or known to the supervisor)."""
    from ambient.cluster.supervisor import read_status

    sup = processes.supervisor_pid(layout)
    known = read_status(layout).get("components") or {}
    specs = processes.read_specs(layout)
    running = processes.running_components(layout)
    rows = []
    now = time.time()
    for name in sorted(set(known) | set(specs) | set(running)):
        st = known.get(name)
        st = st if isinstance(st, dict) else {}
        pid = running.get(name)
        restart_at = st.get("restart_at")
        if pid is not None:
            status = "running"
        elif name not in specs:
            status = "stopped"
        elif sup is None:
            status = "down"  # nobody will restart it: the supervisor itself is gone
        elif restart_at is not None and restart_at > now + 0.5:
            status = "waiting"
        else:
            status = "restarting"
        ex = st.get("last_exit") or {}
        last = ""
        if ex:
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(ex.get("at") or 0)))
            last = f"{ex.get('reason')} at {at} after {float(ex.get('ran_for') or 0):.1f}s"
        since = st.get("started_at") if pid is not None and st.get("pid") == pid else None
        rows.append(ComponentStatus(name, status, pid, int(st.get("restarts") or 0), last, since, restart_at))
    return sup, rows


def find_cluster(name: str) -> ClusterInfo:
    for info in list_clusters():
        if info.name == name:
            return info
    raise ClusterNotFoundError(f"no cluster named {name!r}", hint="`ambient cluster list` shows the clusters")
