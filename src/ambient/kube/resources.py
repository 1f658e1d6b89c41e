"""The Kubernetes resources the object source watches, and how each maps onto the client library's calls.

Invariant: `RESOURCES` is the only table of watched kinds; every list/watch/get goes through
`list_call` / `get_call`, which pick the typed kubernetes-asyncio API method for built-in kinds and the
CustomObjectsApi for the mesh and Gateway API kinds. All calls are made with `_preload_content=False`,
so objects stay the API's own camelCase JSON (the shape the local cluster API serves), never the
client's snake_case models.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client as k8s

from ambient.kube.errors import KubeError


@dataclass(frozen=True)
class Resource:
    kind: str
    group: str  # "" = core
    version: str
    plural: str
    namespaced: bool
    # typed API: (api class, method suffix) e.g. (CoreV1Api, "pod") -> list_pod_for_all_namespaces;
    # None = a custom resource served through CustomObjectsApi.
    typed: tuple[type[Any], str] | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES: dict[str, Resource] = {
    r.kind: r
    for r in (
        Resource("Namespace", "", "v1", "namespaces", False, (k8s.CoreV1Api, "namespace")),
        Resource("Node", "", "v1", "nodes", False, (k8s.CoreV1Api, "node")),
        Resource("ServiceAccount", "", "v1", "serviceaccounts", True, (k8s.CoreV1Api, "service_account")),
        Resource("Pod", "", "v1", "pods", True, (k8s.CoreV1Api, "pod")),
        Resource("Service", "", "v1", "services", True, (k8s.CoreV1Api, "service")),
        Resource(
            "EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", True, (k8s.DiscoveryV1Api, "endpoint_slice")
        ),
        Resource("AuthorizationPolicy", "security.istio.io", "v1", "authorizationpolicies", True),
        Resource("PeerAuthentication", "security.istio.io", "v1", "peerauthentications", True),
        Resource("Gateway", "gateway.networking.k8s.io", "v1", "gateways", True),
        Resource("HTTPRoute", "gateway.networking.k8s.io", "v1", "httproutes", True),
        # Read by the control plane's index too (egress and L7 routing), as from the local cluster API.
        Resource("ServiceEntry", "networking.istio.io", "v1", "serviceentries", True),
        Resource("VirtualService", "networking.istio.io", "v1", "virtualservices", True),
        Resource("DestinationRule", "networking.istio.io", "v1", "destinationrules", True),
        Resource("GRPCRoute", "gateway.networking.k8s.io", "v1", "grpcroutes", True),
        Resource("TCPRoute", "gateway.networking.k8s.io", "v1alpha2", "tcproutes", True),
        Resource("RequestAuthentication", "security.istio.io", "v1", "requestauthentications", True),
        Resource("ReferenceGrant", "gateway.networking.k8s.io", "v1beta1", "referencegrants", True),
    )
}


def resource(kind: str) -> Resource:
    try:
        return RESOURCES[kind]
    except KeyError:
        raise KubeError(
            f"kind {kind!r} is not watched from Kubernetes", hint=f"known kinds: {', '.join(sorted(RESOURCES))}"
        ) from None


Call = Callable[..., Awaitable[Any]]


def list_call(api: k8s.ApiClient, res: Resource, namespace: str | None) -> Call:
    """The bound list/watch method for `res` (all namespaces when `namespace` is None)."""
    if res.typed is None:
        custom = k8s.CustomObjectsApi(api)
        if namespace is not None and res.namespaced:
            return lambda **kw: custom.list_namespaced_custom_object(
                res.group, res.version, namespace, res.plural, **kw
            )
        return lambda **kw: custom.list_cluster_custom_object(res.group, res.version, res.plural, **kw)
    cls, name = res.typed
    typed = cls(api)
    if not res.namespaced:
        return getattr(typed, f"list_{name}")  # type: ignore[no-any-return]
    if namespace is not None:
        method = getattr(typed, f"list_namespaced_{name}")
        return lambda **kw: method(namespace, **kw)
    return getattr(typed, f"list_{name}_for_all_namespaces")  # type: ignore[no-any-return]


def get_call(api: k8s.ApiClient, res: Resource, name: str, namespace: str | None) -> Call:
    """The bound read method for one object."""
    if res.typed is None:
        custom = k8s.CustomObjectsApi(api)
        if res.namespaced:
            return lambda **kw: custom.get_namespaced_custom_object(
                res.group, res.version, namespace or "default", res.plural, name, **kw
            )
        return lambda **kw: custom.get_cluster_custom_object(res.group, res.version, res.plural, name, **kw)
    cls, suffix = res.typed
    typed = cls(api)
    if res.namespaced:
        method = getattr(typed, f"read_namespaced_{suffix}")
        return lambda **kw: method(name, namespace or "default", **kw)
    method = getattr(typed, f"read_{suffix}")
    return lambda **kw: method(name, **kw)


def patch_call(api: k8s.ApiClient, res: Resource, name: str, namespace: str | None) -> Call:
    """The bound (merge) patch method for one object; `body` is passed by the caller."""
    if res.typed is None:
        custom = k8s.CustomObjectsApi(api)
        if res.namespaced:
            return lambda **kw: custom.patch_namespaced_custom_object(
                res.group, res.version, namespace or "default", res.plural, name, **kw
            )
        return lambda **kw: custom.patch_cluster_custom_object(res.group, res.version, res.plural, name, **kw)
    cls, suffix = res.typed
    typed = cls(api)
    if res.namespaced:
        method = getattr(typed, f"patch_namespaced_{suffix}")
        return lambda **kw: method(name, namespace or "default", **kw)
    method = getattr(typed, f"patch_{suffix}")
    return lambda **kw: method(name, **kw)
