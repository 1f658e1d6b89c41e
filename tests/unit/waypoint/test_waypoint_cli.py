"""`ambient waypoint apply|list|delete|status` against an in-memory API client."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from ambient.api.errors import NotFoundError
from ambient.api.validation import validate_object
from ambient.cli.context import CliState
from ambient.cli.main import app
from ambient.cli.waypoint import gateway_manifest


@dataclass
class Fake:
    objects: dict[tuple[str, str | None, str], dict[str, Any]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = validate_object(obj)
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta.get("namespace"), meta["name"])] = obj
        return copy.deepcopy(obj)

    def apply(self, obj: dict[str, Any]) -> tuple[dict[str, Any], str]:
        self.calls.append("apply")
        meta = obj["metadata"]
        old = self.objects.get((obj["kind"], meta.get("namespace"), meta["name"]))
        if old is not None and "status" in old:  # like the API server: apply never touches status
            obj = {**obj, "status": old["status"]}
        return self.put(obj), "configured" if old is not None else "created"

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        try:
            return copy.deepcopy(self.objects[(kind, namespace, name)])
        except KeyError:
            raise NotFoundError(f'{kind} "{name}" not found') from None

    def list(self, kind: str, namespace: str | None = None, **_: Any) -> tuple[list[dict[str, Any]], str]:
        return [copy.deepcopy(o) for (k, ns, _n), o in sorted(self.objects.items(), key=str)
                if k == kind and (namespace is None or ns == namespace)], "1"

    def patch(self, kind: str, name: str, namespace: str | None, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"patch {kind}/{name}")
        obj = self.objects[(kind, namespace, name)]
        labels = obj["metadata"].setdefault("labels", {})
        for k, v in patch["metadata"]["labels"].items():
            if v is None:
                labels.pop(k, None)
            else:
                labels[k] = v
        return copy.deepcopy(obj)

    def delete(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        self.calls.append(f"delete {kind}/{name}")
        return self.objects.pop((kind, namespace, name))


@pytest.fixture
def fake() -> Fake:
    f = Fake()
    f.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    return f


def run(fake: Fake, *args: str) -> Result:
    return CliRunner().invoke(app, ["waypoint", *args], obj=CliState(client_factory=lambda _s: fake),
                              catch_exceptions=False)


def set_programmed(fake: Fake, ns: str, name: str, status: str) -> None:
    fake.objects[("Gateway", ns, name)]["status"] = {"conditions": [
        {"type": "Programmed", "status": status, "reason": "Programmed" if status == "True" else "Pending",
         "message": "ok" if status == "True" else "Waiting for controller"}]}


def test_manifest_shape_is_valid_gateway() -> None:
    obj = validate_object(gateway_manifest("waypoint", "shop", "service"))
    assert obj["spec"]["gatewayClassName"] == "istio-waypoint"
    assert obj["spec"]["listeners"] == [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]
    assert obj["metadata"]["labels"] == {"istio.io/waypoint-for": "service"}


def test_apply_creates_gateway_and_enrolls_namespace(fake: Fake) -> None:
    res = run(fake, "apply", "-n", "shop", "--enroll-namespace", "--for", "all")
    assert res.exit_code == 0, res.output
    assert "waypoint shop/waypoint created" in res.output
    gw = fake.objects[("Gateway", "shop", "waypoint")]
    assert gw["metadata"]["labels"]["istio.io/waypoint-for"] == "all"
    assert fake.objects[("Namespace", None, "shop")]["metadata"]["labels"]["istio.io/use-waypoint"] == "waypoint"


def test_apply_rejects_bad_traffic_type(fake: Fake) -> None:
    res = run(fake, "apply", "-n", "shop", "--for", "everything")
    assert res.exit_code == 2 and "invalid --for" in res.output


def test_apply_wait_times_out_with_a_hint(fake: Fake) -> None:
    res = run(fake, "apply", "-n", "shop", "--wait", "--timeout", "0.3")
    assert res.exit_code == 1
    assert "was not programmed" in res.output and "hint:" in res.output


def test_apply_wait_succeeds_when_programmed(fake: Fake) -> None:
    run(fake, "apply", "-n", "shop")
    set_programmed(fake, "shop", "waypoint", "True")
    res = run(fake, "apply", "-n", "shop", "--wait", "--timeout", "5")
    assert res.exit_code == 0 and "programmed" in res.output


def test_list_columns(fake: Fake) -> None:
    run(fake, "apply", "-n", "shop")
    run(fake, "apply", "-n", "shop", "--name", "wl", "--for", "workload")
    set_programmed(fake, "shop", "waypoint", "True")
    fake.put({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
              "metadata": {"name": "ingress", "namespace": "shop"},
              "spec": {"gatewayClassName": "istio", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}})
    res = run(fake, "list", "-n", "shop")
    lines = res.output.strip().splitlines()
    assert lines[0].split() == ["NAME", "REVISION", "TRAFFIC", "TYPE", "PROGRAMMED"]
    assert lines[1].split() == ["waypoint", "default", "service", "True"]
    assert lines[2].split() == ["wl", "default", "workload", "False"]
    assert "ingress" not in res.output
    res = run(fake, "list", "-A")
    assert res.output.splitlines()[0].split()[0] == "NAMESPACE"


def test_status_and_delete(fake: Fake) -> None:
    run(fake, "apply", "-n", "shop", "--enroll-namespace")
    res = run(fake, "status", "-n", "shop")
    assert res.exit_code == 1 and "Waiting for controller" in res.output
    set_programmed(fake, "shop", "waypoint", "True")
    assert run(fake, "status", "-n", "shop").exit_code == 0
    res = run(fake, "delete", "-n", "shop")
    assert res.exit_code == 0 and "waypoint shop/waypoint deleted" in res.output
    assert ("Gateway", "shop", "waypoint") not in fake.objects
    assert "istio.io/use-waypoint" not in fake.objects[("Namespace", None, "shop")]["metadata"]["labels"]
    res = run(fake, "delete", "-n", "shop", "nope")
    assert res.exit_code == 1 and "not found" in res.output
