"""Settings parsing, the local-CA certificate source, config_dump and the `zc` row builders."""

from __future__ import annotations

import asyncio
import json
from ipaddress import ip_address
from pathlib import Path

import pytest

from ambient.cli.zc import certificate_rows, connection_rows, policy_rows, service_rows, workload_rows
from ambient.identity.ca import LocalCA
from ambient.state.model import (
    Action,
    Authorization,
    GatewayAddress,
    NamespacedHostname,
    NetworkAddress,
    Port,
    Scope,
    Service,
    TunnelProtocol,
    Workload,
)
from ambient.state.store import StateStore, view_of
from ambient.ztunnel.certs import LocalCaSource
from ambient.ztunnel.config_dump import build_config_dump
from ambient.ztunnel.errors import ConfigError
from ambient.ztunnel.settings import Settings, parse_duration
from ambient.ztunnel.static_config import StaticStateSource
from ambient.ztunnel.telemetry import Connections


def test_durations_and_env() -> None:
    assert parse_duration("5", "x") == 5.0
    assert parse_duration("500ms", "x") == 0.5
    assert parse_duration("1m", "x") == 60.0
    with pytest.raises(ConfigError, match="cannot parse duration"):
        parse_duration("soon", "CONNECTION_TERMINATION_DEADLINE")
    s = Settings.from_env({"CONNECTION_TERMINATION_DEADLINE": "2s"}, mode="shared")
    assert (s.drain_deadline, s.mode, s.uvloop) == (2.0, "shared", True)
    assert Settings.from_env({"AMBIENT_UVLOOP": "0"}).uvloop is False
    assert Settings.from_env({}).drain_deadline == 5.0
    assert {15001, 15006, 15008, 15000, 15020, 15021} <= Settings().ports.proxy_ports


async def test_local_ca_source_issues_once_per_identity(tmp_path: Path) -> None:
    src = LocalCaSource.from_dir(tmp_path)
    ident = "spiffe://cluster.local/ns/a/sa/b"
    first, second = await asyncio.gather(src.fetch(ident), src.fetch(ident))
    assert first is second and first.identity.uri == ident
    assert src.cached(ident) is first and list(src.bundles()) == [first]
    assert (tmp_path / "root-cert.pem").exists()


def _state() -> tuple[Workload, Service, Authorization]:
    wl = Workload(uid="u1", name="web-1", namespace="shop", addresses=(ip_address("10.244.1.5"),),
                  tunnel_protocol=TunnelProtocol.HBONE, service_account="web", node="node1",
                  services={"shop/web.shop.svc.cluster.local": (Port(80, 8080),)},
                  waypoint=GatewayAddress(NamespacedHostname("shop", "wp.shop.svc.cluster.local")))
    svc = Service(name="web", namespace="shop", hostname="web.shop.svc.cluster.local",
                  addresses=(NetworkAddress(ip_address("10.96.0.20")),), ports=(Port(80, 8080),))
    pol = Authorization(name="deny-all", namespace="shop", scope=Scope.NAMESPACE, action=Action.DENY)
    return wl, svc, pol


def test_config_dump_has_reference_keys_and_zc_rows() -> None:
    wl, svc, pol = _state()
    view = view_of([wl], [svc], [pol])
    bundle = LocalCA.create().issue(wl.identity)
    conns = Connections()
    conns.open(workload="shop/web-1", pod_uid="u1", direction="inbound", local="10.244.1.5:8080",
               remote="10.244.2.7:4000", remote_target="10.244.1.5:8080", protocol="HBONE")
    dump = build_config_dump(view, [bundle], {"u1": {"state": "Up", "info": {"name": "web-1"}}}, conns)
    json.dumps(dump)  # JSON-able
    assert set(dump) == {"workloads", "services", "policies", "certificates", "workloadState"}
    assert workload_rows(dump) == (["NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"],
                                   [["shop", "web-1", "10.244.1.5", "node1", "wp.shop.svc.cluster.local", "HBONE"]])
    assert service_rows(dump)[1] == [["shop", "web", "10.96.0.20", "None", "1/1"]]
    assert policy_rows(dump)[1] == [["shop", "deny-all", "Deny", "Namespace"]]
    certs = certificate_rows(dump)[1]
    assert [r[1] for r in certs] == ["Leaf", "Root"] and all(r[2] == "Available" and r[3] == "true" for r in certs)
    assert connection_rows(dump)[1] == [["shop/web-1", "inbound", "10.244.1.5:8080", "10.244.2.7:4000",
                                         "10.244.1.5:8080", "HBONE"]]


async def test_static_source_reloads_on_change_and_keeps_state_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    path.write_text("workloads:\n- {uid: a, name: a, namespace: ns, workloadIps: [10.0.0.1]}\n")
    store = StateStore()
    source = StaticStateSource(path, poll_interval=0.02)
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(source.run(store.take_writer(), ready.set))
        await asyncio.wait_for(ready.wait(), 5)
        assert [w.uid for w in store.current.workloads()] == ["a"]
        path.write_text("workloads:\n- {uid: b, name: b, namespace: ns, workloadIps: [10.0.0.2, 10.0.0.3]}\n")
        for _ in range(200):
            if store.current.workload("b") is not None:
                break
            await asyncio.sleep(0.01)
        assert [w.uid for w in store.current.workloads()] == ["b"]
        path.write_text("workloads:\n- {uid: c, workloadIps: [not-an-ip]}\n")
        await asyncio.sleep(0.2)
        assert [w.uid for w in store.current.workloads()] == ["b"]  # bad file: previous state kept
        task.cancel()


def test_zc_finds_the_admin_socket_of_a_node_from_the_cluster_layout(tmp_path: Path) -> None:
    from ambient.cli.zc import admin_socket_for
    from ambient.cluster.layout import build_layout, save_layout

    layout = build_layout("t", 2, state_dir=tmp_path)
    save_layout(layout)
    first, second = layout.nodes
    assert admin_socket_for(tmp_path, "t", None) == Path(first.run_dir) / "ztunnel-admin.sock"
    assert admin_socket_for(tmp_path, "t", second.name) == Path(second.run_dir) / "ztunnel-admin.sock"
