"""state.consistency: live connections are re-evaluated on a consistent view (a workload naming a policy
not received yet is judged by its previous version), while every complete picture takes effect at once."""

from __future__ import annotations

import ipaddress

from ambient.authz.evaluate import ConnectionInfo, evaluate
from ambient.state.consistency import ConsistentChanges, consistent_view
from ambient.state.model import Action, Authorization, Rule, Scope, Workload
from ambient.state.store import StateChange, StateDelta, StateStore

CONN = ConnectionInfo(ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2"), 8080,
                      "spiffe://cluster.local/ns/client/sa/curl")


def web(*policies: str, uid: str = "web") -> Workload:
    return Workload(uid=uid, name=uid, namespace="shop", addresses=(ipaddress.ip_address("10.0.0.2"),),
                    authorization_policies=policies)


def policy(name: str, action: Action) -> Authorization:
    # one empty rule: matches every connection
    return Authorization(name=name, namespace="shop", scope=Scope.WORKLOAD_SELECTOR, action=action, rules=(Rule(),))


class Verdicts:
    """A revocation-like listener: the verdict for the live connection to each workload, per change."""

    def __init__(self, *uids: str) -> None:
        self.uids = uids
        self.seen: list[dict[str, bool]] = []

    def __call__(self, change: StateChange) -> None:
        view = change.current
        self.seen.append({u: evaluate(CONN, w, view).allowed for u in self.uids if (w := view.workload(u))})


def test_an_allow_whose_workload_update_arrives_first_never_looks_denied() -> None:
    for wrapped, expect_denied_step in ((True, False), (False, True)):
        store = StateStore()
        writer = store.take_writer()
        verdicts = Verdicts("web")
        store.subscribe(ConsistentChanges(verdicts) if wrapped else verdicts)
        writer.apply(StateDelta(workloads=(web(),)))
        writer.apply(StateDelta(workloads=(web("shop/allow-curl"),)))  # the Address response first
        writer.apply(StateDelta(policies=(policy("allow-curl", Action.ALLOW),)))  # then the Authorization
        allowed = [v["web"] for v in verdicts.seen]
        assert (False in allowed) is expect_denied_step, (wrapped, allowed)
        assert allowed[-1] is True
        # the data path (new connections) still sees the raw, fail-closed state in between
        assert store.current.dangling_policy_refs() == {}


def test_a_deny_is_judged_at_once_when_the_picture_is_complete() -> None:
    store = StateStore()
    writer = store.take_writer()
    verdicts = Verdicts("web", "db")
    store.subscribe(ConsistentChanges(verdicts))
    writer.apply(StateDelta(workloads=(web(), web(uid="db"))))
    # web's ALLOW is half-arrived (dangling) while db gets a complete DENY in the same change
    writer.apply(StateDelta(workloads=(web("shop/allow-curl"), web("shop/deny-all", uid="db")),
                            policies=(policy("deny-all", Action.DENY),)))
    assert verdicts.seen[-1] == {"web": True, "db": False}
    # a DENY referenced before it arrived: live connections kept until it arrives, then cut
    writer.apply(StateDelta(workloads=(web("shop/allow-curl", "shop/deny-web"),),
                            policies=(policy("allow-curl", Action.ALLOW),)))
    assert verdicts.seen[-1]["web"] is True
    writer.apply(StateDelta(policies=(policy("deny-web", Action.DENY),)))
    assert verdicts.seen[-1]["web"] is False


def test_consistent_view_replaces_only_dangling_workloads() -> None:
    store = StateStore()
    writer = store.take_writer()
    writer.apply(StateDelta(workloads=(web(), web(uid="db")), policies=(policy("p", Action.ALLOW),)))
    before = store.current
    assert consistent_view(before, before) == (before, {})  # nothing dangles: the view itself
    writer.apply(StateDelta(workloads=(web("shop/missing"), web("shop/p", uid="db"), web("shop/gone", uid="new"))))
    view, dangling = consistent_view(store.current, before)
    assert dangling == {"web": ("shop/missing",), "new": ("shop/gone",)}
    assert view.workload("web") == web()  # its previous version
    assert view.workload("db") == web("shop/p", uid="db")  # complete: the latest
    assert view.workload("new") == web("shop/gone", uid="new")  # no earlier version: as it is
    assert view.version == store.current.version
    assert store.current.workload("web") == web("shop/missing")  # the published view is untouched
    # the reference index follows removals
    writer.apply(StateDelta(removed_addresses=("web", "new")))
    assert store.current.dangling_policy_refs() == {}
