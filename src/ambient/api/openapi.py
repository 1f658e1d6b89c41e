"""OpenAPI v3 documents of the API, derived from the field schemas of strict validation: pure, cached.

`/openapi/v3` is the index (one entry per group/version, `serverRelativeURL` with a content hash, as the
Kubernetes API server publishes it); `/openapi/v3/api/v1`, `/openapi/v3/apis/<group>/<version>` hold the
paths (each PATCH operation declares the `fieldValidation` query parameter, which is how kubectl learns that
the server validates fields itself) and one component schema per kind, tagged
`x-kubernetes-group-version-kind` (what `kubectl explain` and client-side apply look up). Lists that merge by
key under strategic merge patch carry `x-kubernetes-patch-strategy: merge` and their merge key, so the
patch kubectl computes is the one the server applies (`ambient.api.patch`).

Field types are not in the validation schemas (the kind checks own them); leaves are typed from their
names where the Kubernetes type is evident (integers, booleans), else string.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from ambient.api.kinds import KINDS, KindInfo
from ambient.api.patch import MERGE_KEYS
from ambient.api.validation.schema import SCHEMAS, ListOf, MapOf

_INTEGER_SUFFIXES = ("Seconds", "Threshold", "Port", "replicas", "Replicas", "generation", "weight", "attempts")
_INTEGERS = frozenset({"port", "containerPort", "hostPort", "nodePort", "restartCount", "priority", "maxSkew",
                       "revisionHistoryLimit", "minReadySeconds", "code", "statusCode", "number"})
_INT_OR_STRING = frozenset({"targetPort", "maxSurge", "maxUnavailable"})
_BOOLEANS = frozenset({"paused", "unschedulable", "stdin", "stdinOnce", "tty", "publishNotReadyAddresses",
                       "automountServiceAccountToken", "immutable", "controller", "blockOwnerDeletion",
                       "readOnly", "privileged", "hostNetwork", "hostPID", "hostIPC", "allowPrivilegeEscalation",
                       "runAsNonRoot", "readOnlyRootFilesystem", "optional", "enableServiceLinks",
                       "allocateLoadBalancerNodePorts", "shareProcessNamespace", "setHostnameAsFQDN"})
_FIELD_VALIDATION = {
    "name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True},
    "description": "Strict (the default here), Warn or Ignore: what the server does with unknown or "
                   "duplicated fields.",
}
_FIELD_MANAGER = {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}}
_FORCE = {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": True}}
_DRY_RUN = {
    "name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True},
    "description": "All: run the request whole (validation, defaulting, conflicts) and answer the object as it "
                   "would be, storing nothing. The only valid value.",
}


def _leaf(name: str) -> dict[str, Any]:
    if name in _INT_OR_STRING:
        return {"x-kubernetes-int-or-string": True}
    if name in _BOOLEANS:
        return {"type": "boolean"}
    if name in _INTEGERS or name.endswith(_INTEGER_SUFFIXES):
        return {"type": "integer", "format": "int32"}
    return {"type": "string"}


def _convert(node: Any, name: str) -> dict[str, Any]:
    """One validation schema node as an OpenAPI v3 schema."""
    if node is None:  # OPAQUE
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if node == "":  # SCALAR
        return _leaf(name)
    if isinstance(node, ListOf):
        out: dict[str, Any] = {"type": "array", "items": _convert(node.item, name)}
        key = MERGE_KEYS.get(name) or ("port" if name == "ports" else None)
        if key is not None and isinstance(node.item, dict):
            if name == "ports" and "containerPort" in node.item:
                key = "containerPort"
            out["x-kubernetes-patch-strategy"], out["x-kubernetes-patch-merge-key"] = "merge", key
            out["x-kubernetes-list-type"], out["x-kubernetes-list-map-keys"] = "map", [key]
        return out
    if isinstance(node, MapOf):
        return {"type": "object", "additionalProperties": _convert(node.value, name)}
    if isinstance(node, dict):
        return {"type": "object", "properties": {k: _convert(v, k) for k, v in node.items()}}
    return {}


def definition_name(info: KindInfo) -> str:
    """The component name Kubernetes would use: io.k8s.api.core.v1.Pod, io.istio.security.v1.AuthorizationPolicy."""
    if info.group in ("", "apps"):
        return f"io.k8s.api.{info.group or 'core'}.{info.version}.{info.wire_kind}"
    parts = info.group.split(".")
    return ".".join([*reversed(parts[1:]), parts[0], info.version, info.wire_kind])


def kind_schema(info: KindInfo) -> dict[str, Any]:
    schema = _convert(SCHEMAS.get(info.kind), info.kind)
    if "properties" not in schema:
        schema = {"type": "object", "properties": {}, "x-kubernetes-preserve-unknown-fields": True}
    schema["description"] = f"{info.wire_kind} ({info.api_version}), as the ambient local cluster serves it."
    schema["x-kubernetes-group-version-kind"] = [{"group": info.group, "kind": info.wire_kind, "version": info.version}]
    props = schema["properties"]
    props.setdefault("apiVersion", {"type": "string"})["description"] = "APIVersion of this object."
    props.setdefault("kind", {"type": "string"})["description"] = "Kind of this object."
    return schema


def _gvk(info: KindInfo) -> dict[str, str]:
    return {"group": info.group, "version": info.version, "kind": info.wire_kind}


def _operation(info: KindInfo, action: str, verb: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{definition_name(info)}"}
    op: dict[str, Any] = {
        "operationId": f"{verb}{info.kind}",
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(info),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
    }
    if params:
        op["parameters"] = params
    return op


def _patch_types(info: KindInfo) -> list[str]:
    """What PATCH accepts; strategic merge patch only for built-in kinds, as Kubernetes (CRDs take merge patch)."""
    types = ["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
    if info.group in ("", "apps"):
        types.append("application/strategic-merge-patch+json")
    return types


def _paths(info: KindInfo) -> dict[str, Any]:
    base = f"/api/{info.version}" if not info.group else f"/apis/{info.group}/{info.version}"
    scope = f"{base}/namespaces/{{namespace}}" if info.namespaced else base
    return {
        f"{scope}/{info.plural}": {
            "get": _operation(info, "list", "list"),
            "post": _operation(info, "post", "create", [_DRY_RUN, _FIELD_VALIDATION, _FIELD_MANAGER]),
        },
        f"{scope}/{info.plural}/{{name}}": {
            "get": _operation(info, "get", "read"),
            "put": _operation(info, "put", "replace", [_DRY_RUN, _FIELD_VALIDATION, _FIELD_MANAGER]),
            "patch": {**_operation(info, "patch", "patch", [_DRY_RUN, _FIELD_VALIDATION, _FIELD_MANAGER, _FORCE]),
                      "requestBody": {"content": {t: {"schema": {"type": "object"}} for t in _patch_types(info)}}},
            "delete": _operation(info, "delete", "delete", [_DRY_RUN]),
        },
    }


@functools.cache
def group_version_doc(group: str, version: str) -> dict[str, Any] | None:
    """The OpenAPI v3 document of one group/version, or None when it is not served."""
    kinds = [i for i in KINDS if i.group == group and i.version == version]
    if not kinds:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for info in kinds:
        paths.update(_paths(info))
        schemas[definition_name(info)] = kind_schema(info)
    title = f"{group or 'core'}/{version}"
    return {"openapi": "3.0.0", "info": {"title": "ambient", "version": title}, "paths": paths,
            "components": {"schemas": schemas}}


def _doc_key(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


@functools.cache
def index() -> dict[str, Any]:
    """`/openapi/v3`: where each group/version's document is, with a hash of its content."""
    paths: dict[str, Any] = {}
    for info in KINDS:
        key = _doc_key(info.group, info.version)
        if key in paths:
            continue
        doc = group_version_doc(info.group, info.version)
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return {"paths": paths}


def doc_for_path(path: str) -> dict[str, Any] | None:
    """The document under `/openapi/v3/<path>` (`api/v1`, `apis/apps/v1`), or None."""
    parts = [p for p in path.split("/") if p]
    if len(parts) == 2 and parts[0] == "api":
        return group_version_doc("", parts[1])
    if len(parts) == 3 and parts[0] == "apis":
        return group_version_doc(parts[1], parts[2])
    return None
