"""The field schema of every kind: which fields an object may have (Kubernetes strict field validation).

Role: `find_unknown_fields(obj, kind)` walks an object against its kind's schema, returns the path of every
field the schema does not know (`spec.rules[0].from[0].source.principal`) and, when `prune`, removes them.
Like the Kubernetes API server (strict decoding of built-in kinds, structural schemas of CRDs) the caller
then refuses the object (fieldValidation=Strict), drops them with a warning (Warn) or silently (Ignore):
an unknown field is never stored, so no component can act on a misspelt field as if it were absent
(`principal:` for `principals:` would otherwise turn an ALLOW policy into "allow everyone").

Invariants:
- A schema node is `OPAQUE` (anything is kept: `status`, sub-objects the local cluster does not interpret,
  like CRD `x-kubernetes-preserve-unknown-fields`), `SCALAR` (a leaf; its type is checked by the kind
  checks), a `dict` of known fields, `ListOf(node)` or `MapOf(node)` (free keys, e.g. labels).
- Only the structure is checked here; types and values are the kind checks' job. A value of another shape
  than its schema (a string where an object is expected) is left to them.
- The walk only descends where the schema does, so its depth is bounded by the schema's (about 12),
  whatever the input's nesting.
- Field lists follow Kubernetes core/apps v1, Istio security v1 and Gateway API v1 (standard and
  experimental channels), so every field a real manifest may carry is kept.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from ambient.api.errors import UnknownFieldError, ValidationError

OPAQUE: Any = None
SCALAR = ""


@dataclass(frozen=True)
class ListOf:
    item: Any


@dataclass(frozen=True)
class MapOf:
    value: Any


def _fields(*names: str, **typed: Any) -> dict[str, Any]:
    """An object schema: `names` are scalar fields, `typed` the fields with a structure."""
    return {**dict.fromkeys(names, SCALAR), **typed}


_STRINGS = ListOf(SCALAR)
_STRING_MAP = MapOf(SCALAR)

# ----------------------------------------------------------------------------- shared Kubernetes types

OWNER_REFERENCE = _fields("apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion")
OBJECT_META = _fields(
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
    labels=_STRING_MAP, annotations=_STRING_MAP, ownerReferences=ListOf(OWNER_REFERENCE),
    finalizers=_STRINGS, managedFields=ListOf(OPAQUE),
)
LABEL_SELECTOR = _fields(
    matchLabels=_STRING_MAP, matchExpressions=ListOf(_fields("key", "operator", values=_STRINGS))
)
OBJECT_REFERENCE = _fields("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
_LOCAL_REF = _fields("name")

# ----------------------------------------------------------------------------- Pod

_PROBE = _fields(
    "initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold",
    "terminationGracePeriodSeconds",
    exec=_fields(command=_STRINGS),
    httpGet=_fields("path", "port", "host", "scheme", httpHeaders=ListOf(_fields("name", "value"))),
    tcpSocket=_fields("port", "host"),
    grpc=_fields("port", "service"),
)
_ENV_VAR = _fields(
    "name", "value",
    valueFrom=_fields(
        fieldRef=_fields("apiVersion", "fieldPath"),
        resourceFieldRef=_fields("containerName", "resource", "divisor"),
        configMapKeyRef=_fields("name", "key", "optional"),
        secretKeyRef=_fields("name", "key", "optional"),
    ),
)
_CONTAINER = _fields(
    "name", "image", "workingDir", "terminationMessagePath", "terminationMessagePolicy", "imagePullPolicy",
    "stdin", "stdinOnce", "tty", "restartPolicy",
    command=_STRINGS, args=_STRINGS, env=ListOf(_ENV_VAR),
    ports=ListOf(_fields("name", "hostPort", "containerPort", "protocol", "hostIP")),
    readinessProbe=_PROBE, livenessProbe=_PROBE, startupProbe=_PROBE,
    resources=_fields(limits=_STRING_MAP, requests=_STRING_MAP, claims=ListOf(_fields("name", "request"))),
    # Not interpreted by the local cluster: kept as given.
    envFrom=ListOf(OPAQUE), resizePolicy=ListOf(OPAQUE), lifecycle=OPAQUE, securityContext=OPAQUE,
    volumeMounts=ListOf(OPAQUE), volumeDevices=ListOf(OPAQUE),
)
POD_SPEC = _fields(
    "restartPolicy", "terminationGracePeriodSeconds", "activeDeadlineSeconds", "dnsPolicy",
    "serviceAccountName", "serviceAccount", "automountServiceAccountToken", "nodeName", "hostNetwork",
    "hostPID", "hostIPC", "shareProcessNamespace", "hostname", "subdomain", "schedulerName",
    "priorityClassName", "priority", "runtimeClassName", "enableServiceLinks", "preemptionPolicy",
    "setHostnameAsFQDN", "hostUsers",
    containers=ListOf(_CONTAINER), initContainers=ListOf(_CONTAINER), ephemeralContainers=ListOf(_CONTAINER),
    nodeSelector=_STRING_MAP, imagePullSecrets=ListOf(_LOCAL_REF), overhead=_STRING_MAP,
    os=_fields("name"), schedulingGates=ListOf(_fields("name")),
    readinessGates=ListOf(_fields("conditionType")),
    # Not interpreted by the local cluster: kept as given.
    volumes=ListOf(OPAQUE), securityContext=OPAQUE, affinity=OPAQUE, tolerations=ListOf(OPAQUE),
    hostAliases=ListOf(OPAQUE), dnsConfig=OPAQUE, topologySpreadConstraints=ListOf(OPAQUE),
    resourceClaims=ListOf(OPAQUE), resources=OPAQUE,
)
POD_TEMPLATE = _fields(metadata=OBJECT_META, spec=POD_SPEC)

# ----------------------------------------------------------------------------- Istio security v1

_WORKLOAD_SELECTOR = _fields(matchLabels=_STRING_MAP)  # Istio's WorkloadSelector: no matchExpressions
_POLICY_TARGET_REF = _fields("group", "kind", "name", "namespace")
_SOURCE = _fields(
    principals=_STRINGS, notPrincipals=_STRINGS, requestPrincipals=_STRINGS, notRequestPrincipals=_STRINGS,
    namespaces=_STRINGS, notNamespaces=_STRINGS, serviceAccounts=_STRINGS, notServiceAccounts=_STRINGS,
    ipBlocks=_STRINGS, notIpBlocks=_STRINGS, remoteIpBlocks=_STRINGS, notRemoteIpBlocks=_STRINGS,
)
_OPERATION = _fields(
    hosts=_STRINGS, notHosts=_STRINGS, ports=_STRINGS, notPorts=_STRINGS, methods=_STRINGS,
    notMethods=_STRINGS, paths=_STRINGS, notPaths=_STRINGS,
)
AUTHORIZATION_POLICY_SPEC = _fields(
    "action",
    selector=_WORKLOAD_SELECTOR, targetRef=_POLICY_TARGET_REF, targetRefs=ListOf(_POLICY_TARGET_REF),
    provider=_fields("name"),
    rules=ListOf(_fields(
        **{"from": ListOf(_fields(source=_SOURCE))},
        to=ListOf(_fields(operation=_OPERATION)),
        when=ListOf(_fields("key", values=_STRINGS, notValues=_STRINGS)),
    )),
)
_MTLS = _fields("mode")
PEER_AUTHENTICATION_SPEC = _fields(selector=_WORKLOAD_SELECTOR, mtls=_MTLS, portLevelMtls=MapOf(_MTLS))

# ----------------------------------------------------------------------------- Gateway API v1

_PARENT_REF = _fields("group", "kind", "namespace", "name", "sectionName", "port")
_BACKEND_OBJECT_REF = _fields("group", "kind", "name", "namespace", "port")
_SECRET_REF = _fields("group", "kind", "name", "namespace")
GATEWAY_SPEC = _fields(
    "gatewayClassName",
    listeners=ListOf(_fields(
        "name", "hostname", "port", "protocol",
        tls=_fields("mode", certificateRefs=ListOf(_SECRET_REF), options=_STRING_MAP,
                    frontendValidation=OPAQUE),
        allowedRoutes=_fields(
            namespaces=_fields("from", selector=LABEL_SELECTOR), kinds=ListOf(_fields("group", "kind")),
        ),
    )),
    addresses=ListOf(_fields("type", "value")),
    infrastructure=_fields(labels=_STRING_MAP, annotations=_STRING_MAP,
                           parametersRef=_fields("group", "kind", "name")),
    # Experimental channel, not interpreted here.
    backendTLS=OPAQUE, allowedListeners=OPAQUE, tls=OPAQUE, defaultScope=SCALAR,
)
_HEADER = _fields("name", "value")
_HEADER_MODIFIER = _fields(set=ListOf(_HEADER), add=ListOf(_HEADER), remove=_STRINGS)
_PATH_MODIFIER = _fields("type", "replaceFullPath", "replacePrefixMatch")
_FILTER = _fields(
    "type",
    requestHeaderModifier=_HEADER_MODIFIER, responseHeaderModifier=_HEADER_MODIFIER,
    requestRedirect=_fields("scheme", "hostname", "port", "statusCode", path=_PATH_MODIFIER),
    urlRewrite=_fields("hostname", path=_PATH_MODIFIER),
    requestMirror=_fields("percent", backendRef=_BACKEND_OBJECT_REF,
                          fraction=_fields("numerator", "denominator")),
    extensionRef=_fields("group", "kind", "name"),
    # Experimental channel, not implemented by the waypoint (which refuses routes using them).
    cors=OPAQUE, externalAuth=OPAQUE,
)
_MATCH = _fields(
    "method",
    path=_fields("type", "value"),
    headers=ListOf(_fields("type", "name", "value")),
    queryParams=ListOf(_fields("type", "name", "value")),
)
HTTP_ROUTE_SPEC = _fields(
    parentRefs=ListOf(_PARENT_REF),
    hostnames=_STRINGS,
    rules=ListOf(_fields(
        "name",
        matches=ListOf(_MATCH),
        filters=ListOf(_FILTER),
        backendRefs=ListOf(_fields("group", "kind", "name", "namespace", "port", "weight",
                                   filters=ListOf(_FILTER))),
        timeouts=_fields("request", "backendRequest"),
        retry=_fields("attempts", "backoff", codes=ListOf(SCALAR)),
        sessionPersistence=OPAQUE,
    )),
)

# ----------------------------------------------------------------------------- Istio networking v1

_WORKLOAD_ENTRY = _fields("address", "network", "locality", "weight", "serviceAccount",
                          ports=MapOf(SCALAR), labels=_STRING_MAP)
SERVICE_ENTRY_SPEC = _fields(
    "location", "resolution", "subjectAltNames",
    hosts=_STRINGS, addresses=_STRINGS, exportTo=_STRINGS, subjectAltNames=_STRINGS,
    ports=ListOf(_fields("number", "protocol", "name", "targetPort")),
    endpoints=ListOf(_WORKLOAD_ENTRY), workloadSelector=_fields(labels=_STRING_MAP),
)

_SERVER_TLS = _fields(
    "httpsRedirect", "mode", "serverCertificate", "privateKey", "caCertificates", "credentialName",
    "minProtocolVersion", "maxProtocolVersion", "caCrl",
    subjectAltNames=_STRINGS, verifyCertificateSpki=_STRINGS, verifyCertificateHash=_STRINGS,
    cipherSuites=_STRINGS, credentialNames=_STRINGS, tlsCertificates=ListOf(OPAQUE),
)
ISTIO_GATEWAY_SPEC = _fields(
    selector=_STRING_MAP,
    servers=ListOf(_fields("bind", "defaultEndpoint", "name",
                           port=_fields("number", "protocol", "name", "targetPort"), hosts=_STRINGS,
                           tls=_SERVER_TLS)),
)

# ----------------------------------------------------------------------------- kinds


def _kind(spec: Any, *scalars: str, **top: Any) -> dict[str, Any]:
    """A kind's top level: the envelope, `spec` (None: the kind has none) and the kind's own fields."""
    fields = _fields("apiVersion", "kind", *scalars, metadata=OBJECT_META, status=OPAQUE, **top)
    if spec is not None:
        fields["spec"] = spec
    return fields


SCHEMAS: dict[str, dict[str, Any]] = {
    "Namespace": _kind(_fields(finalizers=_STRINGS)),
    "Node": _kind(_fields(
        "podCIDR", "providerID", "unschedulable", "externalID",
        podCIDRs=_STRINGS, taints=ListOf(_fields("key", "value", "effect", "timeAdded")), configSource=OPAQUE,
    )),
    "ServiceAccount": _kind(
        None, "automountServiceAccountToken", secrets=ListOf(OBJECT_REFERENCE), imagePullSecrets=ListOf(_LOCAL_REF)
    ),
    "Pod": _kind(POD_SPEC),
    "Deployment": _kind(_fields(
        "replicas", "minReadySeconds", "revisionHistoryLimit", "paused", "progressDeadlineSeconds",
        selector=LABEL_SELECTOR, template=POD_TEMPLATE,
        strategy=_fields("type", rollingUpdate=_fields("maxUnavailable", "maxSurge")),
    )),
    "DaemonSet": _kind(_fields(
        "minReadySeconds", "revisionHistoryLimit",
        selector=LABEL_SELECTOR, template=POD_TEMPLATE,
        updateStrategy=_fields("type", rollingUpdate=_fields("maxUnavailable", "maxSurge")),
    )),
    "Service": _kind(_fields(
        "clusterIP", "type", "sessionAffinity", "loadBalancerIP", "externalName", "externalTrafficPolicy",
        "healthCheckNodePort", "publishNotReadyAddresses", "ipFamilyPolicy", "allocateLoadBalancerNodePorts",
        "loadBalancerClass", "internalTrafficPolicy", "trafficDistribution",
        ports=ListOf(_fields("name", "protocol", "appProtocol", "port", "targetPort", "nodePort")),
        selector=_STRING_MAP, clusterIPs=_STRINGS, externalIPs=_STRINGS, loadBalancerSourceRanges=_STRINGS,
        ipFamilies=_STRINGS, sessionAffinityConfig=OPAQUE,
    )),
    "Endpoints": _kind(None, subsets=ListOf(_fields(
        addresses=ListOf(_fields("ip", "hostname", "nodeName", targetRef=OBJECT_REFERENCE)),
        notReadyAddresses=ListOf(_fields("ip", "hostname", "nodeName", targetRef=OBJECT_REFERENCE)),
        ports=ListOf(_fields("name", "port", "protocol", "appProtocol")),
    ))),
    "AuthorizationPolicy": _kind(AUTHORIZATION_POLICY_SPEC),
    "PeerAuthentication": _kind(PEER_AUTHENTICATION_SPEC),
    "Gateway": _kind(GATEWAY_SPEC),
    "HTTPRoute": _kind(HTTP_ROUTE_SPEC),
    "ServiceEntry": _kind(SERVICE_ENTRY_SPEC),
    "IstioGateway": _kind(ISTIO_GATEWAY_SPEC),
    "Secret": _kind(None, "type", "immutable", data=_STRING_MAP, stringData=_STRING_MAP),
    "Event": _kind(
        None, "reason", "message", "type", "count", "firstTimestamp", "lastTimestamp", "eventTime", "action",
        "reportingComponent", "reportingInstance",
        involvedObject=OBJECT_REFERENCE, related=OBJECT_REFERENCE, source=_fields("component", "host"),
        series=_fields("count", "lastObservedTime", "state"),
    ),
}

# A path shown in a message or a Warning header is cut to this many characters (keys are user input).
_MAX_SHOWN_PATH = 200


@dataclass(frozen=True)
class UnknownField:
    """A field the schema does not know: its path and the names known where it was found."""

    path: str
    known: tuple[str, ...]

    def message(self) -> str:
        """Kubernetes' wording: `unknown field "spec.foo"` (the path quoted and escaped, cut when long)."""
        path = self.path if len(self.path) <= _MAX_SHOWN_PATH else self.path[:_MAX_SHOWN_PATH] + "..."
        return f"unknown field {json.dumps(path, ensure_ascii=True)}"

    def suggestion(self) -> str | None:
        """The closest known name ("principals" for "principal"), if one is close."""
        last = self.path.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(last, self.known, n=1, cutoff=0.6)
        return close[0] if close else None


def _join(path: str, key: Any) -> str:
    text = key if isinstance(key, str) else json.dumps(key)
    return f"{path}.{text}" if path else text


def _walk(value: Any, node: Any, path: str, found: list[UnknownField], prune: bool) -> None:
    if node is OPAQUE or node is SCALAR:
        return
    if isinstance(node, dict):
        if not isinstance(value, dict):
            return
        for key in list(value):
            sub = node.get(key, ...) if isinstance(key, str) else ...
            if sub is ...:
                found.append(UnknownField(_join(path, key), tuple(node)))
                if prune:
                    del value[key]
            elif value[key] is not None:
                _walk(value[key], sub, _join(path, key), found, prune)
    elif isinstance(node, ListOf):
        if isinstance(value, list):
            for i, item in enumerate(value):
                _walk(item, node.item, f"{path}[{i}]", found, prune)
    elif isinstance(node, MapOf) and isinstance(value, dict):
        for key, item in value.items():
            if item is not None:
                _walk(item, node.value, _join(path, key), found, prune)


def find_unknown_fields(obj: Any, kind: str, *, prune: bool = False) -> list[UnknownField]:
    """The fields of `obj` that `kind`'s schema does not know, in document order.

    With `prune`, they are also removed from `obj` (in place). Works on partial objects too (a merge
    patch): null values (deletions) are not descended into."""
    found: list[UnknownField] = []
    _walk(obj, SCHEMAS[kind], "", found, prune)
    return found


# ----------------------------------------------------------------------------- field validation modes

FIELD_VALIDATION_MODES = ("Strict", "Warn", "Ignore")
# An error lists at most this many unknown fields (and suggests spellings for the first few).
_MAX_LISTED = 10
_MAX_SUGGESTED = 3


def parse_field_validation(value: str | None, default: str = "Strict") -> str:
    """The `fieldValidation` query parameter: Strict, Warn or Ignore (as Kubernetes spells them)."""
    if value is None or value == "":
        return default
    if value not in FIELD_VALIDATION_MODES:
        raise ValidationError(
            f'fieldValidation: unsupported value "{value[:40]}"', hint="use one of Strict, Warn, Ignore"
        )
    return value


def strict_error(unknown: list[UnknownField], subject: str = "") -> UnknownFieldError:
    """The error of a Strict request: every unknown field (up to a limit), like Kubernetes'
    `strict decoding error: unknown field "spec.foo", unknown field "spec.bar"`; `subject` names the object."""
    listed = ", ".join(u.message() for u in unknown[:_MAX_LISTED])
    if len(unknown) > _MAX_LISTED:
        listed += f" (and {len(unknown) - _MAX_LISTED} more)"
    hints = []
    for u in unknown[:_MAX_SUGGESTED]:
        close = u.suggestion()
        if close is not None:
            parent = u.path.rpartition(".")[0]
            hints.append(f'did you mean "{parent + "." if parent else ""}{close}"?')
    hint = " ".join(hints) if hints else "remove the field, or check its spelling and indentation"
    return UnknownFieldError(f"{subject + ': ' if subject else ''}strict decoding error: {listed}", hint=hint)


def check_fields(obj: Any, kind: str, mode: str, warnings: list[str] | None = None, subject: str = "", *,
                 name_in_warnings: bool = False) -> None:
    """Apply a field validation mode to `obj` (in place): Strict raises `UnknownFieldError` (its message
    starting with `subject`); Warn removes the unknown fields and appends one `unknown field "..."` message
    each to `warnings` (prefixed with `subject` when `name_in_warnings`: a batch names its objects);
    Ignore removes them."""
    unknown = find_unknown_fields(obj, kind, prune=mode != "Strict")
    if not unknown:
        return
    if mode == "Strict":
        raise strict_error(unknown, subject)
    if mode == "Warn" and warnings is not None:
        prefix = f"{subject}: " if subject and name_in_warnings else ""
        warnings.extend(prefix + u.message() for u in unknown)


# ----------------------------------------------------------------------------- duplicate fields


def loads_with_duplicates(raw: str | bytes | bytearray) -> tuple[Any, list[str]]:
    """Decode JSON, and the path of every key that appears twice in one object (`spec.action`); the last
    value is kept, as Kubernetes' Warn and Ignore do. Raises what `json.loads` raises."""
    # id -> (the object, its duplicated keys); holding the object keeps its id from being reused by another
    duplicated: dict[int, tuple[dict[str, Any], list[str]]] = {}

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            keys = []
            for key, _ in pairs:
                if key in seen:
                    keys.append(key)
                seen.add(key)
            duplicated[id(obj)] = (obj, keys)
        return obj

    value = json.loads(raw, object_pairs_hook=pairs_hook)
    if not duplicated:
        return value, []
    paths: list[str] = []
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            paths += [_join(path, key) for key in duplicated.get(id(item), ({}, []))[1]]
            stack += [(v, _join(path, k)) for k, v in item.items() if isinstance(v, (dict, list))]
        elif isinstance(item, list):
            stack += [(v, f"{path}[{i}]") for i, v in enumerate(item) if isinstance(v, (dict, list))]
    return value, sorted(paths)


def duplicate_message(path: str) -> str:
    """Kubernetes' wording: `duplicate field "spec.action"`."""
    return f"duplicate field {json.dumps(path[:_MAX_SHOWN_PATH], ensure_ascii=True)}"


def check_duplicates(paths: list[str], mode: str, warnings: list[str] | None = None, subject: str = "",
                     *, name_in_warnings: bool = False) -> None:
    """Apply a field validation mode to duplicate fields (the last value was kept): Strict raises
    `UnknownFieldError`, Warn appends one message each to `warnings`, Ignore does nothing."""
    if not paths:
        return
    if mode == "Strict":
        listed = ", ".join(duplicate_message(p) for p in paths[:_MAX_LISTED])
        if len(paths) > _MAX_LISTED:
            listed += f" (and {len(paths) - _MAX_LISTED} more)"
        raise UnknownFieldError(f"{subject + ': ' if subject else ''}strict decoding error: {listed}",
                                hint="each field may appear once in an object: remove the extra one")
    if mode == "Warn" and warnings is not None:
        prefix = f"{subject}: " if subject and name_in_warnings else ""
        warnings.extend(prefix + duplicate_message(p) for p in paths)
