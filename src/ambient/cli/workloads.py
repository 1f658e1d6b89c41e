"""`ambient exec`, `ambient logs`, `ambient port-forward`: reach into the pods of the local cluster.

- exec: runs CMD inside the pod netns with `ip netns exec` (which also bind-mounts the pod's resolv.conf),
  with the container's environment and working dir; stdin/stdout/stderr are the caller's; the exit code is
  passed through (127 when the executable does not exist).
- logs: a container's log file (`<state>/logs/pods/<ns>_<pod>_<container>.log`), or a component's
  (`<state>/logs/<component>[-<node>].log`) when the target is a component name (apiserver, dns, kubelet, ...).
- port-forward: 127.0.0.1:LOCAL on the machine -> a pod (or a Ready endpoint of a Service) inside its netns.

Heavy imports happen inside the commands (the CLI's start-up time rule).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ambient.cli.context import CliState, state
from ambient.cli.errors import CliError, UsageError

COMPONENTS = ("apiserver", "controller-manager", "dns", "kubelet", "ztunnel", "node-agent", "controlplane",
              "supervisor", "supervisor-watchdog")
PER_NODE = ("kubelet", "ztunnel", "node-agent")

app = typer.Typer(help="exec / logs / port-forward into pods of the local cluster.")


def _layout(st: CliState) -> Any:
    from ambient.cluster import layout as L

    return L.load_layout(st.socket_path.parent)


def _running_pod(st: CliState, ref: str, namespace: str) -> dict[str, Any]:
    """The running pod behind `ref` (NAME, pod/NAME, deploy/NAME, svc/NAME), as kubectl picks it."""
    from ambient.cli import targets

    client = st.client()
    pod = targets.resolve_pod(client.get, client.list, ref, namespace)
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or not status.get("podIP"):
        why = status.get("message") or status.get("reason") or ""
        raise CliError(f"pod {namespace}/{name} is not running (phase {status.get('phase') or 'Pending'}"
                       + (f": {why})" if why else ")"),
                       hint=f"`ambient get pod {name} -n {namespace} -o yaml` shows its status")
    return pod


def _container(pod: dict[str, Any], name: str | None) -> dict[str, Any]:
    """The container to use (kubectl's defaulting, with its note on stderr)."""
    from ambient.cli import targets

    spec, note = targets.default_container(pod, name)
    if note:
        sys.stderr.write(note + "\n")
    return spec


def exec_command(
    ctx: typer.Context,
    pod: Annotated[str, typer.Argument(help="Pod: NAME, pod/NAME, deploy/NAME or svc/NAME.")],
    command: Annotated[list[str] | None, typer.Argument(help="Command and arguments (after --).")] = None,
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "default",
    container: Annotated[str | None, typer.Option("--container", "-c")] = None,
    stdin: Annotated[bool, typer.Option("--stdin", "-i", help="Accepted for kubectl habits: stdin is "
                                        "always passed through.")] = False,
    tty: Annotated[bool, typer.Option("--tty", "-t", help="Accepted for kubectl habits (the terminal is "
                                      "passed through as it is).")] = False,
) -> None:
    """Run a command inside a pod's network namespace (exit code passed through)."""
    import os
    import subprocess

    from ambient.cluster import layout as L
    from ambient.cluster import podruntime as rt
    from ambient.cluster.portforward import pod_netns

    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given", hint=f"ambient exec {pod} -- CMD [ARGS...]")
    st = state(ctx)
    obj = _running_pod(st, pod, namespace)
    spec = _container(obj, container)
    layout = _layout(st)
    netns = pod_netns(layout, obj)  # a node component's mirror pod: its node's netns
    if not L.netns_path(netns).exists():
        raise CliError(f"the network namespace of pod {namespace}/{obj['metadata']['name']} ({netns}) "
                       "does not exist",
                       hint="the pod may be terminating; `ambient get pods` shows it")
    env = rt.container_env(obj, spec, (obj.get("spec") or {}).get("nodeName") or "", obj["status"]["podIP"])
    try:
        argv = rt.resolve_command({"command": command}, env)
    except rt.StartError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        raise typer.Exit(127) from None
    workdir = spec.get("workingDir")
    cwd = workdir if workdir and os.path.isdir(workdir) else "/"
    try:
        code = subprocess.call(["ip", "netns", "exec", netns, *argv], env=env, cwd=cwd)
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code if code >= 0 else 128 - code)


def _component_log(st: CliState, component: str, node: str | None) -> Path:
    layout = _layout(st)
    if component in PER_NODE:
        nodes = [n.name for n in layout.nodes]
        if node is None:
            if len(nodes) != 1:
                raise UsageError(f"{component} runs on every node: choose one with --node",
                                 hint=f"nodes: {', '.join(nodes)}")
            node = nodes[0]
        layout.node(node)  # clear error for an unknown node
        name = f"{component}-{node}"
    else:
        name = component
    path = layout.log_dir / f"{name}.log"
    if not path.exists():
        raise CliError(f"no log for component {name} ({path} does not exist)",
                       hint="is that component part of this cluster? `ambient cluster list`")
    return path


def _pod_log(st: CliState, ref: str, namespace: str, container: str | None) -> Path:
    from ambient.cli import targets
    from ambient.cluster.staticpods import pod_log_path

    client = st.client()
    pod = targets.resolve_pod(client.get, client.list, ref, namespace)
    name = pod["metadata"]["name"]
    spec = _container(pod, container)
    path = pod_log_path(_layout(st), pod, spec["name"])  # a node component's mirror pod: the component's log
    if not path.exists():
        status = pod.get("status") or {}
        why = status.get("message") or status.get("reason") or f"phase {status.get('phase') or 'Pending'}"
        raise CliError(f"container {spec['name']} of pod {namespace}/{name} has not started yet ({why})")
    return path


def _print_file(path: Path, follow: bool, tail: int | None) -> None:
    out = sys.stdout.buffer
    with open(path, "rb") as fh:
        data = fh.read()
        if tail is not None and tail >= 0:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail:]) if tail else b""
        out.write(data)
        out.flush()
        while follow:
            chunk = fh.read(65536)
            if chunk:
                out.write(chunk)
                out.flush()
            else:
                time.sleep(0.2)


def logs_command(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="Pod (NAME, pod/NAME, deploy/NAME, svc/NAME), or a component: "
                                          + ", ".join(COMPONENTS))],
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "default",
    container: Annotated[str | None, typer.Option("--container", "-c")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    node: Annotated[str | None, typer.Option("--node", help="Node of a per-node component.")] = None,
    tail: Annotated[int | None, typer.Option("--tail", help="Only the last N lines.")] = None,
) -> None:
    """Print a pod container's log, or a cluster component's log."""
    st = state(ctx)
    if "/" in target:
        path = _pod_log(st, target, namespace, container)
    elif target in COMPONENTS or node is not None:
        if target not in COMPONENTS:
            raise UsageError(f"unknown component {target!r}", hint=f"components: {', '.join(COMPONENTS)}")
        path = _component_log(st, target, node)
    else:
        path = _pod_log(st, target, namespace, container)
    try:
        _print_file(path, follow, tail)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def port_forward_command(
    ctx: typer.Context,
    resource: Annotated[str, typer.Argument(help="svc/NAME, deploy/NAME, pod/NAME or a pod NAME")],
    ports: Annotated[str, typer.Argument(help="LOCAL:REMOTE (LOCAL 0 picks a free port)")],
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "default",
) -> None:
    """Forward 127.0.0.1:LOCAL on this machine to a pod or service port inside the cluster."""
    import asyncio

    from ambient.cli import targets
    from ambient.cluster import portforward as pf

    st = state(ctx)
    kind, name = targets.parse_target(resource)
    local, remote = pf.parse_ports(ports)
    layout = _layout(st)
    client = st.client()
    if kind == "Deployment":  # kubectl forwards to one pod of the workload, chosen once
        kind, name = "Pod", targets.resolve_pod(client.get, client.list, resource, namespace)["metadata"]["name"]
    # Resolve once up front so a typo fails now, not at the first connection.
    first = pf.resolve_target(layout, client.get, kind, name, namespace, remote)

    async def resolve() -> pf.Target:
        return await asyncio.to_thread(pf.resolve_target, layout, client.get, kind, name, namespace, remote)

    async def run() -> None:
        fwd = pf.PortForwarder(local, resolve)
        try:
            port = await fwd.start()
        except OSError as exc:
            raise CliError(f"cannot listen on 127.0.0.1:{local}: {exc.strerror}",
                           hint="choose another LOCAL port (0 picks a free one)") from None
        print(f"Forwarding from 127.0.0.1:{port} -> {resource}:{remote} (pod {first.pod})", flush=True)
        await fwd.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


# Options may come before or after the pod (`exec POD -c CTR -- CMD`, kubectl's order); everything after
# `--` is the command, options included.
app.command("exec")(exec_command)
app.command("logs")(logs_command)
app.command("port-forward")(port_forward_command)


def register(root: typer.Typer) -> None:
    """Called by `ambient.cli.main` at start-up: add exec, logs and port-forward to the root app."""
    root.command("exec")(exec_command)
    root.command("logs")(logs_command)
    root.command("port-forward")(port_forward_command)
