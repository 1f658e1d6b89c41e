"""The node agent's pure decisions: enrollment plan, restart cleanup, namespace logging, /cmdadd parsing."""

from __future__ import annotations

from typing import Any

import pytest

from ambient.cni import agent_plan as P
from ambient.cni.plugin import PluginConfig
from ambient.cni.rules import RedirectConfig
from ambient.inpod.zds_codec import WorkloadInfo

CFG = PluginConfig(exclude_namespaces=("kube-system",))
NS: dict[str, dict[str, Any]] = {
    "mesh": {"metadata": {"name": "mesh", "labels": {"istio.io/dataplane-mode": "ambient"}}},
    "plain": {"metadata": {"name": "plain"}},
    "kube-system": {"metadata": {"name": "kube-system", "labels": {"istio.io/dataplane-mode": "ambient"}}},
}


def pod(uid: str, ns: str = "mesh", *, ip: str = "10.0.0.1", labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None, phase: str = "Running", host: bool = False) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": f"p-{uid}", "namespace": ns, "labels": labels or {},
                         "annotations": annotations or {}},
            "spec": {"hostNetwork": host, "serviceAccountName": "sa1"},
            "status": {"phase": phase, "podIP": ip}}


def tracked(uid: str, ns: str = "mesh", status: str = "enabled", cfg: RedirectConfig | None = None,
            ip: str = "10.0.0.1") -> P.Tracked:
    return P.Tracked(uid=uid, name=f"p-{uid}", namespace=ns, netns_path=f"/run/netns/{uid}", ip=ip,
                     cfg=cfg or RedirectConfig(), info=WorkloadInfo(f"p-{uid}", ns, "sa1"), status=status,
                     annotated=status)


def uids(pods: list[Any]) -> list[str]:
    return [P.pod_uid(p) for p in pods]


def test_enrolls_running_pods_by_namespace_or_pod_label_only() -> None:
    pods = {
        "a": pod("a"),  # namespace label
        "b": pod("b", "plain", labels={"istio.io/dataplane-mode": "ambient"}),  # pod label
        "c": pod("c", "plain"),  # neither
        "d": pod("d", labels={"istio.io/dataplane-mode": "none"}),  # opted out
        "e": pod("e", "kube-system"),  # excluded namespace
        "f": pod("f", ip=""),  # no sandbox yet: CNI ADD owns it
        "g": pod("g", host=True),  # host network
        "h": pod("h", phase="Succeeded"),  # terminal
        "i": pod("i", labels={"app": "ztunnel"}),  # the node proxy itself
    }
    plan = P.plan({}, pods, NS, CFG)
    assert uids(plan.enroll) == ["a", "b"]
    assert not plan.remove


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (None, "pod deleted"),
        ({"labels": {"istio.io/dataplane-mode": "none"}}, "pod label istio.io/dataplane-mode=none"),
        ({"namespace": "plain"}, "not labelled for ambient"),
        ({"phase": "Failed"}, "pod phase Failed"),
    ],
)
def test_removes_tracked_pod_for_visible_reasons(change: dict[str, Any] | None, reason: str) -> None:
    pods = {} if change is None else {"a": pod("a", change.get("namespace", "mesh"), labels=change.get("labels"),
                                               phase=change.get("phase", "Running"),
                                               annotations={P.ANNOTATION_STATUS: "enabled"})}
    plan = P.plan({"a": tracked("a")}, pods, NS, CFG)
    assert plan.remove == [("a", reason)]
    assert not plan.enroll


def test_tracked_pod_without_ip_yet_is_kept_and_busy_pods_are_left_alone() -> None:
    pods = {"a": pod("a", ip="", phase="Pending", annotations={P.ANNOTATION_STATUS: "enabled"}),
            "b": pod("b")}
    plan = P.plan({"a": tracked("a", ip="")}, pods, NS, CFG, busy=frozenset({"b"}))
    assert plan.empty()
    # busy tracked pods are not removed either, even if the API says so
    plan = P.plan({"a": tracked("a")}, {}, NS, CFG, busy=frozenset({"a"}))
    assert plan.empty()


def test_reconfigure_annotate_and_ip_refresh() -> None:
    pods = {"a": pod("a", ip="10.0.0.9", annotations={"ambient.istio.io/dns-capture": "false"})}
    plan = P.plan({"a": tracked("a", ip="")}, pods, NS, CFG)
    assert plan.reconfigure == [("a", RedirectConfig(dns_capture=False))]
    assert plan.refresh_ip == [("a", "10.0.0.9")]
    assert plan.annotate == ["a"]  # the API has no status annotation, we are "enabled"


def test_node_dns_default_and_pod_override() -> None:
    assert P.redirect_config(pod("a"), dns_default=False) == RedirectConfig(dns_capture=False)
    on = pod("a", annotations={"ambient.istio.io/dns-capture": "true"})
    assert P.redirect_config(on, dns_default=False) == RedirectConfig(dns_capture=True)
    bypass = pod("a", annotations={"ambient.istio.io/bypass-inbound-capture": "true"})
    assert P.redirect_config(bypass) == RedirectConfig(inbound_capture=False)


def test_stale_annotated_pods_at_startup() -> None:
    pods = {
        "a": pod("a", annotations={P.ANNOTATION_STATUS: "enabled"}),  # still enrolled
        "b": pod("b", "plain", annotations={P.ANNOTATION_STATUS: "enabled"}),  # namespace unlabelled meanwhile
        "c": pod("c", "plain"),  # never ours
        "d": pod("d", labels={"istio.io/dataplane-mode": "none"}, annotations={P.ANNOTATION_STATUS: "pending"}),
    }
    assert P.stale_annotated(pods, NS, CFG) == ["b", "d"]


def test_namespace_changes() -> None:
    assert P.namespace_changes({}, NS) == [("kube-system", True), ("mesh", True)]
    before = {"mesh": True, "gone": True, "plain": False, "kube-system": True}
    after: dict[str, dict[str, Any]] = {"mesh": {"metadata": {"name": "mesh"}}, "plain": NS["mesh"],
                                        "kube-system": NS["kube-system"]}
    assert P.namespace_changes(before, after) == [("mesh", False), ("plain", True), ("gone", False)]


def test_workload_info_defaults_service_account() -> None:
    p = pod("a")
    p["spec"] = {}
    assert P.workload_info(p) == WorkloadInfo("p-a", "mesh", "default")
    assert P.workload_info(pod("a")).service_account == "sa1"


def test_parse_cmdadd() -> None:
    ev = P.parse_cmdadd({"Netns": "/run/netns/x", "PodName": "n", "PodNamespace": "ns", "PodUID": "u",
                         "IPs": ["10.0.0.5/24"]})
    assert ev == P.CmdAdd("/run/netns/x", "n", "ns", "u", ("10.0.0.5",))
    assert ev.ref == "ns/n"
    assert P.parse_cmdadd({"Netns": "x", "PodName": "n", "PodNamespace": "ns", "PodUID": "u"}).ips == ()
    with pytest.raises(P.CmdAddParseError, match="Netns, PodUID"):
        P.parse_cmdadd({"PodName": "n", "PodNamespace": "ns"})
    with pytest.raises(P.CmdAddParseError, match="IPs"):
        P.parse_cmdadd({"Netns": "x", "PodName": "n", "PodNamespace": "ns", "PodUID": "u", "IPs": "10.0.0.1"})
    with pytest.raises(P.CmdAddParseError):
        P.parse_cmdadd(["not", "an", "object"])
