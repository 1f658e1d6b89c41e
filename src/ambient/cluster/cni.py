"""A minimal CNI runtime (the container-runtime side of the CNI spec 1.0) for the local cluster's nodes.

`CniRuntime(layout, node).add(...)` runs the node's conflist plugins in order (ADD), each with the previous
plugin's result as `prevResult`, then the `loopback` plugin for `lo`; `delete(...)` runs DEL in reverse order
with the cached ADD result. Plugins are the real reference binaries (`bridge`, `host-local`, `loopback`),
found through the node's `cni_bin_dir` (symlinks to /usr/lib/cni, so a chained plugin can be added per node),
and they run inside the node netns (so `cni0` and the host veth ends live there, never in the root netns).

Invariants:
- the conflist at `<cni_conf_dir>/10-ambient.conflist` is read on every call: a plugin appended to `plugins`
  later (the mesh's chained plugin) takes part without restarting anything;
- ADD that fails is rolled back with DEL (best effort) before CniError is raised, so no IP leaks;
- DEL is idempotent and tolerates a missing netns (IPAM is released by container id).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambient.cluster import layout as L
from ambient.cluster.errors import CniError

CNI_VERSION = "1.0.0"
PLUGIN_TIMEOUT = 30.0


@dataclass(frozen=True)
class CniResult:
    ip: str  # pod IPv4 address without prefix length
    gateway: str
    raw: dict[str, Any]


def node_conflist(node: L.NodeLayout) -> dict[str, Any]:
    """The primary network of a node (pure): bridge + host-local IPAM on the node's pod CIDR."""
    return {
        "cniVersion": CNI_VERSION,
        "name": L.CNI_NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,  # the server must see the real client pod IP
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr, "gateway": node.pod_gateway}]],
                    # default route to the node: service VIPs and other nodes' pods are reached through it
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": node.ipam_data_dir,
                },
            }
        ],
    }


def prepare_node(node: L.NodeLayout, system_bin_dir: Path = L.CNI_SYSTEM_BIN_DIR) -> None:
    """Write the node's conflist and link the reference plugins into its bin dir (idempotent)."""
    conf_dir, bin_dir = Path(node.cni_conf_dir), Path(node.cni_bin_dir)
    for d in (conf_dir, bin_dir, Path(node.ipam_data_dir), Path(node.run_dir), cache_dir(node)):
        d.mkdir(parents=True, exist_ok=True)
    if system_bin_dir.is_dir():
        for plugin in sorted(system_bin_dir.iterdir()):
            link = bin_dir / plugin.name
            if not link.exists() and not link.is_symlink():
                link.symlink_to(plugin)
    tmp = node.cni_conflist_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(node_conflist(node), indent=2) + "\n")
    os.replace(tmp, node.cni_conflist_path)


def cache_dir(node: L.NodeLayout) -> Path:
    return Path(node.cni_conf_dir).parent / "results"


def cni_args(pod_uid: str, pod_name: str, namespace: str) -> str:
    return f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod_name};K8S_POD_UID={pod_uid}"


def first_ipv4(result: dict[str, Any]) -> tuple[str, str]:
    """(address, gateway) of the first IPv4 entry of a CNI 1.0 result."""
    for entry in result.get("ips", []):
        addr = str(entry.get("address", ""))
        if "." in addr:
            return addr.split("/")[0], str(entry.get("gateway", ""))
    raise CniError("the CNI chain returned no IPv4 address", details=json.dumps(result))


class CniRuntime:
    """Invoke a node's CNI chain for pods of that node."""

    def __init__(self, layout: L.ClusterLayout, node: L.NodeLayout | str) -> None:
        self.layout = layout
        self.node = layout.node(node) if isinstance(node, str) else node

    # -- plugin invocation ---------------------------------------------------------------------------------

    def _exec(self, plugin_type: str, command: str, config: dict[str, Any], *, container_id: str,
              netns: str, ifname: str, args: str) -> dict[str, Any]:
        binary = Path(self.node.cni_bin_dir) / plugin_type
        if not binary.exists():
            raise CniError(f"CNI plugin {plugin_type!r} not found in {self.node.cni_bin_dir}",
                           hint="is containernetworking-plugins installed (/usr/lib/cni)?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": self.node.cni_bin_dir,
            "CNI_ARGS": args,
        }
        # The plugin runs in the node netns: host-side veths and cni0 belong to the node, not to the root.
        argv = ["nsenter", f"--net={self.node.netns_path}", "--", str(binary)]
        try:
            proc = subprocess.run(argv, input=json.dumps(config), capture_output=True, text=True, env=env,
                                  timeout=PLUGIN_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as exc:
            raise CniError(f"CNI plugin {plugin_type} {command} timed out after {PLUGIN_TIMEOUT}s") from exc
        out = proc.stdout.strip()
        data: dict[str, Any] = {}
        if out:
            try:
                data = json.loads(out)
            except ValueError:
                data = {"msg": out}
        if proc.returncode != 0:
            msg = data.get("msg") or proc.stderr.strip() or f"exit {proc.returncode}"
            raise CniError(
                f"CNI plugin {plugin_type} {command} failed on node {self.node.name}: {msg}",
                code=data.get("code"), details=str(data.get("details", "")) or proc.stderr.strip(),
                hint=f"the plugin's configuration is {self.node.cni_conflist_path}",
            )
        return data

    def _conflist(self) -> dict[str, Any]:
        try:
            conf: dict[str, Any] = json.loads(self.node.cni_conflist_path.read_text())
        except FileNotFoundError:
            raise CniError(f"no CNI configuration at {self.node.cni_conflist_path}",
                           hint="the node was not prepared: recreate the cluster") from None
        except ValueError as exc:
            raise CniError(f"invalid CNI configuration {self.node.cni_conflist_path}: {exc}") from exc
        return conf

    @staticmethod
    def _plugin_config(conflist: dict[str, Any], plugin: dict[str, Any],
                       prev: dict[str, Any] | None) -> dict[str, Any]:
        cfg = dict(plugin)
        cfg["cniVersion"] = conflist.get("cniVersion", CNI_VERSION)
        cfg["name"] = conflist.get("name", L.CNI_NETWORK_NAME)
        if prev is not None:
            cfg["prevResult"] = prev
        return cfg

    def _loopback(self, command: str, container_id: str, netns: str, args: str) -> None:
        cfg = {"cniVersion": CNI_VERSION, "name": "loopback", "type": "loopback"}
        self._exec("loopback", command, cfg, container_id=container_id, netns=netns, ifname="lo", args=args)

    # -- public API -----------------------------------------------------------------------------------------

    def add(self, pod_uid: str, pod_name: str, namespace: str, netns_path: str | os.PathLike[str],
            ifname: str = "eth0") -> CniResult:
        """Run ADD for every plugin of the chain, then loopback; return the pod's IPv4 and gateway."""
        conflist = self._conflist()
        args = cni_args(pod_uid, pod_name, namespace)
        netns = str(netns_path)
        prev: dict[str, Any] | None = None
        try:
            for plugin in conflist.get("plugins", []):
                prev = self._exec(str(plugin["type"]), "ADD", self._plugin_config(conflist, plugin, prev),
                                  container_id=pod_uid, netns=netns, ifname=ifname, args=args)
            self._loopback("ADD", pod_uid, netns, args)
            if prev is None:
                raise CniError(f"{self.node.cni_conflist_path} lists no plugins")
            ip, gateway = first_ipv4(prev)
        except CniError:
            # Roll back what was done so the IP is released and the veth removed.
            try:
                self._del_chain(conflist, pod_uid, netns, ifname, args, prev)
            except CniError:
                pass
            raise
        self._cache_path(pod_uid, ifname).write_text(json.dumps(prev))
        return CniResult(ip=ip, gateway=gateway, raw=prev)

    def delete(self, pod_uid: str, pod_name: str, namespace: str,
               netns_path: str | os.PathLike[str] | None, ifname: str = "eth0") -> None:
        """Run DEL in reverse order (idempotent; the netns may already be gone)."""
        conflist = self._conflist()
        cache = self._cache_path(pod_uid, ifname)
        prev: dict[str, Any] | None = None
        try:
            prev = json.loads(cache.read_text())
        except (FileNotFoundError, ValueError):
            prev = None
        netns = str(netns_path) if netns_path is not None and Path(netns_path).exists() else ""
        self._del_chain(conflist, pod_uid, netns, ifname, cni_args(pod_uid, pod_name, namespace), prev)
        try:
            cache.unlink()
        except FileNotFoundError:
            pass

    def _del_chain(self, conflist: dict[str, Any], pod_uid: str, netns: str, ifname: str, args: str,
                   prev: dict[str, Any] | None) -> None:
        errors: list[CniError] = []
        if netns:
            try:
                self._loopback("DEL", pod_uid, netns, args)
            except CniError as exc:
                errors.append(exc)
        for plugin in reversed(conflist.get("plugins", [])):
            try:
                self._exec(str(plugin["type"]), "DEL", self._plugin_config(conflist, plugin, prev),
                           container_id=pod_uid, netns=netns, ifname=ifname, args=args)
            except CniError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def _cache_path(self, pod_uid: str, ifname: str) -> Path:
        d = cache_dir(self.node)
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{pod_uid}-{ifname}.json"

    def allocated_ips(self) -> list[str]:
        """IPs host-local currently holds for this node (leak checks)."""
        d = Path(self.node.ipam_data_dir) / L.CNI_NETWORK_NAME
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.name.count(".") == 3)
