"""Pure builders for the in-pod redirection rules, nftables backend (see redirection.md).

Role: the `nft -f` script installing three `inet` tables (`istio-ambient-nat` priority -100,
`istio-ambient-mangle` priority -150, `istio-ambient-raw` priority -300), the script removing them, and a
comparison of a live `nft list ruleset` with what we expect. No I/O here.

Invariants:
- Every table is replaced atomically: `table X` (create if absent) + `delete table X` + `table X {...}` in
  one `nft -f` transaction, so re-applying never duplicates a rule and never opens an uncaptured window.
- We only own the three tables above; nothing else in the pod's ruleset is touched.
- `nft` prints rules in its own canonical form (zero-padded hex, priority names, a folded ct-mark mask);
  `normalize_nft_rule` maps both our script and the live listing to one form before comparing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ambient.cni.rules import (
    CONNMARK,
    MARK_MASK,
    PORT_DNS,
    PORT_HBONE,
    PORT_INBOUND,
    PORT_OUTBOUND,
    PROBE_SOURCE_V4,
    PROBE_SOURCE_V6,
    PROXY_MARK,
    RedirectConfig,
)

NFT_TABLE_NAT = "istio-ambient-nat"
NFT_TABLE_MANGLE = "istio-ambient-mangle"
NFT_TABLE_RAW = "istio-ambient-raw"
NFT_TABLES = (NFT_TABLE_NAT, NFT_TABLE_MANGLE, NFT_TABLE_RAW)
NFT_FAMILY = "inet"
CHAIN_PRERT = "istio-prerouting"
CHAIN_OUTPUT = "istio-output"

_M = f"meta mark & 0x{MARK_MASK:x}"  # "meta mark & 0xfff"
NOT_PROXY = f"{_M} != 0x{PROXY_MARK:x}"
IS_PROXY = f"{_M} == 0x{PROXY_MARK:x}"


@dataclass(frozen=True)
class BaseChain:
    """A hooked chain that only jumps to one of our regular chains."""

    name: str
    type: str
    hook: str
    priority: int
    target: str

    def header(self) -> str:
        return f"type {self.type} hook {self.hook} priority {self.priority}; policy accept;"


@dataclass(frozen=True)
class NftTable:
    name: str
    base_chains: tuple[BaseChain, ...]
    chains: tuple[tuple[str, tuple[str, ...]], ...]  # (regular chain, rules in order)


def _base(kind: str, priority: int, output_type: str | None = None) -> tuple[BaseChain, ...]:
    return (
        BaseChain("prerouting", kind, "prerouting", priority, CHAIN_PRERT),
        BaseChain("output", output_type or kind, "output", priority, CHAIN_OUTPUT),
    )


def _v4v6(cfg: RedirectConfig, v4: str, v6: str) -> list[str]:
    return [v4, v6] if cfg.ipv6 else [v4]


def pod_nft_tables(cfg: RedirectConfig) -> tuple[NftTable, ...]:
    """The tables we own for `cfg`, in script order (raw only with DNS capture)."""
    p4, p6 = PROBE_SOURCE_V4, PROBE_SOURCE_V6
    prert = _v4v6(cfg, f"ip saddr {p4} meta l4proto tcp accept", f"ip6 saddr {p6} meta l4proto tcp accept")
    if cfg.inbound_capture:
        tail = f"tcp dport != {PORT_HBONE} {NOT_PROXY} redirect to :{PORT_INBOUND}"
        prert += _v4v6(cfg, f"ip daddr != 127.0.0.1 {tail}", f"ip6 daddr != ::1 {tail}")
    output = _v4v6(cfg, f"ip daddr {p4} meta l4proto tcp accept", f"ip6 daddr {p6} meta l4proto tcp accept")
    if cfg.dns_capture:
        dns_tcp = f"tcp dport 53 {NOT_PROXY} redirect to :{PORT_DNS}"
        output.append(f'oifname != "lo" udp dport 53 {NOT_PROXY} redirect to :{PORT_DNS}')
        output += _v4v6(cfg, f"ip daddr != 127.0.0.1 {dns_tcp}", f"ip6 daddr != ::1 {dns_tcp}")
    output.append(f"meta l4proto tcp {_M} == 0x{CONNMARK:x} accept")
    output += _v4v6(cfg, 'ip daddr != 127.0.0.1 oifname "lo" accept', 'ip6 daddr != ::1 oifname "lo" accept')
    redirect_out = f"meta l4proto tcp {NOT_PROXY} redirect to :{PORT_OUTBOUND}"
    output += _v4v6(cfg, f"ip daddr != 127.0.0.1 {redirect_out}", f"ip6 daddr != ::1 {redirect_out}")
    tables = [
        NftTable(NFT_TABLE_NAT, _base("nat", -100), ((CHAIN_PRERT, tuple(prert)), (CHAIN_OUTPUT, tuple(output)))),
        NftTable(
            NFT_TABLE_MANGLE,
            _base("filter", -150, output_type="route"),
            (
                (CHAIN_PRERT, (f"{IS_PROXY} ct mark set ct mark & 0xfffff000 | 0x{CONNMARK:x}",)),
                (CHAIN_OUTPUT, (f"ct mark & 0x{MARK_MASK:x} == 0x{CONNMARK:x} meta mark set ct mark",)),
            ),
        ),
    ]
    if cfg.dns_capture:
        tables.append(
            NftTable(
                NFT_TABLE_RAW,
                _base("filter", -300),
                (
                    (CHAIN_PRERT, (f"udp sport 53 {NOT_PROXY} ct zone set 1",)),
                    (CHAIN_OUTPUT, (f"udp dport 53 {IS_PROXY} ct zone set 1",)),
                ),
            )
        )
    return tuple(tables)


def _drop_table(name: str) -> list[str]:
    # `table` creates it when absent, so the `delete` never fails (nft 1.0.6 has no `destroy`)
    return [f"table {NFT_FAMILY} {name}", f"delete table {NFT_FAMILY} {name}"]


def render_table(table: NftTable) -> list[str]:
    """`table inet NAME { ... }` in the layout `nft list table` uses."""
    out = [f"table {NFT_FAMILY} {table.name} {{"]
    blocks: list[list[str]] = []
    for base in table.base_chains:
        blocks.append([f"\tchain {base.name} {{", f"\t\t{base.header()}", f"\t\tjump {base.target}", "\t}"])
    for chain, rules in table.chains:
        blocks.append([f"\tchain {chain} {{", *[f"\t\t{r}" for r in rules], "\t}"])
    for i, block in enumerate(blocks):
        if i:
            out.append("")
        out += block
    out.append("}")
    return out


def nft_script(cfg: RedirectConfig) -> str:
    """The `nft -f` script (one transaction) replacing our tables; drops the raw table without DNS capture."""
    tables = {t.name: t for t in pod_nft_tables(cfg)}
    lines: list[str] = []
    for name in NFT_TABLES:
        lines += _drop_table(name)
        if name in tables:
            lines += render_table(tables[name])
    return "\n".join(lines) + "\n"


def nft_remove_script() -> str:
    """The `nft -f` script deleting our three tables (succeeds whether or not they exist)."""
    lines: list[str] = []
    for name in NFT_TABLES:
        lines += _drop_table(name)
    return "\n".join(lines) + "\n"


# --- comparing with a live listing ---------------------------------------------------------------------
_PRIORITY_NAMES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
_HEX = re.compile(r"0x0*([0-9a-f]+)")
_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+ ?")
_HANDLE = re.compile(r"\s*# handle \d+$")
_PRIORITY = re.compile(r"priority ([a-z]+)\b")
# nft folds `ct mark & 0xfffff000 | 0x111` to the equivalent `& 0xfffff111 | 0x111`
_CTMARK_FOLDED = re.compile(r"ct mark & 0xfffff111 \| 0x111\b")

NftListing = dict[str, dict[str, list[str]]]  # table -> chain -> normalized lines (header included)


def normalize_nft_rule(line: str) -> str:
    line = _HANDLE.sub("", line.strip())
    line = _COUNTER.sub("", line)
    line = _HEX.sub(lambda m: "0x" + m.group(1), line)
    line = _PRIORITY.sub(lambda m: f"priority {_PRIORITY_NAMES.get(m.group(1), m.group(1))}", line)
    line = _CTMARK_FOLDED.sub("ct mark & 0xfffff000 | 0x111", line)
    return line.strip()


def parse_nft_listing(text: str, family: str = NFT_FAMILY) -> NftListing:
    """Parse `nft list ruleset` output: our family's tables -> chains -> normalized rule lines."""
    tables: NftListing = {}
    table: dict[str, list[str]] | None = None
    chain: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("table "):
            parts = line.split()
            table = tables.setdefault(parts[2], {}) if parts[1] == family else None
            chain = None
        elif line.startswith("chain ") and line.endswith("{"):
            chain = table.setdefault(line.split()[1], []) if table is not None else None
        elif line == "}":
            if chain is not None:
                chain = None
            else:
                table = None
        elif chain is not None:
            chain.append(normalize_nft_rule(line))
    return tables


def expected_nft_listing(cfg: RedirectConfig) -> NftListing:
    out: NftListing = {}
    for t in pod_nft_tables(cfg):
        chains = {b.name: [normalize_nft_rule(b.header()), f"jump {b.target}"] for b in t.base_chains}
        chains.update({name: [normalize_nft_rule(r) for r in rules] for name, rules in t.chains})
        out[t.name] = chains
    return out


def diff_pod_nft(cfg: RedirectConfig, live_text: str) -> list[str]:
    """Human-readable differences between our tables in the live ruleset and the expected ones."""
    want = expected_nft_listing(cfg)
    have = parse_nft_listing(live_text)
    diffs: list[str] = []
    for name in NFT_TABLES:
        if name not in want:
            if name in have:
                diffs.append(f"{NFT_FAMILY} {name}: table present but not expected")
            continue
        if name not in have:
            diffs.append(f"{NFT_FAMILY} {name}: table missing")
            continue
        for chain in sorted(set(want[name]) | set(have[name])):
            w, h = want[name].get(chain), have[name].get(chain)
            if w == h:
                continue
            if w is None or h is None:
                diffs.append(f"{name}/{chain}: chain {'unexpected' if w is None else 'missing'}")
                continue
            missing = [r for r in w if r not in h]
            extra = [r for r in h if r not in w]
            detail = "; ".join([f"missing '{r}'" for r in missing] + [f"unexpected '{r}'" for r in extra])
            diffs.append(f"{name}/{chain}: {detail or 'rule order differs'}")
    return diffs
