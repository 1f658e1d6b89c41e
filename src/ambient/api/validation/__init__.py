"""Validation and normalisation of API objects: the one gate every object passes before it is stored.

`validate_object(obj)` checks the envelope (apiVersion/kind, metadata.name, namespace, labels,
annotations) and the spec of each kind, and returns a normalised *copy* with defaults filled in. The API
server calls it on every create/update/patch result; `manifests.load_manifests` calls it on every
document, so a user sees the same message whether the CLI or the server rejected the object.

Invariants:
- The input is never modified; the result is a deep copy.
- Every error is a `ValidationError` whose message starts with the field path
  (`spec.containers[0].ports[0].containerPort: expected an integer 1-65535, got "http"`).
- Unknown fields (not in the kind's schema, `schema.SCHEMAS`) are refused by default with
  `UnknownFieldError` (Kubernetes' strict field validation: `strict decoding error: unknown field
  "spec.foo"`); with `field_validation="Warn"`/`"Ignore"` they are removed from the copy (and reported in
  `warnings`); with None they are not looked at (left for the API server to judge). Known fields with the
  wrong type are errors. `status` is not validated (controllers own it).
- Normalising twice gives the same result (idempotent), so "apply" can compare stored and new objects.
- Hand-written checks (no pydantic) because this runs on every write: 1,000 objects take a few ms.

Layout: `fields` (messages, typed accessors), `metadata` (names, labels, selectors, the envelope),
`core_kinds` and `mesh_kinds` (one spec check per kind); this module dispatches on the kind.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ambient.api.errors import ValidationError
from ambient.api.kinds import kind_for_manifest
from ambient.api.limits import exceeds_depth, too_deep_message
from ambient.api.validation.core_kinds import (
    _check_daemon_set,
    _check_deployment,
    _check_endpoints,
    _check_event,
    _check_namespace,
    _check_node,
    _check_pod,
    _check_service,
    _check_service_account,
    check_pod_spec,
)
from ambient.api.validation.fields import Obj, _fail, _show
from ambient.api.validation.mesh_kinds import (
    _check_authorization_policy,
    _check_gateway,
    _check_http_route,
    _check_peer_authentication,
)
from ambient.api.validation.metadata import _check_metadata, check_name
from ambient.api.validation.networking_kinds import _check_istio_gateway, _check_secret, _check_service_entry
from ambient.api.validation.schema import FIELD_VALIDATION_MODES, SCHEMAS, check_fields, find_unknown_fields
from ambient.api.validation.traffic_kinds import TRAFFIC_CHECKS, TRAFFIC_SCHEMAS

__all__ = [
    "FIELD_VALIDATION_MODES", "check_fields", "check_name", "check_pod_spec", "find_unknown_fields", "validate_object",
]

_SPEC_CHECKS: dict[str, Callable[[Obj, Obj], None]] = {
    "Namespace": _check_namespace,
    "Node": _check_node,
    "ServiceAccount": _check_service_account,
    "Pod": _check_pod,
    "Deployment": _check_deployment,
    "DaemonSet": _check_daemon_set,
    "Service": _check_service,
    "Endpoints": _check_endpoints,
    "Event": _check_event,
    "AuthorizationPolicy": _check_authorization_policy,
    "PeerAuthentication": _check_peer_authentication,
    "Gateway": _check_gateway,
    "HTTPRoute": _check_http_route,
    "ServiceEntry": _check_service_entry,
    "Secret": _check_secret,
    "IstioGateway": _check_istio_gateway,
    **TRAFFIC_CHECKS,
}
SCHEMAS.update(TRAFFIC_SCHEMAS)  # the traffic-management kinds' field schemas live with their checks

# Kinds whose spec may be absent (the others default to {} but then fail their required fields).
_NO_SPEC_KINDS = frozenset({"ServiceAccount", "Endpoints", "Secret", "Event"})


def validate_object(
    obj: dict[str, Any], *, field_validation: str | None = "Strict", warnings: list[str] | None = None
) -> dict[str, Any]:
    """Check `obj` and return a normalised deep copy (defaults filled). Raises `ValidationError`.

    Also raises `UnknownKindError` (from `kind_for_manifest`) for a missing or unknown kind, and
    `UnknownFieldError` for unknown fields when `field_validation` is "Strict" (see the module docstring).
    """
    if not isinstance(obj, dict):
        raise ValidationError(f"expected an object (a mapping with apiVersion, kind, metadata), got {_show(obj)}")
    api_version = obj.get("apiVersion")
    if api_version is not None and not isinstance(api_version, str):
        raise _fail("apiVersion", "a string", api_version)
    kind = obj.get("kind")
    if kind is not None and not isinstance(kind, str):
        raise _fail("kind", "a string", kind)
    info = kind_for_manifest(api_version, kind)
    if exceeds_depth(obj):  # before anything recursive (deepcopy, the walks)
        raise ValidationError(too_deep_message(), hint="flatten the object")
    out = copy.deepcopy(obj)
    out["apiVersion"] = info.api_version
    if field_validation is not None:
        check_fields(out, info.kind, field_validation, warnings)
    _check_metadata(out, info)
    raw_spec = out.get("spec")
    if raw_spec is None:
        raw_spec = {}
        if info.kind not in _NO_SPEC_KINDS:
            out["spec"] = raw_spec
    elif not isinstance(raw_spec, dict):
        raise _fail("spec", "an object", raw_spec)
    spec: Obj = raw_spec
    status = out.get("status")
    if status is not None and not isinstance(status, dict):
        raise _fail("status", "an object", status)
    _SPEC_CHECKS[info.kind](spec, out)
    return out
