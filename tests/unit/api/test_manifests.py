"""Tests of `ambient.api.manifests.load_manifests`: every kind round-trips; errors name source/doc/field."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from ambient.api.errors import UnknownKindError, ValidationError
from ambient.api.kinds import KINDS
from ambient.api.manifests import load_manifests

EVERY_KIND = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Node
metadata:
  name: node-1
spec:
  podCIDR: 10.244.1.0/24
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: shop
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web, version: "1"}
  annotations: {note: "hello"}
spec:
  serviceAccountName: web
  nodeName: node-1
  restartPolicy: OnFailure
  hostNetwork: false
  containers:
  - name: app
    image: python:3.11
    command: [python3, -m, http.server]
    args: ["8080"]
    workingDir: /tmp
    env: [{name: MODE, value: fast}]
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      containers: [{name: app, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: shop}
subsets:
- addresses: [{ip: 10.244.1.5}]
  ports: [{port: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/frontend]
        notNamespaces: [evil]
        ipBlocks: [10.244.0.0/16]
    to:
    - operation: {ports: ["8080"], methods: [GET], paths: [/api/*]}
    when:
    - key: request.headers[x-user]
      values: [alice]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec:
  mtls: {mode: STRICT}
  portLevelMtls:
    "9090": {mode: PERMISSIVE}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: shop
  labels: {istio.io/waypoint-for: service}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /}
      headers: [{name: x-canary, value: "1"}]
      method: GET
    backendRefs:
    - {name: web-v1, port: 80, weight: 90}
    - {name: web-v2, port: 80, weight: 10}
    timeouts: {request: 10s}
    retry: {attempts: 3, backoff: 100ms, codes: [503]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext, namespace: shop}
spec:
  hosts: [httpbin.example.test]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin-gateway, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8081, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: [web.example.test]
    tls: {mode: SIMPLE, credentialName: cert}
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: shop}
type: kubernetes.io/tls
data: {tls.crt: Qw==, tls.key: Sw==}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web]
  http:
  - match: [{headers: {end-user: {exact: jason}}, uri: {prefix: /api}}]
    route: [{destination: {host: web, subset: v2}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 50}}}
  - route:
    - {destination: {host: web, subset: v1}, weight: 80}
    - {destination: {host: web, subset: v2}, weight: 20}
    timeout: 2s
    retries: {attempts: 2, perTryTimeout: 500ms, retryOn: 5xx}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  jwtRules: [{issuer: testing@secure.istio.io, jwksUri: "http://jwks.shop/jwks.json"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: greeter, port: 50051}]
  rules:
  - matches: [{method: {type: Exact, service: helloworld.Greeter, method: SayHello}}]
    backendRefs: [{name: greeter-v2, port: 50051, weight: 1}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: tcp-echo, port: 9000}]
  rules: [{backendRefs: [{name: tcp-echo-v1, port: 9000, weight: 80}, {name: tcp-echo-v2, port: 9000, weight: 20}]}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-shop, namespace: backend}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: shop}
spec:
  selector: {matchLabels: {app: agent}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      hostNetwork: true
      containers: [{name: agent, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Event
metadata: {name: web.17e2a3b4c5d6e7f8, namespace: shop}
involvedObject: {kind: Pod, namespace: shop, name: web, fieldPath: "spec.containers{web}"}
reason: Started
message: Started container web
type: Normal
count: 1
source: {component: kubelet, host: node-1}
"""


def test_every_kind_loads_and_round_trips_through_yaml_and_json() -> None:
    objs = load_manifests(EVERY_KIND, "every.yaml")
    assert sorted(o["kind"] for o in objs) == sorted(k.wire_kind for k in KINDS)
    # Round trip: what we print (YAML or JSON) loads back to the very same objects.
    again_yaml = load_manifests(yaml.safe_dump_all(objs), "again.yaml")
    again_json = load_manifests(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}), "again.json")
    assert again_yaml == objs
    assert again_json == objs
    pod = objs[3]
    assert pod["spec"]["containers"][0]["args"] == ["8080"]
    assert pod["metadata"]["labels"] == {"app": "web", "version": "1"}
    assert objs[8]["spec"]["portLevelMtls"] == {"9090": {"mode": "PERMISSIVE"}}


def test_empty_documents_are_skipped() -> None:
    text = "---\n# only a comment\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n"
    assert [o["metadata"]["name"] for o in load_manifests(text)] == ["a"]
    assert load_manifests("") == []


def test_json_single_object_and_array() -> None:
    one = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}
    assert load_manifests(json.dumps(one))[0]["metadata"]["name"] == "a"
    assert len(load_manifests(json.dumps([one, {**one, "metadata": {"name": "b"}}]))) == 2


def test_default_namespace_and_mismatch() -> None:
    text = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n"
    assert load_manifests(text)[0]["metadata"]["namespace"] == "default"
    assert load_manifests(text, namespace="shop")[0]["metadata"]["namespace"] == "shop"
    ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n"
    assert "namespace" not in load_manifests(ns, namespace="shop")[0]["metadata"]
    with pytest.raises(ValidationError) as info:
        load_manifests("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a, namespace: x}\n", "f.yaml",
                       namespace="shop")
    assert info.value.message == (
        'f.yaml: document 1 (ServiceAccount "a"): metadata.namespace "x" does not match the namespace "shop" '
        "given on the command line"
    )


def test_yaml_syntax_error_has_line_and_column() -> None:
    text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n   labels: x\n"
    with pytest.raises(ValidationError) as info:
        load_manifests(text, "samples/bad.yaml")
    assert info.value.message == (
        "samples/bad.yaml: line 5, column 10: invalid YAML: mapping values are not allowed in this context"
    )
    assert info.value.hint is not None and "indentation" in info.value.hint


def test_tab_indentation_error() -> None:
    with pytest.raises(ValidationError) as info:
        load_manifests("metadata:\n\tname: x\n", "t.yaml")
    assert info.value.message.startswith("t.yaml: line 2, column 1: invalid YAML: ")
    assert info.value.message.endswith("(a tab: indent YAML with spaces)")


ERRORS: list[tuple[str, str, type[Exception], str]] = [
    ("wrong type in second document",
     "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web}\n"
     "spec:\n  containers:\n  - name: app\n    ports: [{containerPort: http}]\n",
     ValidationError,
     'samples/bad.yaml: document 2 (Pod "web"): spec.containers[0].ports[0].containerPort: expected an integer '
     '1-65535, got "http"'),
    ("unknown kind", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n", UnknownKindError,
     'samples/bad.yaml: document 1 (ConfigMap "c"): unknown kind "ConfigMap"'),
    ("missing kind", "apiVersion: v1\nmetadata: {name: c}\n", UnknownKindError,
     'samples/bad.yaml: document 1: missing field "kind"'),
    ("missing name", "apiVersion: v1\nkind: Pod\nmetadata: {labels: {a: b}}\nspec: {}\n", ValidationError,
     "samples/bad.yaml: document 1 (Pod): metadata.name: required field is missing"),
    ("scalar document", "just a string\n", ValidationError,
     'samples/bad.yaml: document 1: expected an object (a mapping with apiVersion, kind, metadata), '
     'got "just a string"'),
    ("bad list item",
     "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: ok}}\n"
     "- {apiVersion: v1, kind: Namespace, metadata: {name: Bad_Name}}\n",
     ValidationError,
     'samples/bad.yaml: document 1, items[1] (Namespace "Bad_Name"): metadata.name: expected a lowercase '
     "DNS-1123 label (a-z, 0-9, '-', at most 63 characters, starting with a letter or digit and ending with "
     'a letter or digit), got "Bad_Name"'),
]


@pytest.mark.parametrize(("text", "exc", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error_names_source_document_and_field(text: str, exc: type[Exception], message: str) -> None:
    with pytest.raises(exc) as info:
        load_manifests(text, "samples/bad.yaml")
    err: Any = info.value
    assert err.message == message
