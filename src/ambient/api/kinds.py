"""The registry of object kinds the cluster API knows, and kubectl-style name resolution.

Invariant: every kind the store, the API server, the CLI or the control plane handles is listed in
`KINDS` exactly once; `resolve_kind` is the only way user input ("po", "pods", "deploy", "svc",
"authorizationpolicies.security.istio.io", ...) becomes a `KindInfo`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ambient.api.errors import UnknownKindError


@dataclass(frozen=True)
class KindInfo:
    """What the API needs to know about one kind."""

    kind: str  # CamelCase, as in manifests: "Pod"; unique (the store's and the validation's key)
    group: str  # "" for the core group, "apps", "security.istio.io", ...
    version: str  # "v1"
    plural: str  # "pods"
    namespaced: bool
    short_names: tuple[str, ...] = ()
    # The kind as manifests spell it when it differs from `kind`: a second kind of the same name in another
    # group (Istio's networking.istio.io Gateway beside the Gateway API's) is keyed "IstioGateway" inside
    # and written "Gateway" on the wire; users name it by its qualified names (gateways.networking.istio.io),
    # and so do messages (`display_kind`, `resource`): the internal key is never shown to a user
    manifest_kind: str = ""

    @property
    def wire_kind(self) -> str:
        return self.manifest_kind or self.kind

    @property
    def display_kind(self) -> str:
        """The kind as messages name it: the manifest's kind, qualified with its group when another group has
        a kind of that name (`Gateway.networking.istio.io`, never the internal key "IstioGateway")."""
        return f"{self.manifest_kind}.{self.group}" if self.manifest_kind else self.kind

    @property
    def resource(self) -> str:
        """The resource as kube-apiserver names it in 404/409 messages (`gateways.networking.istio.io "x" not
        found`): the plural, qualified with the group when another group serves the same plural."""
        return f"{self.plural}.{self.group}" if self.manifest_kind else self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.wire_kind.lower()

    def names(self) -> tuple[str, ...]:
        """Every spelling a user may type for this kind (all lower case)."""
        base = (self.singular, self.plural, *self.short_names) if not self.manifest_kind else self.short_names
        qualified = tuple(f"{n}.{self.group}" for n in (self.singular, self.plural)) if self.group else ()
        return base + qualified


KINDS: tuple[KindInfo, ...] = (
    KindInfo("Namespace", "", "v1", "namespaces", False, ("ns",)),
    KindInfo("Node", "", "v1", "nodes", False, ("no",)),
    KindInfo("ServiceAccount", "", "v1", "serviceaccounts", True, ("sa",)),
    KindInfo("Pod", "", "v1", "pods", True, ("po",)),
    KindInfo("Service", "", "v1", "services", True, ("svc",)),
    KindInfo("Endpoints", "", "v1", "endpoints", True, ("ep",)),
    KindInfo("Event", "", "v1", "events", True, ("ev",)),
    KindInfo("Deployment", "apps", "v1", "deployments", True, ("deploy",)),
    KindInfo("DaemonSet", "apps", "v1", "daemonsets", True, ("ds",)),
    KindInfo("AuthorizationPolicy", "security.istio.io", "v1", "authorizationpolicies", True, ("ap",)),
    KindInfo("PeerAuthentication", "security.istio.io", "v1", "peerauthentications", True, ("pa",)),
    KindInfo("RequestAuthentication", "security.istio.io", "v1", "requestauthentications", True, ("ra",)),
    KindInfo("VirtualService", "networking.istio.io", "v1", "virtualservices", True, ("vs",)),
    KindInfo("DestinationRule", "networking.istio.io", "v1", "destinationrules", True, ("dr",)),
    KindInfo("Gateway", "gateway.networking.k8s.io", "v1", "gateways", True, ("gtw",)),
    KindInfo("GRPCRoute", "gateway.networking.k8s.io", "v1", "grpcroutes", True, ()),
    KindInfo("TCPRoute", "gateway.networking.k8s.io", "v1alpha2", "tcproutes", True, ()),
    KindInfo("ReferenceGrant", "gateway.networking.k8s.io", "v1beta1", "referencegrants", True, ()),
    KindInfo("HTTPRoute", "gateway.networking.k8s.io", "v1", "httproutes", True, ()),
    KindInfo("ServiceEntry", "networking.istio.io", "v1", "serviceentries", True, ("se",)),
    KindInfo("Secret", "", "v1", "secrets", True, ()),
    KindInfo("IstioGateway", "networking.istio.io", "v1", "gateways", True, (), "Gateway"),
)

_BY_NAME: dict[str, KindInfo] = {}
for _info in KINDS:
    for _name in (*_info.names(), _info.kind.lower()):
        _BY_NAME[_name] = _info
_BY_INTERNAL: dict[str, KindInfo] = {info.kind: info for info in KINDS if info.manifest_kind}
_BY_KIND: dict[str, KindInfo] = {info.kind: info for info in KINDS if not info.manifest_kind}
_BY_GROUP_KIND: dict[tuple[str, str], KindInfo] = {(info.group, info.wire_kind): info for info in KINDS}
_BY_PLURAL: dict[str, KindInfo] = {info.plural: info for info in KINDS if not info.manifest_kind}
_BY_GROUP_PLURAL: dict[tuple[str, str], KindInfo] = {(info.group, info.plural): info for info in KINDS}


def resolve_kind(name: str) -> KindInfo:
    """Resolve a kind as a user or a manifest spells it ("Pod", "pods", "po", "deploy", "svc", ...)."""
    info = _BY_KIND.get(name) or _BY_NAME.get(name.lower()) or _BY_INTERNAL.get(name)
    if info is None:
        known = ", ".join(sorted(i.plural for i in KINDS))
        raise UnknownKindError(
            f'unknown kind "{name}"', hint=f"known kinds: {known} (kubectl short names like po, svc work too)"
        )
    return info


def kind_for_manifest(api_version: str | None, kind: str | None) -> KindInfo:
    """The kind of a manifest document, checking that `apiVersion` matches the kind's group."""
    if not kind:
        raise UnknownKindError("missing field \"kind\"", hint="every document needs apiVersion and kind")
    if api_version is not None:
        same_name = _BY_GROUP_KIND.get((api_version.rsplit("/", 1)[0] if "/" in api_version else "", kind))
        if same_name is not None and (same_name.api_version == api_version or same_name.manifest_kind):
            return _checked_version(same_name, api_version, kind)
    info = _BY_KIND.get(kind)
    if info is None:
        known = ", ".join(i.kind for i in KINDS)
        raise UnknownKindError(f'unknown kind "{kind}"', hint=f"supported kinds: {known}")
    if api_version is not None and api_version != info.api_version:
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        if group != info.group:
            raise UnknownKindError(
                f'kind "{kind}" is not served by apiVersion "{api_version}"',
                hint=f"use apiVersion: {info.api_version}",
            )
    return info


def _checked_version(info: KindInfo, api_version: str, kind: str) -> KindInfo:
    if api_version != info.api_version:
        raise UnknownKindError(f'kind "{kind}" is not served by apiVersion "{api_version}"',
                               hint=f"use apiVersion: {info.api_version}")
    return info


def by_plural(plural: str, group: str | None = None) -> KindInfo:
    """The kind served under an API path segment (used by the API server); `group` picks between kinds of
    the same plural in different groups."""
    info = _BY_GROUP_PLURAL.get((group, plural)) if group is not None else None
    info = info or _BY_PLURAL.get(plural)
    if info is None:
        raise UnknownKindError(f'no resource "{plural}"')
    return info
