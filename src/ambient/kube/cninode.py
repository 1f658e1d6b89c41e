"""The node agent's CNI install step on Kubernetes (`python -m ambient.kube.cninode run|prestop|uninstall`).

Role, in the `install-cni` container of the node agent DaemonSet:
- `run`: put a host shim at `<CNI bin dir>/ambient-cni` and chain the plugin into the primary CNI's conflist
  (`ambient.cni.install.install_plugin`); serve the plugin's pod/namespace lookups on
  `<run dir>/kubeapi.sock` (read-only relay to the Kubernetes API); re-chain when the primary CNI rewrites
  its conflist; write this process's host pid to `<run dir>/cni-root.pid` (pid file and socket are removed
  on stop, so ADD fails at once, closed, until the next installer runs).
- `prestop` (the container's preStop hook): unchain the plugin only on an uninstall (DaemonSet or namespace
  gone or being deleted, or our RBAC gone); during an upgrade the entry stays, so no pod starts
  un-captured.
- `uninstall`: unchain unconditionally (manual clean-up).

Why a shim: the container runtime executes CNI plugins on the host, where this image's Python does not exist.
The shim is POSIX sh: DEL/CHECK/GC/STATUS succeed on the spot (so a left-over entry, or a node without a
running agent, never blocks pod deletion), VERSION answers directly, and ADD `chroot`s into this container's
root (`/proc/<pid>/root`, visible because the pod uses hostPID) to run the real `ambient-cni`. Without a
running installer ADD fails with a CNI error: fail closed, the runtime retries the sandbox.

Invariants: the host bin and conf dirs are mounted at the same paths as on the host (so the plugin symlink
resolves there); every file write is atomic (install_plugin); the relay only answers GET of one pod or one
namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client as k8s

from ambient.cni.install import install_plugin, uninstall_plugin
from ambient.cni.plugin import PLUGIN_TYPE, SUPPORTED_VERSIONS
from ambient.core import process
from ambient.core.errors import AmbientError
from ambient.kube.errors import KubeApiError, KubeError
from ambient.kube.source import KubeSource

log = logging.getLogger(__name__)

SHIM_NAME = ".ambient-cni-shim"
PID_FILE = "cni-root.pid"
RELAY_SOCKET = "kubeapi.sock"
PLUGIN_IN_IMAGE = "/usr/local/bin/ambient-cni"
DAEMONSET = "ambient-node-agent"
RECHECK_INTERVAL = 5.0


def shim_script(run_dir: str, plugin: str = PLUGIN_IN_IMAGE) -> str:
    """The host-side launcher (see module docstring). Pure text; `plugin` is the path inside the root."""
    versions = json.dumps({"cniVersion": "1.0.0", "supportedVersions": list(SUPPORTED_VERSIONS)})
    error = json.dumps({
        "cniVersion": "1.0.0",
        "code": 100,
        "msg": "ambient node agent is not running on this node; the pod is not started un-captured",
        "details": f"no live installer pid in {run_dir}/{PID_FILE} (hint: kubectl -n ambient-system get pods)",
    })
    return f"""#!/bin/sh
# {PLUGIN_TYPE}: host shim of the ambient chained CNI plugin (written by ambient.kube.cninode; do not edit).
case "$CNI_COMMAND" in
  ADD) ;;
  VERSION) echo '{versions}'; exit 0 ;;
  *) exit 0 ;;  # DEL, CHECK, GC, STATUS: no-ops, so pod deletion never depends on the agent
esac
PATH="/usr/sbin:/usr/bin:/sbin:/bin${{PATH:+:$PATH}}"  # runtimes may exec plugins with a bare environment
pid=$(cat '{run_dir}/{PID_FILE}' 2>/dev/null)
root="/proc/$pid/root"
if [ -z "$pid" ] || [ ! -x "$root{plugin}" ]; then
  echo '{error}'
  exit 1
fi
exec chroot "$root" '{plugin}'
"""


def plugin_config(run_dir: str, exclude_namespaces: Sequence[str], log_level: str = "info") -> dict[str, Any]:
    """Our conflist entry (fields of `ambient.cni.plugin.PluginConfig`)."""
    return {
        "log_level": log_level,
        "agent_run_dir": run_dir,
        "api_socket": f"{run_dir}/{RELAY_SOCKET}",
        "ambient_enabled": True,
        "exclude_namespaces": list(exclude_namespaces),
        "proxy_pod_labels": {"app": "ztunnel"},
    }


def find_conflist(conf_dir: Path, name: str = "") -> Path | None:
    """The conflist the runtime uses: `name` if given, else the first `*.conflist` in lexical order."""
    if name:
        path = conf_dir / name
        return path if path.exists() else None
    candidates = sorted(p for p in conf_dir.glob("*.conflist") if not p.name.startswith("."))
    return candidates[0] if candidates else None


def is_chained(conflist: Path) -> bool:
    try:
        plugins = json.loads(conflist.read_text()).get("plugins") or []
    except (OSError, ValueError, AttributeError):
        return False
    return any(isinstance(p, dict) and p.get("type") == PLUGIN_TYPE for p in plugins)


def write_shim(bin_dir: Path, run_dir: str, plugin: str = PLUGIN_IN_IMAGE) -> Path:
    fd, tmp = tempfile.mkstemp(dir=bin_dir, prefix=f".{SHIM_NAME}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(shim_script(run_dir, plugin))
        os.chmod(tmp, 0o755)
        os.replace(tmp, bin_dir / SHIM_NAME)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return bin_dir / SHIM_NAME


def install(bin_dir: Path, conflist: Path, run_dir: str, exclude: Sequence[str], plugin: str = PLUGIN_IN_IMAGE) -> None:
    """Shim + symlink `ambient-cni` -> shim + conflist entry (idempotent, atomic)."""
    shim = write_shim(bin_dir, run_dir, plugin)
    install_plugin(bin_dir, conflist, plugin_config(run_dir, exclude), executable=shim)


# ------------------------------------------------------------------------------------------ relay


def relay_app(source: KubeSource) -> web.Application:
    """GET /api/v1/namespaces/{ns}[/pods/{name}] answered from the Kubernetes API (Kubernetes JSON)."""

    async def answer(kind: str, name: str, namespace: str | None) -> web.Response:
        try:
            obj = await source.get(kind, name, namespace)
        except KubeApiError as exc:
            code = exc.http_status or 503
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "message": exc.message}
            return web.json_response(body, status=code)
        return web.json_response(obj)

    async def pod(request: web.Request) -> web.Response:
        return await answer("Pod", request.match_info["name"], request.match_info["ns"])

    async def namespace(request: web.Request) -> web.Response:
        return await answer("Namespace", request.match_info["ns"], None)

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", pod)
    app.router.add_get("/api/v1/namespaces/{ns}", namespace)
    return app


async def serve_relay(source: KubeSource, socket_path: Path) -> web.AppRunner:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)  # a stale socket of a previous run
    runner = web.AppRunner(relay_app(source), access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(socket_path)).start()
    os.chmod(socket_path, 0o600)  # root only: the runtime (and so the plugin) runs as root
    return runner


# ------------------------------------------------------------------------------------------ commands


class Settings:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env)
        self.bin_dir = Path(env.get("CNI_BIN_DIR") or "/opt/cni/bin")
        self.conf_dir = Path(env.get("CNI_CONF_DIR") or "/etc/cni/net.d")
        self.conf_name = env.get("CNI_CONF_NAME", "")
        self.run_dir = env.get("AMBIENT_RUN_DIR") or "/var/run/ambient"
        raw = env.get("AMBIENT_EXCLUDE_NAMESPACES", "kube-system")
        self.exclude = [n.strip() for n in raw.split(",") if n.strip()]
        self.namespace = env.get("POD_NAMESPACE") or "ambient-system"


def keep_chained(cfg: Settings, plugin: str = PLUGIN_IN_IMAGE) -> Path | None:
    """One reconcile step: (re-)install if the conflist exists and lacks our entry. Returns the conflist."""
    conflist = find_conflist(cfg.conf_dir, cfg.conf_name)
    if conflist is None:
        return None
    if not is_chained(conflist) or not (cfg.bin_dir / PLUGIN_TYPE).exists():
        install(cfg.bin_dir, conflist, cfg.run_dir, cfg.exclude, plugin)
        log.info("chained %s into %s", PLUGIN_TYPE, conflist)
    return conflist


def _write_pid(path: Path) -> None:
    # the host pid (the pod uses hostPID): the host shim chroots into /proc/<pid>/root
    path.write_text(f"{os.getpid()}\n")


async def run(cfg: Settings, source: KubeSource, stop: asyncio.Event, *, plugin: str = PLUGIN_IN_IMAGE,
              interval: float = RECHECK_INTERVAL) -> None:
    """Serve the relay, keep the plugin chained, until `stop` is set."""
    run_dir = Path(cfg.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    runner = await serve_relay(source, run_dir / RELAY_SOCKET)
    _write_pid(run_dir / PID_FILE)
    try:
        waited = False
        while not stop.is_set():
            try:
                if keep_chained(cfg, plugin) is None and not waited:
                    log.warning("no CNI conflist in %s yet; waiting for the primary CNI to write it", cfg.conf_dir)
                    waited = True
            except (AmbientError, OSError) as exc:  # e.g. a half-written conflist of the primary CNI: retry
                log.error("cannot chain %s: %s", PLUGIN_TYPE, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        await runner.cleanup()
        # without these the shim would chroot into a stopped container and the plugin dial a dead socket;
        # gone, ADD fails at once with "node agent is not running" until the next installer starts
        for name in (PID_FILE, RELAY_SOCKET):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(run_dir / name)


async def being_uninstalled(source: KubeSource, namespace: str) -> bool:
    """True for an uninstall, False for an upgrade or a restart (see `prestop`).

    Uninstall signs, any of: our DaemonSet is gone or has a deletionTimestamp; our namespace is terminating
    (its pods may be deleted before its DaemonSet); our own access is gone (401/403: `kubectl delete -k`
    removes the RBAC objects and the service account while the pods still terminate). Upgrades never
    remove any of them. Other failures (API unreachable) raise: the caller cannot tell.
    """
    apps, core = k8s.AppsV1Api(source.api), k8s.CoreV1Api(source.api)
    try:
        ns = await source.request_json(
            lambda **kw: core.read_namespace(namespace, **kw), f"get namespace {namespace}"
        )
        if (ns.get("metadata") or {}).get("deletionTimestamp"):
            return True
        ds = await source.request_json(
            lambda **kw: apps.read_namespaced_daemon_set(DAEMONSET, namespace, **kw),
            f"get daemonset {namespace}/{DAEMONSET}",
        )
    except KubeApiError as exc:
        if exc.http_status in (401, 403, 404):
            return True
        raise
    return bool((ds.get("metadata") or {}).get("deletionTimestamp"))


def unchain(cfg: Settings) -> None:
    conflist = find_conflist(cfg.conf_dir, cfg.conf_name)
    if conflist is not None:
        # the executable stays: the runtime replays DEL with the cached config; the shim answers it
        uninstall_plugin(cfg.bin_dir, conflist)
        log.info("removed %s from %s", PLUGIN_TYPE, conflist)


async def prestop(cfg: Settings, source: KubeSource) -> bool:
    """Unchain if this is an uninstall; returns whether it did. When the API cannot be reached the entry is
    kept (fail closed: pods of this node wait for an agent rather than start un-captured); docs/kubernetes.md
    says how to unchain by hand."""
    try:
        removed = await being_uninstalled(source, cfg.namespace)
    except KubeError as exc:
        log.warning("cannot tell an upgrade from an uninstall (%s); keeping the plugin chained", exc)
        return False
    if removed:
        unchain(cfg)
    else:
        log.info("DaemonSet %s still present (upgrade or restart): keeping the plugin chained", DAEMONSET)
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    process.configure_logging("INFO", fmt="%(asctime)s %(levelname)s %(message)s")
    command = args[0] if args else ""
    cfg = Settings()
    if command == "uninstall":
        unchain(cfg)
        return 0
    if command not in ("run", "prestop"):
        print("usage: python -m ambient.kube.cninode run|prestop|uninstall", file=sys.stderr)
        return 2

    async def go(shutdown: process.Shutdown) -> None:
        stop = asyncio.Event()
        shutdown.on_signal(stop.set)
        async with await KubeSource.connect() as source:
            if command == "prestop":
                await prestop(cfg, source)
            else:
                await run(cfg, source, stop)

    try:
        process.run(go)
        return 0
    except KubeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
