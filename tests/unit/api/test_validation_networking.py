"""ServiceEntry and Secret validation: Istio's and Kubernetes' rules, defaults written in, clear errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ambient.api.errors import UnknownFieldError, ValidationError
from ambient.api.kinds import resolve_kind
from ambient.api.validation import validate_object


def _se(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"hosts": ["httpbin.example.test"], "ports": [{"number": 80, "name": "http"}]}
    base.update(spec)
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "ext", "namespace": "default"}, "spec": base}


def test_service_entry_kind_resolves_by_short_name_and_plural() -> None:
    assert resolve_kind("se").kind == "ServiceEntry"
    assert resolve_kind("serviceentries.networking.istio.io").kind == "ServiceEntry"
    assert resolve_kind("secrets").kind == "Secret"


def test_service_entry_defaults_are_written_and_revalidation_is_a_no_op() -> None:
    out = validate_object(_se(ports=[{"number": 80, "name": "http", "protocol": "http"}]))
    assert out["spec"]["resolution"] == "NONE"
    assert out["spec"]["location"] == "MESH_EXTERNAL"
    assert out["spec"]["ports"][0]["protocol"] == "HTTP"
    assert validate_object(copy.deepcopy(out)) == out


@pytest.mark.parametrize(("spec", "message"), [
    ({"hosts": []}, "spec.hosts"),
    ({"hosts": ["bad host"]}, "spec.hosts[0]"),
    ({"hosts": ["a.example.test", "A.example.test"]}, "unique host names"),
    ({"ports": []}, "spec.ports"),
    ({"ports": [{"number": 0}]}, "spec.ports[0].number"),
    ({"ports": [{"number": 80}, {"number": 80}]}, "listed twice"),
    ({"ports": [{"number": 80, "protocol": "QUIC"}]}, "spec.ports[0].protocol"),
    ({"resolution": "MAGIC"}, "spec.resolution"),
    ({"location": "OUTSIDE"}, "spec.location"),
    ({"addresses": ["not-an-ip"]}, "spec.addresses[0]"),
    ({"resolution": "STATIC"}, "resolution STATIC"),
    ({"resolution": "STATIC", "endpoints": [{"address": "host.example.test"}]}, "spec.endpoints[0].address"),
    ({"resolution": "DNS", "hosts": ["*.example.test"]}, "without wildcard"),
    ({"endpoints": [{"address": "1.2.3.4", "ports": {"http": 70000}}]}, "spec.endpoints[0].ports.http"),
])
def test_service_entry_refusals_name_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        validate_object(_se(**spec))
    assert message in exc.value.message


def test_service_entry_static_and_dns_endpoints_are_accepted() -> None:
    validate_object(_se(resolution="STATIC", addresses=["240.0.0.7"], endpoints=[{"address": "172.18.200.1"}]))
    validate_object(_se(resolution="DNS", endpoints=[{"address": "httpbin.example.test", "ports": {"http": 80}}]))
    validate_object(_se(hosts=["*.example.test"], resolution="NONE"))


def test_service_entry_unknown_field_is_refused() -> None:
    with pytest.raises(UnknownFieldError):
        validate_object(_se(endpoint=[{"address": "1.2.3.4"}]))


def _secret(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cert", "namespace": "default"}, **fields}


def test_secret_string_data_becomes_base64_data() -> None:
    out = validate_object(_secret(type="kubernetes.io/tls", stringData={"tls.crt": "C", "tls.key": "K"}))
    assert out["data"] == {"tls.crt": "Qw==", "tls.key": "Sw=="}
    assert "stringData" not in out and "spec" not in out
    assert validate_object(_secret(data={"a": "Qw=="}))["type"] == "Opaque"


def test_tls_secret_needs_both_keys_and_errors_never_show_values() -> None:
    with pytest.raises(ValidationError) as exc:
        validate_object(_secret(type="kubernetes.io/tls", data={"tls.crt": "Qw=="}))
    assert "tls.key" in exc.value.message
    with pytest.raises(ValidationError) as exc:
        validate_object(_secret(data={"password": "hunter2!!"}))
    assert "hunter2" not in exc.value.message and "data.password" in exc.value.message


def test_two_kinds_named_gateway_live_side_by_side(tmp_path: Any) -> None:
    from ambient.api.kinds import by_plural, kind_for_manifest
    from ambient.api.store import Store

    istio = kind_for_manifest("networking.istio.io/v1", "Gateway")
    k8s = kind_for_manifest("gateway.networking.k8s.io/v1", "Gateway")
    assert (istio.kind, istio.wire_kind, k8s.kind) == ("IstioGateway", "Gateway", "Gateway")
    assert resolve_kind("gateways").group == "gateway.networking.k8s.io"
    assert resolve_kind("gateways.networking.istio.io") is istio
    assert by_plural("gateways", "networking.istio.io") is istio and by_plural("gateways") is k8s
    store = Store(tmp_path)
    try:
        store.create({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                      "metadata": {"name": "gw", "namespace": "default"},
                      "spec": {"selector": {"istio": "ingressgateway"},
                               "servers": [{"port": {"number": 8081, "name": "http", "protocol": "HTTP"},
                                            "hosts": ["*"]}]}})
        store.create({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                      "metadata": {"name": "gw", "namespace": "default"},
                      "spec": {"gatewayClassName": "istio", "listeners": [
                          {"name": "http", "port": 80, "protocol": "HTTP"}]}})
        patched = store.patch("IstioGateway", "gw", "default", {"metadata": {"labels": {"a": "b"}}})
        assert (patched["kind"], patched["apiVersion"]) == ("Gateway", "networking.istio.io/v1")
        assert store.get("Gateway", "gw", "default")["spec"]["gatewayClassName"] == "istio"
    finally:
        store.close()
    with pytest.raises(ValidationError) as exc:
        validate_object({"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "g"},
                         "spec": {"servers": [{"port": {"number": 443, "protocol": "HTTPS"}, "hosts": ["*"]}]}})
    assert "tls.mode" in exc.value.message
