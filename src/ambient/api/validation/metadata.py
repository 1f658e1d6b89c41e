"""Object names, labels, annotations and label selectors (`ambient.api.validation`'s envelope checks).

Role: `_check_metadata` validates and normalises `metadata` of every object; `check_name` and
`_label_selector` are also used by the kind checks for names and selectors inside specs.

Invariants:
- Names follow Kubernetes: DNS-1123 subdomains (<= 253) except the kinds in `_LABEL_NAME_KINDS`, which need
  DNS-1123 labels (<= 63; Service names are DNS-1035 labels, starting with a letter).
- A namespaced object without a namespace gets `default`; a cluster-scoped object loses a namespace given by
  mistake. Labels/annotations are never rewritten, only checked; all annotations of one object (or template)
  together hold at most `limits.MAX_ANNOTATIONS_BYTES` (256 KiB, as Kubernetes).
"""

from __future__ import annotations

import re
from typing import Any

from ambient.api.kinds import KindInfo
from ambient.api.limits import MAX_ANNOTATIONS_BYTES
from ambient.api.validation.fields import Obj, _enum, _fail, _int, _items, _map, _str, _str_list, _str_map

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")

# Kinds whose names must be DNS-1123 labels (<= 63); the others allow subdomains (<= 253, dots).
_LABEL_NAME_KINDS = frozenset({"Namespace", "Service"})


def _check_label_key(key: Any, path: str) -> None:
    if not isinstance(key, str) or not key:
        raise _fail(path, "a non-empty string key", key)
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise _fail(f"{path}", f'key "{key}": the prefix must be a DNS subdomain (e.g. example.com)')
    if len(name) > 63 or not _QUALIFIED_NAME.match(name):
        raise _fail(
            path,
            f'key "{key}": the name part must be 1-63 characters of [A-Za-z0-9-_.], '
            "starting and ending with a letter or digit",
        )


def _check_labels(meta: Obj, path: str, key_name: str = "labels") -> None:
    """Label keys and values of `meta[key_name]` (labels, or a selector's matchLabels: Kubernetes checks
    selectors with the same rules, so a selector can never name a label no object could carry)."""
    labels = _map(meta, key_name, path)
    if labels is None:
        return
    for key, value in labels.items():
        p = f"{path}.{key_name}.{key}"
        _check_label_key(key, p)
        _check_label_value(value, p)


def _check_label_value(value: Any, path: str) -> None:
    if not isinstance(value, str):
        raise _fail(path, "a string (quote numbers and booleans in YAML)", value)
    if value and (len(value) > 63 or not _QUALIFIED_NAME.match(value)):
        raise _fail(
            path, "a label value of at most 63 characters of [A-Za-z0-9-_.], starting and ending "
            "with a letter or digit", value,
        )


def _check_annotations(meta: Obj, path: str) -> None:
    annotations = _map(meta, "annotations", path)
    if annotations is None:
        return
    total = 0
    for key, value in annotations.items():
        p = f"{path}.annotations.{key}"
        _check_label_key(key, p)
        if not isinstance(value, str):
            raise _fail(p, "a string (quote numbers and booleans in YAML)", value)
        total += len(key.encode("utf-8", "surrogatepass")) + len(value.encode("utf-8", "surrogatepass"))
    if total > MAX_ANNOTATIONS_BYTES:
        # Kubernetes' wording and limit (TotalAnnotationSizeLimitB), keys and values of all annotations together.
        raise _fail(f"{path}.annotations", f"Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes "
                    f"(has {total})", hint="keep large data out of annotations")


def check_name(name: Any, path: str, *, subdomain: bool = True, dns1035: bool = False) -> str:
    """Check a DNS-1123 object name (label, or subdomain when `subdomain`). Returns it."""
    if name is None or name == "":
        raise _fail(path, "required field is missing", hint="every object needs metadata.name")
    if not isinstance(name, str):
        raise _fail(path, "a string", name)
    if subdomain:
        if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            raise _fail(
                path,
                "a lowercase DNS-1123 subdomain (a-z, 0-9, '-', '.', at most 253 characters, starting and "
                "ending with a letter or digit)", name,
            )
        return name
    pattern = _DNS_1035 if dns1035 else _DNS_LABEL
    if len(name) > 63 or not pattern.match(name):
        start = "a letter" if dns1035 else "a letter or digit"
        raise _fail(
            path,
            f"a lowercase DNS-1123 label (a-z, 0-9, '-', at most 63 characters, starting with {start} "
            "and ending with a letter or digit)", name,
        )
    return name


def _check_metadata(obj: Obj, info: KindInfo) -> None:
    meta = obj.get("metadata")
    if meta is None:
        raise _fail("metadata.name", "required field is missing", hint="every object needs metadata.name")
    if not isinstance(meta, dict):
        raise _fail("metadata", "an object", meta)
    check_name(
        meta.get("name"), "metadata.name",
        subdomain=info.kind not in _LABEL_NAME_KINDS, dns1035=info.kind == "Service",
    )
    if info.namespaced:
        ns = meta.get("namespace")
        if ns is None or ns == "":
            meta["namespace"] = "default"
        else:
            check_name(ns, "metadata.namespace", subdomain=False)
    else:
        # Cluster-scoped objects have no namespace; like the Kubernetes API, drop one given by mistake.
        meta.pop("namespace", None)
    _check_labels(meta, "metadata")
    _check_annotations(meta, "metadata")
    rv = meta.get("resourceVersion")
    if rv is not None and not isinstance(rv, str):
        raise _fail("metadata.resourceVersion", "a string", rv)
    _int(meta, "generation", "metadata", lo=0)


def _label_selector(d: Obj, key: str, path: str, *, required: bool = False) -> Obj | None:
    """A Kubernetes LabelSelector: {matchLabels: {..}, matchExpressions: [..]}; returns matchLabels."""
    sel = _map(d, key, path, required=required)
    if sel is None:
        return None
    p = f"{path}.{key}"
    _check_labels(sel, p, "matchLabels")
    labels = _str_map(sel, "matchLabels", p)
    for ep, expr in _items(sel, "matchExpressions", p):
        _check_label_key(_str(expr, "key", ep, required=True), f"{ep}.key")
        operator = _enum(expr, "operator", ep, ("In", "NotIn", "Exists", "DoesNotExist"))
        if operator is None:
            raise _fail(f"{ep}.operator", "required field is missing")
        _str_list(expr, "values", ep, check=_check_label_value)
        # Kubernetes' rules: In/NotIn need values, Exists/DoesNotExist take none
        if operator in ("In", "NotIn") and not expr.get("values"):
            raise _fail(f"{ep}.values", f"required when operator is {operator}")
        if operator in ("Exists", "DoesNotExist") and expr.get("values"):
            raise _fail(f"{ep}.values", f"must be empty when operator is {operator}")
    return labels
