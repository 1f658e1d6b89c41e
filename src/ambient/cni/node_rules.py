"""Pure builders for the node-side kubelet-probe SNAT (see redirection.md, "Node (host) side").

Role: kubelet probes leave a local socket on the node towards an enrolled pod; they are SNATed to
169.254.7.127 so the pod's rules let them through uncaptured. nat chain `ISTIO_POSTRT`, jumped to first
from POSTROUTING, matches destinations in the ipset `istio-inpod-probes-v4` (`hash:ip`, comment = pod uid).

Invariants:
- Same idempotency scheme as the pod rules (`ambient.cni.rules`): chain declared (flushed) and rebuilt,
  one jump inserted at position 1 only when missing, extra jumps deleted.
- ipset entries are owned by a pod uid: removing an IP only happens when the stored uid matches, so a
  reused IP of a newer pod is never dropped by a late removal of an older one.
"""

from __future__ import annotations

import shlex

from ambient.cni.rules import (
    PROBE_SOURCE_V4,
    PROBE_SOURCE_V6,
    IptablesDump,
    IptablesRules,
    diff_chains,
    removal_block,
    table_block,
)

CHAIN_POSTRT = "ISTIO_POSTRT"
PROBE_IPSET_V4 = "istio-inpod-probes-v4"
PROBE_IPSET_V6 = "istio-inpod-probes-v6"
NODE_JUMPS: tuple[tuple[str, str], ...] = (("POSTROUTING", CHAIN_POSTRT),)


def probe_ipset_name(family: int = 4) -> str:
    return PROBE_IPSET_V4 if family == 4 else PROBE_IPSET_V6


def node_probe_rules(family: int = 4) -> IptablesRules:
    source = PROBE_SOURCE_V4 if family == 4 else PROBE_SOURCE_V6
    spec = (
        f"-p tcp -m owner --socket-exists -m set --match-set {probe_ipset_name(family)} dst"
        f" -j SNAT --to-source {source}"
    )
    return {"nat": {CHAIN_POSTRT: [spec]}}


def node_probe_restore_input(family: int = 4, live: IptablesDump | None = None) -> str:
    """`iptables-restore --noflush` input installing the probe SNAT chain (needs the ipset to exist)."""
    live = live or {}
    rules = node_probe_rules(family)["nat"]
    return "\n".join(table_block("nat", rules, NODE_JUMPS, live.get("nat", {}), insert_first=True)) + "\n"


def node_probe_remove_input(live: IptablesDump) -> str:
    lines = removal_block("nat", (CHAIN_POSTRT,), NODE_JUMPS, live.get("nat", {}))
    return "\n".join(lines) + "\n" if lines else ""


def diff_node_probe(live: IptablesDump, family: int = 4) -> list[str]:
    return diff_chains(node_probe_rules(family), NODE_JUMPS, live, (CHAIN_POSTRT,), tables=("nat",))


def ipset_create_args(family: int = 4) -> list[str]:
    fam = "inet" if family == 4 else "inet6"
    return ["create", probe_ipset_name(family), "hash:ip", "family", fam, "comment", "-exist"]


def ipset_add_args(ip: str, uid: str, family: int = 4) -> list[str]:
    return ["add", probe_ipset_name(family), ip, "comment", uid, "-exist"]


def ipset_del_args(ip: str, family: int = 4) -> list[str]:
    return ["del", probe_ipset_name(family), ip, "-exist"]


def parse_ipset_save(text: str, name: str = PROBE_IPSET_V4) -> dict[str, str]:
    """`ipset save NAME` output -> {ip: uid comment}."""
    entries: dict[str, str] = {}
    for line in text.splitlines():
        parts = shlex.split(line)
        if len(parts) >= 3 and parts[0] == "add" and parts[1] == name:
            uid = parts[parts.index("comment") + 1] if "comment" in parts[3:] else ""
            entries[parts[2]] = uid
    return entries


def prune_plan(live: dict[str, str], keep: dict[str, str]) -> list[str]:
    """IPs to delete on agent start: entries not in `keep` ({ip: uid}) or owned by another uid."""
    return sorted(ip for ip, uid in live.items() if keep.get(ip) != uid)
