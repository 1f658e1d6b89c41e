"""Validation and normalisation of API objects (being written: minimal checks for now)."""

from __future__ import annotations

import copy
from typing import Any

from ambient.api.errors import ValidationError
from ambient.api.kinds import kind_for_manifest


def validate_object(obj: dict[str, Any]) -> dict[str, Any]:
    """Check `obj` and return a normalised copy (defaults filled). Raises ValidationError."""
    if not isinstance(obj, dict):
        raise ValidationError(f"expected an object (mapping), got {type(obj).__name__}")
    info = kind_for_manifest(obj.get("apiVersion"), obj.get("kind"))
    out = copy.deepcopy(obj)
    out["apiVersion"] = info.api_version
    meta = out.setdefault("metadata", {})
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ValidationError("metadata.name: required")
    if info.namespaced:
        meta.setdefault("namespace", "default")
    else:
        meta.pop("namespace", None)
    return out
