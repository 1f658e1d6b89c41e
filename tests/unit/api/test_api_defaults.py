"""Kubernetes defaults of the API server (`ambient.api.defaults`): the pure defaulting table-tested (user values
kept, idempotent, input untouched), then through the store on every write path (create, update, merge and
JSON patch, batch apply, dry run), and the kind names messages show for Istio's Gateway."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ambient.api.apply import server_side_apply
from ambient.api.defaults import default_object, image_pull_policy
from ambient.api.errors import AlreadyExistsError, ConflictError, NotFoundError, UnknownFieldError
from ambient.api.kinds import resolve_kind
from ambient.api.store import Store
from ambient.api.validation import validate_object

Obj = dict[str, Any]

CONTAINER_DEFAULTS = {"imagePullPolicy": "IfNotPresent", "terminationMessagePath": "/dev/termination-log",
                      "terminationMessagePolicy": "File", "resources": {}}
POD_SPEC_DEFAULTS = {"restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
                     "securityContext": {}, "serviceAccountName": "default", "serviceAccount": "default"}
PROBE_DEFAULTS = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}


def pod(spec: Obj | None = None, **container: Any) -> Obj:
    c = {"name": "app", "image": "whoami:1.0", **container}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [c], **(spec or {})}}


def service(**spec: Any) -> Obj:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "default"},
            "spec": {"selector": {"app": "a"}, "ports": [{"port": 80}], **spec}}


def deployment(**spec: Any) -> Obj:
    template = {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "app", "image": "x:1"}]}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": template, **spec}}


def daemon_set(**spec: Any) -> Obj:
    d = deployment(**spec)
    d["kind"] = "DaemonSet"
    return d


# (name, input, expected output): the expected objects are written out whole, so a default added or lost shows.
CASES: list[tuple[str, Obj, Obj]] = [
    ("pod: every pod and container default", pod(),
     {**pod(), "spec": {"containers": [{"name": "app", "image": "whoami:1.0", **CONTAINER_DEFAULTS}],
                        **POD_SPEC_DEFAULTS, "enableServiceLinks": True}}),
    ("pod: user values kept",
     pod({"restartPolicy": "Never", "dnsPolicy": "Default", "schedulerName": "mine",
          "securityContext": {"runAsUser": 1}, "serviceAccountName": "web", "enableServiceLinks": False,
          "terminationGracePeriodSeconds": 5},
         imagePullPolicy="Never", terminationMessagePath="/tmp/t", terminationMessagePolicy="FallbackToLogsOnError",
         resources={"requests": {"cpu": "1"}}),
     pod({"restartPolicy": "Never", "dnsPolicy": "Default", "schedulerName": "mine",
          "securityContext": {"runAsUser": 1}, "serviceAccountName": "web", "serviceAccount": "web",
          "enableServiceLinks": False, "terminationGracePeriodSeconds": 5},
         imagePullPolicy="Never", terminationMessagePath="/tmp/t", terminationMessagePolicy="FallbackToLogsOnError",
         resources={"requests": {"cpu": "1"}})),
    ("pod: probes (readiness keeps the local kubelet's unset period)",
     pod(livenessProbe={"httpGet": {"port": 8080}}, startupProbe={"exec": {"command": ["true"]}},
         readinessProbe={"tcpSocket": {"port": 8080}}),
     {**pod(), "spec": {"containers": [{
         "name": "app", "image": "whoami:1.0", **CONTAINER_DEFAULTS,
         "livenessProbe": {"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"}, **PROBE_DEFAULTS},
         "startupProbe": {"exec": {"command": ["true"]}, **PROBE_DEFAULTS},
         "readinessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1, "successThreshold": 1,
                            "failureThreshold": 3}}], **POD_SPEC_DEFAULTS, "enableServiceLinks": True}}),
    ("pod: probe values kept",
     pod(livenessProbe={"httpGet": {"port": 1, "path": "/h", "scheme": "HTTPS"}, "timeoutSeconds": 4,
                        "periodSeconds": 2, "failureThreshold": 9},
         readinessProbe={"tcpSocket": {"port": 1}, "periodSeconds": 3, "successThreshold": 2}),
     {**pod(), "spec": {"containers": [{
         "name": "app", "image": "whoami:1.0", **CONTAINER_DEFAULTS,
         "livenessProbe": {"httpGet": {"port": 1, "path": "/h", "scheme": "HTTPS"}, "timeoutSeconds": 4,
                           "periodSeconds": 2, "failureThreshold": 9, "successThreshold": 1},
         "readinessProbe": {"tcpSocket": {"port": 1}, "periodSeconds": 3, "successThreshold": 2, "timeoutSeconds": 1,
                            "failureThreshold": 3}}], **POD_SPEC_DEFAULTS, "enableServiceLinks": True}}),
    ("pod: ports, env fieldRef, host network, requests from limits, deprecated serviceAccount",
     pod({"hostNetwork": True, "serviceAccount": "old"},
         ports=[{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP", "hostPort": 5353}],
         env=[{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}, {"name": "V", "value": "1"}],
         resources={"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}),
     {**pod(), "spec": {
         "hostNetwork": True, **POD_SPEC_DEFAULTS, "serviceAccountName": "old", "serviceAccount": "old",
         "enableServiceLinks": True,
         "containers": [{
             "name": "app", "image": "whoami:1.0", **CONTAINER_DEFAULTS,
             "ports": [{"containerPort": 80, "protocol": "TCP", "hostPort": 80},
                       {"containerPort": 53, "protocol": "UDP", "hostPort": 5353}],
             "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName", "apiVersion": "v1"}}},
                     {"name": "V", "value": "1"}],
             "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}}}]}}),
    ("service: ClusterIP defaults", service(),
     service(type="ClusterIP", sessionAffinity="None", internalTrafficPolicy="Cluster", ipFamilyPolicy="SingleStack",
             ipFamilies=["IPv4"], ports=[{"port": 80, "protocol": "TCP", "targetPort": 80}])),
    ("service: user values kept, ClientIP affinity timeout, externalIPs",
     service(sessionAffinity="ClientIP", internalTrafficPolicy="Local", externalIPs=["192.0.2.1"],
             ports=[{"port": 80, "targetPort": "http", "protocol": "UDP"}]),
     service(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10800}},
             internalTrafficPolicy="Local", externalIPs=["192.0.2.1"], type="ClusterIP",
             externalTrafficPolicy="Cluster", ipFamilyPolicy="SingleStack", ipFamilies=["IPv4"],
             ports=[{"port": 80, "targetPort": "http", "protocol": "UDP"}])),
    ("service: headless without a selector is dual-stack, as kube-apiserver makes it",
     {**service(clusterIP="None"), "spec": {"clusterIP": "None", "ports": [{"port": 80}]}},
     {**service(), "spec": {"clusterIP": "None", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
                            "type": "ClusterIP", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                            "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}}),
    ("deployment: spec, strategy and template defaults", deployment(),
     {**deployment(), "spec": {
         "selector": {"matchLabels": {"app": "a"}}, "replicas": 1, "revisionHistoryLimit": 10,
         "progressDeadlineSeconds": 600,
         "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
         "template": {"metadata": {"labels": {"app": "a"}}, "spec": {
             **POD_SPEC_DEFAULTS, "containers": [{"name": "app", "image": "x:1", **CONTAINER_DEFAULTS}]}}}}),
    ("deployment: user values kept; Recreate gets no rolling parameters",
     deployment(replicas=0, revisionHistoryLimit=2, progressDeadlineSeconds=30, strategy={"type": "Recreate"}),
     {**deployment(), "spec": {
         "selector": {"matchLabels": {"app": "a"}}, "replicas": 0, "revisionHistoryLimit": 2,
         "progressDeadlineSeconds": 30, "strategy": {"type": "Recreate"},
         "template": {"metadata": {"labels": {"app": "a"}}, "spec": {
             **POD_SPEC_DEFAULTS, "containers": [{"name": "app", "image": "x:1", **CONTAINER_DEFAULTS}]}}}}),
    ("deployment: a partial rolling update is completed",
     deployment(strategy={"rollingUpdate": {"maxSurge": 1}}),
     {**deployment(), "spec": {
         "selector": {"matchLabels": {"app": "a"}}, "replicas": 1, "revisionHistoryLimit": 10,
         "progressDeadlineSeconds": 600,
         "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}},
         "template": {"metadata": {"labels": {"app": "a"}}, "spec": {
             **POD_SPEC_DEFAULTS, "containers": [{"name": "app", "image": "x:1", **CONTAINER_DEFAULTS}]}}}}),
    ("daemonset: update strategy and template defaults", daemon_set(),
     {**daemon_set(), "spec": {
         "selector": {"matchLabels": {"app": "a"}}, "revisionHistoryLimit": 10,
         "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
         "template": {"metadata": {"labels": {"app": "a"}}, "spec": {
             **POD_SPEC_DEFAULTS, "containers": [{"name": "app", "image": "x:1", **CONTAINER_DEFAULTS}]}}}}),
    ("daemonset: OnDelete kept", daemon_set(updateStrategy={"type": "OnDelete"}, revisionHistoryLimit=1),
     {**daemon_set(), "spec": {
         "selector": {"matchLabels": {"app": "a"}}, "revisionHistoryLimit": 1, "updateStrategy": {"type": "OnDelete"},
         "template": {"metadata": {"labels": {"app": "a"}}, "spec": {
             **POD_SPEC_DEFAULTS, "containers": [{"name": "app", "image": "x:1", **CONTAINER_DEFAULTS}]}}}}),
    ("other kinds: untouched", {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                                "metadata": {"name": "a"}, "spec": {}},
     {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "a"}, "spec": {}}),
]


@pytest.mark.parametrize(("given", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_defaults(given: Obj, expected: Obj) -> None:
    before = copy.deepcopy(given)
    out = default_object(given)
    assert out == expected
    assert given == before  # pure: the input is not modified
    assert default_object(out) == out  # idempotent


@pytest.mark.parametrize(("image", "policy"), [
    ("nginx", "Always"), ("nginx:latest", "Always"), ("registry:5000/team/app", "Always"),
    ("registry:5000/team/app:latest", "Always"), ("nginx:1.27", "IfNotPresent"),
    ("registry:5000/app:v2", "IfNotPresent"), ("nginx@sha256:" + "a" * 64, "IfNotPresent"),
    ("nginx:latest@sha256:" + "a" * 64, "Always"), ("", "IfNotPresent"), (None, "IfNotPresent"),
])
def test_image_pull_policy_follows_the_tag(image: Any, policy: str) -> None:
    assert image_pull_policy(image) == policy


def test_odd_shapes_are_left_to_validation() -> None:
    odd = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": ["not-an-object", {"name": "a", "ports": "x", "livenessProbe": 3, "env": [1]}]}}
    out = default_object(odd)
    assert out["spec"]["containers"][0] == "not-an-object"
    assert out["spec"]["containers"][1]["ports"] == "x" and out["spec"]["containers"][1]["livenessProbe"] == 3
    odd_service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": "x"}
    assert default_object(odd_service)["spec"] == "x"


def test_defaulted_objects_pass_validation_and_keep_their_fields() -> None:
    """Every field a default adds is a known, valid field: strict validation of the output changes nothing."""
    for name, given, _ in CASES:
        out = default_object(validate_object(given))
        assert validate_object(out) == out, name


# ----------------------------------------------------------------------------- through the store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path)
    yield s
    s.close()


def _probe(obj: Obj) -> Obj:
    probe: Obj = obj["spec"]["containers"][0]["livenessProbe"]
    return probe


def test_every_write_path_stores_the_defaults(store: Store) -> None:
    created = store.create(pod(livenessProbe={"httpGet": {"port": 8080}}))
    assert _probe(created)["periodSeconds"] == 10 and created["spec"]["dnsPolicy"] == "ClusterFirst"
    assert store.get("Pod", "p", "default") == created
    # A merge patch that removes a defaulted field: defaulted again, as kube-apiserver does.
    patched = store.patch("Pod", "p", "default", {"spec": {"dnsPolicy": None, "schedulerName": "mine"}})
    assert patched["spec"]["dnsPolicy"] == "ClusterFirst" and patched["spec"]["schedulerName"] == "mine"
    # An update (PUT) of an object without the defaults.
    bare = pod(livenessProbe={"httpGet": {"port": 8080}, "periodSeconds": 5})
    bare["metadata"]["resourceVersion"] = patched["metadata"]["resourceVersion"]
    updated = store.update(bare)
    assert _probe(updated)["periodSeconds"] == 5 and _probe(updated)["timeoutSeconds"] == 1
    assert updated["spec"]["schedulerName"] == "default-scheduler"
    # Dry runs answer the defaulted object and store nothing.
    dry = store.create(service(), dry_run=True)
    assert dry["spec"]["sessionAffinity"] == "None"
    with pytest.raises(NotFoundError):
        store.get("Service", "s", "default")
    # The batch apply, and applying the same manifest again is "unchanged" (nothing differs after defaulting).
    [(applied, action)] = store.apply_many([deployment()])
    assert action == "created" and applied["spec"]["progressDeadlineSeconds"] == 600
    [(again, action)] = store.apply_many([deployment()])
    assert action == "unchanged" and again["metadata"]["resourceVersion"] == applied["metadata"]["resourceVersion"]


def test_server_side_apply_keeps_defaults_out_of_the_appliers_fields(store: Store) -> None:
    """Defaults are nobody's fields: an apply that omits them keeps them; one that sets them wins."""
    manifest = service()
    created = store.create(server_side_apply(None, manifest, "kubectl", "v1"))
    assert created["spec"]["sessionAffinity"] == "None"
    owned = created["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]
    assert "f:sessionAffinity" not in owned and "f:selector" in owned
    again = server_side_apply(created, copy.deepcopy(manifest), "kubectl", "v1")
    assert store.update(again) == created  # a no-op apply writes nothing
    changed = service(sessionAffinity="ClientIP")
    merged = store.update(server_side_apply(store.get("Service", "s", "default"), changed, "kubectl", "v1"))
    assert merged["spec"]["sessionAffinity"] == "ClientIP"
    assert merged["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}


def test_rewriting_a_read_object_changes_nothing(store: Store) -> None:
    """What a controller does: read, re-write as read. Defaults are idempotent, so no new version is taken."""
    for obj in (pod(), service(), deployment(), daemon_set()):
        created = store.create(obj)
        assert store.update(copy.deepcopy(created)) == created
        kind, name = created["kind"], created["metadata"]["name"]
        spec_patch = {"spec": {k: v for k, v in created["spec"].items() if k != "containers"}}
        assert store.patch(kind, name, "default", spec_patch) == created


# ----------------------------------------------------------------------------- Istio's Gateway in messages


ISTIO_GATEWAY = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                 "metadata": {"name": "gw", "namespace": "default"},
                 "spec": {"selector": {"istio": "ingressgateway"},
                          "servers": [{"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["*"]}]}}


def test_istio_gateway_is_named_as_users_write_it(store: Store) -> None:
    info = resolve_kind("gateways.networking.istio.io")
    assert (info.display_kind, info.resource) == ("Gateway.networking.istio.io", "gateways.networking.istio.io")
    assert (resolve_kind("Pod").display_kind, resolve_kind("Pod").resource) == ("Pod", "pods")
    with pytest.raises(NotFoundError) as missing:
        store.get("IstioGateway", "gw", "default")
    assert missing.value.message == 'gateways.networking.istio.io "gw" in namespace "default" not found'
    created = store.create(copy.deepcopy(ISTIO_GATEWAY))
    with pytest.raises(AlreadyExistsError) as exists:
        store.create(copy.deepcopy(ISTIO_GATEWAY))
    assert "gateways.networking.istio.io" in exists.value.message and "IstioGateway" not in exists.value.message
    stale = copy.deepcopy(created)
    stale["metadata"]["resourceVersion"] = "1"
    with pytest.raises(ConflictError) as conflict:
        store.update(stale)
    assert 'on gateways.networking.istio.io "gw"' in conflict.value.message
    with pytest.raises(UnknownFieldError) as unknown:
        store.patch("IstioGateway", "gw", "default", {"spec": {"bogus": 1}})
    assert unknown.value.message.startswith("Gateway.networking.istio.io default/gw: ")
    with pytest.raises(ConflictError) as precondition:
        store.delete("IstioGateway", "gw", "default", preconditions={"uid": "other"})
    assert "IstioGateway" not in precondition.value.message
