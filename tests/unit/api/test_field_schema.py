"""Strict field validation (`ambient.api.validation.schema`): every kind refuses fields it does not define,
keeps every field real manifests carry, and Warn/Ignore drop unknown fields instead of storing them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ambient.api.errors import UnknownFieldError, ValidationError
from ambient.api.kinds import KINDS
from ambient.api.limits import MAX_ANNOTATIONS_BYTES
from ambient.api.validation import validate_object
from ambient.api.validation.schema import SCHEMAS, check_fields, find_unknown_fields, parse_field_validation

TYPO_POLICY: dict[str, Any] = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "allow-typo", "namespace": "shop"},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principal": ["cluster.local/ns/shop/sa/client"]}}]}],
    },
}

# A full-blown object of every kind, with the metadata and status real manifests (kubectl get -o yaml,
# Helm output, controllers) carry: all of it must pass strict validation.
META: dict[str, Any] = {
    "name": "web", "namespace": "shop", "generateName": "web-", "uid": "0b9c", "resourceVersion": "7",
    "generation": 2, "creationTimestamp": "2024-01-01T00:00:00Z", "deletionGracePeriodSeconds": 30,
    "labels": {"app": "web"}, "annotations": {"example.com/note": "x"}, "finalizers": ["example.com/f"],
    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u",
                         "controller": True, "blockOwnerDeletion": True}],
    "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                       "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}],
    "selfLink": "/api/v1/x",
}
PROBE = {"httpGet": {"path": "/", "port": 8080, "scheme": "HTTP", "httpHeaders": [{"name": "a", "value": "b"}]},
         "initialDelaySeconds": 1, "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1,
         "failureThreshold": 3}
CONTAINER = {
    "name": "app", "image": "busybox", "imagePullPolicy": "IfNotPresent", "command": ["sleep"], "args": ["1"],
    "workingDir": "/", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
    "env": [{"name": "A", "value": "b"},
            {"name": "IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}}],
    "envFrom": [{"configMapRef": {"name": "c"}}],
    "resources": {"limits": {"cpu": "1"}, "requests": {"memory": "1Mi"}},
    "readinessProbe": PROBE, "livenessProbe": {"tcpSocket": {"port": 8080}},
    "startupProbe": {"exec": {"command": ["true"]}},
    "securityContext": {"runAsUser": 1000, "capabilities": {"add": ["NET_ADMIN"]}},
    "volumeMounts": [{"name": "v", "mountPath": "/v"}], "terminationMessagePath": "/dev/termination-log",
    "terminationMessagePolicy": "File", "lifecycle": {"preStop": {"exec": {"command": ["sleep", "1"]}}},
}
POD_SPEC = {
    "containers": [CONTAINER], "initContainers": [dict(CONTAINER, name="init")], "restartPolicy": "Always",
    "serviceAccountName": "web", "serviceAccount": "web", "automountServiceAccountToken": False,
    "terminationGracePeriodSeconds": 5, "dnsPolicy": "ClusterFirst", "nodeName": "n1", "nodeSelector": {"a": "b"},
    "volumes": [{"name": "v", "emptyDir": {}}], "securityContext": {"fsGroup": 1}, "schedulerName": "default-scheduler",
    "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}], "affinity": {"nodeAffinity": {}},
    "enableServiceLinks": True, "priority": 0, "preemptionPolicy": "PreemptLowerPriority", "hostname": "web",
    "subdomain": "s", "imagePullSecrets": [{"name": "reg"}],
}
FULL: list[dict[str, Any]] = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": dict(META, namespace=None),
     "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}},
    {"apiVersion": "v1", "kind": "Node", "metadata": dict(META, namespace=None),
     "spec": {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24"], "taints": [{"key": "k", "effect": "NoSchedule"}],
              "unschedulable": False, "providerID": "x"},
     "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": META, "automountServiceAccountToken": True,
     "secrets": [{"name": "s"}], "imagePullSecrets": [{"name": "reg"}]},
    {"apiVersion": "v1", "kind": "Pod", "metadata": META, "spec": POD_SPEC,
     "status": {"phase": "Running", "podIP": "10.0.0.5", "conditions": [{"type": "Ready", "status": "True"}]}},
    {"apiVersion": "v1", "kind": "Service", "metadata": META,
     "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http",
                                                      "protocol": "TCP", "appProtocol": "http"}],
              "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "type": "ClusterIP", "sessionAffinity": "None",
              "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"},
     "status": {"loadBalancer": {}}},
    {"apiVersion": "v1", "kind": "Endpoints", "metadata": META, "subsets": [
        {"addresses": [{"ip": "10.0.0.5", "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "web",
                                                                          "namespace": "shop", "uid": "u"}}],
         "notReadyAddresses": [{"ip": "10.0.0.6"}], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]},
    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": META,
     "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "revisionHistoryLimit": 10,
              "progressDeadlineSeconds": 600, "strategy": {"type": "RollingUpdate",
                                                           "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
              "template": {"metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"},
                                        "creationTimestamp": None}, "spec": POD_SPEC}},
     "status": {"replicas": 2}},
    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": META,
     "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW", "rules": [{
         "from": [{"source": {f: ["x"] for f in ("principals", "notPrincipals", "requestPrincipals",
                                                  "notRequestPrincipals", "namespaces", "notNamespaces",
                                                  "serviceAccounts", "notServiceAccounts")}},
                  {"source": {f: ["10.0.0.0/8"] for f in ("ipBlocks", "notIpBlocks", "remoteIpBlocks",
                                                           "notRemoteIpBlocks")}}],
         "to": [{"operation": {"hosts": ["a"], "notHosts": ["b"], "ports": ["80"], "notPorts": ["81"],
                               "methods": ["GET"], "notMethods": ["PUT"], "paths": ["/"], "notPaths": ["/x"]}}],
         "when": [{"key": "request.headers[x]", "values": ["a"], "notValues": ["b"]}]}]}},
    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": dict(META, name="wp"),
     "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "wp"}],
              "action": "CUSTOM", "provider": {"name": "ext"}}},
    {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": META,
     "spec": {"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"},
              "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}}},
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": META,
     "spec": {"gatewayClassName": "istio-waypoint", "listeners": [
         {"name": "mesh", "port": 15008, "protocol": "HBONE", "hostname": "a.example.com",
          "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"a": "b"}}},
                            "kinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]},
          "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "c"}]}}],
              "addresses": [{"type": "IPAddress", "value": "10.0.0.9"}],
              "infrastructure": {"labels": {"a": "b"}, "annotations": {"c": "d"}}},
     "status": {"conditions": [{"type": "Programmed", "status": "True"}]}},
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": META,
     "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}], "hostnames": ["web"],
              "rules": [{"name": "r", "matches": [{"path": {"type": "PathPrefix", "value": "/"}, "method": "GET",
                                                   "headers": [{"name": "x", "value": "y"}],
                                                   "queryParams": [{"name": "q", "value": "v"}]}],
                         "filters": [{"type": "RequestHeaderModifier",
                                      "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}],
                                                                "add": [{"name": "c", "value": "d"}],
                                                                "remove": ["e"]}},
                                     {"type": "RequestMirror", "requestMirror": {
                                         "backendRef": {"name": "m", "port": 80}, "percent": 10}}],
                         "backendRefs": [{"name": "web", "port": 80, "weight": 1, "filters": [
                             {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["x"]}}]}],
                         "timeouts": {"request": "10s", "backendRequest": "5s"},
                         "retry": {"attempts": 2, "backoff": "100ms", "codes": [503]}}]}},
]


def _clean(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["metadata"] = {k: v for k, v in out["metadata"].items() if v is not None}
    return out


def test_every_kind_has_a_schema() -> None:
    assert set(SCHEMAS) == {info.kind for info in KINDS}


@pytest.mark.parametrize("obj", FULL, ids=[f"{o['kind']}-{o['metadata'].get('name')}" for o in FULL])
def test_real_world_fields_of_every_kind_pass_strict(obj: dict[str, Any]) -> None:
    obj = _clean(obj)
    assert find_unknown_fields(obj, obj["kind"]) == []
    validate_object(obj)


@pytest.mark.parametrize("obj", FULL, ids=[f"{o['kind']}-{o['metadata'].get('name')}" for o in FULL])
def test_a_misspelt_field_is_refused_in_every_kind(obj: dict[str, Any]) -> None:
    obj = _clean(obj)
    body = obj.get("spec", obj)
    body["selectr"] = {}
    where = "spec.selectr" if "spec" in obj else "selectr"
    with pytest.raises(UnknownFieldError, match=f'unknown field "{where}"'):
        validate_object(obj)
    obj["metadata"]["lables"] = {}
    with pytest.raises(UnknownFieldError, match=r'unknown field "metadata\.lables"'):
        validate_object(obj)


def test_the_typo_policy_is_refused_with_the_field_and_a_suggestion() -> None:
    with pytest.raises(UnknownFieldError) as info:
        validate_object(TYPO_POLICY)
    assert info.value.message == (
        'strict decoding error: unknown field "spec.rules[0].from[0].source.principal"'
    )
    assert info.value.hint == 'did you mean "spec.rules[0].from[0].source.principals"?'
    assert info.value.reason == "BadRequest"


def test_istio_workload_selectors_have_no_match_expressions() -> None:
    # Istio's WorkloadSelector is matchLabels only; the node proxies ignore anything else, so a policy
    # selecting with matchExpressions would apply to every workload of the namespace.
    policy = copy.deepcopy(TYPO_POLICY)
    policy["spec"] = {"selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}
    with pytest.raises(UnknownFieldError, match=r'unknown field "spec\.selector\.matchExpressions"'):
        validate_object(policy)


def test_top_level_and_all_unknown_fields_are_listed() -> None:
    obj = _clean(FULL[3])
    obj["specASDUWIUE"] = 1
    obj["spec"]["containers"][0]["imagePolicy"] = "x"
    with pytest.raises(UnknownFieldError) as info:
        validate_object(obj)
    assert info.value.message == ('strict decoding error: unknown field "spec.containers[0].imagePolicy", '
                                  'unknown field "specASDUWIUE"')  # document order
    assert 'did you mean "spec.containers[0].imagePullPolicy"?' in (info.value.hint or "")


@pytest.mark.parametrize(("mode", "kept_warnings"), [("Warn", 1), ("Ignore", 0)])
def test_warn_and_ignore_drop_the_field(mode: str, kept_warnings: int) -> None:
    obj = copy.deepcopy(TYPO_POLICY)
    warnings: list[str] = []
    check_fields(obj, "AuthorizationPolicy", mode, warnings, "AuthorizationPolicy shop/allow-typo",
                 name_in_warnings=True)
    assert obj["spec"]["rules"][0]["from"][0]["source"] == {}
    assert warnings == [
        'AuthorizationPolicy shop/allow-typo: unknown field "spec.rules[0].from[0].source.principal"'
    ][:kept_warnings]


def test_opaque_subtrees_keep_everything_and_null_is_not_descended() -> None:
    obj = _clean(FULL[3])
    obj["status"] = {"anything": {"goes": [1, {"x": None}]}}
    obj["spec"]["containers"][0]["securityContext"] = {"futureField": True}
    obj["spec"]["nodeSelector"] = None
    assert find_unknown_fields(obj, "Pod") == []


def test_hostile_keys_are_shown_escaped_and_cut() -> None:
    obj = _clean(FULL[3])
    obj["spec"]["\r\nX-Injected: 1" + "k" * 1000] = 1
    with pytest.raises(UnknownFieldError) as info:
        validate_object(obj)
    assert "\r" not in info.value.message and "\\r\\n" in info.value.message
    assert len(info.value.message) < 400


def test_many_unknown_fields_are_summarised() -> None:
    obj = _clean(FULL[3])
    for i in range(50):
        obj["spec"][f"f{i}"] = i
    with pytest.raises(UnknownFieldError) as info:
        validate_object(obj)
    assert info.value.message.endswith('unknown field "spec.f9" (and 40 more)')


def test_field_validation_parameter() -> None:
    assert parse_field_validation(None) == "Strict"
    assert parse_field_validation("Warn") == "Warn"
    with pytest.raises(ValidationError, match='unsupported value "warn"'):
        parse_field_validation("warn")  # the API is case-sensitive, as Kubernetes'


def test_annotations_are_capped_together_at_256_kib() -> None:
    key = "example.com/big"
    obj = _clean(FULL[3])
    obj["metadata"]["annotations"] = {key: "x" * (MAX_ANNOTATIONS_BYTES - len(key))}
    validate_object(obj)
    obj["metadata"]["annotations"]["b"] = "y"
    with pytest.raises(ValidationError, match=r"^metadata.annotations: Too long: must have at most 262144 bytes"):
        validate_object(obj)
    deploy = _clean(FULL[6])
    deploy["spec"]["template"]["metadata"]["annotations"] = {"a": "x" * MAX_ANNOTATIONS_BYTES}
    with pytest.raises(ValidationError, match=r"^spec.template.metadata.annotations: Too long"):
        validate_object(deploy)


def test_selectors_follow_the_label_rules() -> None:
    policy = copy.deepcopy(TYPO_POLICY)
    policy["spec"] = {"selector": {"matchLabels": {"app": "x" * 64}}}
    with pytest.raises(ValidationError, match=r"^spec.selector.matchLabels.app: expected a label value"):
        validate_object(policy)
    svc = _clean(FULL[4])
    svc["spec"]["selector"] = {"bad key!": "web"}
    with pytest.raises(ValidationError, match=r'^spec.selector.bad key!: key "bad key!"'):
        validate_object(svc)


@pytest.mark.parametrize(("expression", "error"), [
    ({"key": "app", "operator": "In"}, r"matchExpressions\[0\]\.values: required when operator is In"),
    ({"key": "app", "operator": "Exists", "values": ["a"]}, r"values: must be empty when operator is Exists"),
    ({"key": "app"}, r"matchExpressions\[0\]\.operator: required field is missing"),
    ({"key": "bad key", "operator": "Exists"}, r'matchExpressions\[0\]\.key: key "bad key"'),
    ({"key": "app", "operator": "In", "values": ["x" * 64]}, r"values\[0\]: expected a label value"),
])
def test_match_expressions_follow_kubernetes(expression: dict[str, Any], error: str) -> None:
    deploy = _clean(FULL[6])
    deploy["spec"]["selector"]["matchExpressions"] = [expression]
    with pytest.raises(ValidationError, match=error):
        validate_object(deploy)
    deploy["spec"]["selector"]["matchExpressions"] = [{"key": "app", "operator": "In", "values": ["web"]}]
    validate_object(deploy)


def test_deep_nesting_is_refused_without_recursion_errors() -> None:
    obj = _clean(FULL[3])
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    obj["status"] = {"x": deep}
    with pytest.raises(ValidationError, match="nested too deeply: at most 100 levels"):
        validate_object(obj)


# ----------------------------------------------------------------------------- duplicate fields

DUPLICATE_YAML = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client}
spec:
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/client/sa/curl]}}]}]
  action: ALLOW
"""


def test_a_yaml_field_written_twice_is_refused_warned_or_ignored() -> None:
    from ambient.api.manifests import load_manifests

    with pytest.raises(UnknownFieldError) as info:
        load_manifests(DUPLICATE_YAML, "p.yaml")
    assert info.value.message == 'p.yaml: strict decoding error: line 7: duplicate field "action" (also at line 5)'
    warnings: list[str] = []
    (obj,) = load_manifests(DUPLICATE_YAML, "p.yaml", duplicates="Warn", warnings=warnings)
    assert obj["spec"]["action"] == "ALLOW"  # the last value, as Kubernetes keeps
    assert warnings == ['p.yaml: line 7: duplicate field "action" (also at line 5)']
    assert load_manifests(DUPLICATE_YAML, "p.yaml", duplicates="Ignore")[0]["spec"]["action"] == "ALLOW"


def test_merge_keys_may_override_without_being_duplicates() -> None:
    from ambient.api.manifests import load_manifests

    text = ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: &l {app: a, tier: web}}\n"
            "spec:\n  containers: [{name: a}]\n  nodeSelector: {<<: *l, app: b}\n")
    assert load_manifests(text, "m.yaml")[0]["spec"]["nodeSelector"] == {"app": "b", "tier": "web"}


def test_json_duplicates_are_found_with_their_path() -> None:
    from ambient.api.validation.schema import loads_with_duplicates

    value, paths = loads_with_duplicates(
        '{"spec": {"action": "DENY", "rules": [{"to": [], "to": []}], "action": "ALLOW"}, "kind": "x"}'
    )
    assert value["spec"]["action"] == "ALLOW"
    assert paths == ["spec.action", "spec.rules[0].to"]
