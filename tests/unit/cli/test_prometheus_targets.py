"""The scrape config `ambient prometheus-targets` writes: file_sd groups per forwarded endpoint, one job."""

from __future__ import annotations

import json
from pathlib import Path

from ambient.cli.prometheus import Endpoint, file_sd, scrape_config


def test_file_sd_groups_and_config() -> None:
    zt = Endpoint("amb-c-node-1", "127.0.0.1", 15020, (("cluster", "c"), ("component", "ztunnel"), ("node", "node-1")))
    wp = Endpoint("amb-c-pod-1", "127.0.0.1", 15020, (("cluster", "c"), ("component", "waypoint"), ("pod", "w")))
    assert file_sd([(zt, 4001), (wp, 4002)]) == [
        {"targets": ["127.0.0.1:4002"], "labels": {"cluster": "c", "component": "waypoint", "pod": "w"}},
        {"targets": ["127.0.0.1:4001"], "labels": {"cluster": "c", "component": "ztunnel", "node": "node-1"}},
    ]
    doc = json.loads(scrape_config(Path("/x/targets.json"), "5s"))  # YAML is a superset of JSON
    job = doc["scrape_configs"][0]
    assert job["job_name"] == "ambient" and job["file_sd_configs"][0]["files"] == ["/x/targets.json"]
    assert doc["global"]["scrape_interval"] == "5s"


def test_pods_are_labelled_by_who_manages_them() -> None:
    """A Gateway API ingress gateway carries gateway-name like a waypoint: it is still an ingressgateway."""
    from types import SimpleNamespace

    from ambient.cli.prometheus import component_of, discover

    gw_name = "gateway.networking.k8s.io/gateway-name"
    pods = {
        "wp": {gw_name: "waypoint", "gateway.istio.io/managed": "istio.io-mesh-controller"},
        "gw": {gw_name: "httpbin-gw", "gateway.istio.io/managed": "istio.io-gateway-controller",
               "istio": "ingressgateway"},
        "classic": {"app": "istio-ingressgateway", "istio": "ingressgateway"},
        "app": {"app": "web"},
    }
    assert {name: component_of(labels) for name, labels in pods.items()} == {
        "wp": "waypoint", "gw": "ingressgateway", "classic": "ingressgateway", "app": None}

    class Client:
        def list(self, kind: str, ns: object, label_selector: str) -> tuple[list[dict[str, object]], str]:
            key, _, value = label_selector.partition("=")
            return [{"metadata": {"name": n, "namespace": "x", "uid": f"uid-{n}", "labels": labels},
                     "status": {"phase": "Running", "podIP": "10.244.1.9"}}
                    for n, labels in pods.items() if labels.get(key) == value], "1"

    found = discover(SimpleNamespace(name="c", nodes=[]), Client())
    assert sorted((dict(ep.labels)["pod"], dict(ep.labels)["component"]) for ep in found) == [
        ("classic", "ingressgateway"), ("gw", "ingressgateway"), ("wp", "waypoint")]
