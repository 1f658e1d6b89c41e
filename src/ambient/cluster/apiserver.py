"""The cluster's API server component: `ambient.api.server` with the local pod runtime attached.

The API package serves objects and protocols only; what `pods/log`, `pods/exec` and `pods/portforward` need
from a running pod (its log file, a process in its network namespace, a connection from inside it) is the
cluster's, so it is supplied here (`LocalPods`, an `ambient.api.pods.PodConnector`) - the same mechanisms
as `ambient logs`, `ambient exec` and `ambient port-forward`. The mirror pods of the node components
(`cluster.staticpods`) reach their component: its log file, its node's network namespace.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from ambient.api.errors import ValidationError
from ambient.api.server import main as api_main
from ambient.cluster import layout as L
from ambient.cluster import podruntime as rt
from ambient.cluster import processes
from ambient.cluster.portforward import PortForwardError, _pod_target, connect_target, pod_netns
from ambient.cluster.staticpods import component_name, pod_log_path, previous_run, static_component

Obj = dict[str, Any]


class LocalPods:
    """Pods of one local cluster, reached through their network namespaces (root in the root netns)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.layout = L.load_layout(state_dir)
        self.cluster = self.layout.name

    def log_path(self, pod: Obj, container: str) -> Path:
        """The container's log file; for the mirror pod of a node component, that component's log (what
        the supervisor appends its output to, restart markers included)."""
        return pod_log_path(self.layout, pod, container)

    def previous_log(self, pod: Obj, container: str) -> bytes | None:
        """`kubectl logs --previous`: a node component's previous run (its log is split at the supervisor's
        start markers); None for other pods (their runs are appended to one log without markers)."""
        static = static_component(self.layout, pod)
        if static is None:
            return None
        comp, node = static
        name = component_name(comp, node.name)
        try:
            data = processes.log_file(self.layout, name).read_bytes()
        except FileNotFoundError:
            return None
        return previous_run(data, name)

    async def exec(
        self, pod: Obj, container: Obj, command: list[str], stdin: bool, tty: int | None = None
    ) -> asyncio.subprocess.Process:
        meta, status = pod["metadata"], pod.get("status") or {}
        netns = pod_netns(self.layout, pod)
        if not L.netns_path(netns).exists():
            raise ValidationError(f"pod {meta.get('namespace')}/{meta['name']} has no network namespace ({netns})")
        env = rt.container_env(pod, container, (pod.get("spec") or {}).get("nodeName") or "",
                               str(status.get("podIP") or ""))
        try:
            argv = rt.resolve_command({"command": command}, env)
        except rt.StartError as exc:
            raise ValidationError(f"exec: {exc.message}") from None
        workdir = container.get("workingDir")
        cwd = workdir if workdir and await asyncio.to_thread(os.path.isdir, workdir) else "/"
        return await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", netns, *argv, env=env, cwd=cwd,
            stdin=tty if tty is not None else asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=tty if tty is not None else asyncio.subprocess.PIPE,
            stderr=tty if tty is not None else asyncio.subprocess.PIPE, start_new_session=True,
        )

    async def connect(self, pod: Obj, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await connect_target(_pod_target(self.layout, pod, port))
        except PortForwardError as exc:
            raise ValidationError(exc.message) from None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    state_dir = Path(args[args.index("--state-dir") + 1]) if "--state-dir" in args else None
    api_main(args, pod_connector=LocalPods(state_dir) if state_dir is not None else None)


if __name__ == "__main__":
    main()
