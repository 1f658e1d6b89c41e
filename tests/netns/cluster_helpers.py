"""Helpers for the cluster netns tests: run Python snippets inside a netns, TCP echo, leftovers checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ambient.cluster import layout as L
from ambient.cluster import network, processes

# Accepts one connection, replies with "<peer ip>|<bytes received>" (the server side of the echo test).
ECHO_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
print("ready", flush=True)
c, peer = s.accept()
data = b""
while not data.endswith(b"\n"):
    chunk = c.recv(65536)
    if not chunk:
        break
    data += chunk
c.sendall(peer[0].encode() + b"|" + data)
c.close()
"""

ECHO_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(sys.argv[3].encode() + b"\n")
out = b""
while True:
    chunk = c.recv(65536)
    if not chunk:
        break
    out += chunk
sys.stdout.write(out.decode())
"""

# Tries to connect; prints a JSON {"ok": bool, "error": str, "seconds": float}.
PROBE = r"""
import json, socket, sys, time
t = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    r = {"ok": True, "error": ""}
except OSError as e:
    r = {"ok": False, "error": type(e).__name__ + ": " + str(e)}
r["seconds"] = time.monotonic() - t
print(json.dumps(r))
"""


def in_netns(netns: str, code: str, *args: str) -> list[str]:
    return ["nsenter", f"--net={L.netns_path(netns)}", "--", sys.executable, "-c", code, *args]


def probe(netns: str, host: str, port: int = 80, timeout: float = 2.0) -> dict[str, object]:
    out = subprocess.run(in_netns(netns, PROBE, host, str(port), str(timeout)), capture_output=True,
                         text=True, timeout=30, check=True)
    return dict(json.loads(out.stdout))


def tcp_echo(server_netns: str, server_ip: str, client_netns: str, message: str, port: int = 8080) -> str:
    server = subprocess.Popen(in_netns(server_netns, ECHO_SERVER, str(port)), stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        out = subprocess.run(in_netns(client_netns, ECHO_CLIENT, server_ip, str(port), message),
                             capture_output=True, text=True, timeout=30, check=True)
        return out.stdout
    finally:
        server.kill()
        server.wait()


def link_stats(netns: str, ifname: str) -> dict[str, int]:
    out = subprocess.run(["ip", "-n", netns, "-j", "-s", "link", "show", ifname], capture_output=True,
                         text=True, check=True)
    stats = json.loads(out.stdout)[0]["stats64"]
    return {"rx": int(stats["rx"]["packets"]), "tx": int(stats["tx"]["packets"])}


def root_links_into(cluster: str) -> list[str]:
    """Links of the root netns whose peer lives in one of the cluster's namespaces (must be none)."""
    ids = network.netns_ids(None)
    bad = []
    for link in network.links(None):
        nsid = link.get("link_netnsid")
        if nsid is not None and L.is_cluster_netns(cluster, ids.get(int(str(nsid)), "")):
            bad.append(str(link.get("ifname")))
    return bad


def leftovers(cluster: str, state_dir: Path) -> list[str]:
    """Everything of `cluster` still on the machine (empty after a complete delete)."""
    found = [f"netns {n}" for n in network.cluster_netns(cluster)]
    found += [f"/etc/netns/{p.name}" for p in network.etc_netns_dirs(cluster)]
    if state_dir.exists():
        found.append(f"state dir {state_dir}")
    marker = f"AMBIENT_COMPONENT_OF={state_dir}".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if marker in env.split(b"\0"):
                found.append(f"process {entry}")
    mounts = Path("/proc/self/mounts").read_text()
    found += [f"mount {line.split()[1]}" for line in mounts.splitlines()
              if f"/amb-{cluster}-" in line.split()[1] or line.split()[1].startswith(str(state_dir))]
    return found


def force_cleanup(cluster: str) -> None:
    names = network.cluster_netns(cluster)
    processes.kill_netns_processes(names)
    network.destroy_network(cluster)
