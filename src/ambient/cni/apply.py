"""Apply, verify and remove the in-pod redirection rules (and the node-side probe SNAT) in a netns.

Role: the I/O half of `ambient.cni.rules` / `nft_rules` / `node_rules`. Runs `iptables-restore --noflush`,
`nft -f`, `ip rule` / `ip route` and `ipset` as subprocesses. With `netns=` given, the whole operation runs on
a dedicated thread switched into that netns (children inherit the thread's netns); with `netns=None` it
acts on the calling thread's current netns.

Invariants:
- Idempotent: applying twice leaves exactly one copy of every rule, ip rule and route.
- A backend switch never leaves both backends capturing: applying one removes the other's rules first.
- `verify_*` compare the live state with the expected one and return human-readable differences
  ([] = exact match); they never modify anything.
- Every failing command raises `RuleApplyError` naming the command, its stderr and a hint.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from ambient.cni import node_rules
from ambient.cni.errors import RuleApplyError
from ambient.cni.nft_rules import NFT_TABLES, diff_pod_nft, nft_remove_script, nft_script, parse_nft_listing
from ambient.cni.rules import (
    CMARK,
    OWNED_CHAINS,
    ROUTE_TABLE,
    RULE_PREF,
    RedirectConfig,
    diff_pod_iptables,
    iptables_remove_input,
    iptables_restore_input,
    parse_iptables_save,
)
from ambient.inpod.netns import NetnsRef, run_in_netns

log = logging.getLogger("ambient.cni.apply")

Backend = Literal["iptables", "nftables"]
BACKENDS: tuple[Backend, ...] = ("iptables", "nftables")
T = TypeVar("T")


@dataclass(frozen=True)
class Tools:
    """Command names; pick the iptables variant explicitly to avoid legacy/nft mix-ups."""

    iptables_restore: str = "iptables-restore"
    iptables_save: str = "iptables-save"
    ip6tables_restore: str = "ip6tables-restore"
    ip6tables_save: str = "ip6tables-save"
    nft: str = "nft"
    ip: str = "ip"
    ipset: str = "ipset"


DEFAULT_TOOLS = Tools()
_RULE_WANT = f"from all fwmark {CMARK} lookup {ROUTE_TABLE}"


def _run(args: list[str], stdin: str | None = None, *, check: bool = True, timeout: float = 15.0) -> str:
    try:
        proc = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise RuleApplyError(f"command not found: {args[0]}", hint="install iptables / nftables / iproute2") from e
    except subprocess.TimeoutExpired as e:
        raise RuleApplyError(f"{' '.join(args)} timed out after {timeout}s", hint="is the xtables lock held?") from e
    if check and proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip()
        raise RuleApplyError(
            f"{' '.join(args)} failed (exit {proc.returncode}): {detail}",
            hint="needs root (CAP_NET_ADMIN) inside the target netns; input is logged at debug level",
        )
    return proc.stdout


def _within(netns: NetnsRef | None, fn: Callable[[], T]) -> T:
    return fn() if netns is None else run_in_netns(netns, fn, name="cni-rules")


# --- routing (ip rule fwmark 0x111/0xfff pref 32764 lookup 100, local default dev lo table 100) --------
def _families(ipv6: bool) -> tuple[int, ...]:
    return (4, 6) if ipv6 else (4,)


def _rule_lines(tools: Tools, fam: int) -> list[str]:
    # IPv6 may be disabled in the kernel: then there is simply no IPv6 rule to see
    out = _run([tools.ip, f"-{fam}", "rule", "show", "pref", str(RULE_PREF)], check=fam == 4)
    return [line.split(":", 1)[1].strip() for line in out.splitlines() if ":" in line]


def _route_lines(tools: Tools, fam: int) -> list[str]:
    out = _run([tools.ip, f"-{fam}", "route", "show", "table", str(ROUTE_TABLE)], check=False)
    return [line.strip() for line in out.splitlines() if line.strip()]


def _apply_routing(tools: Tools, ipv6: bool) -> None:
    if not ipv6:  # a pod that lost IPv6 keeps no stale IPv6 rule
        for _ in _rule_lines(tools, 6):
            _run([tools.ip, "-6", "rule", "del", "pref", str(RULE_PREF)])
    for fam in _families(ipv6):
        if _rule_lines(tools, fam) != [_RULE_WANT]:
            for _ in _rule_lines(tools, fam):
                _run([tools.ip, f"-{fam}", "rule", "del", "pref", str(RULE_PREF)])
            _run(
                [
                    tools.ip,
                    f"-{fam}",
                    "rule",
                    "add",
                    "fwmark",
                    CMARK,
                    "pref",
                    str(RULE_PREF),
                    "lookup",
                    str(ROUTE_TABLE),
                ]
            )
        dst = "0.0.0.0/0" if fam == 4 else "::/0"
        _run([tools.ip, f"-{fam}", "route", "replace", "local", dst, "dev", "lo", "table", str(ROUTE_TABLE)])


def _remove_routing(tools: Tools) -> None:
    for fam in (4, 6):
        for _ in _rule_lines(tools, fam):
            _run([tools.ip, f"-{fam}", "rule", "del", "pref", str(RULE_PREF)])
        if any(line.startswith("local default dev lo") for line in _route_lines(tools, fam)):
            dst = "0.0.0.0/0" if fam == 4 else "::/0"
            _run([tools.ip, f"-{fam}", "route", "del", "local", dst, "dev", "lo", "table", str(ROUTE_TABLE)])


def _diff_routing(tools: Tools, ipv6: bool) -> list[str]:
    diffs = []
    for fam in _families(ipv6):
        rules = _rule_lines(tools, fam)
        if rules != [_RULE_WANT]:
            diffs.append(f"ipv{fam} rule pref {RULE_PREF}: have {rules}, expected ['{_RULE_WANT}']")
        if not any(line.startswith("local default dev lo") for line in _route_lines(tools, fam)):
            diffs.append(f"ipv{fam} route 'local default dev lo' missing from table {ROUTE_TABLE}")
    return diffs


# --- iptables / nftables dumps ----------------------------------------------------------------------------
def _ipt(tools: Tools, fam: int) -> tuple[str, str]:
    return (
        (tools.iptables_restore, tools.iptables_save) if fam == 4 else (tools.ip6tables_restore, tools.ip6tables_save)
    )


def _iptables_live(tools: Tools, fam: int) -> str:
    return _run([_ipt(tools, fam)[1]])


def _has_owned_iptables(tools: Tools) -> bool:
    for fam in (4, 6):
        live = parse_iptables_save(_iptables_live(tools, fam))
        if any(chain in chains for chains in live.values() for chain in OWNED_CHAINS):
            return True
    return False


def _remove_iptables(tools: Tools) -> None:
    for fam in (4, 6):
        text = iptables_remove_input(parse_iptables_save(_iptables_live(tools, fam)))
        if text:
            log.debug("removing pod rules (ipv%d):\n%s", fam, text)
            _run([_ipt(tools, fam)[0], "--noflush"], text)


def _remove_nft(tools: Tools) -> None:
    if set(parse_nft_listing(_run([tools.nft, "list", "ruleset"]))) & set(NFT_TABLES):
        _run([tools.nft, "-f", "-"], nft_remove_script())


def _apply_iptables(cfg: RedirectConfig, tools: Tools) -> str:
    applied = []
    for fam in _families(cfg.ipv6):
        text = iptables_restore_input(cfg, fam, parse_iptables_save(_iptables_live(tools, fam)))
        log.debug("applying pod rules with %s --noflush:\n%s", _ipt(tools, fam)[0], text)
        _run([_ipt(tools, fam)[0], "--noflush"], text)
        applied.append(text)
    if not cfg.ipv6:  # a pod that lost IPv6 must not keep stale ip6tables rules
        text = iptables_remove_input(parse_iptables_save(_iptables_live(tools, 6)))
        if text:
            _run([tools.ip6tables_restore, "--noflush"], text)
    return "".join(applied)


def _apply_nft(cfg: RedirectConfig, tools: Tools) -> str:
    script = nft_script(cfg)
    log.debug("applying pod rules with nft -f:\n%s", script)
    _run([tools.nft, "-f", "-"], script)
    return script


# --- public API --------------------------------------------------------------------------------------------
def apply_pod_redirection(
    cfg: RedirectConfig,
    backend: Backend = "iptables",
    *,
    netns: NetnsRef | None = None,
    tools: Tools = DEFAULT_TOOLS,
) -> str:
    """Install (or repair) the pod rules and routing; returns the applied rule text (for logs)."""

    def work() -> str:
        if backend == "iptables":
            _remove_nft(tools)
            text = _apply_iptables(cfg, tools)
        elif backend == "nftables":
            if _has_owned_iptables(tools):
                _remove_iptables(tools)
            text = _apply_nft(cfg, tools)
        else:
            raise RuleApplyError(f"unknown redirection backend {backend!r}", hint="use iptables or nftables")
        _apply_routing(tools, cfg.ipv6)
        return text

    return _within(netns, work)


def verify_pod_redirection(
    cfg: RedirectConfig,
    backend: Backend = "iptables",
    *,
    netns: NetnsRef | None = None,
    tools: Tools = DEFAULT_TOOLS,
) -> list[str]:
    """Differences between the live rules/routing and the expected ones ([] = exactly as expected)."""

    def work() -> list[str]:
        diffs: list[str] = []
        if backend == "iptables":
            diffs += diff_pod_iptables(cfg, parse_iptables_save(_iptables_live(tools, 4)), 4)
            live6 = parse_iptables_save(_iptables_live(tools, 6))
            if cfg.ipv6:
                diffs += diff_pod_iptables(cfg, live6, 6)
            else:
                diffs += [
                    f"ip6/{table}/{chain}: chain present but IPv6 is not enabled for the pod"
                    for table, chains in live6.items()
                    for chain in OWNED_CHAINS
                    if chain in chains
                ]
            stray = sorted(set(parse_nft_listing(_run([tools.nft, "list", "ruleset"]))) & set(NFT_TABLES))
            diffs += [f"nftables: table {t} present while the iptables backend is selected" for t in stray]
        else:
            diffs += diff_pod_nft(cfg, _run([tools.nft, "list", "ruleset"]))
            if _has_owned_iptables(tools):
                diffs.append("iptables: ISTIO_* chains present while the nftables backend is selected")
        return diffs + _diff_routing(tools, cfg.ipv6)

    return _within(netns, work)


def remove_pod_redirection(
    backend: Backend | None = None, *, netns: NetnsRef | None = None, tools: Tools = DEFAULT_TOOLS
) -> None:
    """Remove the pod rules of `backend` (None = both) and the ip rule / route. No-op when absent."""

    def work() -> None:
        if backend in (None, "iptables"):
            _remove_iptables(tools)
        if backend in (None, "nftables"):
            _remove_nft(tools)
        _remove_routing(tools)

    _within(netns, work)


def dump_rules(netns: NetnsRef | None = None, tools: Tools = DEFAULT_TOOLS) -> dict[str, str]:
    """Raw dumps for debugging and tests: iptables(-6) save, nft ruleset, ip rules, table-100 routes."""

    def work() -> dict[str, str]:
        return {
            "iptables": _iptables_live(tools, 4),
            "ip6tables": _iptables_live(tools, 6),
            "nft": _run([tools.nft, "list", "ruleset"]),
            "rules": _run([tools.ip, "rule", "show"]) + _run([tools.ip, "-6", "rule", "show"]),
            "routes": "\n".join(_route_lines(tools, 4) + _route_lines(tools, 6)),
        }

    return _within(netns, work)


# --- node side: kubelet-probe SNAT (ISTIO_POSTRT + ipset) -------------------------------------------------
def apply_node_probe_snat(family: int = 4, *, netns: NetnsRef | None = None, tools: Tools = DEFAULT_TOOLS) -> None:
    """Create the probe ipset (if missing) and install/repair the ISTIO_POSTRT SNAT chain, first in POSTROUTING."""

    def work() -> None:
        _run([tools.ipset, *node_rules.ipset_create_args(family)])
        text = node_rules.node_probe_restore_input(family, parse_iptables_save(_iptables_live(tools, family)))
        log.debug("applying node probe SNAT:\n%s", text)
        _run([_ipt(tools, family)[0], "--noflush"], text)

    _within(netns, work)


def verify_node_probe_snat(
    family: int = 4, *, netns: NetnsRef | None = None, tools: Tools = DEFAULT_TOOLS
) -> list[str]:
    def work() -> list[str]:
        diffs = node_rules.diff_node_probe(parse_iptables_save(_iptables_live(tools, family)), family)
        name = node_rules.probe_ipset_name(family)
        if _run([tools.ipset, "list", "-n", name], check=False).strip() != name:
            diffs.append(f"ipset {name} missing")
        return diffs

    return _within(netns, work)


def remove_node_probe_snat(family: int = 4, *, netns: NetnsRef | None = None, tools: Tools = DEFAULT_TOOLS) -> None:
    """Remove the SNAT chain, then the ipset (the chain references it, so the order matters)."""

    def work() -> None:
        text = node_rules.node_probe_remove_input(parse_iptables_save(_iptables_live(tools, family)))
        if text:
            _run([_ipt(tools, family)[0], "--noflush"], text)
        _run([tools.ipset, "destroy", node_rules.probe_ipset_name(family)], check=False)

    _within(netns, work)


def probe_ipset_entries(
    family: int = 4, *, netns: NetnsRef | None = None, tools: Tools = DEFAULT_TOOLS
) -> dict[str, str]:
    """{pod ip: pod uid} currently in the probe ipset ({} when the set does not exist)."""
    name = node_rules.probe_ipset_name(family)
    return _within(netns, lambda: node_rules.parse_ipset_save(_run([tools.ipset, "save", name], check=False), name))


def probe_ipset_add(
    ip: str, uid: str, family: int = 4, *, netns: NetnsRef | None = None, tools: Tools = DEFAULT_TOOLS
) -> None:
    """Add (or re-own) a pod IP; call only after the proxy accepted the pod."""

    def work() -> None:
        _run([tools.ipset, *node_rules.ipset_create_args(family)])
        _run([tools.ipset, *node_rules.ipset_del_args(ip, family)])  # -exist: re-add refreshes the uid
        _run([tools.ipset, *node_rules.ipset_add_args(ip, uid, family)])

    _within(netns, work)


def probe_ipset_remove(
    ip: str, uid: str, family: int = 4, *, netns: NetnsRef | None = None, tools: Tools = DEFAULT_TOOLS
) -> bool:
    """Remove `ip` only if it is owned by `uid` (an IP reused by a newer pod stays). True if removed."""

    def work() -> bool:
        name = node_rules.probe_ipset_name(family)
        live = node_rules.parse_ipset_save(_run([tools.ipset, "save", name], check=False), name)
        if live.get(ip) != uid:
            return False
        _run([tools.ipset, *node_rules.ipset_del_args(ip, family)])
        return True

    return _within(netns, work)


def probe_ipset_prune(
    keep: dict[str, str], family: int = 4, *, netns: NetnsRef | None = None, tools: Tools = DEFAULT_TOOLS
) -> list[str]:
    """On agent start: drop entries not in `keep` ({ip: uid}); returns the IPs removed."""

    def work() -> list[str]:
        name = node_rules.probe_ipset_name(family)
        live = node_rules.parse_ipset_save(_run([tools.ipset, "save", name], check=False), name)
        stale = node_rules.prune_plan(live, keep)
        for ip in stale:
            _run([tools.ipset, *node_rules.ipset_del_args(ip, family)])
        return stale

    return _within(netns, work)
