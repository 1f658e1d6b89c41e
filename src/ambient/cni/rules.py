"""Pure builders for the in-pod redirection rules, iptables backend (see redirection.md).

Role: turn a `RedirectConfig` into the exact `iptables-restore --noflush` input that installs the in-pod
capture rules, into the input that removes them, and compare a live `iptables-save` dump with what we
expect. No I/O here: `ambient.cni.apply` runs the commands.

Invariants:
- Rules are written in the canonical form `iptables-save` prints them (`-m tcp`, `/32`, `--to-ports`), so a
  live dump can be compared line by line with what we generated; rule order is significant.
- Re-applying is idempotent: declaring `:CHAIN - [0:0]` under `--noflush` flushes our own chain, and the
  jump from the built-in chain is only appended when the live dump does not have it (extra copies are
  deleted), all inside one table transaction, so a pod is never left uncaptured in between.
- We only ever touch chains named `ISTIO_*` and the jumps to them; any other rule in the pod is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# --- constants (redirection.md "Constants") ---------------------------------------------------------
PROXY_MARK = 0x539  # every proxy socket carries SO_MARK 1337: rules skip it, so no redirect loop
MARK_MASK = 0xFFF
CONNMARK = 0x111  # "reply to the proxy": routed to the proxy's local socket through table 100
ROUTE_TABLE = 100
RULE_PREF = 32764
PORT_OUTBOUND = 15001
PORT_INBOUND = 15006
PORT_HBONE = 15008
PORT_DNS = 15053
PROBE_SOURCE_V4 = "169.254.7.127"
PROBE_SOURCE_V6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"

CHAIN_PRERT = "ISTIO_PRERT"
CHAIN_OUTPUT = "ISTIO_OUTPUT"
OWNED_CHAINS = (CHAIN_PRERT, CHAIN_OUTPUT)
# built-in chain -> our chain; one jump each in every table we use
POD_JUMPS: tuple[tuple[str, str], ...] = (("PREROUTING", CHAIN_PRERT), ("OUTPUT", CHAIN_OUTPUT))
TABLE_ORDER = ("mangle", "nat", "raw")

ANNOTATION_BYPASS_INBOUND = "ambient.istio.io/bypass-inbound-capture"
ANNOTATION_DNS_CAPTURE = "ambient.istio.io/dns-capture"

MARK = f"0x{PROXY_MARK:x}/0x{MARK_MASK:x}"  # "0x539/0xfff"
CMARK = f"0x{CONNMARK:x}/0x{MARK_MASK:x}"  # "0x111/0xfff"

# table -> chain -> rule specs (without the leading "-A CHAIN ")
IptablesRules = dict[str, dict[str, list[str]]]
# a parsed iptables-save dump: table -> chain (built-in and user) -> rule specs, in order
IptablesDump = dict[str, dict[str, list[str]]]


@dataclass(frozen=True)
class RedirectConfig:
    """What to capture in one pod. `ipv6` adds the ip6tables / ip6 rules and the IPv6 route."""

    dns_capture: bool = True
    inbound_capture: bool = True
    ipv6: bool = False

    @classmethod
    def from_annotations(
        cls, annotations: Mapping[str, str], *, dns_default: bool = True, ipv6: bool = False
    ) -> RedirectConfig:
        """Apply the per-pod overrides (`bypass-inbound-capture`, `dns-capture`) to the node defaults."""
        bypass = annotations.get(ANNOTATION_BYPASS_INBOUND, "").strip().lower() == "true"
        dns_raw = annotations.get(ANNOTATION_DNS_CAPTURE, "").strip().lower()
        dns = dns_default if dns_raw not in ("true", "false") else dns_raw == "true"
        return cls(dns_capture=dns, inbound_capture=not bypass, ipv6=ipv6)


def _family_addrs(family: int) -> tuple[str, str]:
    """(localhost, probe source) as iptables-save prints them for the family."""
    if family == 4:
        return "127.0.0.1/32", f"{PROBE_SOURCE_V4}/32"
    if family == 6:
        return "::1/128", f"{PROBE_SOURCE_V6}/128"
    raise ValueError(f"address family must be 4 or 6, not {family!r}")


def pod_iptables_rules(cfg: RedirectConfig, family: int = 4) -> IptablesRules:
    """The in-pod rules for one address family, by table and chain, in rule order."""
    lo, probe = _family_addrs(family)
    mangle = {
        CHAIN_PRERT: [f"-m mark --mark {MARK} -j CONNMARK --set-xmark {CMARK}"],
        CHAIN_OUTPUT: [
            f"-m connmark --mark {CMARK} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"
        ],
    }
    prert = [f"-s {probe} -p tcp -j ACCEPT"]  # kubelet probes (SNATed on the node) stay uncaptured
    if cfg.inbound_capture:
        prert.append(
            f"! -d {lo} -p tcp -m tcp ! --dport {PORT_HBONE} -m mark ! --mark {MARK}"
            f" -j REDIRECT --to-ports {PORT_INBOUND}"
        )
    output = [f"-d {probe} -p tcp -j ACCEPT"]
    if cfg.dns_capture:
        output += [
            f"! -o lo -p udp -m udp --dport 53 -m mark ! --mark {MARK} -j REDIRECT --to-ports {PORT_DNS}",
            f"! -d {lo} -p tcp -m tcp --dport 53 -m mark ! --mark {MARK} -j REDIRECT --to-ports {PORT_DNS}",
        ]
    output += [
        f"-p tcp -m mark --mark {CMARK} -j ACCEPT",  # replies to connections the proxy delivered
        f"! -d {lo} -o lo -j ACCEPT",  # the app calling its own pod IP
        f"! -d {lo} -p tcp -m mark ! --mark {MARK} -j REDIRECT --to-ports {PORT_OUTBOUND}",
    ]
    rules: IptablesRules = {"mangle": mangle, "nat": {CHAIN_PRERT: prert, CHAIN_OUTPUT: output}}
    if cfg.dns_capture:
        # separate conntrack zones for proxy<->upstream DNS flows vs app<->proxy flows
        rules["raw"] = {
            CHAIN_PRERT: [f"-p udp -m udp --sport 53 -m mark ! --mark {MARK} -j CT --zone 1"],
            CHAIN_OUTPUT: [f"-p udp -m udp --dport 53 -m mark --mark {MARK} -j CT --zone 1"],
        }
    return rules


def parse_iptables_save(text: str) -> IptablesDump:
    """Parse `iptables-save` output (comments and counters ignored) into table -> chain -> rules."""
    dump: IptablesDump = {}
    table: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = dump.setdefault(line[1:], {})
        elif line == "COMMIT":
            table = None
        elif table is not None and line.startswith(":"):
            table.setdefault(line[1:].split()[0], [])
        elif table is not None and line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            table.setdefault(chain, []).append(rest[0] if rest else "")
    return dump


def _jump_spec(target: str) -> str:
    return f"-j {target}"


def table_block(
    table: str,
    chains: Mapping[str, list[str]],
    jumps: tuple[tuple[str, str], ...],
    live: Mapping[str, list[str]],
    *,
    insert_first: bool = False,
) -> list[str]:
    """One `*table ... COMMIT` block installing `chains` and exactly one jump per (builtin, chain)."""
    out = [f"*{table}"]
    out += [f":{chain} - [0:0]" for chain in chains]  # declaring flushes an existing chain (--noflush)
    for chain, specs in chains.items():
        out += [f"-A {chain} {spec}" for spec in specs]
    for builtin, target in jumps:
        have = live.get(builtin, []).count(_jump_spec(target))
        if have == 0:
            out.append(f"-I {builtin} 1 -j {target}" if insert_first else f"-A {builtin} -j {target}")
        out += [f"-D {builtin} -j {target}"] * max(0, have - 1)  # drop duplicates from older runs
    out.append("COMMIT")
    return out


def removal_block(
    table: str, chains: tuple[str, ...], jumps: tuple[tuple[str, str], ...], live: Mapping[str, list[str]]
) -> list[str]:
    """Lines deleting every jump to `chains` and the chains themselves, if present in `live`."""
    body: list[str] = []
    for builtin, target in jumps:
        body += [f"-D {builtin} -j {target}"] * live.get(builtin, []).count(_jump_spec(target))
    for chain in chains:
        if chain in live:
            body += [f"-F {chain}", f"-X {chain}"]
    return [f"*{table}", *body, "COMMIT"] if body else []


def iptables_restore_input(cfg: RedirectConfig, family: int = 4, live: IptablesDump | None = None) -> str:
    """The `iptables-restore --noflush` input installing the pod rules for `family`.

    `live` is the current parsed dump of the pod (None = a pod without any of our rules); it decides
    which jumps already exist and which stale tables (e.g. raw after DNS capture was turned off) to clean.
    """
    live = live or {}
    rules = pod_iptables_rules(cfg, family)
    lines: list[str] = []
    for table in TABLE_ORDER:
        if table in rules:
            lines += table_block(table, rules[table], POD_JUMPS, live.get(table, {}))
        else:
            lines += removal_block(table, OWNED_CHAINS, POD_JUMPS, live.get(table, {}))
    return "\n".join(lines) + "\n"


def iptables_remove_input(live: IptablesDump) -> str:
    """The `iptables-restore --noflush` input removing every pod rule present in `live` ("" = none)."""
    lines: list[str] = []
    for table in TABLE_ORDER:
        lines += removal_block(table, OWNED_CHAINS, POD_JUMPS, live.get(table, {}))
    return "\n".join(lines) + "\n" if lines else ""


def diff_chains(
    expected: IptablesRules,
    jumps: tuple[tuple[str, str], ...],
    live: IptablesDump,
    owned: tuple[str, ...],
    *,
    tables: tuple[str, ...] = TABLE_ORDER,
    label: str = "",
) -> list[str]:
    """Human-readable differences between the expected rules and a live dump ([] = identical)."""
    diffs: list[str] = []
    for table in tables:
        want = expected.get(table, {})
        have = live.get(table, {})
        for chain in owned:
            where = f"{label}{table}/{chain}"
            if chain not in want:
                if chain in have:
                    diffs.append(f"{where}: chain present but not expected")
                continue
            if chain not in have:
                diffs.append(f"{where}: chain missing")
                continue
            if have[chain] != want[chain]:
                missing = [r for r in want[chain] if r not in have[chain]]
                extra = [r for r in have[chain] if r not in want[chain]]
                detail = (
                    "; ".join([f"missing '{r}'" for r in missing] + [f"unexpected '{r}'" for r in extra])
                    or "rule order differs"
                )
                diffs.append(f"{where}: {detail}")
        for builtin, target in jumps:
            count = have.get(builtin, []).count(_jump_spec(target))
            wanted = 1 if target in want else 0
            if count != wanted:
                diffs.append(f"{label}{table}/{builtin}: {count} jump(s) to {target}, expected {wanted}")
    return diffs


def diff_pod_iptables(cfg: RedirectConfig, live: IptablesDump, family: int = 4) -> list[str]:
    """Differences between the live dump of one family and the expected pod rules."""
    label = "" if family == 4 else "ip6/"
    return diff_chains(pod_iptables_rules(cfg, family), POD_JUMPS, live, OWNED_CHAINS, label=label)


def normalize_iptables_save(text: str) -> str:
    """A dump without comments and packet counters: two dumps of the same rule set compare equal."""
    out = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(":"):
            line = line.rsplit(" ", 1)[0] if line.endswith("]") else line
        out.append(line)
    return "\n".join(out) + ("\n" if out else "")
