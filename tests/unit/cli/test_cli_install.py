"""`ambient install ingress` (with the in-memory client) and the sample it points to next."""

from __future__ import annotations

from pathlib import Path

from cli_fakes import FakeClient, Runner

from ambient.api.manifests import load_manifests
from ambient.cluster.gateways import CLASSIC_LABELS, CLASSIC_NAME, CLASSIC_NAMESPACE, CLASSIC_PORTS

SAMPLES = Path(__file__).resolve().parents[3] / "samples"


def test_install_ingress_prints_kubectl_names_and_the_next_step(run: Runner, fake: FakeClient) -> None:
    first = run("install", "ingress", "--no-wait")
    assert first.exit_code == 0, first.output
    lines = first.stdout.splitlines()
    assert lines[:4] == [
        f"namespace/{CLASSIC_NAMESPACE} created",
        "serviceaccount/istio-ingressgateway-service-account created",
        f"deployment.apps/{CLASSIC_NAME} created",
        f"service/{CLASSIC_NAME} created",
    ]
    assert "  ambient apply -f samples/istio-ingress.yaml" in lines
    assert any("port-forward -n istio-system svc/istio-ingressgateway 8081:8081" in line for line in lines)
    again = run("install", "ingress", "--no-wait")
    assert again.stdout.splitlines()[2] == f"deployment.apps/{CLASSIC_NAME} unchanged"


def test_istio_ingress_sample_routes_the_ingress_port_to_the_demo_httpbin() -> None:
    """The next step `install ingress` prints works with what it installed and what `make demo` applied:
    the Gateway selects the ingress pods on a port their Service exposes, the VirtualService binds that
    Gateway and routes to a Service port of samples/demo.yaml."""
    path = SAMPLES / "istio-ingress.yaml"
    objs = load_manifests(path.read_text(), str(path), field_validation="Strict")
    by_kind = {(o["apiVersion"], o["kind"]): o for o in objs}
    assert len(by_kind) == len(objs) == 2
    gateway = by_kind[("networking.istio.io/v1", "Gateway")]
    vs = by_kind[("networking.istio.io/v1", "VirtualService")]
    selector = gateway["spec"]["selector"]
    assert selector.items() <= CLASSIC_LABELS.items()
    (server,) = gateway["spec"]["servers"]
    assert server["port"]["number"] == 8081 and 8081 in {p for _, p in CLASSIC_PORTS}
    assert vs["metadata"]["namespace"] == gateway["metadata"]["namespace"]
    assert vs["spec"]["gateways"] == [gateway["metadata"]["name"]]
    (dest,) = [r["destination"] for h in vs["spec"]["http"] for r in h["route"]]
    name, namespace = dest["host"].split(".")[:2]
    demo = SAMPLES / "demo.yaml"
    services = {(o["metadata"]["namespace"], o["metadata"]["name"]): o
                for o in load_manifests(demo.read_text(), str(demo)) if o["kind"] == "Service"}
    ports = [p["port"] for p in services[(namespace, name)]["spec"]["ports"]]
    assert dest["port"]["number"] in ports
