"""ServiceEntry -> Services + Workloads (as Istio sends them over WDS), VIP auto-allocation, index updates."""

from __future__ import annotations

import ipaddress
from typing import Any

from ambient.controlplane import serviceentry as se
from ambient.controlplane.index import MeshIndex
from ambient.protocol.gen.istio.workload import workload_pb2 as wl


def entry(name: str = "ext", ns: str = "default", labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"hosts": ["httpbin.example.test"], "ports": [{"number": 80, "name": "http",
                                                                         "protocol": "HTTP"}],
                            "resolution": "DNS", "location": "MESH_EXTERNAL"}
    base.update(spec)
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}}, "spec": base}


def _ip(b: bytes) -> str:
    return str(ipaddress.ip_address(b))


def test_dns_entry_without_endpoints_is_a_service_with_a_vip_and_a_hostname_workload() -> None:
    obj = entry()
    vips = se.allocate_vips([se.vip_key(obj, "httpbin.example.test")], {})
    out = se.translate(obj, vips)
    svc = out.services["default/httpbin.example.test"]
    assert (svc.name, svc.namespace, svc.hostname) == ("ext", "default", "httpbin.example.test")
    (vip,) = [_ip(a.address) for a in svc.addresses]
    assert ipaddress.ip_address(vip) in se.AUTO_ALLOCATE_CIDR
    assert [(p.service_port, p.target_port, p.app_protocol) for p in svc.ports] == [(80, 80, wl.HTTP11)]
    (w,) = out.workloads.values()
    assert w.hostname == "httpbin.example.test" and not w.addresses and w.tunnel_protocol == wl.NONE
    assert w.uid == "Kubernetes/networking.istio.io/ServiceEntry/default/ext/httpbin.example.test"
    assert [p.target_port for p in w.services["default/httpbin.example.test"].ports] == [80]


def test_static_entry_uses_its_addresses_and_endpoint_port_map() -> None:
    obj = entry(resolution="STATIC", addresses=["240.1.2.3"],
                endpoints=[{"address": "172.18.200.1", "ports": {"http": 8080}}, {"address": "172.18.200.2"}])
    assert not se.wants_auto_vip(obj)
    out = se.translate(obj, {})
    assert [_ip(a.address) for a in out.services["default/httpbin.example.test"].addresses] == ["240.1.2.3"]
    ports = {_ip(w.addresses[0]): [p.target_port for p in w.services["default/httpbin.example.test"].ports]
             for w in out.workloads.values()}
    assert ports == {"172.18.200.1": [8080], "172.18.200.2": [80]}


def test_resolution_none_passes_through_without_workloads_or_vip() -> None:
    obj = entry(resolution="NONE", addresses=["240.9.9.9"])
    out = se.translate(obj, {})
    assert not out.workloads
    assert out.services["default/httpbin.example.test"].load_balancing.mode == wl.LoadBalancing.PASSTHROUGH
    assert not se.wants_auto_vip(entry(resolution="NONE"))


def test_vip_allocation_is_stable_and_unique() -> None:
    keys = [f"default/e{i}/h{i}.example.test" for i in range(300)]
    first = se.allocate_vips(keys, {})
    assert len(set(first.values())) == 300
    assert se.allocate_vips(reversed(keys), {}) == first  # independent of order
    again = se.allocate_vips([*keys, "default/new/x.example.test"], first)
    assert {k: again[k] for k in keys} == first
    assert again["default/new/x.example.test"] not in first.values()


def test_index_sends_and_removes_entry_resources() -> None:
    index = MeshIndex()
    index.upsert("ServiceEntry", entry())
    delta = index.flush()
    assert set(delta.addresses) == {"default/httpbin.example.test",
                                    "Kubernetes/networking.istio.io/ServiceEntry/default/ext/httpbin.example.test"}
    vip = index.entry_vips["default/ext/httpbin.example.test"]
    # A second host: the first keeps its VIP; the workload of the removed host goes away.
    index.upsert("ServiceEntry", entry(hosts=["api.example.test"]))
    delta = index.flush()
    assert delta.addresses["default/httpbin.example.test"] is None
    assert delta.addresses["default/api.example.test"] is not None
    index.upsert("ServiceEntry", entry(hosts=["api.example.test", "httpbin.example.test"]))
    index.flush()
    assert index.entry_vips["default/ext/httpbin.example.test"] != "" and vip
    index.delete("ServiceEntry", entry())
    delta = index.flush()
    assert all(v is None for v in delta.addresses.values()) and delta.addresses
    assert not index.addresses


def test_use_waypoint_label_puts_the_entry_behind_a_waypoint() -> None:
    index = MeshIndex()
    index.upsert("ServiceEntry", entry(labels={"istio.io/use-waypoint": "egress"}))
    index.flush()
    svc = index.addresses["default/httpbin.example.test"].service
    assert svc.waypoint.hostname.hostname == "egress.default.svc.cluster.local"


def test_index_writes_auto_allocated_addresses_and_a_condition_into_the_status() -> None:
    """As Istio's IP auto-allocation: `status.addresses` names the VIP per host; once written back (the watch
    returns the object with its status) nothing is pending any more."""
    index = MeshIndex()
    obj = entry(hosts=["httpbin.example.test", "api.example.test"])
    index.upsert("ServiceEntry", obj)
    delta = index.flush()
    key = ("ServiceEntry", "default", "ext")
    status, reason, message = index.status_pending[key]
    addresses = index.status_extra[key]["addresses"]
    assert [a["host"] for a in addresses] == ["httpbin.example.test", "api.example.test"]
    served = {h: _ip(a.service.addresses[0].address) for h in ("httpbin.example.test", "api.example.test")
              for k, a in delta.addresses.items() if a is not None and k == f"default/{h}"}
    assert {a["host"]: a["value"] for a in addresses} == served
    assert (status, reason) == ("True", "Accepted") and served["api.example.test"] in message
    index.status_pending.clear()
    index.upsert("ServiceEntry", {**obj, "status": {"addresses": addresses, "conditions": [
        {"type": "Accepted", "status": status, "reason": reason, "message": message}]}})
    index.flush()
    assert key not in index.status_pending
    # static addresses: nothing allocated, the condition says so
    index.upsert("ServiceEntry", entry(name="fixed", resolution="STATIC", addresses=["240.1.2.3"],
                                       endpoints=[{"address": "172.18.200.1"}]))
    index.flush()
    assert index.status_extra[("ServiceEntry", "default", "fixed")] == {"addresses": []}
    assert "spec.addresses" in index.status_pending[("ServiceEntry", "default", "fixed")][2]
    index.delete("ServiceEntry", obj)
    index.flush()
    assert key not in index.status_pending and key not in index.status_extra


def test_export_to_is_reported_as_not_enforced() -> None:
    """Istio ambient gives every node proxy every ServiceEntry whatever its exportTo: the condition says so."""
    vips = {se.vip_key(entry(), "httpbin.example.test"): "240.240.0.9"}
    assert se.entry_status(entry(exportTo=["*"]), vips)[1][:2] == ("True", "Accepted")
    status, reason, message = se.entry_status(entry(exportTo=["."]), vips)[1]
    assert (status, reason) == ("False", "UnsupportedValue") and "exportTo ['.'] is not enforced" in message


def test_destination_rule_on_an_entry_host_is_applied_by_the_entrys_waypoint() -> None:
    index = MeshIndex()
    dr = {"kind": "DestinationRule", "metadata": {"name": "tls", "namespace": "default"},
          "spec": {"host": "httpbin.example.test", "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}}
    index.upsert("DestinationRule", dr)
    index.flush()
    assert index.status_pending[("DestinationRule", "default", "tls")][1] == "NoWaypoint"
    index.upsert("ServiceEntry", entry(labels={"istio.io/use-waypoint": "egress-waypoint"}))
    index.flush()
    status, reason, message = index.status_pending[("DestinationRule", "default", "tls")]
    assert (status, reason) == ("True", "Accepted") and "default/egress-waypoint" in message
