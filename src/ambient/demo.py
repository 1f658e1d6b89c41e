"""`make demo`: bring up the local cluster, deploy the sample app, and show traffic crossing the nodes.

The story is told with the same `ambient` commands a user would type (each is printed before it runs), so
the output doubles as a tutorial. Re-running is safe: a healthy cluster is reused, a broken one is
recreated, and `apply` is idempotent. The cluster is left running at the end, with pointers on how to
explore it and how to tear it down.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ambient.core.errors import AmbientError

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "demo.yaml"
CLUSTER = os.environ.get("AMBIENT_CLUSTER", "ambient")


class DemoError(AmbientError):
    """A demo step failed; the message says which and what the command printed."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say()
    say(f"== {title}")


def ambient(
    *args: str, check: bool = True, show: bool = True, capture: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `ambient ARGS` as a user would, echoing the command line."""
    if show:
        say(f"$ ambient {shlex.join(args)}")
    proc = subprocess.run(
        [sys.executable, "-m", "ambient", *args], text=True, capture_output=capture or not show, check=False
    )
    if capture and show and proc.stdout:
        sys.stdout.write(proc.stdout)
    if check and proc.returncode != 0:
        raise DemoError(f"`ambient {shlex.join(args)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


def get_json(*args: str) -> Any:
    proc = ambient("get", *args, "-o", "json", show=False, capture=True)
    return json.loads(proc.stdout)


def ensure_cluster() -> None:
    from ambient.cluster.errors import ClusterError
    from ambient.cluster.lifecycle import find_cluster

    try:
        info = find_cluster(CLUSTER)
    except ClusterError:
        info = None
    if info is not None and info.status == "running":
        say(f"cluster {CLUSTER!r} is already running: reusing it")
        return
    if info is not None:
        say(f"cluster {CLUSTER!r} is {info.status}: recreating it")
        ambient("cluster", "delete", "--name", CLUSTER)
    ambient("cluster", "create", "--name", CLUSTER)


def wait_pods_ready(namespaces: list[str], timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """Wait until every pod of the sample is Ready; returns {namespace: pod object} (one per deployment)."""
    deadline = time.monotonic() + timeout
    while True:
        pods: dict[str, dict[str, Any]] = {}
        ready = True
        for ns in namespaces:
            items = [p for p in get_json("pods", "-n", ns)["items"] if not p["metadata"].get("deletionTimestamp")]
            if not items:
                ready = False
                continue
            pod = items[0]
            pods[ns] = pod
            conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            ready = ready and conditions.get("Ready") == "True"
        if ready:
            return pods
        if time.monotonic() > deadline:
            raise DemoError(
                f"sample pods not Ready after {timeout:.0f}s",
                hint="look at `ambient get pods -A` and `ambient logs kubelet --node node-1`",
            )
        time.sleep(0.5)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("make demo needs root: the local cluster is made of network namespaces (try: sudo make demo)")
    try:
        step("1. A local cluster: 2 nodes, each a network namespace, pods in namespaces of their own")
        ensure_cluster()
        ambient("get", "nodes")

        step("2. The sample: httpbin (namespace demo, node-2) and a curl client (namespace client, node-1)")
        ambient("apply", "-f", str(SAMPLE))
        pods = wait_pods_ready(["demo", "client"])
        ambient("get", "pods", "-A", "-o", "wide")
        ambient("get", "svc", "-n", "demo")

        curl = pods["client"]["metadata"]["name"]
        client_ip = pods["client"]["status"].get("podIP", "?")
        step("3. The client calls the service by its DNS name; the request crosses from node-1 to node-2")
        proc = ambient("exec", "-n", "client", curl, "--", "curl", "-sS", "-m", "10", "http://httpbin.demo:8000/ip",
                       capture=True)
        origin = json.loads(proc.stdout or "{}").get("origin")
        say()
        say(f"httpbin saw the request coming from {origin} - the curl pod's own IP is {client_ip}.")

        step("Explore")
        say(f"  . {ROOT}/.venv/bin/activate        # puts `ambient` on PATH")
        say("  ambient get pods -A -o wide")
        say(f"  ambient exec -n client {curl} -- curl -s http://httpbin.demo:8000/get")
        say("  ambient logs kubelet --node node-1")
        say("  ambient port-forward -n demo svc/httpbin 8080:8000   # then: curl localhost:8080/get")
        say("Tear down:")
        say("  ambient cluster delete")
    except AmbientError as exc:
        say(f"demo failed: {exc}")
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
