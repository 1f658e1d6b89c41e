"""Pure pieces of the kubectl-facing API: strategic merge patch, Tables, discovery, OpenAPI, kubeconfig."""

from __future__ import annotations

import hashlib
import struct
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ambient.api import discovery, openapi, pods, portforward, protobuf, tables, tls_listener
from ambient.api.apply import field_set, server_side_apply
from ambient.api.errors import ValidationError
from ambient.api.kinds import KINDS, resolve_kind
from ambient.api.patch import merge_patch, strategic_merge

POD = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web", "tier": "x"}},
    "spec": {"containers": [
        {"name": "app", "image": "a:1", "ports": [{"containerPort": 80}, {"containerPort": 81}],
         "env": [{"name": "A", "value": "1"}]},
        {"name": "side", "image": "s:1"},
    ], "finalizers": ["a"]},
}


@pytest.mark.parametrize(
    ("patch", "check"),
    [
        # a container merges by name: only its image changes, the other container stays
        ({"spec": {"containers": [{"name": "app", "image": "a:2"}]}},
         lambda r: [c["image"] for c in r["spec"]["containers"]] == ["a:2", "s:1"]
         and r["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"}]),
        # $patch: delete removes the element with that key
        ({"spec": {"containers": [{"name": "side", "$patch": "delete"}]}},
         lambda r: [c["name"] for c in r["spec"]["containers"]] == ["app"]),
        # $setElementOrder orders the merged list; a new element is added
        ({"spec": {"$setElementOrder/containers": [{"name": "new"}, {"name": "side"}, {"name": "app"}],
                   "containers": [{"name": "new", "image": "n:1"}]}},
         lambda r: [c["name"] for c in r["spec"]["containers"]] == ["new", "side", "app"]),
        # null removes a label (what `kubectl apply` sends for a label dropped from the manifest)
        ({"metadata": {"labels": {"tier": None}}}, lambda r: r["metadata"]["labels"] == {"app": "web"}),
        # container ports merge by containerPort
        ({"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 81, "name": "m"}]}]}},
         lambda r: r["spec"]["containers"][0]["ports"] == [{"containerPort": 80}, {"containerPort": 81, "name": "m"}]),
        # $patch: replace on a list element replaces the list
        ({"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "o"}]}},
         lambda r: r["spec"]["containers"] == [{"name": "only", "image": "o"}]),
        # $retainKeys clears the keys it does not list
        ({"spec": {"$retainKeys": ["containers"], "containers": []}},
         lambda r: "finalizers" not in r["spec"]),
        # $deleteFromPrimitiveList removes scalars
        ({"spec": {"$deleteFromPrimitiveList/finalizers": ["a"]}}, lambda r: r["spec"]["finalizers"] == []),
    ],
)
def test_strategic_merge_patch(patch: dict, check) -> None:  # type: ignore[no-untyped-def]
    before = repr(POD)
    result = strategic_merge(POD, patch)
    assert check(result), result
    assert repr(POD) == before  # inputs untouched
    assert "$" not in repr(result)


def test_strategic_merge_refuses_non_object_and_unknown_directive() -> None:
    with pytest.raises(ValidationError):
        strategic_merge(POD, [1])
    with pytest.raises(ValidationError):
        strategic_merge(POD, {"spec": {"$patch": "explode"}})


def test_merge_patch_replaces_lists() -> None:
    result = merge_patch(POD, {"spec": {"containers": [{"name": "x"}]}})
    assert result["spec"]["containers"] == [{"name": "x"}]


def test_table_columns_match_ambient_get() -> None:
    info = resolve_kind("pods")
    now = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    pod = {"metadata": {"name": "web", "namespace": "d", "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"containers": [{"name": "a"}], "nodeName": "node-1"},
           "status": {"phase": "Running", "podIP": "10.244.1.5",
                      "containerStatuses": [{"ready": True, "restartCount": 2}]}}
    doc = tables.table(info, [pod], "7", now)
    names = [c["name"] for c in doc["columnDefinitions"] if c["priority"] == 0]
    wide = [c["name"] for c in doc["columnDefinitions"] if c["priority"] == 1]
    headers, rows = tables.build_table(info, [pod], wide=True, now=now)
    assert names + wide == headers == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert doc["rows"][0]["cells"] == rows[0] == ["web", "1/1", "Running", "2", "10m", "10.244.1.5", "node-1"]
    assert doc["rows"][0]["object"] is pod
    assert doc["kind"] == "Table" and doc["apiVersion"] == "meta.k8s.io/v1"


@pytest.mark.parametrize(
    ("accept", "want"),
    [
        ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
         "application/json", "v1"),
        ("application/json", None),
        (None, None),
        ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json", None),
    ],
)
def test_wants_table(accept: str | None, want: str | None) -> None:
    assert tables.wants_table(accept) == want


def test_discovery_lists_every_kind_once_with_verbs_and_short_names() -> None:
    seen: list[str] = []
    groups = {g["name"] for g in discovery.api_group_list()["groups"]}
    assert {"apps", "security.istio.io", "gateway.networking.k8s.io", "apiextensions.k8s.io"} <= groups
    for info in KINDS:
        doc = discovery.resource_list(info.group, info.version)
        assert doc is not None
        entry = next(r for r in doc["resources"] if r["name"] == info.plural)
        assert entry["kind"] == info.wire_kind and entry["namespaced"] == info.namespaced
        assert "watch" in entry["verbs"] and "patch" in entry["verbs"]
        assert entry.get("shortNames", []) == list(info.short_names)
        seen.append(info.kind)
    assert len(seen) == len(set(seen))
    core = discovery.resource_list("", "v1")
    assert core is not None
    subs = {r["name"] for r in core["resources"] if "/" in r["name"]}
    assert {"pods/log", "pods/exec", "pods/portforward", "pods/status"} <= subs
    assert discovery.resource_list("nope.io", "v1") is None


def test_crds_describe_the_mesh_kinds_only() -> None:
    names = {c["metadata"]["name"] for c in discovery.crds()}
    assert "authorizationpolicies.security.istio.io" in names
    assert "httproutes.gateway.networking.k8s.io" in names
    assert not any(n.startswith("pods.") for n in names)


def test_openapi_declares_field_validation_and_kind_schemas() -> None:
    idx = openapi.index()["paths"]
    assert "api/v1" in idx and "apis/security.istio.io/v1" in idx
    assert idx["api/v1"]["serverRelativeURL"].startswith("/openapi/v3/api/v1?hash=")
    doc = openapi.doc_for_path("apis/security.istio.io/v1")
    assert doc is not None
    patch_op = doc["paths"]["/apis/security.istio.io/v1/namespaces/{namespace}/authorizationpolicies/{name}"]["patch"]
    assert any(p["name"] == "fieldValidation" and p["in"] == "query" for p in patch_op["parameters"])
    assert "application/strategic-merge-patch+json" not in patch_op["requestBody"]["content"]
    ops = doc["paths"]["/apis/security.istio.io/v1/namespaces/{namespace}/authorizationpolicies/{name}"]
    assert all(any(p["name"] == "dryRun" for p in ops[verb]["parameters"]) for verb in ("put", "patch", "delete"))
    schema = doc["components"]["schemas"]["io.istio.security.v1.AuthorizationPolicy"]
    assert schema["x-kubernetes-group-version-kind"][0]["kind"] == "AuthorizationPolicy"
    assert {"action", "rules", "selector"} <= set(schema["properties"]["spec"]["properties"])
    core = openapi.doc_for_path("api/v1")
    assert core is not None
    containers = core["components"]["schemas"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"]["properties"][
        "containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    ports = containers["items"]["properties"]["ports"]
    assert ports["x-kubernetes-patch-merge-key"] == "containerPort"
    assert openapi.doc_for_path("apis/nope/v1") is None


def test_kubeconfig_names_the_cluster(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text('{"name": "kc9"}')
    material = tls_listener.prepare(tmp_path, "127.0.0.1")
    path = tls_listener.write_kubeconfig(tmp_path, "https://127.0.0.1:1234", material)
    import json

    doc = json.loads(path.read_text())
    assert doc["current-context"] == "kc9"
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:1234"
    assert doc["users"][0]["user"]["token"] == material.token
    assert path.stat().st_mode & 0o077 == 0
    assert tls_listener.bearer_ok(f"Bearer {material.token}", material.token)
    assert not tls_listener.bearer_ok("Bearer nope", material.token)
    assert not tls_listener.bearer_ok(None, material.token)
    assert tls_listener.is_admin_cert({"subject": ((("organizationName", "system:masters"),),)})
    assert not tls_listener.is_admin_cert({"subject": ((("commonName", "x"),),)})
    # a second start reuses the token and the admin certificate
    again = tls_listener.prepare(tmp_path, "127.0.0.1")
    assert again.token == material.token


# ----------------------------------------------------------------------------- server-side apply



def test_server_side_apply_creates_with_managed_fields_then_drops_what_the_manager_dropped() -> None:
    applied = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"a": "1", "b": "2"}},
               "spec": {"ports": [{"port": 80}], "selector": {"app": "x"}}}
    created = server_side_apply(None, applied, "mgr", "v1", now="T")
    entry = created["metadata"]["managedFields"][0]
    assert entry["manager"] == "mgr" and entry["operation"] == "Apply" and entry["fieldsType"] == "FieldsV1"
    assert entry["fieldsV1"]["f:metadata"]["f:labels"] == {"f:a": {}, "f:b": {}}
    # someone else added a label (no manager of its own): it survives the manager dropping its own
    live = {**created, "metadata": {**created["metadata"], "labels": {"a": "1", "b": "2", "other": "x"}}}
    again = {**applied, "metadata": {"name": "s", "labels": {"a": "1"}}}
    result = server_side_apply(live, again, "mgr", "v1")
    assert result["metadata"]["labels"] == {"a": "1", "other": "x"}
    assert result["spec"]["selector"] == {"app": "x"}
    assert len(result["metadata"]["managedFields"]) == 1
    # a second manager owning the same field keeps it when the first drops it
    live2 = server_side_apply(result, {"metadata": {"name": "s", "labels": {"a": "1"}}}, "other", "v1")
    dropped = server_side_apply(live2, {**applied, "metadata": {"name": "s"}}, "mgr", "v1")
    assert dropped["metadata"]["labels"] == {"a": "1", "other": "x"}
    assert {m["manager"] for m in dropped["metadata"]["managedFields"]} == {"mgr", "other"}


def test_field_set_skips_server_owned_metadata() -> None:
    fs = field_set({"apiVersion": "v1", "kind": "X", "status": {"a": 1},
                    "metadata": {"name": "n", "uid": "u", "annotations": {"k": "v"}}, "spec": {"l": [1]}})
    assert fs == {"f:metadata": {"f:annotations": {"f:k": {}}}, "f:spec": {"f:l": {}}}


def test_server_side_apply_needs_a_manager() -> None:
    with pytest.raises(ValidationError):
        server_side_apply(None, {"metadata": {"name": "x"}}, "", "v1")


# ----------------------------------------------------------------------------- pods/exec, port-forward wire




def test_exit_status_carries_the_exit_code_as_kubectl_reads_it() -> None:
    assert pods.exit_status(0) == {"metadata": {}, "status": "Success"}
    failed = pods.exit_status(7)
    assert failed["reason"] == "NonZeroExitCode"
    assert failed["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]


def test_pick_container_defaults_like_kubernetes() -> None:
    pod = {"metadata": {"name": "p", "annotations": {}}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}
    with pytest.raises(ValidationError, match="a container name must be specified"):
        pods.pick_container(pod, None)
    assert pods.pick_container(pod, "b")["name"] == "b"
    with pytest.raises(ValidationError, match="container c is not valid"):
        pods.pick_container(pod, "c")
    pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] = "b"
    assert pods.pick_container(pod, None)["name"] == "b"


def test_spdy_dictionary_is_the_specified_one() -> None:
    assert len(portforward.SPDY3_DICTIONARY) == 1423
    assert hashlib.sha256(portforward.SPDY3_DICTIONARY).hexdigest() == (
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02")


def test_spdy_frames_and_headers_round_trip() -> None:
    headers = {"streamtype": "data", "port": "8080", "requestid": "0"}
    block = portforward.encode_headers(headers)
    assert portforward.decode_headers(block) == headers
    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=portforward.SPDY3_DICTIONARY)
    inflate = zlib.decompressobj(zdict=portforward.SPDY3_DICTIONARY)
    syn = portforward.control_frame(
        portforward.SYN_STREAM, 0,
        struct.pack("!IIBB", 1, 0, 0, 0) + deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH))
    data = portforward.data_frame(1, b"hello", fin=True)
    buffer = bytearray(syn + data + data[:5])  # and the start of a third frame
    frames = portforward.split_frames(buffer)
    assert [(c, t, f) for c, t, f, _ in frames] == [(True, portforward.SYN_STREAM, 0), (False, 1, portforward.FLAG_FIN)]
    assert portforward.decode_headers(inflate.decompress(frames[0][3][10:])) == headers
    assert frames[1][3] == b"hello" and bytes(buffer) == data[:5]
    with pytest.raises(portforward.SpdyError):
        portforward.split_frames(bytearray(struct.pack("!HHI", 0x8002, 1, 0)))  # SPDY/2
    with pytest.raises(portforward.SpdyError):
        portforward.decode_headers(b"\x00\x00\x00\x05")


# ----------------------------------------------------------------------------- protobuf bodies


def _pb_field(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def _pb_object(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = _pb_field(1, api_version.encode()) + _pb_field(2, kind.encode())
    return protobuf.MAGIC + _pb_field(1, type_meta) + _pb_field(2, raw)


def test_protobuf_namespace_and_service_account_bodies() -> None:
    label = _pb_field(1, b"team") + _pb_field(2, b"a")
    meta = _pb_field(1, b"mesh") + _pb_field(11, label)
    assert protobuf.decode(_pb_object("v1", "Namespace", _pb_field(1, meta))) == {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mesh", "labels": {"team": "a"}}}
    sa = protobuf.decode(_pb_object("v1", "ServiceAccount", _pb_field(1, _pb_field(1, b"robot")) + bytes([4 << 3, 0])))
    assert sa["metadata"] == {"name": "robot"} and sa["automountServiceAccountToken"] is False
    with pytest.raises(protobuf.UnsupportedKindError):
        protobuf.decode(_pb_object("apps/v1", "Deployment", b""))
    with pytest.raises(protobuf.ProtobufError):
        protobuf.decode(b"{}")
    with pytest.raises(protobuf.ProtobufError):
        protobuf.decode(protobuf.MAGIC + bytes([1 << 3 | 2, 50]) + b"short")
