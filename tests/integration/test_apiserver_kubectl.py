"""The API server's TLS listener as kubectl and Kubernetes clients use it (in-process server, loopback only).

Authentication (token, admin client certificate, 401 otherwise), discovery, OpenAPI, Tables, strategic merge
patch, and the real `kubectl` binary (skipped when it is not installed) for get/apply/label/annotate/
delete/watch/explain. Pods, logs, exec and port-forward need a cluster: tests/netns/test_kubectl_cluster.py.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ambient.api.server import ApiServer, serve_in_thread
from helpers import KUBECTL, needs_kubectl

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    state = tmp_path_factory.mktemp("kc")
    (state / "cluster.json").write_text('{"name": "kctest"}')
    with serve_in_thread(state, tls="127.0.0.1:0") as srv:
        yield srv


def _client(server: ApiServer, **kw: Any) -> httpx.Client:
    assert server.tls_port is not None
    ctx = ssl.create_default_context(cafile=str(server.state_dir / "ca" / "root-cert.pem"))
    if "cert" in kw:
        ctx.load_cert_chain(*kw.pop("cert"))
    return httpx.Client(base_url=f"https://127.0.0.1:{server.tls_port}", verify=ctx, timeout=10, **kw)


def _token(server: ApiServer) -> str:
    return (server.state_dir / "apiserver" / "admin-token").read_text().strip()


def test_tls_listener_needs_a_credential(server: ApiServer) -> None:
    with _client(server) as c:
        r = c.get("/api/v1/namespaces")
        assert r.status_code == 401 and r.json()["reason"] == "Unauthorized"
        assert c.get("/version", headers={"Authorization": "Bearer wrong"}).status_code == 401
    with _client(server, headers={"Authorization": f"Bearer {_token(server)}"}) as c:
        assert c.get("/api/v1/namespaces").json()["kind"] == "NamespaceList"
    d = server.state_dir / "apiserver"
    with _client(server, cert=(str(d / "admin-cert.pem"), str(d / "admin-key.pem"))) as c:
        assert c.get("/version").json()["major"] == "1"
    # the serving certificate is for localhost too
    ctx = ssl.create_default_context(cafile=str(server.state_dir / "ca" / "root-cert.pem"))
    r = httpx.get(f"https://localhost:{server.tls_port}/version", verify=ctx,
                  headers={"Authorization": f"Bearer {_token(server)}"})
    assert r.status_code == 200


def test_kubeconfig_points_at_the_listener(server: ApiServer) -> None:
    assert server.kubeconfig_path == server.state_dir / "kubeconfig"
    doc = json.loads(server.kubeconfig_path.read_text())
    assert doc["current-context"] == "kctest"
    assert doc["clusters"][0]["cluster"]["server"] == f"https://127.0.0.1:{server.tls_port}"


def test_discovery_openapi_tables_and_strategic_patch(server: ApiServer) -> None:
    with _client(server, headers={"Authorization": f"Bearer {_token(server)}"}) as c:
        # kubectl asks for aggregated discovery first; the legacy document (plain JSON) makes it fall back
        aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        r = c.get("/api", headers={"Accept": aggregated})
        assert r.headers["Content-Type"].startswith("application/json") and "g=apidiscovery" not in r.headers[
            "Content-Type"]
        assert r.json()["versions"] == ["v1"]
        assert any(g["name"] == "security.istio.io" for g in c.get("/apis").json()["groups"])
        res = c.get("/apis/apps/v1").json()
        assert any(r["name"] == "deployments" and r["shortNames"] == ["deploy"] for r in res["resources"])
        assert c.get("/apis/nope.io/v1").status_code == 404
        idx = c.get("/openapi/v3").json()["paths"]
        doc = c.get(idx["apis/security.istio.io/v1"]["serverRelativeURL"]).json()
        assert "io.istio.security.v1.AuthorizationPolicy" in doc["components"]["schemas"]
        crds = c.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions").json()
        assert "authorizationpolicies.security.istio.io" in {i["metadata"]["name"] for i in crds["items"]}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}
        assert c.post("/api/v1/namespaces/default/pods", json=pod).status_code == 201
        table_accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        t = c.get("/api/v1/namespaces/default/pods", headers={"Accept": table_accept}).json()
        assert t["kind"] == "Table"
        assert [col["name"] for col in t["columnDefinitions"]][:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        assert t["rows"][0]["cells"][:3] == ["web", "0/2", "Pending"]
        r = c.patch("/api/v1/namespaces/default/pods/web",
                    content=json.dumps({"spec": {"containers": [{"name": "b", "image": "y2"}]}}),
                    headers={"Content-Type": "application/strategic-merge-patch+json"})
        assert r.status_code == 200, r.text
        assert [(x["name"], x["image"]) for x in r.json()["spec"]["containers"]] == [("a", "x"), ("b", "y2")]
        # unknown fields are refused under strategic merge patch as well
        r = c.patch("/api/v1/namespaces/default/pods/web?fieldValidation=Strict",
                    content=json.dumps({"spec": {"bogus": 1}}),
                    headers={"Content-Type": "application/strategic-merge-patch+json"})
        assert r.status_code == 400 and "bogus" in r.text
        r = c.patch("/api/v1/namespaces/default/pods/web", content="[]",
                    headers={"Content-Type": "application/xml"})
        assert r.status_code == 415
        c.delete("/api/v1/namespaces/default/pods/web")


def _kubectl(server: ApiServer, *args: str, check: bool = True, timeout: float = 30,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig_path), "HOME": str(server.state_dir)}
    proc = subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True, timeout=timeout, input=stdin)
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc


@needs_kubectl
def test_kubectl_version_get_apply_label_annotate_delete(server: ApiServer) -> None:
    assert "Server Version: v1.32" in _kubectl(server, "version").stdout
    out = _kubectl(server, "get", "ns").stdout
    assert out.splitlines()[0].split() == ["NAME", "STATUS", "AGE"] and "kube-system" in out
    demo = (REPO / "samples" / "demo.yaml").read_text()
    out = _kubectl(server, "apply", "-f", "-", stdin=demo).stdout
    assert "deployment.apps/httpbin created" in out and "service/httpbin created" in out
    labels = json.loads(_kubectl(server, "get", "svc", "-n", "demo", "httpbin", "-o", "json").stdout)
    assert labels["metadata"]["labels"] == {"app": "httpbin"}
    # re-applied without the Service's label: client-side apply removes it (three-way merge)
    lines = demo.splitlines()
    start = next(i for i, line in enumerate(lines) if line == "kind: Service")
    at = next(i for i in range(start, len(lines)) if lines[i] == "  labels:")
    trimmed = "\n".join(lines[:at] + lines[at + 2:]) + "\n"
    assert "service/httpbin configured" in _kubectl(server, "apply", "-f", "-", stdin=trimmed).stdout
    svc = json.loads(_kubectl(server, "get", "svc", "-n", "demo", "httpbin", "-o", "json").stdout)
    assert "app" not in (svc["metadata"].get("labels") or {})
    assert "kubectl.kubernetes.io/last-applied-configuration" in svc["metadata"]["annotations"]
    # a changed pod template label is merged into the Deployment by strategic merge patch
    _kubectl(server, "apply", "-f", "-", stdin=demo.replace("version: v1", "version: v2"))
    dep = json.loads(_kubectl(server, "get", "deploy", "-n", "demo", "httpbin", "-o", "json").stdout)
    assert dep["spec"]["template"]["metadata"]["labels"]["version"] == "v2"
    assert [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]] == ["httpbin"]
    _kubectl(server, "label", "deploy", "-n", "demo", "httpbin", "team=blue")
    _kubectl(server, "annotate", "deploy", "-n", "demo", "httpbin", "note=hello")
    out = _kubectl(server, "get", "deploy", "-n", "demo", "--show-labels").stdout
    assert out.splitlines()[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "LABELS"]
    assert "team=blue" in out
    assert _kubectl(server, "get", "deploy", "-n", "demo", "httpbin", "-o",
                    "jsonpath={.metadata.annotations.note}").stdout == "hello"
    _kubectl(server, "label", "deploy", "-n", "demo", "httpbin", "team-")
    assert "team=" not in _kubectl(server, "get", "deploy", "-n", "demo", "--show-labels").stdout
    out = _kubectl(server, "get", "deploy", "-A", "-o", "wide").stdout
    assert out.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"] and "SELECTOR" in out
    assert 'service "httpbin" deleted' in _kubectl(server, "delete", "svc", "-n", "demo", "httpbin").stdout
    proc = _kubectl(server, "get", "svc", "-n", "demo", "httpbin", check=False)
    assert proc.returncode != 0 and "NotFound" in proc.stderr


@needs_kubectl
def test_kubectl_watch_sees_a_change(server: ApiServer) -> None:
    assert KUBECTL is not None
    _kubectl(server, "apply", "-f", "-", stdin='{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"watched"}}')
    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig_path), "HOME": str(server.state_dir)}
    with subprocess.Popen([KUBECTL, "get", "sa", "-n", "watched", "--watch"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            # the first line is the header of the (empty) listing, or nothing: create once it watches
            time.sleep(1.0)
            _kubectl(server, "apply", "-f", "-", stdin='{"apiVersion":"v1","kind":"ServiceAccount",'
                     '"metadata":{"name":"seen","namespace":"watched"}}')
            deadline = time.monotonic() + 20
            line = ""
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if line.startswith("seen"):
                    break
            assert line.split()[0] == "seen", line
        finally:
            proc.kill()


@needs_kubectl
def test_kubectl_explain_and_mesh_kinds(server: ApiServer) -> None:
    out = _kubectl(server, "explain", "authorizationpolicy.spec").stdout
    assert "KIND:       AuthorizationPolicy" in out and "rules" in out and "action" in out
    # kubectl create <generator> sends protobuf: decoded for namespaces and service accounts, else refused
    # with a hint (415)
    assert "namespace/mesh created" in _kubectl(server, "create", "namespace", "mesh").stdout
    assert "serviceaccount/robot created" in _kubectl(server, "create", "serviceaccount", "robot", "-n", "mesh").stdout
    proc = _kubectl(server, "create", "deployment", "web", "--image=x", "-n", "mesh", check=False)
    assert proc.returncode != 0 and "kubectl apply" in proc.stderr
    policy = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
              "metadata": {"name": "deny", "namespace": "mesh"}, "spec": {"action": "DENY", "rules": [{}]}}
    _kubectl(server, "apply", "-f", "-", stdin=json.dumps(policy))
    out = _kubectl(server, "get", "authorizationpolicies", "-A").stdout
    assert out.splitlines()[0].split() == ["NAMESPACE", "NAME", "ACTION", "AGE"] and "DENY" in out
    # unknown fields are refused by the server (kubectl's default --validate=strict asks it to)
    bad = {**policy, "spec": {"action": "DENY", "rulez": []}}
    proc = _kubectl(server, "apply", "-f", "-", stdin=json.dumps(bad), check=False)
    assert proc.returncode != 0 and "rulez" in proc.stderr
    assert "authorizationpolicies.security.istio.io" in _kubectl(server, "get", "crd").stdout


def test_streaming_list_ends_its_initial_events_with_a_bookmark(server: ApiServer) -> None:
    """client-go's WatchList (kubectl 1.35+ informers): `sendInitialEvents=true` streams the current state as
    ADDED events, then a BOOKMARK annotated `k8s.io/initial-events-end`, then changes."""
    with _client(server, headers={"Authorization": f"Bearer {_token(server)}"}) as c, c.stream(
        "GET", "/api/v1/namespaces", params={"watch": "true", "sendInitialEvents": "true",
                                              "allowWatchBookmarks": "true", "resourceVersionMatch": "NotOlderThan",
                                              "timeoutSeconds": "2"}) as r:
        events = [json.loads(line) for line in r.iter_lines() if line]
    types = [e["type"] for e in events]
    assert types[0] == "ADDED" and "BOOKMARK" in types
    end = events[types.index("BOOKMARK")]
    assert end["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert all(t == "ADDED" for t in types[:types.index("BOOKMARK")])
    assert {e["object"]["metadata"]["name"] for e in events if e["type"] == "ADDED"} >= {"default", "kube-system"}


@needs_kubectl
def test_server_side_dry_run_and_diff(server: ApiServer) -> None:
    """`--dry-run=server` and `kubectl diff` run the write on the server and store nothing; diff exits 1 with
    a unified diff when the manifest changes the live object, 0 when it does not."""
    ns = '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"dry"}}'
    assert "namespace/dry created (server dry run)" in _kubectl(server, "apply", "--dry-run=server", "-f", "-",
                                                                stdin=ns).stdout
    assert _kubectl(server, "get", "ns", "dry", check=False).returncode != 0  # nothing was written
    assert "namespace/dry created (server dry run)" in _kubectl(server, "create", "--dry-run=server", "-f", "-",
                                                                stdin=ns).stdout
    assert "namespace/dry created (dry run)" in _kubectl(server, "apply", "--dry-run=client", "-f", "-",
                                                         stdin=ns).stdout
    _kubectl(server, "apply", "-f", "-", stdin=ns)
    policy = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
              "metadata": {"name": "gate", "namespace": "dry"}, "spec": {"action": "ALLOW", "rules": [{}]}}
    _kubectl(server, "apply", "-f", "-", stdin=json.dumps(policy))
    before = _kubectl(server, "get", "authorizationpolicy", "-n", "dry", "gate", "-o", "json").stdout
    assert _kubectl(server, "diff", "-f", "-", stdin=json.dumps(policy)).stdout == ""
    changed = json.dumps({**policy, "spec": {"action": "DENY", "rules": [{}]}})
    proc = _kubectl(server, "diff", "-f", "-", stdin=changed, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "\n-  action: ALLOW\n+  action: DENY\n" in proc.stdout
    assert _kubectl(server, "get", "authorizationpolicy", "-n", "dry", "gate", "-o", "json").stdout == before
    # kubectl delete sends its dryRun in a DeleteOptions body: honoured, so the namespace and its objects stay
    out = _kubectl(server, "delete", "--dry-run=server", "namespace", "dry").stdout
    assert out.startswith('namespace "dry" deleted') and "(server dry run)" in out
    assert _kubectl(server, "get", "authorizationpolicy", "-n", "dry", "gate", "-o", "json").stdout == before


@needs_kubectl
def test_field_managers_of_kubectl_writes(server: ApiServer) -> None:
    """kubectl's writes are recorded per field manager as Kubernetes records them: client-side apply, label
    and patch are `Update` entries; the first server-side apply migrates the client-side apply's fields (a
    JSON patch of managedFields that kubectl sends itself); a later apply of a field `kubectl patch` changed
    conflicts with it."""
    _kubectl(server, "create", "namespace", "owners")
    policy = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
              "metadata": {"name": "gate", "namespace": "owners"}, "spec": {"action": "ALLOW", "rules": [{}]}}

    def managers() -> dict[str, str]:
        obj = json.loads(_kubectl(server, "get", "authorizationpolicy", "-n", "owners", "gate", "-o", "json",
                                  "--show-managed-fields").stdout)
        return {m["manager"]: m["operation"] for m in obj["metadata"]["managedFields"]}

    _kubectl(server, "apply", "-f", "-", stdin=json.dumps(policy))
    assert managers() == {"kubectl-client-side-apply": "Update"}
    _kubectl(server, "label", "authorizationpolicy", "-n", "owners", "gate", "team=blue")
    out = _kubectl(server, "apply", "--server-side", "-f", "-", stdin=json.dumps(policy)).stdout
    assert "serverside-applied" in out
    assert managers() == {"kubectl-label": "Update", "kubectl": "Apply", "kubectl-last-applied": "Apply"}
    _kubectl(server, "patch", "authorizationpolicy", "-n", "owners", "gate", "--type=merge",
             "-p", '{"spec":{"action":"DENY"}}')
    proc = _kubectl(server, "apply", "--server-side", "-f", "-", stdin=json.dumps(policy), check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith('error: Apply failed with 1 conflict: conflict with "kubectl-patch" using '
                                  "security.istio.io/v1: .spec.action\n"), proc.stderr
    _kubectl(server, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(policy))
    assert "kubectl-patch" not in managers()
    # kubectl patch --type=json
    _kubectl(server, "patch", "authorizationpolicy", "-n", "owners", "gate", "--type=json",
             "-p", '[{"op":"replace","path":"/spec/action","value":"DENY"}]')
    assert _kubectl(server, "get", "authorizationpolicy", "-n", "owners", "gate", "-o",
                    "jsonpath={.spec.action}").stdout == "DENY"


@needs_kubectl
def test_server_side_apply_owns_containers_per_item(server: ApiServer) -> None:
    """Two field managers each applying their own container of one Deployment: both kept; changing the
    other's container image conflicts at that container's field, as kube-apiserver prints it."""
    def deployment(container: str, image: str) -> str:
        return json.dumps({"apiVersion": "apps/v1", "kind": "Deployment",
                           "metadata": {"name": "pair", "namespace": "default"},
                           "spec": {"selector": {"matchLabels": {"app": "pair"}}, "template": {
                               "metadata": {"labels": {"app": "pair"}},
                               "spec": {"containers": [{"name": container, "image": image}]}}}})

    _kubectl(server, "apply", "--server-side", "--field-manager=team-app", "-f", "-", stdin=deployment("app", "v1"))
    _kubectl(server, "apply", "--server-side", "--field-manager=team-mesh", "-f", "-",
             stdin=deployment("proxy", "p1"))
    names = _kubectl(server, "get", "deploy", "pair", "-o", "jsonpath={.spec.template.spec.containers[*].name}")
    assert names.stdout.split() == ["app", "proxy"]
    proc = _kubectl(server, "apply", "--server-side", "--field-manager=team-mesh", "-f", "-",
                    stdin=deployment("app", "v2"), check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith('error: Apply failed with 1 conflict: conflict with "team-app": '
                                  '.spec.template.spec.containers[name="app"].image\n'), proc.stderr
    _kubectl(server, "delete", "deploy", "pair")


@needs_kubectl
def test_a_fresh_server_has_no_events(server: ApiServer) -> None:
    """Nothing happened yet: kubectl says so, and list and watch answer empty (Events: test_apiserver_events)."""
    proc = _kubectl(server, "get", "events", "-A")
    assert proc.stdout == "" and "No resources found" in proc.stderr
    with _client(server, headers={"Authorization": f"Bearer {_token(server)}"}) as c:
        assert c.get("/api/v1/namespaces/default/events").json()["items"] == []
        r = c.get("/api/v1/events", params={"watch": "true", "timeoutSeconds": "1"})
        assert r.status_code == 200 and r.text == ""
