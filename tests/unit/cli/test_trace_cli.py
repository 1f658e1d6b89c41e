"""`ambient trace`'s tree lines: each hop says what it is, who logged it and when, once."""

from __future__ import annotations

from ambient.cli.trace import hop_label
from ambient.runtime.trace import Hop


def test_hop_labels_name_the_hop_once() -> None:
    assert hop_label(Hop("redirect", "source pod")) == "[bold]redirect[/bold] [dim]in the source pod[/dim]"
    wp = Hop("waypoint", "pod trw_waypoint-1_istio-proxy", "2026-12-06T04:22:12.895608Z", "4ms", ok=False)
    assert hop_label(wp) == ("[bold]waypoint[/bold] [dim]pod trw_waypoint-1_istio-proxy 2026-12-06T04:22:12.895608Z "
                             "(4ms)[/dim] [red]x[/red]")
    assert hop_label(Hop("app", "destination app")) == "[bold]the app's answer[/bold] [dim]destination app[/dim]"


def test_dns_hop_is_labelled_as_the_source_node_proxys_answer() -> None:
    dns = Hop("dns", "ztunnel-node-1", "2026-12-06T04:22:12.895608Z", "0.3ms")
    assert hop_label(dns) == ("[bold]source node proxy: DNS answer[/bold] [dim]ztunnel-node-1 "
                              "2026-12-06T04:22:12.895608Z (0.3ms)[/dim]")
