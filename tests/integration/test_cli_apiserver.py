"""The `ambient` CLI against the real API server (a `python -m ambient.api.server` subprocess on a Unix
socket in a temporary state dir). Checks output text, exit codes, and what the server actually stored."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

server_module = pytest.importorskip("ambient.api.server", reason="the API server is not available yet")
from ambient.api.client import ApiClient  # noqa: E402
from ambient.api.errors import NotFoundError  # noqa: E402
from ambient.cli.main import app  # noqa: E402
from helpers import stop_process  # noqa: E402

PY = sys.executable

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  serviceAccountName: web
  containers: [{name: app, command: [python3, -m, http.server, "8080"], ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template: {metadata: {labels: {app: api}}, spec: {containers: [{name: app, command: [sleep, "60"]}]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}], to: [{operation: {ports: [8080]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: web, port: 80, weight: 90}, {name: web, port: 80, weight: 10}]}]
"""


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("apiserver")
    log = (path / "server.log").open("wb")
    proc = subprocess.Popen([PY, "-m", "ambient.api.server", "--state-dir", str(path)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"API server exited: {(path / 'server.log').read_text()}")
            if (path / "apiserver.sock").exists():
                try:
                    with ApiClient(path / "apiserver.sock") as client:
                        client.list("namespaces")
                    break
                except Exception:
                    pass
            if time.monotonic() > deadline:
                pytest.fail("API server did not come up within 30 s")
            time.sleep(0.05)
        yield path
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture
def api(state_dir: Path) -> Iterator[ApiClient]:
    with ApiClient(state_dir / "apiserver.sock") as client:
        yield client


def cli(state_dir: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, ["--state-dir", str(state_dir), *args], input=input)


def ambient(state_dir: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real entry point in a subprocess (exit codes, stdin, no traceback)."""
    env = {**os.environ, "AMBIENT_STATE_DIR": str(state_dir)}
    return subprocess.run([PY, "-m", "ambient", *args], input=input, capture_output=True, text=True, env=env,
                          timeout=60)


def test_apply_every_kind_then_unchanged_then_configured(state_dir: Path, api: ApiClient, tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(MANIFEST)
    first = cli(state_dir, "apply", "-f", str(path))
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == [
        "namespace/shop created",
        "serviceaccount/web created",
        "pod/web created",
        "service/web created",
        "deployment.apps/api created",
        "authorizationpolicy.security.istio.io/allow-web created",
        "peerauthentication.security.istio.io/strict created",
        "gateway.gateway.networking.k8s.io/waypoint created",
        "httproute.gateway.networking.k8s.io/split created",
    ]
    stored = api.get("service", "web", "shop")
    assert stored["spec"]["ports"][0] == {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}
    assert api.get("authorizationpolicy", "allow-web", "shop")["spec"]["rules"][0]["to"][0]["operation"] == {
        "ports": ["8080"]
    }
    second = cli(state_dir, "apply", "-f", str(path))
    assert set(line.rsplit(" ", 1)[1] for line in second.stdout.splitlines()) == {"unchanged"}
    path.write_text(MANIFEST.replace("replicas: 2", "replicas: 4"))
    third = cli(state_dir, "apply", "-f", str(path))
    assert "deployment.apps/api configured" in third.stdout.splitlines()
    assert "pod/web unchanged" in third.stdout.splitlines()
    assert api.get("deploy", "api", "shop")["spec"]["replicas"] == 4

    # What `get -o yaml` prints is exactly what the server stores.
    printed = yaml.safe_load(cli(state_dir, "get", "pod", "web", "-n", "shop", "-o", "yaml").stdout)
    assert printed == api.get("pod", "web", "shop")
    table = cli(state_dir, "get", "gateways", "-n", "shop").stdout.splitlines()
    assert table[0].split() == ["NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"]
    assert table[1].split()[:2] == ["waypoint", "istio-waypoint"]


def test_apply_into_missing_namespace_is_refused(state_dir: Path, api: ApiClient) -> None:
    result = cli(state_dir, "apply", "-f", "-",
                 input="apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a, namespace: nowhere}\n")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "nowhere" in result.stderr
    with pytest.raises(NotFoundError):
        api.get("serviceaccount", "a", "nowhere")


def test_label_annotate_delete(state_dir: Path, api: ApiClient) -> None:
    assert cli(state_dir, "create", "namespace", "lab").stdout == "namespace/lab created\n"
    cli(state_dir, "apply", "-n", "lab", "-f", "-", input="apiVersion: v1\nkind: ServiceAccount\nmetadata:\n"
        "  name: sa\n  labels: {team: a}\n")
    refused = cli(state_dir, "label", "sa", "sa", "-n", "lab", "team=b")
    assert refused.exit_code == 1
    assert api.get("sa", "sa", "lab")["metadata"]["labels"] == {"team": "a"}
    assert cli(state_dir, "label", "sa", "sa", "-n", "lab", "team=b", "x=y", "--overwrite").stdout == (
        "serviceaccount/sa labeled\n"
    )
    assert api.get("sa", "sa", "lab")["metadata"]["labels"] == {"team": "b", "x": "y"}
    assert cli(state_dir, "label", "sa/sa", "-n", "lab", "x-").exit_code == 0
    assert api.get("sa", "sa", "lab")["metadata"]["labels"] == {"team": "b"}
    bad = cli(state_dir, "label", "sa", "sa", "-n", "lab", "bad key=1")
    assert bad.exit_code == 1
    assert "bad key" in bad.stderr
    assert cli(state_dir, "annotate", "ns", "lab", "owner=me").stdout == "namespace/lab annotated\n"
    assert api.get("ns", "lab")["metadata"]["annotations"] == {"owner": "me"}
    assert cli(state_dir, "delete", "sa", "sa", "-n", "lab").stdout == 'serviceaccount "sa" deleted\n'
    with pytest.raises(NotFoundError):
        api.get("sa", "sa", "lab")
    missing = cli(state_dir, "get", "sa", "sa", "-n", "lab")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error: ") and '"sa"' in missing.stderr


def _later(delay: float, action: Any) -> threading.Thread:
    def body() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def test_wait_for_condition_and_delete(state_dir: Path, api: ApiClient) -> None:
    cli(state_dir, "create", "namespace", "waits")
    api.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "waits"},
                "spec": {"containers": [{"name": "c", "command": ["sleep", "1"]}]}})

    def make_ready() -> None:
        with ApiClient(state_dir / "apiserver.sock") as client:
            pod = client.get("pod", "p", "waits")
            pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            client.update_status(pod)

    thread = _later(0.5, make_ready)
    result = cli(state_dir, "wait", "pod/p", "-n", "waits", "--for=condition=Ready", "--timeout", "30s")
    thread.join()
    assert result.exit_code == 0, result.output
    assert result.stdout == "pod/p condition met\n"

    def remove() -> None:
        with ApiClient(state_dir / "apiserver.sock") as client:
            client.delete("pod", "p", "waits")

    thread = _later(0.5, remove)
    result = cli(state_dir, "wait", "pod", "p", "-n", "waits", "--for=delete", "--timeout=30s")
    thread.join()
    assert result.exit_code == 0, result.output
    assert result.stdout == "pod/p condition met\n"

    api.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q", "namespace": "waits"},
                "spec": {"containers": [{"name": "c", "command": ["sleep", "1"]}]}})
    timeout = cli(state_dir, "wait", "pod/q", "-n", "waits", "--for=condition=Ready", "--timeout", "1s")
    assert timeout.exit_code == 1
    assert timeout.stderr.startswith("error: timed out waiting for the condition Ready=True on pod/q\n")


def test_entry_point_subprocess_errors_and_stdin(state_dir: Path, api: ApiClient) -> None:
    ok = ambient(state_dir, "apply", "-f", "-", input="apiVersion: v1\nkind: Namespace\nmetadata: {name: sub}\n")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "namespace/sub created\n"
    assert api.get("namespace", "sub")["metadata"]["name"] == "sub"
    bad = ambient(state_dir, "get", "widgets")
    assert bad.returncode == 1
    assert bad.stderr.startswith('error: unknown kind "widgets"\nhint: ')
    assert "Traceback" not in bad.stderr
    usage = ambient(state_dir, "get", "pods", "--no-such-flag")
    assert usage.returncode == 2


def test_unreachable_server_is_one_clear_error(tmp_path: Path) -> None:
    result = ambient(tmp_path, "get", "pods")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "hint: " in result.stderr
    assert "Traceback" not in result.stderr


def test_help_is_fast_and_lists_commands() -> None:
    start = time.perf_counter()
    result = subprocess.run([PY, "-m", "ambient", "--help"], capture_output=True, text=True, timeout=30)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0
    for command in ("apply", "get", "delete", "label", "annotate", "wait", "create", "version"):
        assert command in result.stdout
    # Measured ~0.25 s; the bound leaves room for a loaded machine.
    assert elapsed < 3.0


@pytest.mark.slow
def test_apply_1000_and_get_all_10000(state_dir: Path, tmp_path: Path) -> None:
    def pods(prefix: str, n: int) -> list[dict[str, Any]]:
        return [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{prefix}{i}", "namespace": "perf"},
                 "spec": {"containers": [{"name": "c", "command": ["sleep", "1"]}]}} for i in range(n)]

    first = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "perf"}}, *pods("a", 999)]
    (tmp_path / "1k.yaml").write_text(yaml.safe_dump_all(first))
    (tmp_path / "9k.yaml").write_text(yaml.safe_dump_all(pods("b", 9000)))
    start = time.perf_counter()
    result = ambient(state_dir, "apply", "-f", str(tmp_path / "1k.yaml"))
    apply_s = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1000
    assert ambient(state_dir, "apply", "-f", str(tmp_path / "9k.yaml")).returncode == 0
    start = time.perf_counter()
    listing = ambient(state_dir, "get", "pods", "-A")
    get_s = time.perf_counter() - start
    assert listing.returncode == 0
    assert len(listing.stdout.splitlines()) >= 10000  # header + 9,999 pods (+ other tests' pods)
    print(f"apply 1,000 objects: {apply_s:.2f} s; get -A of 10,000 pods: {get_s:.2f} s")
    # Acceptance: < 5 s and < 2 s (measured ~0.7 s and ~0.5 s); doubled for a noisy shared machine.
    assert apply_s < 10.0
    assert get_s < 4.0


def test_delete_manifest_that_was_applied(state_dir: Path, api: ApiClient, tmp_path: Path) -> None:
    path = tmp_path / "gone.yaml"
    path.write_text(MANIFEST.replace("shop", "gone"))
    assert cli(state_dir, "apply", "-f", str(path)).exit_code == 0
    result = cli(state_dir, "delete", "-f", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == 'httproute.gateway.networking.k8s.io "split" deleted'
    assert result.stdout.splitlines()[-1] == 'namespace "gone" deleted'
    assert api.list("pods", "gone")[0] == []
    with pytest.raises(NotFoundError):
        api.get("namespace", "gone")
