"""kube-proxy-like service rules for a node netns: a PURE builder of `iptables-restore` text.

Role: turn Services (ClusterIP + ports) and their Endpoints into DNAT rules so that traffic to a service VIP
from a node or from any pod (pods route through the node's `cni0`, so the node netns sees their packets in
PREROUTING) reaches one ready endpoint chosen at random. Also maps the cluster DNS VIP 10.96.0.10:53
(udp+tcp) to the DNS server in the underlay (172.18.0.2:53).

Invariants:
- Everything here is pure (objects in, text out); `kubelet.KubeProxy` does the I/O.
- Only chains named `AMB-*` are written; the text is meant for `iptables-restore --noflush`, where declaring
  a chain flushes it, so re-applying replaces our rules atomically and never touches anyone else's rules.
  Chains that existed before but are no longer wanted are declared (flushed) and deleted (`-X`).
- The jumps from the built-in chains (nat PREROUTING/OUTPUT/POSTROUTING, filter INPUT/FORWARD/OUTPUT) are
  listed by `JUMPS` and installed once, idempotently, by the runner: they never change.
- A Service port without ready endpoints gets a filter-table REJECT (tcp-reset / icmp-port-unreachable) so
  a client fails fast instead of hanging.
- Endpoint choice: with n endpoints, rule i (0-based) matches with probability 1/(n-i), the last one always:
  each endpoint is picked with probability 1/n, like kube-proxy.
- A pod reaching itself through a VIP (hairpin) is masqueraded (mark 0x4000), otherwise its reply would
  bypass conntrack; all other traffic keeps the client's pod IP (the server sees the real client).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

DNS_VIP = "10.96.0.10"
DNS_SERVER = "172.18.0.2"
MASQ_MARK = "0x4000/0x4000"

NAT_SERVICES = "AMB-SERVICES"
NAT_POSTROUTING = "AMB-POSTROUTING"
FILTER_SERVICES = "AMB-REJECT"

# (table, built-in chain, our chain): installed once by the runner (`-C` then `-I ... 1`).
JUMPS: tuple[tuple[str, str, str], ...] = (
    ("nat", "PREROUTING", NAT_SERVICES),
    ("nat", "OUTPUT", NAT_SERVICES),
    ("nat", "POSTROUTING", NAT_POSTROUTING),
    ("filter", "INPUT", FILTER_SERVICES),
    ("filter", "FORWARD", FILTER_SERVICES),
    ("filter", "OUTPUT", FILTER_SERVICES),
)


@dataclass(frozen=True)
class ServicePortRule:
    """One (VIP, protocol, port) of a Service and the endpoints (pod IP, target port) behind it."""

    namespace: str
    name: str
    port_name: str
    vip: str
    protocol: str  # "tcp" | "udp"
    port: int
    backends: tuple[tuple[str, int], ...]

    @property
    def comment(self) -> str:
        suffix = f":{self.port_name}" if self.port_name else ""
        return f"{self.namespace}/{self.name}{suffix}"


def _chain_name(prefix: str, *parts: str) -> str:
    """A stable chain name within iptables' 28-character limit (hash of the identifying parts)."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return prefix + base64.b32encode(digest)[:16].decode()


def service_rules(services: Iterable[dict[str, Any]], endpoints: Iterable[dict[str, Any]]) -> list[ServicePortRule]:
    """Join Services and Endpoints objects into port rules (sorted, so the output is deterministic).

    Services without a ClusterIP (not yet allocated, or headless "None") are skipped. Endpoints ports are
    matched to Service ports by name (the Endpoints controller copies the Service port's name).
    """
    eps_by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for ep in endpoints:
        meta = ep.get("metadata") or {}
        eps_by_key[(meta.get("namespace") or "default", meta.get("name") or "")] = ep
    rules: list[ServicePortRule] = []
    for svc in services:
        meta = svc.get("metadata") or {}
        spec = svc.get("spec") or {}
        vip = spec.get("clusterIP")
        if not vip or vip == "None":
            continue
        ns, name = meta.get("namespace") or "default", meta.get("name") or ""
        ep = eps_by_key.get((ns, name)) or {}
        for port in spec.get("ports") or []:
            pname = port.get("name") or ""
            proto = str(port.get("protocol") or "TCP").lower()
            if proto not in ("tcp", "udp"):
                continue  # SCTP is accepted by validation but not carried by the local cluster
            backends: set[tuple[str, int]] = set()
            for subset in ep.get("subsets") or []:
                target = next(
                    (p for p in subset.get("ports") or [] if (p.get("name") or "") == pname
                     and str(p.get("protocol") or "TCP").lower() == proto),
                    None,
                )
                if target is None:
                    continue
                for addr in subset.get("addresses") or []:
                    if addr.get("ip"):
                        backends.add((addr["ip"], int(target["port"])))
            rules.append(ServicePortRule(ns, name, pname, vip, proto, int(port["port"]), tuple(sorted(backends))))
    rules.sort(key=lambda r: (r.namespace, r.name, r.port_name, r.protocol, r.port))
    return rules


def _probability(remaining: int) -> str:
    # Same rendering as iptables-save (10 decimals) so golden files stay stable.
    return f"{1.0 / remaining:.10f}"


def build_rules(
    rules: Iterable[ServicePortRule],
    *,
    existing_chains: Iterable[str] = (),
    dns_vip: str = DNS_VIP,
    dns_server: str = DNS_SERVER,
) -> str:
    """The iptables-restore text (nat + filter) for one node netns.

    `existing_chains` are the `AMB-*` chains currently present (from `iptables-save`); those not wanted any
    more are flushed and deleted in the same transaction.
    """
    nat_chains: list[str] = [NAT_SERVICES, NAT_POSTROUTING]
    nat_rules: list[str] = [
        f"-A {NAT_POSTROUTING} -m mark --mark {MASQ_MARK} -j MASQUERADE",
    ]
    filter_rules: list[str] = []
    for proto in ("udp", "tcp"):
        nat_rules.append(
            f'-A {NAT_SERVICES} -d {dns_vip}/32 -p {proto} -m {proto} --dport 53 '
            f'-m comment --comment "cluster DNS" -j DNAT --to-destination {dns_server}:53'
        )
    for rule in rules:
        match = f"-d {rule.vip}/32 -p {rule.protocol} -m {rule.protocol} --dport {rule.port}"
        comment = f'-m comment --comment "{rule.comment}"'
        if not rule.backends:
            reject = "tcp-reset" if rule.protocol == "tcp" else "icmp-port-unreachable"
            filter_rules.append(
                f'-A {FILTER_SERVICES} {match} -m comment --comment "{rule.comment} has no endpoints" '
                f"-j REJECT --reject-with {reject}"
            )
            continue
        svc_chain = _chain_name("AMB-SVC-", rule.namespace, rule.name, rule.port_name, rule.protocol)
        nat_chains.append(svc_chain)
        nat_rules.append(f"-A {NAT_SERVICES} {match} {comment} -j {svc_chain}")
        count = len(rule.backends)
        for i, (ip, port) in enumerate(rule.backends):
            sep_chain = _chain_name("AMB-SEP-", rule.namespace, rule.name, rule.port_name, rule.protocol,
                                    ip, str(port))
            nat_chains.append(sep_chain)
            if i < count - 1:
                nat_rules.append(
                    f"-A {svc_chain} {comment} -m statistic --mode random --probability "
                    f"{_probability(count - i)} -j {sep_chain}"
                )
            else:
                nat_rules.append(f"-A {svc_chain} {comment} -j {sep_chain}")
            nat_rules.append(f"-A {sep_chain} {comment} -s {ip}/32 -j MARK --set-xmark {MASQ_MARK}")
            nat_rules.append(
                f"-A {sep_chain} {comment} -p {rule.protocol} -m {rule.protocol} "
                f"-j DNAT --to-destination {ip}:{port}"
            )
    wanted = set(nat_chains) | {FILTER_SERVICES}
    stale = sorted(c for c in set(existing_chains) if c.startswith("AMB-") and c not in wanted)
    stale_nat = [c for c in stale if c.startswith(("AMB-SVC-", "AMB-SEP-"))]
    lines = ["*nat"]
    lines += [f":{c} - [0:0]" for c in nat_chains + stale_nat]
    lines += nat_rules
    lines += [f"-X {c}" for c in stale_nat]
    lines += ["COMMIT", "*filter", f":{FILTER_SERVICES} - [0:0]"]
    lines += filter_rules
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def parse_chains(iptables_save: str) -> set[str]:
    """The `AMB-*` chain names declared in `iptables-save` output (any table)."""
    chains: set[str] = set()
    for line in iptables_save.splitlines():
        if line.startswith(":AMB-"):
            chains.add(line[1:].split()[0])
    return chains
