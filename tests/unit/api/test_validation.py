"""Tests of `ambient.api.validation.validate_object`: defaults, and exact error messages per field."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from ambient.api.errors import UnknownFieldError, UnknownKindError, ValidationError
from ambient.api.validation import validate_object


def pod(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"containers": [{"name": "app", "command": ["sleep", "1"]}]}
    base.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": base}


def deployment(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app"}]}},
    }
    base.update(spec)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": base}


def error_of(obj: Any) -> str:
    with pytest.raises(ValidationError) as info:
        validate_object(obj)
    return info.value.message


# ----------------------------------------------------------------------------- defaults


def test_pod_defaults_are_filled_and_input_untouched() -> None:
    obj = pod()
    before = copy.deepcopy(obj)
    out = validate_object(obj)
    assert obj == before
    assert out["metadata"]["namespace"] == "default"
    assert out["spec"]["serviceAccountName"] == "default"
    assert out["spec"]["restartPolicy"] == "Always"


def test_validation_is_idempotent_for_every_default() -> None:
    objs = [pod(), deployment(), {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
    }]
    for obj in objs:
        once = validate_object(obj)
        assert validate_object(once) == once


def test_service_defaults() -> None:
    out = validate_object({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}, {"port": 443, "targetPort": "https"}]},
    })
    assert out["spec"]["type"] == "ClusterIP"
    assert out["spec"]["ports"][0] == {"port": 80, "targetPort": 80, "protocol": "TCP"}
    assert out["spec"]["ports"][1]["targetPort"] == "https"
    assert out["metadata"]["namespace"] == "shop"


def test_deployment_defaults_replicas_and_validates_template() -> None:
    out = validate_object(deployment())
    assert out["spec"]["replicas"] == 1
    assert out["spec"]["template"]["spec"]["serviceAccountName"] == "default"


def test_cluster_scoped_kinds_lose_a_namespace() -> None:
    out = validate_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a", "namespace": "x"}})
    assert "namespace" not in out["metadata"]


def test_unknown_fields_are_refused_by_default() -> None:
    with pytest.raises(UnknownFieldError) as info:
        validate_object(pod(someFutureField={"x": 1}))
    assert info.value.message == 'strict decoding error: unknown field "spec.someFutureField"'
    assert info.value.status == 400


def test_unknown_fields_warn_ignore_and_left_to_the_server() -> None:
    warnings: list[str] = []
    obj = pod(someFutureField={"x": 1})
    out = validate_object(obj, field_validation="Warn", warnings=warnings)
    assert "someFutureField" not in out["spec"] and "someFutureField" in obj["spec"]  # input untouched
    assert warnings == ['unknown field "spec.someFutureField"']
    assert "someFutureField" not in validate_object(obj, field_validation="Ignore")["spec"]
    assert validate_object(obj, field_validation=None)["spec"]["someFutureField"] == {"x": 1}


def test_missing_api_version_is_filled() -> None:
    obj = deployment()
    del obj["apiVersion"]
    assert validate_object(obj)["apiVersion"] == "apps/v1"


def test_authorization_policy_ports_normalised_to_strings() -> None:
    out = validate_object({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow", "namespace": "shop"},
        "spec": {"action": "ALLOW", "rules": [{"to": [{"operation": {"ports": [8080, "9090"]}}]}]},
    })
    assert out["spec"]["rules"][0]["to"][0]["operation"]["ports"] == ["8080", "9090"]


def test_peer_authentication_port_keys_normalised() -> None:
    out = validate_object({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "pa"},
        "spec": {"mtls": {"mode": "STRICT"}, "portLevelMtls": {8080: {"mode": "DISABLE"}}},
    })
    assert out["spec"]["portLevelMtls"] == {"8080": {"mode": "DISABLE"}}


def test_http_route_defaults() -> None:
    out = validate_object({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
        "spec": {"parentRefs": [{"kind": "Service", "group": "", "name": "web"}],
                 "rules": [{"matches": [{"path": {"value": "/api"}}],
                            "backendRefs": [{"name": "web-v1", "port": 80}]}]},
    })
    rule = out["spec"]["rules"][0]
    assert rule["matches"][0]["path"] == {"type": "PathPrefix", "value": "/api"}
    assert rule["backendRefs"][0]["weight"] == 1


# ----------------------------------------------------------------------------- errors (exact messages)

CASES: list[tuple[str, Any, str]] = [
    ("not a mapping", ["x"], "expected an object (a mapping with apiVersion, kind, metadata), got a list"),
    ("missing name", {"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {}},
     "metadata.name: required field is missing"),
    ("missing metadata", {"apiVersion": "v1", "kind": "Namespace"}, "metadata.name: required field is missing"),
    ("uppercase name", {**pod(), "metadata": {"name": "Web"}},
     'metadata.name: expected a lowercase DNS-1123 subdomain (a-z, 0-9, \'-\', \'.\', at most 253 characters, '
     'starting and ending with a letter or digit), got "Web"'),
    ("namespace name too long", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a" * 64}},
     "metadata.name: expected a lowercase DNS-1123 label (a-z, 0-9, '-', at most 63 characters, starting with "
     f'a letter or digit and ending with a letter or digit), got "{"a" * 40}..." (64 characters)'),
    ("service name starting with digit",
     {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1web"}, "spec": {}},
     "metadata.name: expected a lowercase DNS-1123 label (a-z, 0-9, '-', at most 63 characters, starting with "
     'a letter and ending with a letter or digit), got "1web"'),
    ("label value not a string", {**pod(), "metadata": {"name": "web", "labels": {"version": 1}}},
     "metadata.labels.version: expected a string (quote numbers and booleans in YAML), got 1"),
    ("bad label key", {**pod(), "metadata": {"name": "web", "labels": {"bad key": "x"}}},
     'metadata.labels.bad key: key "bad key": the name part must be 1-63 characters of [A-Za-z0-9-_.], '
     "starting and ending with a letter or digit"),
    ("container port as a name", pod(containers=[{"name": "app", "ports": [{"containerPort": "http"}]}]),
     'spec.containers[0].ports[0].containerPort: expected an integer 1-65535, got "http"'),
    ("container port bool", pod(containers=[{"name": "app", "ports": [{"containerPort": True}]}]),
     "spec.containers[0].ports[0].containerPort: expected an integer 1-65535, got true"),
    ("no containers", pod(containers=[]), "spec.containers: must have at least one entry"),
    ("command not a list", pod(containers=[{"name": "app", "command": "sleep 1"}]),
     'spec.containers[0].command: expected a list, got "sleep 1"'),
    ("command item not a string", pod(containers=[{"name": "app", "command": ["sleep", 1]}]),
     "spec.containers[0].command[1]: expected a string, got 1"),
    ("env value number", pod(containers=[{"name": "app", "env": [{"name": "N", "value": 3}]}]),
     "spec.containers[0].env[0].value: expected a string (quote numbers and booleans in YAML), got 3"),
    ("duplicate container", pod(containers=[{"name": "a"}, {"name": "a"}]),
     'spec.containers[1].name: duplicate container name "a"'),
    ("restart policy", pod(restartPolicy="Sometimes"),
     'spec.restartPolicy: expected one of Always|OnFailure|Never, got "Sometimes"'),
    ("hostNetwork", pod(hostNetwork="yes"), 'spec.hostNetwork: expected true or false, got "yes"'),
    ("spec not a mapping", {**pod(), "spec": ["x"]}, "spec: expected an object, got a list"),
    ("negative replicas", deployment(replicas=-1), "spec.replicas: expected an integer >= 0, got -1"),
    ("selector mismatch", deployment(selector={"matchLabels": {"app": "api"}}),
     'spec.selector.matchLabels: app=api does not match the template labels (spec.template.metadata.labels '
     'has app="web")'),
    ("template port", deployment(template={"metadata": {"labels": {"app": "web"}}, "spec": {
        "containers": [{"name": "a", "ports": [{"containerPort": 70000}]}]}}),
     "spec.template.spec.containers[0].ports[0].containerPort: expected an integer 1-65535, got 70000"),
    ("service port missing", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                              "spec": {"ports": [{"targetPort": 80}]}},
     "spec.ports[0].port: required field is missing"),
    ("service type", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                      "spec": {"type": "LoadBalancer"}},
     'spec.type: expected ClusterIP, got "LoadBalancer"'),
    ("service clusterIP", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                           "spec": {"clusterIP": "10.96.0.300"}},
     'spec.clusterIP: expected an IP address, got "10.96.0.300"'),
    ("ap action", {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                   "metadata": {"name": "p"}, "spec": {"action": "REJECT"}},
     'spec.action: expected one of ALLOW|DENY|AUDIT|CUSTOM, got "REJECT"'),
    ("ap principals", {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                       "metadata": {"name": "p"},
                       "spec": {"rules": [{"from": [{"source": {"principals": "cluster.local/ns/a/sa/b"}}]}]}},
     'spec.rules[0].from[0].source.principals: expected a list, got "cluster.local/ns/a/sa/b"'),
    ("ap ipBlocks", {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                     "metadata": {"name": "p"},
                     "spec": {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]}},
     'spec.rules[0].from[0].source.ipBlocks[0]: expected an IP address or CIDR (e.g. 10.0.0.0/8), '
     'got "10.0.0.0/33"'),
    ("ap port", {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "p"},
                 "spec": {"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}},
     'spec.rules[0].to[0].operation.ports[0]: expected an integer 1-65535, got "http"'),
    ("ap selector and targetRefs", {
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "p"},
        "spec": {"selector": {"matchLabels": {"app": "a"}}, "targetRefs": [{"kind": "Service", "name": "a"}]}},
     "spec: selector and targetRefs are mutually exclusive"),
    ("pa mode", {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "p"},
                 "spec": {"mtls": {"mode": "strict"}}},
     'spec.mtls.mode: expected one of UNSET|DISABLE|PERMISSIVE|STRICT, got "strict"'),
    ("gateway listener port", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "w"},
        "spec": {"gatewayClassName": "istio-waypoint",
                 "listeners": [{"name": "mesh", "port": "15008", "protocol": "HBONE"}]}},
     'spec.listeners[0].port: expected an integer 1-65535, got "15008"'),
    ("gateway class", {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "w"},
                       "spec": {"listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}},
     "spec.gatewayClassName: required field is missing"),
    ("route path type", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
        "spec": {"rules": [{"matches": [{"path": {"type": "Prefix", "value": "/"}}]}]}},
     'spec.rules[0].matches[0].path.type: expected one of Exact|PathPrefix|RegularExpression, got "Prefix"'),
    ("route weight", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
        "spec": {"rules": [{"backendRefs": [{"name": "a", "weight": "90"}]}]}},
     'spec.rules[0].backendRefs[0].weight: expected an integer 0-1000000, got "90"'),
    ("route timeout", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
        "spec": {"rules": [{"timeouts": {"request": "10 seconds"}}]}},
     'spec.rules[0].timeouts.request: expected a duration like "10s", "500ms" or "1m30s", got "10 seconds"'),
]


@pytest.mark.parametrize(("obj", "message"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_error_messages(obj: Any, message: str) -> None:
    assert error_of(obj) == message


def test_unknown_kind() -> None:
    with pytest.raises(UnknownKindError) as info:
        validate_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    assert info.value.message == 'unknown kind "ConfigMap"'
    assert "Pod" in (info.value.hint or "")


def test_wrong_api_version_for_kind() -> None:
    with pytest.raises(UnknownKindError) as info:
        validate_object({**deployment(), "apiVersion": "v1"})
    assert info.value.message == 'kind "Deployment" is not served by apiVersion "v1"'
    assert info.value.hint == "use apiVersion: apps/v1"


def test_missing_kind() -> None:
    with pytest.raises(UnknownKindError, match='missing field "kind"'):
        validate_object({"apiVersion": "v1", "metadata": {"name": "x"}})


def test_missing_name_has_hint() -> None:
    with pytest.raises(ValidationError) as info:
        validate_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {}}, "spec": {}})
    assert info.value.hint == "every object needs metadata.name"


def test_node_names_may_be_subdomains() -> None:
    out = validate_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1.local"},
                           "spec": {"podCIDR": "10.244.1.0/24"}})
    assert out["metadata"]["name"] == "node-1.local"


def test_thousand_objects_fast() -> None:
    objs = [pod(containers=[{"name": "app", "command": ["sleep", "1"], "ports": [{"containerPort": 80}],
                             "env": [{"name": "A", "value": "b"}]}]) for _ in range(1000)]
    start = time.perf_counter()
    for obj in objs:
        validate_object(obj)
    # The real figure is ~25 ms; the bound is generous for a loaded 2-core machine.
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------------------ HTTPRoute filters


def route_with(rule: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
            "spec": {"parentRefs": [{"kind": "Service", "name": "web"}], "rules": [rule]}}


def test_http_route_filters_accepted_and_redirect_status_defaulted() -> None:
    rule = {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}], "filters": [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {
            "set": [{"name": "X-Env", "value": "prod"}], "add": [{"name": "x-a", "value": "1"}], "remove": ["x-b"]}},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["server"]}},
        {"type": "RequestRedirect", "requestRedirect": {
            "scheme": "https", "hostname": "new.example.com", "port": 8443,
            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}},
    ]}
    out = validate_object(route_with(rule))
    assert out["spec"]["rules"][0]["filters"][2]["requestRedirect"]["statusCode"] == 302
    assert validate_object(out) == out  # idempotent


def test_http_route_unimplemented_filter_types_are_valid_objects() -> None:
    # valid Gateway API: accepted here; the waypoint says it does not implement them (warning + 500)
    for f in ({"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m", "port": 80}}},
              {"type": "ExtensionRef", "extensionRef": {"group": "x.io", "kind": "F", "name": "f"}}):
        validate_object(route_with({"filters": [f], "backendRefs": [{"name": "web"}]}))


FILTER_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown type", {"filters": [{"type": "Rewrite"}]},
     "spec.rules[0].filters[0].type: expected one of RequestHeaderModifier|ResponseHeaderModifier|RequestRedirect|"
     'URLRewrite|RequestMirror|ExtensionRef|CORS|ExternalAuth, got "Rewrite"'),
    ("missing config", {"filters": [{"type": "URLRewrite"}]},
     "spec.rules[0].filters[0].urlRewrite: required field is missing"),
    ("config of another type", {"filters": [{"type": "URLRewrite", "urlRewrite": {},
                                             "requestRedirect": {}}]},
     "spec.rules[0].filters[0].requestRedirect: must not be set when type is URLRewrite"),
    ("repeated", {"filters": [{"type": "URLRewrite", "urlRewrite": {}}, {"type": "URLRewrite", "urlRewrite": {}}]},
     "spec.rules[0].filters[1]: a URLRewrite filter cannot be repeated"),
    ("redirect and rewrite", {"filters": [{"type": "URLRewrite", "urlRewrite": {}},
                                          {"type": "RequestRedirect", "requestRedirect": {}}]},
     "spec.rules[0].filters: RequestRedirect and URLRewrite cannot be used on the same rule"),
    ("status code", {"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 307}}]},
     "spec.rules[0].filters[0].requestRedirect.statusCode: expected 301 or 302, got 307"),
    ("scheme", {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "ftp"}}]},
     'spec.rules[0].filters[0].requestRedirect.scheme: expected one of http|https, got "ftp"'),
    ("hostname", {"filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "Bad_Host:80"}}]},
     'spec.rules[0].filters[0].urlRewrite.hostname: expected a lower-case DNS name (no wildcard, no port), '
     'got "Bad_Host:80"'),
    ("host header", {"filters": [{"type": "RequestHeaderModifier",
                                  "requestHeaderModifier": {"set": [{"name": "Host", "value": "x"}]}}]},
     'spec.rules[0].filters[0].requestHeaderModifier.set[0].name: header "Host" cannot be modified by a filter'),
    ("framing header", {"filters": [{"type": "ResponseHeaderModifier",
                                     "responseHeaderModifier": {"remove": ["Content-Length"]}}]},
     'spec.rules[0].filters[0].responseHeaderModifier.remove[0]: header "Content-Length" cannot be modified by '
     "a filter"),
    ("header value newline", {"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
        "add": [{"name": "x", "value": "a\nb"}]}}]},
     'spec.rules[0].filters[0].requestHeaderModifier.add[0].value: expected a header value without control '
     'characters (at most 4096), got "a\\nb"'),
    ("duplicate set", {"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
        "set": [{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}]}}]},
     'spec.rules[0].filters[0].requestHeaderModifier.set[1].name: duplicate header "x-a" (names are '
     "case-insensitive)"),
    ("prefix needs one PathPrefix match", {
        "matches": [{"path": {"type": "Exact", "value": "/a"}}],
        "filters": [{"type": "URLRewrite", "urlRewrite": {
            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]},
     "spec.rules[0].filters[0].urlRewrite.path.type: ReplacePrefixMatch needs a rule with exactly one match, of "
     "type PathPrefix"),
    ("path value for type", {"filters": [{"type": "URLRewrite", "urlRewrite": {
        "path": {"type": "ReplaceFullPath", "replacePrefixMatch": "/b"}}}]},
     "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch: must not be set when type is ReplaceFullPath"),
    ("relative path", {"filters": [{"type": "URLRewrite", "urlRewrite": {
        "path": {"type": "ReplaceFullPath", "replaceFullPath": "b?x=1"}}}]},
     'spec.rules[0].filters[0].urlRewrite.path.replaceFullPath: expected a path starting with "/" (printable '
     'ASCII, no "?" or "#"), got "b?x=1"'),
    ("backendRef filter type", {"backendRefs": [{"name": "a", "filters": [{"type": "Nope"}]}]},
     "spec.rules[0].backendRefs[0].filters[0].type: expected one of RequestHeaderModifier|ResponseHeaderModifier|"
     'RequestRedirect|URLRewrite|RequestMirror|ExtensionRef|CORS|ExternalAuth, got "Nope"'),
]


@pytest.mark.parametrize(("rule", "message"), [(c[1], c[2]) for c in FILTER_CASES], ids=[c[0] for c in FILTER_CASES])
def test_http_route_filter_errors(rule: dict[str, Any], message: str) -> None:
    assert error_of(route_with(rule)) == message
