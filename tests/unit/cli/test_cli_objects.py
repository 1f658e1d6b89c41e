"""CLI unit tests through the real typer app with an in-memory API client (see conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from cli_fakes import FakeClient, FakeEvent, Runner

POD = """\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: app, command: [sleep, "1"]}, {name: side, command: [sleep, "2"]}]
status:
  phase: Running
  podIP: 10.244.1.5
  containerStatuses: [{name: app, ready: true, restartCount: 2}, {name: side, ready: false, restartCount: 1}]
"""

MANY = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{port: 80}, {port: 53, protocol: UDP}], clusterIP: 10.96.0.10}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template: {metadata: {labels: {app: web}}, spec: {containers: [{name: app}]}}
status: {readyReplicas: 2, updatedReplicas: 3, availableReplicas: 2}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: shop}
spec: {action: DENY}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_apply_prints_kubectl_lines_in_one_request(run: Runner, fake: FakeClient, tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", MANY)
    result = run("apply", "-f", path)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "namespace/shop created",
        "service/web created",
        "deployment.apps/web created",
        "authorizationpolicy.security.istio.io/deny-all created",
    ]
    assert fake.calls == ["apply_many:4"]
    assert fake.objects[("Service", "shop", "web")]["spec"]["ports"][0]["targetPort"] == 80
    again = run("apply", "-f", path)
    assert again.stdout.splitlines()[1] == "service/web unchanged"


def test_apply_from_stdin_and_directory(run: Runner, fake: FakeClient, tmp_path: Path) -> None:
    result = run("apply", "-f", "-", input="apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
    assert result.stdout == "namespace/a created\n"
    (tmp_path / "d").mkdir()
    write(tmp_path / "d", "1.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n")
    write(tmp_path / "d", "2.json", json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "c"}}))
    write(tmp_path / "d", "notes.txt", "not a manifest")
    result = run("apply", "-f", str(tmp_path / "d"))
    assert result.stdout == "namespace/b created\nnamespace/c created\n"
    assert set(n for _, _, n in fake.objects) == {"a", "b", "c"}


def test_apply_validation_error_is_one_line_and_nothing_stored(
    run: Runner, fake: FakeClient, tmp_path: Path
) -> None:
    bad = MANY + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, ports: " \
        "[{containerPort: http}]}]\n"
    path = write(tmp_path, "bad.yaml", bad)
    result = run("apply", "-f", path)
    assert result.exit_code == 1
    assert result.stderr == (
        f'error: {path}: document 5 (Pod "p"): spec.containers[0].ports[0].containerPort: expected an integer '
        '1-65535, got "http"\n'
    )
    assert "Traceback" not in result.output
    assert fake.objects == {}


def test_apply_missing_file_and_no_file(run: Runner) -> None:
    result = run("apply", "-f", "/nonexistent/x.yaml")
    assert result.exit_code == 1
    assert result.stderr == 'error: the path "/nonexistent/x.yaml" does not exist\n'
    result = run("apply")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: must specify -f FILE")


def test_apply_yaml_syntax_error_reports_line(run: Runner, tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", "kind: Pod\nmetadata:\n  name: web\n   labels: x\n")
    result = run("apply", "-f", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}: line 4, column 10: invalid YAML:")
    assert "\nhint: check the indentation" in result.stderr


def test_get_pods_table_and_wide(run: Runner, tmp_path: Path) -> None:
    run("apply", "-f", write(tmp_path, "p.yaml", POD))
    result = run("get", "pods", "-n", "shop")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert lines[1].split()[:4] == ["web", "1/2", "Running", "3"]
    # Columns are aligned: each header starts where its cells start.
    assert lines[0].index("READY") == lines[1].index("1/2")
    wide = run("get", "po", "-n", "shop", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert wide[1].split()[-2:] == ["10.244.1.5", "node-1"]


def test_get_all_namespaces_and_kind_columns(run: Runner, tmp_path: Path) -> None:
    run("apply", "-f", write(tmp_path, "m.yaml", MANY))
    svc = run("get", "svc", "-A").stdout.splitlines()
    assert svc[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"]
    assert svc[1].split()[:5] == ["shop", "web", "ClusterIP", "10.96.0.10", "80/TCP,53/UDP"]
    deploy = run("get", "deploy", "-n", "shop").stdout.splitlines()
    assert deploy[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert deploy[1].split()[:4] == ["web", "2/3", "3", "2"]
    ap = run("get", "authorizationpolicies", "-n", "shop").stdout.splitlines()
    assert ap[0].split() == ["NAME", "ACTION", "AGE"]
    assert ap[1].split()[:2] == ["deny-all", "DENY"]
    ns = run("get", "ns").stdout.splitlines()
    assert ns[0].split() == ["NAME", "STATUS", "AGE"]
    assert ns[1].split()[:2] == ["shop", "Active"]


def test_get_several_kinds(run: Runner, tmp_path: Path) -> None:
    run("apply", "-f", write(tmp_path, "m.yaml", MANY))
    out = run("get", "svc,deploy", "-n", "shop").stdout
    tables = out.split("\n\n")
    assert len(tables) == 2
    assert tables[0].splitlines()[1].startswith("service/web ")
    assert tables[1].splitlines()[1].startswith("deployment.apps/web ")


def test_get_output_yaml_json_name(run: Runner, tmp_path: Path) -> None:
    run("apply", "-f", write(tmp_path, "m.yaml", MANY))
    one = yaml.safe_load(run("get", "svc", "web", "-n", "shop", "-o", "yaml").stdout)
    assert one["kind"] == "Service" and one["metadata"]["name"] == "web"
    many = json.loads(run("get", "svc,deploy", "-n", "shop", "-o", "json").stdout)
    assert many["kind"] == "List"
    assert [i["kind"] for i in many["items"]] == ["Service", "Deployment"]
    assert run("get", "deploy", "-n", "shop", "-o", "name").stdout == "deployment.apps/web\n"
    by_ref = run("get", "svc/web", "deploy/web", "-n", "shop", "-o", "name").stdout
    assert by_ref == "service/web\ndeployment.apps/web\n"


def test_get_label_selector(run: Runner, tmp_path: Path) -> None:
    run("apply", "-f", write(tmp_path, "p.yaml", POD))
    assert run("get", "pods", "-n", "shop", "-l", "app=web", "-o", "name").stdout == "pod/web\n"
    empty = run("get", "pods", "-n", "shop", "-l", "app=other")
    assert empty.exit_code == 0
    assert empty.stdout == ""
    assert empty.stderr == "No resources found in shop namespace.\n"


def test_get_errors(run: Runner) -> None:
    missing = run("get", "pod", "nope")
    assert missing.exit_code == 1
    assert missing.stderr == 'error: pods "nope" in namespace "default" not found\n'
    unknown = run("get", "widgets")
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith('error: unknown kind "widgets"\nhint: known kinds: ')
    bad_format = run("get", "pods", "-o", "xml")
    assert bad_format.exit_code == 2
    assert bad_format.stderr == ('error: unknown output format "xml"\n'
                                 'hint: use one of: wide, yaml, json, name, jsonpath=TEMPLATE\n')
    no_template = run("get", "pods", "-o", "jsonpath=")
    assert no_template.exit_code == 2 and "no template given" in no_template.stderr
    bad_template = run("get", "pods", "-o", "jsonpath={.items[0}")
    assert bad_template.exit_code == 2 and "error parsing jsonpath" in bad_template.stderr


def test_get_jsonpath_as_kubectl(run: Runner, tmp_path: Path) -> None:
    run("apply", "-f", write(tmp_path, "m.yaml", MANY))
    run("apply", "-f", write(tmp_path, "p.yaml", POD))
    # one named object: the template applies to the object itself
    assert run("get", "pod", "web", "-n", "shop", "-o", "jsonpath={.status.podIP}").stdout == "10.244.1.5"
    # a collection: to a List
    names = run("get", "svc,deploy", "-n", "shop", "-o", "jsonpath={.items[*].metadata.name}").stdout
    assert names == "web web"
    out = run("get", "pods", "-n", "shop", "-o",
              'jsonpath={range .items[*]}{.metadata.name}{"\\t"}{.spec.containers[*].name}{"\\n"}{end}').stdout
    assert out == "web\tapp side\n"
    quoted = run("get", "pods", "-n", "shop", "-o", "jsonpath='{.items[0].metadata.labels.app}'").stdout
    assert quoted == "web"


def test_get_label_columns(run: Runner, tmp_path: Path) -> None:
    run("apply", "-f", write(tmp_path, "p.yaml", POD))
    out = run("get", "pods", "-n", "shop", "-L", "app", "-L", "tier,version").stdout.splitlines()
    assert out[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "APP", "TIER", "VERSION"]
    assert out[1].split()[-1] == "web"


def test_get_watch_prints_a_row_per_change(run: Runner, fake: FakeClient, tmp_path: Path) -> None:
    run("apply", "-f", write(tmp_path, "p.yaml", POD))
    changed = json.loads(json.dumps(fake.get("pod", "web", "shop")))
    changed["status"]["phase"] = "Failed"
    fake.events = [FakeEvent("MODIFIED", changed), FakeEvent("DELETED", changed)]
    result = run("get", "pods", "-n", "shop", "-w")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "READY", "STATUS"]
    assert [line.split()[2] for line in lines[1:]] == ["Running", "Failed", "Failed"]
    assert {line.index(line.split()[2]) for line in lines} == {lines[0].index("STATUS")}  # rows stay aligned
    run("apply", "-f", write(tmp_path, "p.yaml", POD))
    fake.events = [FakeEvent("MODIFIED", changed)]
    named = run("get", "pod", "web", "-n", "shop", "-w", "-o", "name")
    assert named.stdout == "pod/web\npod/web\n"
    assert fake.calls[-1].endswith(":metadata.name=web")
    several = run("get", "pods,svc", "-n", "shop", "-w")
    assert several.exit_code == 2 and "one kind" in several.stderr


def test_delete_by_name_file_and_ignore_not_found(run: Runner, fake: FakeClient, tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", MANY)
    run("apply", "-f", path)
    result = run("delete", "svc", "web", "-n", "shop")
    assert result.exit_code == 0
    assert result.stdout == 'service "web" deleted\n'
    assert ("Service", "shop", "web") not in fake.objects
    again = run("delete", "svc", "web", "-n", "shop")
    assert again.exit_code == 1
    assert again.stderr == 'error: services "web" in namespace "shop" not found\n'
    assert run("delete", "svc", "web", "-n", "shop", "--ignore-not-found").exit_code == 0
    by_file = run("delete", "-f", path, "--ignore-not-found")
    assert by_file.exit_code == 0
    assert by_file.stdout.splitlines() == [
        'authorizationpolicy.security.istio.io "deny-all" deleted',
        'deployment.apps "web" deleted',
        'namespace "shop" deleted',
    ]
    assert fake.objects == {}


def test_delete_usage(run: Runner) -> None:
    result = run("delete", "pods")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: resource(s) were provided, but no name was specified")


def test_create_namespace(run: Runner, fake: FakeClient) -> None:
    assert run("create", "namespace", "shop").stdout == "namespace/shop created\n"
    assert ("Namespace", None, "shop") in fake.objects
    dup = run("create", "ns", "shop")
    assert dup.exit_code == 1
    assert dup.stderr == 'error: namespaces "shop" already exists\n'
    bad = run("create", "namespace", "Shop")
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: metadata.name: expected a lowercase DNS-1123 label")


def test_label_and_annotate(run: Runner, fake: FakeClient, tmp_path: Path) -> None:
    run("apply", "-f", write(tmp_path, "p.yaml", POD))
    refused = run("label", "pod", "web", "-n", "shop", "app=api")
    assert refused.exit_code == 1
    assert refused.stderr == (
        "error: 'app' already has a value (web), and --overwrite is false\n"
        "hint: pass --overwrite to replace the label\n"
    )
    ok = run("label", "pod/web", "-n", "shop", "app=api", "tier=fe", "--overwrite")
    assert ok.stdout == "pod/web labeled\n"
    assert fake.objects[("Pod", "shop", "web")]["metadata"]["labels"] == {"app": "api", "tier": "fe"}
    removed = run("label", "po", "web", "-n", "shop", "tier-", "gone-")
    assert removed.stdout == 'label "gone" not found.\npod/web labeled\n'
    assert fake.objects[("Pod", "shop", "web")]["metadata"]["labels"] == {"app": "api"}
    same = run("label", "pod", "web", "-n", "shop", "app=api")
    assert same.stdout == "pod/web not labeled\n"
    ann = run("annotate", "pod", "web", "-n", "shop", "note=hi")
    assert ann.stdout == "pod/web annotated\n"
    assert fake.objects[("Pod", "shop", "web")]["metadata"]["annotations"] == {"note": "hi"}
    usage = run("label", "pod", "web", "-n", "shop", "oops")
    assert usage.exit_code == 2
    assert usage.stderr.startswith('error: "oops": expected KEY=VALUE to set or KEY- to remove')


def test_wait_condition_met_immediately_and_via_watch(run: Runner, fake: FakeClient, tmp_path: Path) -> None:
    ready = POD.replace("  phase: Running\n", "  phase: Running\n  conditions: [{type: Ready, status: 'True'}]\n")
    run("apply", "-f", write(tmp_path, "p.yaml", ready))
    now = run("wait", "pod/web", "-n", "shop", "--for=condition=Ready")
    assert now.exit_code == 0
    assert now.stdout == "pod/web condition met\n"
    assert not any(c.startswith("watch") for c in fake.calls)

    run("apply", "-f", write(tmp_path, "q.yaml", POD.replace("name: web", "name: later")))
    later = fake.get("pod", "later", "shop")
    not_ready = {**later, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    is_ready = {**later, "status": {"conditions": [{"type": "ready", "status": "True"}]}}
    other = {**is_ready, "metadata": {**later["metadata"], "name": "other"}}
    fake.events = [FakeEvent("MODIFIED", not_ready), FakeEvent("MODIFIED", other), FakeEvent("MODIFIED", is_ready)]
    result = run("wait", "pod", "later", "-n", "shop", "--for", "condition=Ready", "--timeout", "5s")
    assert result.exit_code == 0
    assert result.stdout == "pod/later condition met\n"
    assert fake.calls[-1] == f"watch:{later['metadata']['resourceVersion']}"


def test_wait_for_delete(run: Runner, fake: FakeClient, tmp_path: Path) -> None:
    assert run("wait", "pod/none", "--for=delete").stdout == "pod/none condition met\n"
    run("apply", "-f", write(tmp_path, "p.yaml", POD))
    fake.events = [FakeEvent("DELETED", fake.get("pod", "web", "shop"))]
    result = run("wait", "pod/web", "-n", "shop", "--for=delete", "--timeout=2s")
    assert result.stdout == "pod/web condition met\n"


def test_wait_timeout(run: Runner, tmp_path: Path) -> None:
    run("apply", "-f", write(tmp_path, "p.yaml", POD))
    result = run("wait", "pod/web", "-n", "shop", "--for=condition=Ready", "--timeout", "200ms")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: timed out waiting for the condition Ready=True on pod/web\n"
        "hint: inspect it with `ambient get pod web -o yaml -n shop`\n"
    )


def test_wait_usage_errors(run: Runner) -> None:
    bad_for = run("wait", "pod/web", "--for=ready")
    assert bad_for.exit_code == 2
    assert bad_for.stderr.startswith('error: unsupported --for "ready"')
    bad_timeout = run("wait", "pod/web", "--for=delete", "--timeout", "soon")
    assert bad_timeout.exit_code == 2
    assert bad_timeout.stderr.startswith('error: invalid timeout "soon"')


def test_version(run: Runner) -> None:
    result = run("version")
    assert result.exit_code == 0
    assert result.stdout.startswith("ambient version 0.1.0")


def test_dry_run_needs_no_server(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ambient.cli.main import app

    path = write(tmp_path, "m.yaml", MANY)
    result = CliRunner().invoke(app, ["--state-dir", str(tmp_path / "none"), "apply", "--dry-run", "-f", path])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == "namespace/shop validated (dry run)"


ISTIO_GW = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin-gw, namespace: demo}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8081, name: http, protocol: HTTP}, hosts: ["*"]}]
"""

GATEWAY_API_GW = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: httpbin-gw, namespace: demo}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
"""


def test_same_named_gateways_of_two_apis_are_told_apart(run: Runner, fake: FakeClient, tmp_path: Path) -> None:
    """An Istio Gateway and a Gateway API Gateway share kind and name: the apiVersion picks the object that
    apply prints and that delete -f removes (going by kind alone deleted the other one)."""
    istio = write(tmp_path, "istio-gw.yaml", ISTIO_GW)
    k8s = write(tmp_path, "k8s-gw.yaml", GATEWAY_API_GW)
    assert run("apply", "-f", k8s).stdout == "gateway.gateway.networking.k8s.io/httpbin-gw created\n"
    assert run("apply", "-f", istio).stdout == "gateway.networking.istio.io/httpbin-gw created\n"
    for validate in ("strict", "warn"):
        dry = run("apply", "-f", istio, "--dry-run", f"--validate={validate}")
        assert dry.stdout == "gateway.networking.istio.io/httpbin-gw validated (dry run)\n"
    assert set(fake.objects) == {("Gateway", "demo", "httpbin-gw"), ("IstioGateway", "demo", "httpbin-gw")}
    deleted = run("delete", "-f", istio)
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout == 'gateway.networking.istio.io "httpbin-gw" deleted\n'
    assert set(fake.objects) == {("Gateway", "demo", "httpbin-gw")}
    assert fake.objects[("Gateway", "demo", "httpbin-gw")]["spec"]["gatewayClassName"] == "istio"
    created = run("create", "-f", istio)
    assert created.stdout == "gateway.networking.istio.io/httpbin-gw created\n"
