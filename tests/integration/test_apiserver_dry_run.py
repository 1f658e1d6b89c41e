"""Server-side dry run (`?dryRun=All`, a DeleteOptions body) and server-side apply conflicts over HTTP, as
kube-apiserver answers them (in-process server, Unix socket).

"Nothing stored" is checked by the change log: a watch from the version before the dry runs delivers, as its
first event, the real write made after them (its version the next one), so no dry run took a version or
emitted an event.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ambient.api.server import ApiServer, serve_in_thread

Obj = dict[str, Any]
AP = "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies"
APPLY = {"Content-Type": "application/apply-patch+yaml"}


def policy(name: str = "p", action: str = "ALLOW") -> Obj:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"action": action, "rules": [{}]}}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ApiServer]:
    with serve_in_thread(tmp_path, bookmark_interval=0.3) as srv:
        yield srv


@pytest.fixture
def http(server: ApiServer) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(uds=str(server.socket_path))
    with httpx.Client(transport=transport, base_url="http://x", timeout=30) as client:
        yield client


def events_after(http: httpx.Client, path: str, rv: str) -> list[Obj]:
    """The watch events after version `rv` (the stream ends at its timeout)."""
    r = http.get(path, params={"watch": "1", "resourceVersion": rv, "timeoutSeconds": "1"})
    return [json.loads(line) for line in r.text.splitlines() if line]


def test_every_write_verb_as_a_dry_run_answers_and_stores_nothing(http: httpx.Client) -> None:
    live = http.post(AP, json=policy()).json()
    rv = live["metadata"]["resourceVersion"]
    dry = {"dryRun": "All"}
    # create: 201, the object as it would be, without a resourceVersion
    r = http.post(AP, params=dry, json=policy("new"))
    assert r.status_code == 201, r.text
    assert r.json()["metadata"]["uid"] and "resourceVersion" not in r.json()["metadata"]
    # update, merge patch, strategic patch, apply patch: the changed object, at the version it has
    changed = {**live, "spec": {"action": "DENY", "rules": [{}]}}
    answers = [
        http.put(f"{AP}/p", params=dry, json=changed),
        http.patch(f"{AP}/p", params=dry, content=json.dumps({"spec": {"action": "DENY"}}),
                   headers={"Content-Type": "application/merge-patch+json"}),
        http.patch(f"{AP}/p", params={**dry, "fieldManager": "m"}, content=json.dumps(policy(action="DENY")),
                   headers=APPLY),
    ]
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.json()["spec"]["action"] == "DENY"
        assert r.json()["metadata"]["resourceVersion"] == rv and r.json()["metadata"]["generation"] == 2
    # delete: with the query, and with a DeleteOptions body as kubectl and client-go send it
    assert http.delete(f"{AP}/p", params=dry).status_code == 200
    r = http.request("DELETE", f"{AP}/p", json={"kind": "DeleteOptions", "apiVersion": "v1", "dryRun": ["All"],
                                                "propagationPolicy": "Background"})
    assert r.status_code == 200 and r.json()["metadata"]["name"] == "p"
    # a batch apply too
    r = http.post("/ambient/v1/apply", params=dry, json={"items": [policy(action="DENY"), policy("q")]})
    assert [i["action"] for i in r.json()["items"]] == ["configured", "created"]
    # nothing was stored: the same object, and the next real write takes the next version, first in the log
    assert http.get(f"{AP}/p").json() == live
    assert http.get(f"{AP}/new").status_code == 404
    http.patch(f"{AP}/p", content=json.dumps({"spec": {"action": "DENY"}}),
               headers={"Content-Type": "application/merge-patch+json"})
    events = events_after(http, AP, rv)
    assert [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in events] == [
        ("MODIFIED", str(int(rv) + 1))]


def test_a_dry_run_is_refused_as_the_write_would_be(http: httpx.Client) -> None:
    http.post(AP, json=policy())
    r = http.post(AP, params={"dryRun": "All"}, json=policy())
    assert r.status_code == 409 and r.json()["reason"] == "AlreadyExists"
    r = http.post(AP, params={"dryRun": "All"}, json={**policy("x"), "spec": {"actoin": "DENY"}})
    assert r.status_code == 400 and "actoin" in r.json()["message"]
    r = http.delete(f"{AP}/gone", params={"dryRun": "All"})
    assert r.status_code == 404


@pytest.mark.parametrize(("method", "kind"), [
    ("POST", "CreateOptions"), ("PUT", "UpdateOptions"), ("PATCH", "PatchOptions"), ("DELETE", "DeleteOptions")])
def test_an_unknown_dry_run_value_is_refused_like_kubernetes(http: httpx.Client, method: str, kind: str) -> None:
    live = http.post(AP, json=policy()).json()
    url = AP if method == "POST" else f"{AP}/p"
    body = {"POST": policy("n"), "PUT": live, "PATCH": {"spec": {"action": "DENY"}}}.get(method)
    r = http.request(method, url, params={"dryRun": "true"}, content=json.dumps(body) if body else None,
                     headers={"Content-Type": "application/merge-patch+json" if method == "PATCH"
                              else "application/json"})
    assert r.status_code == 422, r.text
    status = r.json()
    assert (status["kind"], status["status"], status["reason"], status["code"]) == ("Status", "Failure", "Invalid",
                                                                                    422)
    assert status["message"] == (f'{kind}.meta.k8s.io "" is invalid: dryRun: Unsupported value: '
                                 '[]string{"true"}: supported values: "All"')
    assert status["details"] == {"group": "meta.k8s.io", "kind": kind, "causes": [
        {"reason": "FieldValueNotSupported", "field": "dryRun",
         "message": 'Unsupported value: []string{"true"}: supported values: "All"'}]}
    assert http.get(f"{AP}/p").json() == live  # and nothing written


def test_server_side_apply_conflict_then_force(http: httpx.Client) -> None:
    r = http.patch(f"{AP}/p", params={"fieldManager": "team-a"}, content=json.dumps(policy()), headers=APPLY)
    assert r.status_code == 201
    rv = r.json()["metadata"]["resourceVersion"]
    # the same values from a second manager: shared, no conflict
    r = http.patch(f"{AP}/p", params={"fieldManager": "team-b"}, content=json.dumps(policy()), headers=APPLY)
    assert r.status_code == 200
    assert [m["manager"] for m in r.json()["metadata"]["managedFields"]] == ["team-a", "team-b"]
    # team-b wants DENY: both team-a and team-b own .spec.action, so team-a conflicts (team-b's own is no conflict)
    denied = json.dumps(policy(action="DENY"))
    r = http.patch(f"{AP}/p", params={"fieldManager": "team-b"}, content=denied, headers=APPLY)
    assert r.status_code == 409
    status = r.json()
    assert (status["reason"], status["code"]) == ("Conflict", 409)
    assert status["message"] == 'Apply failed with 1 conflict: conflict with "team-a": .spec.action'
    assert status["details"] == {"causes": [{"type": "FieldManagerConflict", "message": 'conflict with "team-a"',
                                             "field": ".spec.action"}]}
    # a dry run conflicts the same way
    r = http.patch(f"{AP}/p", params={"fieldManager": "team-b", "dryRun": "All"}, content=denied, headers=APPLY)
    assert r.status_code == 409
    # force takes the field over; team-a keeps the rest
    r = http.patch(f"{AP}/p", params={"fieldManager": "team-b", "force": "true"}, content=denied, headers=APPLY)
    assert r.status_code == 200 and r.json()["spec"]["action"] == "DENY"
    owned = {m["manager"]: m["fieldsV1"]["f:spec"] for m in r.json()["metadata"]["managedFields"]}
    assert owned == {"team-a": {"f:rules": {}}, "team-b": {"f:action": {}, "f:rules": {}}}
    # force on a non-apply patch is refused as Kubernetes refuses it
    r = http.patch(f"{AP}/p", params={"force": "true"}, content=denied,
                   headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 422 and "force: Forbidden: may not be specified for non-apply patch" in r.text
    # an apply that changes nothing writes nothing: the first event after the forced apply's version is
    # the next real change
    forced_rv = http.get(f"{AP}/p").json()["metadata"]["resourceVersion"]
    again = http.patch(f"{AP}/p", params={"fieldManager": "team-b"}, content=denied, headers=APPLY)
    assert again.json()["metadata"]["resourceVersion"] == forced_rv
    assert int(forced_rv) > int(rv)
    http.patch(f"{AP}/p", content=json.dumps({"metadata": {"labels": {"x": "y"}}}),
               headers={"Content-Type": "application/merge-patch+json"})
    assert [e["object"]["metadata"]["resourceVersion"] for e in events_after(http, AP, forced_rv)] == [
        str(int(forced_rv) + 1)]


def test_json_patch(http: httpx.Client) -> None:
    """RFC 6902 (`kubectl patch --type=json`): applied whole, checked like any write, dry run included."""
    http.post(AP, json=policy())
    jp = {"Content-Type": "application/json-patch+json"}
    ops = [{"op": "test", "path": "/spec/action", "value": "ALLOW"},
           {"op": "replace", "path": "/spec/action", "value": "DENY"}]
    r = http.patch(f"{AP}/p", params={"dryRun": "All"}, content=json.dumps(ops), headers=jp)
    assert r.status_code == 200 and r.json()["spec"]["action"] == "DENY"
    assert http.get(f"{AP}/p").json()["spec"]["action"] == "ALLOW"
    r = http.patch(f"{AP}/p", content=json.dumps(ops), headers=jp)
    assert r.status_code == 200 and r.json()["spec"]["action"] == "DENY"
    r = http.patch(f"{AP}/p", content=json.dumps(ops), headers=jp)  # the test op fails now
    assert r.status_code == 422 and r.json()["message"] == "testing value /spec/action failed: test failed"
    r = http.patch(f"{AP}/p", content=json.dumps([{"op": "replace", "path": "/spec/action", "value": "MAYBE"}]),
                   headers=jp)
    assert r.status_code == 422 and "MAYBE" in r.json()["message"]  # validated as any write
    r = http.patch(f"{AP}/p", content=json.dumps([{"op": "add", "path": "/metadata/name", "value": "q"}]),
                   headers=jp)
    assert r.status_code == 400 and "cannot be changed" in r.json()["message"]


def test_scale_subresource_dry_run(http: httpx.Client) -> None:
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
              "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                       "template": {"metadata": {"labels": {"app": "web"}},
                                    "spec": {"containers": [{"name": "app", "image": "x"}]}}}}
    url = "/apis/apps/v1/namespaces/default/deployments/web"
    live = http.post("/apis/apps/v1/namespaces/default/deployments", json=deploy).json()
    r = http.patch(f"{url}/scale", params={"dryRun": "All"}, content=json.dumps({"spec": {"replicas": 3}}),
                   headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200 and r.json()["spec"]["replicas"] == 3
    assert http.get(url).json() == live
    r = http.put(f"{url}/scale", params={"dryRun": "Al"}, json={"spec": {"replicas": 3}})
    assert r.status_code == 422 and r.json()["details"]["kind"] == "UpdateOptions"


def test_the_clients_dry_run(server: ApiServer) -> None:
    """`ApiClient` / `AsyncApiClient` writes with `dry_run=True`: answered, nothing stored."""
    import asyncio

    from ambient.api.client import ApiClient, AsyncApiClient

    with ApiClient(server.socket_path) as api:
        live = api.create(policy())
        rv = api.list("AuthorizationPolicy")[1]
        assert "resourceVersion" not in api.create(policy("n"), dry_run=True)["metadata"]
        assert api.apply_many([policy(action="DENY"), policy("m")], dry_run=True)[1][1] == "created"
        assert api.update({**live, "spec": {"action": "DENY", "rules": [{}]}}, dry_run=True)["spec"]["action"] == "DENY"
        kind = "AuthorizationPolicy"
        assert api.patch(kind, "p", "default", {"spec": {"action": "DENY"}}, dry_run=True)["spec"]["action"] == "DENY"
        assert api.delete(kind, "p", "default", dry_run=True)["metadata"]["name"] == "p"

        async def async_writes() -> None:
            async with AsyncApiClient(server.socket_path) as aapi:
                await aapi.create(policy("n"), dry_run=True)
                await aapi.delete(kind, "p", "default", dry_run=True)

        asyncio.run(async_writes())
        assert api.list("AuthorizationPolicy") == ([live], rv)


def test_delete_preconditions_in_the_body(http: httpx.Client) -> None:
    live = http.post(AP, json=policy()).json()
    r = http.request("DELETE", f"{AP}/p", json={"kind": "DeleteOptions", "preconditions": {"uid": "stale"}})
    assert r.status_code == 409 and r.json()["reason"] == "Conflict" and "Precondition failed" in r.json()["message"]
    r = http.request("DELETE", f"{AP}/p", json={"preconditions": {"uid": live["metadata"]["uid"]}})
    assert r.status_code == 200
    assert http.get(f"{AP}/p").status_code == 404
