"""The cluster's network: underlay netns + bridge, one netns per node, routes between nodes, hermeticity.

Topology (addresses from `layout`):

    amb-C-underlay:  br0 172.18.0.1/16 (+ .2/32 for the DNS, .3/32 for the control plane), veth-n<k> (bridge ports)
    amb-C-node-k:    eth0 172.18.0.(10+k)/16 (peer of veth-n<k>), ip_forward=1,
                     routes 10.244.j.0/24 via 172.18.0.(10+j) for every other node j,
                     10.96.0.0/16 (service VIPs, DNATed by kube-proxy rules) via 172.18.0.1,
                     cni0 (made by the CNI bridge plugin on the first pod)

Invariants (hermeticity):
- every link is created *inside* a cluster netns (`ip -n`): the veth pairs join the underlay and a node
  and nothing ever joins the root netns, so no packet can reach the machine's own network;
- no default route anywhere: an `unreachable default` route makes connects to outside addresses fail at once;
- an nftables table `inet ambient_hermetic` in the underlay and every node rejects (and counts in the named
  counter `blocked`) any packet whose destination is outside `layout.CLUSTER_CIDRS`, and every IPv6 packet
  (IPv6 is disabled in these namespaces);
- `build_network` refuses to run when any `amb-C-` netns exists (never half-merge with leftovers);
  `destroy_network` works on any partial state and is idempotent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from ambient.cluster import layout as L
from ambient.cluster.errors import NetworkSetupError

UNDERLAY_BRIDGE_MAC = "02:00:ac:12:00:01"  # locally administered; each cluster has its own underlay

HERMETIC_TABLE = "ambient_hermetic"
BLOCKED_COUNTER = "blocked"


def run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True,
        timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a network command; failures become NetworkSetupError with the command and its stderr."""
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except FileNotFoundError as exc:
        raise NetworkSetupError(f"command not found: {argv[0]}",
                                hint="install iproute2, nftables and util-linux") from exc
    except subprocess.TimeoutExpired as exc:
        raise NetworkSetupError(f"command timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise NetworkSetupError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {detail}")
    return proc


def ip_batch(netns: str | None, commands: Iterable[str]) -> None:
    """Run many `ip` commands in one process (fast), inside `netns` when given."""
    lines = "\n".join(commands) + "\n"
    argv = ["ip", "-batch", "-"] if netns is None else ["ip", "-n", netns, "-batch", "-"]
    run(argv, stdin=lines)


def pin_bridge_address(netns: str, bridge: str = "br0") -> None:
    """Give `bridge` its current address as its own (clusters made before the underlay bridge had a fixed
    address): a new port with a lower MAC then no longer changes it under the nodes' ARP caches."""
    out = run(["ip", "-n", netns, "-br", "link", "show", bridge]).stdout.split()
    if len(out) >= 3:
        run(["ip", "-n", netns, "link", "set", bridge, "address", out[2]])


def nsenter_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` in `netns` (network namespace only; cheaper than `ip netns exec`)."""
    return ["nsenter", f"--net={L.netns_path(netns)}", "--", *argv]


def set_sysctls(netns: str, values: dict[str, str]) -> None:
    # One `sysctl` process for all keys of one namespace (process start is the expensive part).
    run(nsenter_argv(netns, ["sysctl", "-q", "-w", *[f"{k}={v}" for k, v in values.items()]]))


def hermetic_ruleset() -> str:
    """The nftables ruleset installed in the underlay and each node (pure text)."""
    cidrs = ", ".join(L.CLUSTER_CIDRS)
    reject = (f'meta nfproto ipv4 counter name "{BLOCKED_COUNTER}" reject with icmpx type admin-prohibited\n'
              f'    counter name "{BLOCKED_COUNTER}" drop')
    return f"""table inet {HERMETIC_TABLE} {{
  counter {BLOCKED_COUNTER} {{}}
  set cluster_v4 {{ type ipv4_addr; flags interval; elements = {{ {cidrs} }} }}
  chain prerouting {{ type filter hook prerouting priority 0; policy accept;
    iifname "lo" accept
    meta nfproto ipv4 ip daddr @cluster_v4 accept
    {reject}
  }}
  chain output {{ type filter hook output priority 0; policy accept;
    oifname "lo" accept
    meta nfproto ipv4 ip daddr @cluster_v4 accept
    {reject}
  }}
}}
"""


def list_netns() -> list[str]:
    """Names of the named network namespaces (/run/netns)."""
    try:
        return sorted(os.listdir(L.NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def cluster_netns(cluster: str) -> list[str]:
    return [n for n in list_netns() if L.is_cluster_netns(cluster, n)]


def build_network(layout: L.ClusterLayout) -> None:
    """Create the underlay, the nodes, their links, addresses, routes and firewall. Refuses leftovers."""
    leftovers = cluster_netns(layout.name)
    if leftovers:
        raise NetworkSetupError(
            f"network namespaces of cluster {layout.name!r} already exist: {', '.join(leftovers)}",
            hint=f"`ambient cluster delete --name {layout.name}` removes them",
        )
    under = layout.underlay_netns
    all_ns = [under, *[n.netns for n in layout.nodes]]
    ip_batch(None, [f"netns add {ns}" for ns in all_ns])

    # IPv6 off before any link exists, so no link-local address ever appears.
    no_v6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
    set_sysctls(under, no_v6)
    for node in layout.nodes:
        set_sysctls(node.netns, {**no_v6, "net.ipv4.ip_forward": "1",
                                 # replies from pods on cni0 to other nodes' pods arrive via eth0
                                 "net.ipv4.conf.all.rp_filter": "0",
                                 "net.ipv4.conf.default.rp_filter": "0"})

    cmds = [
        "link set lo up",
        # A fixed address: a bridge without one takes the lowest address of its ports, so adding a port later
        # (an outside host) would change it under the nodes' ARP caches and cut DNS and xDS until they expire.
        f"link add br0 address {UNDERLAY_BRIDGE_MAC} type bridge",
        f"addr add {L.UNDERLAY_GATEWAY}/16 dev br0",
        f"addr add {L.DNS_SERVER_IP}/32 dev br0",
        f"addr add {L.CONTROLPLANE_IP}/32 dev br0",
        "link set br0 up",
    ]
    for node in layout.nodes:
        # Both ends are born in cluster namespaces: the pair is created in the underlay and its peer is
        # moved straight into the node; the root netns never holds either end.
        cmds += [
            f"link add veth-n{node.index} type veth peer name eth0 netns {node.netns}",
            f"link set veth-n{node.index} master br0",
            f"link set veth-n{node.index} up",
            f"route add {node.pod_cidr} via {node.ip}",
        ]
    cmds.append("route add unreachable default")
    ip_batch(under, cmds)

    for node in layout.nodes:
        ncmds = ["link set lo up", f"addr add {node.ip}/16 dev eth0", "link set eth0 up"]
        for other in layout.nodes:
            if other.index != node.index:
                ncmds.append(f"route add {other.pod_cidr} via {other.ip}")
        # Service VIPs need a route for the node's own processes: the kube-proxy DNAT in OUTPUT runs after
        # the routing decision, which would otherwise hit `unreachable`. An unmatched VIP dies in the
        # underlay (no route there).
        ncmds.append(f"route add {L.SERVICE_CIDR} via {L.UNDERLAY_GATEWAY}")
        ncmds.append("route add unreachable default")
        ip_batch(node.netns, ncmds)

    ruleset = hermetic_ruleset()
    for ns in all_ns:
        run(nsenter_argv(ns, ["nft", "-f", "-"]), stdin=ruleset)


def blocked_packets(netns: str) -> int:
    """Packets rejected by the hermetic firewall of `netns` (tests and diagnostics)."""
    out = run(nsenter_argv(netns, ["nft", "-j", "list", "counter", "inet", HERMETIC_TABLE, BLOCKED_COUNTER]))
    for item in json.loads(out.stdout).get("nftables", []):
        if "counter" in item:
            return int(item["counter"]["packets"])
    return 0


def delete_netns(name: str) -> None:
    """Remove one named netns, even if its mount is already gone or the file is stale."""
    path = L.netns_path(name)
    proc = run(["ip", "netns", "del", name], check=False)
    if proc.returncode != 0 and path.exists():
        # A crash between creating the file and bind-mounting it leaves a plain file; or a mount is busy.
        run(["umount", "-l", str(path)], check=False)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise NetworkSetupError(f"cannot remove network namespace {name}: {exc}") from exc
    remove_etc_netns(name)


def remove_etc_netns(name: str) -> None:
    d = L.ETC_NETNS_DIR / name
    if d.exists():
        shutil.rmtree(d, ignore_errors=True)


def etc_netns_dirs(cluster: str) -> list[Path]:
    try:
        return sorted(p for p in L.ETC_NETNS_DIR.iterdir() if L.is_cluster_netns(cluster, p.name))
    except FileNotFoundError:
        return []


def destroy_network(cluster: str) -> list[str]:
    """Delete every `amb-<cluster>-` netns and /etc/netns dir. Kill processes in them first (processes.py).

    Returns the namespaces removed. Works on any partial state; idempotent.
    """
    removed = []
    names = cluster_netns(cluster)
    # Pods first, nodes next, underlay last: a pod's veth peer lives in its node's netns.
    names.sort(key=lambda n: (0 if "-pod-" in n else 1 if "-node-" in n else 2, n))
    for name in names:
        delete_netns(name)
        removed.append(name)
    for d in etc_netns_dirs(cluster):
        shutil.rmtree(d, ignore_errors=True)
    return removed


def links(netns: str | None) -> list[dict[str, object]]:
    """`ip -j -d link` of a netns (None: the current one), for hermeticity checks."""
    argv = ["ip", "-j", "-d", "link", "show"] if netns is None else ["ip", "-n", netns, "-j", "-d", "link", "show"]
    out = run(argv)
    return list(json.loads(out.stdout or "[]"))


def netns_ids(netns: str | None) -> dict[int, str]:
    """nsid -> netns name as seen from `netns` (None: the current netns); unnamed peers are absent."""
    argv = ["ip", "-j", "netns", "list-id"] if netns is None else ["ip", "-n", netns, "-j", "netns", "list-id"]
    out = run(argv)
    ids: dict[int, str] = {}
    for item in json.loads(out.stdout or "[]"):
        if "name" in item:
            ids[int(item["nsid"])] = str(item["name"])
    return ids


def foreign_peers(cluster: str) -> list[str]:
    """Links of cluster namespaces whose peer is NOT in a cluster namespace (must be empty: hermetic).

    A veth peer in the root netns shows up as a `link_netnsid` with no named netns behind it.
    """
    problems = []
    for ns in cluster_netns(cluster):
        ids = netns_ids(ns)
        for link in links(ns):
            nsid = link.get("link_netnsid")
            if nsid is None:
                continue
            peer = ids.get(int(str(nsid)))
            if peer is None or not L.is_cluster_netns(cluster, peer):
                problems.append(f"{ns}/{link.get('ifname')} -> {peer or 'unnamed netns (root?)'}")
    return problems
