"""Kubernetes API discovery documents for the kinds of `ambient.api.kinds`: pure functions, no I/O.

`/api` (APIVersions), `/apis` (APIGroupList), `/api/v1` and `/apis/<group>/<version>` (APIResourceList with
verbs, short names, scope, subresources), `/version`, and the CustomResourceDefinitions that describe the
mesh kinds (so tools that look for CRDs find them). Discovery is answered as the plain (legacy) documents:
kubectl asks for the aggregated form first and falls back when the Content-Type says it got the legacy one.

Invariant: every kind in `KINDS` appears in exactly one resource list, under its own group and version.
"""

from __future__ import annotations

from typing import Any

from ambient.api.kinds import KINDS, KindInfo

# The Kubernetes minor version whose API shapes (and kubectl) this server follows.
VERSION_INFO = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-ambient",
    "gitCommit": "",
    "gitTreeState": "clean",
    "buildDate": "1970-01-01T00:00:00Z",
    "goVersion": "n/a",
    "compiler": "python",
    "platform": "linux/amd64",
}

_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
# Subresources served per kind: name -> (verbs, kind of the subresource's body, its group/version).
_SUBRESOURCES: dict[str, dict[str, tuple[list[str], str, str]]] = {
    "Pod": {
        "status": (["get", "patch", "update"], "Pod", ""),
        "log": (["get"], "Pod", ""),
        "exec": (["create", "get"], "PodExecOptions", ""),
        "portforward": (["create", "get"], "PodPortForwardOptions", ""),
    },
    "Deployment": {
        "status": (["get", "patch", "update"], "Deployment", ""),
        "scale": (["get", "patch", "update"], "Scale", "autoscaling/v1"),
    },
    "DaemonSet": {"status": (["get", "patch", "update"], "DaemonSet", "")},
}
_CATEGORIES = {"Pod": ["all"], "Service": ["all"], "Deployment": ["all"], "DaemonSet": ["all"]}
CRD_GROUP = "apiextensions.k8s.io"
CRD_KIND = KindInfo("CustomResourceDefinition", CRD_GROUP, "v1", "customresourcedefinitions", False, ("crd", "crds"))


def _group_versions() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for info in (*KINDS, CRD_KIND):
        versions = groups.setdefault(info.group, [])
        if info.version not in versions:
            versions.append(info.version)
    return groups


def is_mesh_kind(info: KindInfo) -> bool:
    """Kinds a real cluster gets from CustomResourceDefinitions (not compiled into Kubernetes)."""
    return info.group.endswith("istio.io") or info.group == "gateway.networking.k8s.io"


def api_versions(server_address: str = "") -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": "APIVersions", "versions": ["v1"]}
    doc["serverAddressByClientCIDRs"] = [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    return doc


def api_group(group: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list() -> dict[str, Any]:
    groups = [api_group(g, vs) for g, vs in _group_versions().items() if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _resource(info: KindInfo) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": info.plural,
        "singularName": info.singular,
        "namespaced": info.namespaced,
        "kind": info.wire_kind,
        "verbs": ["get", "list", "watch"] if info is CRD_KIND else list(_VERBS),
    }
    if info.short_names:
        doc["shortNames"] = list(info.short_names)
    if info.kind in _CATEGORIES:
        doc["categories"] = list(_CATEGORIES[info.kind])
    return doc


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    """The APIResourceList of one group/version, or None when it is not served."""
    kinds = [i for i in (*KINDS, CRD_KIND) if i.group == group and i.version == version]
    if not kinds:
        return None
    resources: list[dict[str, Any]] = []
    for info in kinds:
        resources.append(_resource(info))
        for sub, (verbs, kind, gv) in _SUBRESOURCES.get(info.kind, {}).items():
            entry: dict[str, Any] = {
                "name": f"{info.plural}/{sub}", "singularName": "", "namespaced": info.namespaced,
                "kind": kind, "verbs": verbs,
            }
            if gv:
                entry["group"], entry["version"] = gv.split("/")
            resources.append(entry)
    gv_text = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv_text, "resources": resources}


def crd(info: KindInfo, schema: dict[str, Any] | None = None, created: str = "1970-01-01T00:00:00Z") -> dict[str, Any]:
    """A CustomResourceDefinition describing a mesh kind, as `istioctl install` / the Gateway API bundle
    would have created it (schema: the kind's OpenAPI v3 schema, when known)."""
    name = f"{info.plural}.{info.group}"
    version: dict[str, Any] = {
        "name": info.version, "served": True, "storage": True,
        "schema": {"openAPIV3Schema": schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        "subresources": {"status": {}},
    }
    return {
        "apiVersion": f"{CRD_GROUP}/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name, "uid": f"crd-{name}", "resourceVersion": "1", "generation": 1,
                     "creationTimestamp": created},
        "spec": {
            "group": info.group,
            "names": {"plural": info.plural, "singular": info.singular, "kind": info.wire_kind,
                      "listKind": f"{info.wire_kind}List", "shortNames": list(info.short_names)},
            "scope": "Namespaced" if info.namespaced else "Cluster",
            "versions": [version],
        },
        "status": {
            "acceptedNames": {"plural": info.plural, "kind": info.wire_kind},
            "storedVersions": [info.version],
            "conditions": [{"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                            "lastTransitionTime": created, "message": ""}],
        },
    }


def crds(created: str = "1970-01-01T00:00:00Z") -> list[dict[str, Any]]:
    """The mesh kinds' CRDs; `created`: when they came to be (the API server's start)."""
    from ambient.api.openapi import kind_schema  # the same schema /openapi/v3 publishes

    return [crd(info, kind_schema(info), created) for info in KINDS if is_mesh_kind(info)]
