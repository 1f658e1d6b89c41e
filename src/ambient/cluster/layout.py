"""Naming and addressing of a local hermetic cluster: the single source of every name, path and address.

Pure (no I/O except `save_layout`/`load_layout`). Everyone that needs a cluster name, a netns name, a node
address or a state path asks this module, so that `delete` can always find what `create` (or a kubelet)
made, even after a crash.

Invariants:
- every network namespace of cluster C is named `amb-C-...` (`netns_prefix(C)`); cluster names contain no
  `-`, so the prefix of one cluster is never the prefix of another's namespaces;
- node k (1-based) is named `node-k`, lives in netns `amb-C-node-k`, has underlay address 172.18.0.(10+k)/16
  and pod CIDR 10.244.k.0/24 with gateway 10.244.k.1 on the node's CNI bridge `cni0`;
- the underlay netns `amb-C-underlay` holds the bridge `br0` (172.18.0.1/16) and the cluster DNS address
  172.18.0.2; service VIPs come from 10.96.0.0/16 (DNS VIP 10.96.0.10);
- the layout is written to `<state>/cluster.json` before anything else is built.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ambient.cluster.errors import ClusterError, ClusterNotFoundError, InvalidClusterNameError

DEFAULT_CLUSTER = "ambient"
DEFAULT_STATE_ROOT = Path("/var/lib/ambient")
NETNS_RUN_DIR = Path("/run/netns")
ETC_NETNS_DIR = Path("/etc/netns")

UNDERLAY_CIDR = "172.18.0.0/16"
UNDERLAY_GATEWAY = "172.18.0.1"  # br0 in the underlay netns
DNS_SERVER_IP = "172.18.0.2"  # the cluster DNS listens here (also on br0)
CONTROLPLANE_IP = "172.18.0.3"  # the control plane (xDS + CA) listens here (also on br0)
CONTROLPLANE_PORT = 15012
POD_SUPERNET = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
# Every destination a packet inside the cluster may legitimately have; the firewall rejects the rest.
CLUSTER_CIDRS = (UNDERLAY_CIDR, POD_SUPERNET, SERVICE_CIDR, "127.0.0.0/8")

MAX_NODES = 200  # 172.18.0.(10+k) must stay a host address; also bounds the pod CIDR third octet
CNI_CONFLIST_NAME = "10-ambient.conflist"
CNI_NETWORK_NAME = "ambient"
CNI_SYSTEM_BIN_DIR = Path("/usr/lib/cni")

# No '-' so that `amb-<name>-` is unambiguous; short so that names derived from it stay readable.
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,31}$")


def validate_cluster_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidClusterNameError(
            f"invalid cluster name {name!r}: expected 1-32 lowercase letters or digits, starting with a letter",
            hint="e.g. --name ambient or --name dev2 (no '-', because network namespaces are named amb-<name>-*)",
        )
    return name


def default_cluster_name() -> str:
    return os.environ.get("AMBIENT_CLUSTER") or DEFAULT_CLUSTER


def default_state_dir(cluster: str | None = None) -> Path:
    """`$AMBIENT_STATE_DIR`, else `/var/lib/ambient/<cluster>` (same rule as the API client's socket path)."""
    env = os.environ.get("AMBIENT_STATE_DIR")
    if env:
        return Path(env)
    return DEFAULT_STATE_ROOT / (cluster or default_cluster_name())


def netns_prefix(cluster: str) -> str:
    return f"amb-{cluster}-"


def underlay_netns_name(cluster: str) -> str:
    return f"amb-{cluster}-underlay"


def node_netns_name(cluster: str, index: int) -> str:
    return f"amb-{cluster}-node-{index}"


def pod_netns_name(cluster: str, pod_uid: str) -> str:
    """`amb-<cluster>-pod-<first 12 hex digits of the uid>` (dashes of a UUID dropped)."""
    hexpart = re.sub(r"[^0-9a-f]", "", pod_uid.lower())[:12]
    if not hexpart:
        raise ClusterError(f"pod uid {pod_uid!r} has no hex digits to derive a netns name from")
    return f"amb-{cluster}-pod-{hexpart}"


def netns_path(name: str) -> Path:
    return NETNS_RUN_DIR / name


def is_cluster_netns(cluster: str, netns: str) -> bool:
    return netns.startswith(netns_prefix(cluster))


def cluster_of_netns(netns: str) -> str | None:
    """The cluster that owns a netns name, or None when it is not one of ours."""
    m = re.match(r"^amb-([a-z][a-z0-9]*)-", netns)
    return m.group(1) if m else None


@dataclass(frozen=True)
class NodeLayout:
    name: str
    index: int
    netns: str
    ip: str  # without prefix length; the underlay is a /16
    pod_cidr: str
    pod_gateway: str
    cni_conf_dir: str
    cni_bin_dir: str
    ipam_data_dir: str
    run_dir: str

    @property
    def netns_path(self) -> Path:
        return netns_path(self.netns)

    @property
    def cni_conflist_path(self) -> Path:
        return Path(self.cni_conf_dir) / CNI_CONFLIST_NAME


@dataclass(frozen=True)
class ClusterLayout:
    name: str
    state_dir: str
    underlay_netns: str
    nodes: list[NodeLayout] = field(default_factory=list)
    version: int = 1

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def layout_file(self) -> Path:
        return Path(self.state_dir) / "cluster.json"

    @property
    def api_socket(self) -> Path:
        return Path(self.state_dir) / "apiserver.sock"

    @property
    def log_dir(self) -> Path:
        return Path(self.state_dir) / "logs"

    @property
    def pid_dir(self) -> Path:
        return Path(self.state_dir) / "pids"

    @property
    def pods_dir(self) -> Path:
        return Path(self.state_dir) / "pods"

    @property
    def netns_prefix(self) -> str:
        return netns_prefix(self.name)

    def node(self, name: str) -> NodeLayout:
        for n in self.nodes:
            if n.name == name:
                return n
        known = ", ".join(n.name for n in self.nodes)
        raise ClusterError(f"cluster {self.name!r} has no node {name!r} (nodes: {known})",
                           hint="`ambient get nodes` lists them")

    def node_for_ip(self, ip: str) -> NodeLayout | None:
        addr = ipaddress.ip_address(ip)
        for n in self.nodes:
            if addr in ipaddress.ip_network(n.pod_cidr) or ip == n.ip:
                return n
        return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterLayout:
        nodes = [NodeLayout(**n) for n in data.get("nodes", [])]
        return cls(name=data["name"], state_dir=data["state_dir"], underlay_netns=data["underlay_netns"],
                   nodes=nodes, version=int(data.get("version", 1)))


def build_layout(name: str, nodes: int = 2, state_dir: str | os.PathLike[str] | None = None) -> ClusterLayout:
    """The layout of a new cluster (pure: nothing is created)."""
    validate_cluster_name(name)
    if not 1 <= nodes <= MAX_NODES:
        raise ClusterError(f"a cluster needs between 1 and {MAX_NODES} nodes, got {nodes}")
    state = Path(state_dir) if state_dir is not None else default_state_dir(name)
    state = state.absolute()
    node_list = []
    for k in range(1, nodes + 1):
        node_name = f"node-{k}"
        node_dir = state / "nodes" / node_name
        node_list.append(NodeLayout(
            name=node_name,
            index=k,
            netns=node_netns_name(name, k),
            ip=node_ip(k),
            pod_cidr=f"10.244.{k}.0/24",
            pod_gateway=f"10.244.{k}.1",
            cni_conf_dir=str(node_dir / "cni" / "net.d"),
            cni_bin_dir=str(node_dir / "cni" / "bin"),
            ipam_data_dir=str(node_dir / "cni" / "ipam"),
            run_dir=str(node_dir / "run"),
        ))
    return ClusterLayout(name=name, state_dir=str(state), underlay_netns=underlay_netns_name(name),
                         nodes=node_list)


def node_ip(index: int) -> str:
    return str(ipaddress.ip_address("172.18.0.0") + 10 + index)


def save_layout(layout: ClusterLayout) -> Path:
    path = layout.layout_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(layout.to_json(), indent=2) + "\n")
    os.replace(tmp, path)  # atomic: a reader never sees half a layout
    return path


def load_layout(cluster_or_state_dir: str | os.PathLike[str] | None = None) -> ClusterLayout:
    """Load `<state>/cluster.json` given a state dir, or a cluster name (its default/registered state dir).

    A `Path`, or a string with a `/`, is a state dir; any other string is a cluster name, even when a
    folder of that name happens to exist in the current directory (the state dir is never guessed)."""
    if cluster_or_state_dir is None:
        cluster_or_state_dir = default_cluster_name()
    candidate = Path(cluster_or_state_dir)
    if isinstance(cluster_or_state_dir, os.PathLike) or os.sep in str(cluster_or_state_dir):
        state = candidate
        label = str(candidate)
    else:
        name = str(cluster_or_state_dir)
        state = registered_state_dir(name) or default_state_dir(name)
        label = name
    path = state / "cluster.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterNotFoundError(
            f"no cluster {label!r}: {path} does not exist",
            hint="`ambient cluster list` shows the clusters; `ambient cluster create` makes one",
        ) from None
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot read cluster layout {path}: {exc}") from exc
    return ClusterLayout.from_json(data)


# --- registry: where each cluster's state dir is, so `list`/`delete` find clusters with custom state dirs ---

def registry_dir() -> Path:
    return Path(os.environ.get("AMBIENT_REGISTRY_DIR") or "/run/ambient/clusters")


def register_cluster(name: str, state_dir: str | os.PathLike[str]) -> None:
    reg = registry_dir()
    reg.mkdir(parents=True, exist_ok=True)
    (reg / name).write_text(str(Path(state_dir).absolute()) + "\n")


def unregister_cluster(name: str) -> None:
    try:
        (registry_dir() / name).unlink()
    except FileNotFoundError:
        pass


def registered_state_dir(name: str) -> Path | None:
    try:
        text = (registry_dir() / name).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return Path(text) if text else None


def registered_clusters() -> dict[str, Path]:
    reg = registry_dir()
    out: dict[str, Path] = {}
    if reg.is_dir():
        for entry in sorted(reg.iterdir()):
            if _NAME_RE.match(entry.name):
                path = registered_state_dir(entry.name)
                if path is not None:
                    out[entry.name] = path
    return out
