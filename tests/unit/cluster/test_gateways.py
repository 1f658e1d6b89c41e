"""The ingress gateway controller (class istio): what it deploys and the status it writes (pure parts),
and a whole pass against a real store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from store_client import StoreClient

from ambient.api.store import Store
from ambient.cluster import gateways as G
from ambient.cluster.controllers import ControllerManager
from ambient.cluster.waypoints import WaypointConfig

CFG = WaypointConfig(api_socket="/state/apiserver.sock", python="/usr/bin/python3")


def gateway(cls: str = "istio", secret: str = "cert") -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "ingress", "namespace": "web", "uid": "u1", "generation": 1},
            "spec": {"gatewayClassName": cls, "listeners": [
                {"name": "http", "port": 8080, "protocol": "HTTP"},
                {"name": "https", "port": 8443, "protocol": "HTTPS",
                 "tls": {"certificateRefs": [{"kind": "Secret", "name": secret}]}}]}}


def test_plan_names_objects_like_istio_and_captures_the_pods() -> None:
    sa, deploy, svc = G.plan_gateway(gateway(), CFG)
    assert {o["metadata"]["name"] for o in (sa, deploy, svc)} == {"ingress-istio"}
    pod = deploy["spec"]["template"]
    assert pod["metadata"]["labels"]["istio.io/dataplane-mode"] == "ambient"
    assert pod["spec"]["serviceAccountName"] == "ingress-istio"
    assert pod["spec"]["containers"][0]["args"][:2] == ["-m", "ambient.gateway"]
    assert [p["port"] for p in svc["spec"]["ports"]] == [15021, 8080, 8443]


def test_status_conditions_for_missing_secret_and_unknown_class() -> None:
    secrets = {("web", "cert"): {"type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}}}
    svc = {"spec": {"clusterIP": "10.96.0.50"}}
    ready = [{"metadata": {}, "status": {"phase": "Running", "podIP": "10.244.1.9",
                                         "conditions": [{"type": "Ready", "status": "True"}]}}]
    ok = G.ingress_status(gateway(), svc, ready, secrets, {"http": 1}, now="T")
    assert {c["type"]: c["status"] for c in ok["conditions"]} == {"Accepted": "True", "Programmed": "True"}
    assert ok["addresses"] == [{"type": "IPAddress", "value": "10.96.0.50"}]
    assert ok["listeners"][0]["attachedRoutes"] == 1
    missing = G.ingress_status(gateway(secret="gone"), svc, ready, secrets, now="T")
    refs = {c["type"]: c for c in missing["listeners"][1]["conditions"]}["ResolvedRefs"]
    assert (refs["status"], refs["reason"]) == ("False", "InvalidCertificateRef") and "web/gone" in refs["message"]
    unknown = G.ingress_status(gateway(cls="acme"), None, [], {}, now="T")
    accepted = unknown["conditions"][0]
    assert (accepted["type"], accepted["status"]) == ("Accepted", "False") and '"acme"' in accepted["message"]


async def test_a_pass_deploys_reports_and_cleans_up(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}})
    cm = ControllerManager(StoreClient(store), waypoints=CFG)
    store.create(gateway())
    await cm.reconcile_once()
    await cm.reconcile_once()
    assert store.get("Deployment", "ingress-istio", "web")
    gw = store.get("Gateway", "ingress", "web")
    assert {c["type"]: c["status"] for c in gw["status"]["conditions"]}["Accepted"] == "True"
    store.delete("Gateway", "ingress", "web")
    await cm.reconcile_once()
    assert [o["metadata"]["name"] for o in store.list("Service", "web")[0]] == []
