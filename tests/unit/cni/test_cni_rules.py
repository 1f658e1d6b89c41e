"""Golden and decision tests for the pure rule builders (iptables, nftables, node probe SNAT)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambient.cni import node_rules
from ambient.cni.nft_rules import (
    diff_pod_nft,
    nft_remove_script,
    nft_script,
    normalize_nft_rule,
    parse_nft_listing,
)
from ambient.cni.rules import (
    RedirectConfig,
    diff_pod_iptables,
    iptables_remove_input,
    iptables_restore_input,
    normalize_iptables_save,
    parse_iptables_save,
)

GOLDEN = Path(__file__).parent / "golden"


def golden(name: str) -> str:
    return (GOLDEN / name).read_text()


def test_iptables_default_matches_golden() -> None:
    assert iptables_restore_input(RedirectConfig()) == golden("iptables_v4_default.txt")


def test_iptables_without_dns_and_with_inbound_bypass_matches_golden() -> None:
    cfg = RedirectConfig(dns_capture=False, inbound_capture=False)
    assert iptables_restore_input(cfg) == golden("iptables_v4_nodns_bypass.txt")


def test_iptables_ipv6_nat_table_matches_golden() -> None:
    text = iptables_restore_input(RedirectConfig(ipv6=True), family=6)
    nat = text[text.index("*nat") : text.index("*raw")]
    assert nat == golden("iptables_v6_default_nat.txt")


def test_nft_default_matches_golden() -> None:
    assert nft_script(RedirectConfig()) == golden("nft_default.nft")


def test_nft_without_dns_drops_raw_table_and_bypass_skips_inbound_redirect() -> None:
    script = nft_script(RedirectConfig(dns_capture=False, inbound_capture=False))
    assert script.endswith("table inet istio-ambient-raw\ndelete table inet istio-ambient-raw\n")
    assert "15053" not in script and "15006" not in script
    assert "redirect to :15001" in script


def test_nft_remove_script_deletes_only_our_tables() -> None:
    assert nft_remove_script().splitlines() == [
        "table inet istio-ambient-nat",
        "delete table inet istio-ambient-nat",
        "table inet istio-ambient-mangle",
        "delete table inet istio-ambient-mangle",
        "table inet istio-ambient-raw",
        "delete table inet istio-ambient-raw",
    ]


def _live_from_golden() -> dict[str, dict[str, list[str]]]:
    """A dump as iptables-save would print it after applying the default rules once."""
    text = golden("iptables_v4_default.txt")
    return parse_iptables_save(text)


def test_reapply_on_live_rules_adds_no_second_jump() -> None:
    text = iptables_restore_input(RedirectConfig(), live=_live_from_golden())
    assert "-A PREROUTING" not in text and "-A OUTPUT" not in text
    assert ":ISTIO_OUTPUT - [0:0]" in text  # declaring flushes + rebuilds our chains


def test_reapply_removes_duplicate_jumps() -> None:
    live = _live_from_golden()
    live["nat"]["OUTPUT"] = ["-j ISTIO_OUTPUT", "-j ISTIO_OUTPUT", "-j ISTIO_OUTPUT"]
    text = iptables_restore_input(RedirectConfig(), live=live)
    nat = text[text.index("*nat") : text.index("*raw")]
    assert nat.count("-D OUTPUT -j ISTIO_OUTPUT") == 2


def test_reapply_without_dns_removes_stale_raw_chains() -> None:
    text = iptables_restore_input(RedirectConfig(dns_capture=False), live=_live_from_golden())
    raw = text[text.index("*raw") :]
    assert raw.splitlines() == [
        "*raw",
        "-D PREROUTING -j ISTIO_PRERT",
        "-D OUTPUT -j ISTIO_OUTPUT",
        "-F ISTIO_PRERT",
        "-X ISTIO_PRERT",
        "-F ISTIO_OUTPUT",
        "-X ISTIO_OUTPUT",
        "COMMIT",
    ]


def test_remove_input_on_empty_dump_is_empty() -> None:
    assert iptables_remove_input({}) == ""
    assert "-X ISTIO_PRERT" in iptables_remove_input(_live_from_golden())


def test_diff_iptables_reports_missing_extra_and_order() -> None:
    cfg = RedirectConfig()
    assert diff_pod_iptables(cfg, _live_from_golden()) == []
    live = _live_from_golden()
    live["nat"]["ISTIO_OUTPUT"].pop(0)
    live["mangle"]["PREROUTING"].append("-j ISTIO_PRERT")
    live["raw"]["ISTIO_PRERT"].append("-j ACCEPT")
    diffs = diff_pod_iptables(cfg, live)
    assert any(d.startswith("nat/ISTIO_OUTPUT: missing '-d 169.254.7.127/32") for d in diffs)
    assert "mangle/PREROUTING: 2 jump(s) to ISTIO_PRERT, expected 1" in diffs
    assert "raw/ISTIO_PRERT: unexpected '-j ACCEPT'" in diffs
    live = _live_from_golden()
    live["nat"]["ISTIO_OUTPUT"].reverse()
    assert diff_pod_iptables(cfg, live) == ["nat/ISTIO_OUTPUT: rule order differs"]


def test_parse_iptables_save_ignores_comments_and_counters() -> None:
    text = "# Generated\n*nat\n:PREROUTING ACCEPT [3:180]\n:X - [0:0]\n-A PREROUTING -j X\n-A X -j ACCEPT\nCOMMIT\n"
    assert parse_iptables_save(text) == {"nat": {"PREROUTING": ["-j X"], "X": ["-j ACCEPT"]}}
    assert (
        normalize_iptables_save(text) == "*nat\n:PREROUTING ACCEPT\n:X -\n-A PREROUTING -j X\n-A X -j ACCEPT\nCOMMIT\n"
    )


def test_nft_listing_normalization_matches_canonical_output() -> None:
    # how nft 1.0.x prints what we wrote: padded hex, priority names, folded ct mark mask, counters
    assert normalize_nft_rule("type nat hook prerouting priority dstnat; policy accept;") == (
        "type nat hook prerouting priority -100; policy accept;"
    )
    assert (
        normalize_nft_rule(
            "meta mark & 0x00000fff == 0x00000539 counter packets 0 bytes 0"
            " ct mark set ct mark & 0xfffff111 | 0x00000111"
        )
        == "meta mark & 0xfff == 0x539 ct mark set ct mark & 0xfffff000 | 0x111"
    )
    live = nft_script(RedirectConfig()).replace("0xfff ", "0x00000fff ").replace("priority -300", "priority raw")
    assert diff_pod_nft(RedirectConfig(), live) == []


def test_nft_diff_reports_missing_table_and_rule() -> None:
    cfg = RedirectConfig()
    script = nft_script(cfg)
    broken = script.replace('\t\tip daddr != 127.0.0.1 oifname "lo" accept\n', "")
    diffs = diff_pod_nft(cfg, broken)
    assert diffs == ["istio-ambient-nat/istio-output: missing 'ip daddr != 127.0.0.1 oifname \"lo\" accept'"]
    assert diff_pod_nft(cfg, "") == [f"inet {t}: table missing" for t in ("istio-ambient-nat",
                                     "istio-ambient-mangle", "istio-ambient-raw")]  # fmt: skip
    assert set(parse_nft_listing("table ip nat {\n\tchain X {\n\t\taccept\n\t}\n}\n")) == set()


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, RedirectConfig(dns_capture=True, inbound_capture=True)),
        ({"ambient.istio.io/bypass-inbound-capture": "true"}, RedirectConfig(inbound_capture=False)),
        ({"ambient.istio.io/dns-capture": "false"}, RedirectConfig(dns_capture=False)),
        ({"ambient.istio.io/dns-capture": "bogus"}, RedirectConfig(dns_capture=True)),
    ],
)
def test_config_from_annotations(annotations: dict[str, str], expected: RedirectConfig) -> None:
    assert RedirectConfig.from_annotations(annotations) == expected


def test_dns_annotation_overrides_node_default() -> None:
    cfg = RedirectConfig.from_annotations({"ambient.istio.io/dns-capture": "true"}, dns_default=False)
    assert cfg.dns_capture is True
    assert RedirectConfig.from_annotations({}, dns_default=False).dns_capture is False


def test_node_probe_snat_golden() -> None:
    assert node_rules.node_probe_restore_input() == (
        "*nat\n"
        ":ISTIO_POSTRT - [0:0]\n"
        "-A ISTIO_POSTRT -p tcp -m owner --socket-exists -m set --match-set istio-inpod-probes-v4 dst"
        " -j SNAT --to-source 169.254.7.127\n"
        "-I POSTROUTING 1 -j ISTIO_POSTRT\n"
        "COMMIT\n"
    )
    live = parse_iptables_save(node_rules.node_probe_restore_input().replace("-I POSTROUTING 1", "-A POSTROUTING"))
    assert "POSTROUTING" not in node_rules.node_probe_restore_input(live=live)
    assert node_rules.diff_node_probe(live) == []
    assert node_rules.node_probe_remove_input(live).splitlines() == [
        "*nat", "-D POSTROUTING -j ISTIO_POSTRT", "-F ISTIO_POSTRT", "-X ISTIO_POSTRT", "COMMIT",
    ]  # fmt: skip


def test_ipset_parse_and_prune_plan_respect_uid() -> None:
    text = (
        "create istio-inpod-probes-v4 hash:ip family inet hashsize 1024 maxelem 65536 comment\n"
        'add istio-inpod-probes-v4 10.99.0.2 comment "uid-a"\n'
        'add istio-inpod-probes-v4 10.99.0.3 comment "uid-b"\n'
    )
    live = node_rules.parse_ipset_save(text)
    assert live == {"10.99.0.2": "uid-a", "10.99.0.3": "uid-b"}
    # 10.99.0.3 was reused by a new pod (uid-c): the stale entry goes, the kept one stays
    assert node_rules.prune_plan(live, {"10.99.0.2": "uid-a", "10.99.0.3": "uid-c"}) == ["10.99.0.3"]
    assert node_rules.ipset_add_args("10.99.0.2", "u") == [
        "add", "istio-inpod-probes-v4", "10.99.0.2", "comment", "u", "-exist",
    ]  # fmt: skip
