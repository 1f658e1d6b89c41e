"""Validation and normalisation of API objects: the one gate every object passes before it is stored.

`validate_object(obj)` checks the envelope (apiVersion/kind, metadata.name, namespace, labels,
annotations) and the spec of each kind, and returns a normalised *copy* with defaults filled in. The API
server calls it on every create/update/patch result; `manifests.load_manifests` calls it on every
document, so a user sees the same message whether the CLI or the server rejected the object.

Invariants:
- The input is never modified; the result is a deep copy.
- Every error is a `ValidationError` whose message starts with the field path
  (`spec.containers[0].ports[0].containerPort: expected an integer 1-65535, got "http"`).
- Unknown extra fields are accepted and kept (like kubectl's non-strict mode); known fields with the
  wrong type are errors. `status` is not validated (controllers own it).
- Normalising twice gives the same result (idempotent), so "apply" can compare stored and new objects.
- Hand-written checks (no pydantic) because this runs on every write: 1,000 objects take a few ms.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any

from ambient.api.errors import ValidationError
from ambient.api.kinds import KindInfo, kind_for_manifest

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")

# Kinds whose names must be DNS-1123 labels (<= 63); the others allow subdomains (<= 253, dots).
_LABEL_NAME_KINDS = frozenset({"Namespace", "Service"})

Obj = dict[str, Any]


def _show(value: Any) -> str:
    """How a found value appears in a message: JSON-ish and short."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str) and len(value) > 60:
        return f"{json.dumps(value[:40])[:-1]}...\" ({len(value)} characters)"
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _fail(path: str, expected: str, found: Any = ..., *, hint: str | None = None) -> ValidationError:
    message = f"{path}: {expected}" if found is ... else f"{path}: expected {expected}, got {_show(found)}"
    return ValidationError(message, hint=hint)


# ----------------------------------------------------------------------------- typed field accessors
# Each accessor reads `d[key]`, checks its type, and returns it (or None when absent and optional).


def _map(d: Obj, key: str, path: str, *, required: bool = False) -> Obj | None:
    value = d.get(key)
    if value is None:
        if required:
            raise _fail(f"{path}.{key}", "required field is missing")
        return None
    if not isinstance(value, dict):
        raise _fail(f"{path}.{key}", "an object", value)
    return value


def _list(d: Obj, key: str, path: str, *, required: bool = False, nonempty: bool = False) -> list[Any]:
    value = d.get(key)
    if value is None:
        if required:
            raise _fail(f"{path}.{key}", "required field is missing")
        return []
    if not isinstance(value, list):
        raise _fail(f"{path}.{key}", "a list", value)
    if nonempty and not value:
        raise _fail(f"{path}.{key}", "must have at least one entry")
    return value


def _items(d: Obj, key: str, path: str, **kw: bool) -> list[tuple[str, Obj]]:
    """The entries of a list of objects, each with its path (`path.key[i]`)."""
    out = []
    for i, item in enumerate(_list(d, key, path, **kw)):
        p = f"{path}.{key}[{i}]"
        if not isinstance(item, dict):
            raise _fail(p, "an object", item)
        out.append((p, item))
    return out


def _str(d: Obj, key: str, path: str, *, required: bool = False) -> str | None:
    value = d.get(key)
    if value is None:
        if required:
            raise _fail(f"{path}.{key}", "required field is missing")
        return None
    if not isinstance(value, str):
        raise _fail(f"{path}.{key}", "a string", value)
    if required and not value:
        raise _fail(f"{path}.{key}", "must not be empty")
    return value


def _int(d: Obj, key: str, path: str, *, lo: int | None = None, hi: int | None = None,
         required: bool = False) -> int | None:
    value = d.get(key)
    if value is None:
        if required:
            raise _fail(f"{path}.{key}", "required field is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) or (
        hi is not None and value > hi
    ):
        raise _fail(f"{path}.{key}", _int_range(lo, hi), value)
    return value


def _int_range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"an integer {lo}-{hi}"
    if lo is not None:
        return f"an integer >= {lo}"
    return "an integer"


def _bool(d: Obj, key: str, path: str) -> None:
    value = d.get(key)
    if value is not None and not isinstance(value, bool):
        raise _fail(f"{path}.{key}", "true or false", value)


def _enum(d: Obj, key: str, path: str, allowed: tuple[str, ...], default: str | None = None) -> str | None:
    value = d.get(key)
    if value is None:
        if default is not None:
            d[key] = default
        return default
    if value not in allowed:
        raise _fail(f"{path}.{key}", "one of " + "|".join(allowed), value)
    return str(value)


def _str_list(d: Obj, key: str, path: str, *, check: Callable[[str, str], None] | None = None) -> None:
    for i, item in enumerate(_list(d, key, path)):
        p = f"{path}.{key}[{i}]"
        if not isinstance(item, str):
            raise _fail(p, "a string", item)
        if check is not None:
            check(item, p)


def _str_map(d: Obj, key: str, path: str) -> Obj | None:
    m = _map(d, key, path)
    if m is not None:
        for k, v in m.items():
            if not isinstance(v, str):
                raise _fail(f"{path}.{key}.{k}", "a string", v)
    return m


def _duration(d: Obj, key: str, path: str) -> None:
    value = _str(d, key, path)
    if value is not None and not _DURATION.match(value):
        raise _fail(f"{path}.{key}", 'a duration like "10s", "500ms" or "1m30s"', value)


def _port_number(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _fail(path, "an integer 1-65535", value)
    return value


# ----------------------------------------------------------------------------- metadata


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


def _check_labels(meta: Obj, path: str) -> None:
    labels = _map(meta, "labels", path)
    if labels is None:
        return
    for key, value in labels.items():
        p = f"{path}.labels.{key}"
        _check_label_key(key, p)
        if not isinstance(value, str):
            raise _fail(p, "a string (quote numbers and booleans in YAML)", value)
        if value and (len(value) > 63 or not _QUALIFIED_NAME.match(value)):
            raise _fail(
                p, "a label value of at most 63 characters of [A-Za-z0-9-_.], starting and ending "
                "with a letter or digit", value,
            )


def _check_annotations(meta: Obj, path: str) -> None:
    annotations = _map(meta, "annotations", path)
    if annotations is None:
        return
    for key, value in annotations.items():
        p = f"{path}.annotations.{key}"
        _check_label_key(key, p)
        if not isinstance(value, str):
            raise _fail(p, "a string (quote numbers and booleans in YAML)", value)


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
    labels = _str_map(sel, "matchLabels", p)
    for ep, expr in _items(sel, "matchExpressions", p):
        _str(expr, "key", ep, required=True)
        _enum(expr, "operator", ep, ("In", "NotIn", "Exists", "DoesNotExist"))
        _str_list(expr, "values", ep)
    return labels


# ----------------------------------------------------------------------------- core kinds


def _check_namespace(spec: Obj, obj: Obj) -> None:
    _str_list(spec, "finalizers", "spec")


def _check_node(spec: Obj, obj: Obj) -> None:
    _str(spec, "podCIDR", "spec")
    _str_list(spec, "podCIDRs", "spec", check=_check_cidr)
    if spec.get("podCIDR"):
        _check_cidr(spec["podCIDR"], "spec.podCIDR")
    _bool(spec, "unschedulable", "spec")
    _items(spec, "taints", "spec")


def _check_service_account(spec: Obj, obj: Obj) -> None:
    _bool(obj, "automountServiceAccountToken", "")


def _check_container(c: Obj, path: str, names: set[str]) -> None:
    name = check_name(c.get("name"), f"{path}.name", subdomain=False)
    if name in names:
        raise _fail(f"{path}.name", f'duplicate container name "{name}"')
    names.add(name)
    _str(c, "image", path)
    _str_list(c, "command", path)
    _str_list(c, "args", path)
    _str(c, "workingDir", path)
    for ep, env in _items(c, "env", path):
        _str(env, "name", ep, required=True)
        if "value" in env and env["value"] is not None and not isinstance(env["value"], str):
            raise _fail(f"{ep}.value", "a string (quote numbers and booleans in YAML)", env["value"])
        _map(env, "valueFrom", ep)
    port_names: set[str] = set()
    for pp, port in _items(c, "ports", path):
        _int(port, "containerPort", pp, lo=1, hi=65535, required=True)
        _int(port, "hostPort", pp, lo=1, hi=65535)
        _enum(port, "protocol", pp, ("TCP", "UDP", "SCTP"), default="TCP")
        pname = _str(port, "name", pp)
        if pname is not None:
            _check_port_name(pname, f"{pp}.name")
            if pname in port_names:
                raise _fail(f"{pp}.name", f'duplicate port name "{pname}"')
            port_names.add(pname)
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        _map(c, probe, path)
    _map(c, "resources", path)
    _map(c, "securityContext", path)


def _check_port_name(name: str, path: str) -> None:
    if len(name) > 15 or not _IANA_SVC_NAME.match(name) or not re.search("[a-z]", name):
        raise _fail(path, "a port name of at most 15 characters of a-z, 0-9, '-' with at least one letter", name)


def check_pod_spec(spec: Obj, path: str = "spec") -> None:
    """Validate and default a Pod spec in place (also used for Deployment templates)."""
    names: set[str] = set()
    for cp, c in _items(spec, "containers", path, required=True, nonempty=True):
        _check_container(c, cp, names)
    for cp, c in _items(spec, "initContainers", path):
        _check_container(c, cp, names)
    _str(spec, "nodeName", path)
    if spec.get("serviceAccountName") is None:
        spec["serviceAccountName"] = "default"
    else:
        check_name(spec["serviceAccountName"], f"{path}.serviceAccountName")
    _enum(spec, "restartPolicy", path, ("Always", "OnFailure", "Never"), default="Always")
    _bool(spec, "hostNetwork", path)
    _int(spec, "terminationGracePeriodSeconds", path, lo=0)
    _str_map(spec, "nodeSelector", path)
    _str(spec, "hostname", path)
    _str(spec, "subdomain", path)


def _check_pod(spec: Obj, obj: Obj) -> None:
    check_pod_spec(spec)


def _check_deployment(spec: Obj, obj: Obj) -> None:
    replicas = spec.get("replicas")
    if replicas is None:
        spec["replicas"] = 1
    else:
        _int(spec, "replicas", "spec", lo=0)
    match = _label_selector(spec, "selector", "spec", required=True)
    if not match:
        raise _fail("spec.selector.matchLabels", "must have at least one label")
    template = _map(spec, "template", "spec", required=True)
    assert template is not None
    tmeta = _map(template, "metadata", "spec.template")
    if tmeta is None:
        tmeta = template["metadata"] = {}
    _check_labels(tmeta, "spec.template.metadata")
    _check_annotations(tmeta, "spec.template.metadata")
    tlabels = tmeta.get("labels") or {}
    for key, value in match.items():
        if tlabels.get(key) != value:
            raise _fail(
                "spec.selector.matchLabels",
                f'{key}={value} does not match the template labels (spec.template.metadata.labels has '
                f"{key}={_show(tlabels.get(key))})",
                hint="the selector must select the pods the template creates",
            )
    tspec = _map(template, "spec", "spec.template", required=True)
    assert tspec is not None
    check_pod_spec(tspec, "spec.template.spec")
    if tspec["restartPolicy"] != "Always":
        raise _fail("spec.template.spec.restartPolicy", "Always (the only value a Deployment allows)",
                    tspec["restartPolicy"])
    _map(spec, "strategy", "spec")
    _int(spec, "minReadySeconds", "spec", lo=0)


def _check_ip(value: str, path: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise _fail(path, "an IP address", value) from None


def _check_cidr(value: str, path: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _fail(path, "an IP address or CIDR (e.g. 10.0.0.0/8)", value) from None


def _check_service(spec: Obj, obj: Obj) -> None:
    stype = spec.get("type")
    if stype is None:
        spec["type"] = "ClusterIP"
    elif stype != "ClusterIP":
        raise _fail("spec.type", "ClusterIP", stype,
                    hint="the local cluster supports ClusterIP services only; use port-forward to reach them")
    cluster_ip = _str(spec, "clusterIP", "spec")
    if cluster_ip and cluster_ip != "None":
        _check_ip(cluster_ip, "spec.clusterIP")
    _str_list(spec, "clusterIPs", "spec", check=lambda v, p: None if v == "None" else _check_ip(v, p))
    _str_map(spec, "selector", "spec")
    seen: set[str] = set()
    for pp, port in _items(spec, "ports", "spec"):
        number = _int(port, "port", pp, lo=1, hi=65535, required=True)
        target = port.get("targetPort")
        if target is None:
            port["targetPort"] = number
        elif isinstance(target, str):
            _check_port_name(target, f"{pp}.targetPort")
        else:
            _port_number(target, f"{pp}.targetPort")
        _enum(port, "protocol", pp, ("TCP", "UDP", "SCTP"), default="TCP")
        _str(port, "appProtocol", pp)
        name = _str(port, "name", pp)
        if name:
            check_name(name, f"{pp}.name", subdomain=False)
            if name in seen:
                raise _fail(f"{pp}.name", f'duplicate port name "{name}"')
            seen.add(name)


def _check_endpoints(spec: Obj, obj: Obj) -> None:
    # Endpoints keep their data at the top level (subsets), written by a controller: loose checks only.
    _items(obj, "subsets", "")


# ----------------------------------------------------------------------------- mesh kinds


def _check_target_refs(spec: Obj, path: str) -> None:
    refs = _items(spec, "targetRefs", path)
    single = _map(spec, "targetRef", path)
    if single is not None:
        refs.append((f"{path}.targetRef", single))
    for rp, ref in refs:
        _str(ref, "group", rp)
        _str(ref, "kind", rp, required=True)
        _str(ref, "name", rp, required=True)
        _str(ref, "namespace", rp)


def _check_selector_xor_target(spec: Obj) -> None:
    if spec.get("selector") is not None and (spec.get("targetRefs") or spec.get("targetRef")):
        raise _fail("spec", "selector and targetRefs are mutually exclusive",
                    hint="use selector for workloads (L4, node proxy) or targetRefs for a Service/Gateway "
                    "(L7, waypoint)")


def _string_ports(d: Obj, key: str, path: str) -> None:
    """Istio ports are strings ("8080"); accept YAML integers too and normalise them to strings."""
    ports = _list(d, key, path)
    for i, port in enumerate(ports):
        p = f"{path}.{key}[{i}]"
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        _port_number(port, p)
        ports[i] = str(port)


_SOURCE_FIELDS = ("principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
                  "namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts")
_SOURCE_IP_FIELDS = ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks")
_OPERATION_FIELDS = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")


def _check_authorization_policy(spec: Obj, obj: Obj) -> None:
    _label_selector(spec, "selector", "spec")
    _check_target_refs(spec, "spec")
    _check_selector_xor_target(spec)
    action = _enum(spec, "action", "spec", ("ALLOW", "DENY", "AUDIT", "CUSTOM"))
    provider = _map(spec, "provider", "spec")
    if action == "CUSTOM" and provider is None:
        raise _fail("spec.provider", "required when action is CUSTOM")
    for rp, rule in _items(spec, "rules", "spec"):
        for fp, frm in _items(rule, "from", rp):
            source = _map(frm, "source", fp, required=True)
            assert source is not None
            for field in _SOURCE_FIELDS:
                _str_list(source, field, f"{fp}.source")
            for field in _SOURCE_IP_FIELDS:
                _str_list(source, field, f"{fp}.source", check=_check_cidr)
        for tp, to in _items(rule, "to", rp):
            op = _map(to, "operation", tp, required=True)
            assert op is not None
            for field in _OPERATION_FIELDS:
                _str_list(op, field, f"{tp}.operation")
            _string_ports(op, "ports", f"{tp}.operation")
            _string_ports(op, "notPorts", f"{tp}.operation")
        for wp, cond in _items(rule, "when", rp):
            _str(cond, "key", wp, required=True)
            _str_list(cond, "values", wp)
            _str_list(cond, "notValues", wp)


_MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


def _check_peer_authentication(spec: Obj, obj: Obj) -> None:
    _label_selector(spec, "selector", "spec")
    mtls = _map(spec, "mtls", "spec")
    if mtls is not None:
        _enum(mtls, "mode", "spec.mtls", _MTLS_MODES)
    levels = _map(spec, "portLevelMtls", "spec")
    if levels is not None:
        normalised: Obj = {}
        for port, setting in levels.items():
            p = f"spec.portLevelMtls.{port}"
            number = int(port) if isinstance(port, str) and port.isdigit() else port
            _port_number(number, p + " (key)")
            if not isinstance(setting, dict):
                raise _fail(p, "an object", setting)
            _enum(setting, "mode", p, _MTLS_MODES)
            # JSON object keys are strings: normalise YAML integer keys so stored == re-validated.
            normalised[str(number)] = setting
        spec["portLevelMtls"] = normalised


_LISTENER_PROTOCOLS = ("HTTP", "HTTPS", "TLS", "TCP", "UDP", "HBONE")


def _check_gateway(spec: Obj, obj: Obj) -> None:
    _str(spec, "gatewayClassName", "spec", required=True)
    names: set[str] = set()
    for lp, listener in _items(spec, "listeners", "spec", required=True, nonempty=True):
        name = check_name(listener.get("name"), f"{lp}.name")
        if name in names:
            raise _fail(f"{lp}.name", f'duplicate listener name "{name}"')
        names.add(name)
        _int(listener, "port", lp, lo=1, hi=65535, required=True)
        _enum(listener, "protocol", lp, _LISTENER_PROTOCOLS)
        if listener.get("protocol") is None:
            raise _fail(f"{lp}.protocol", "required field is missing")
        _str(listener, "hostname", lp)
        _map(listener, "tls", lp)
        _map(listener, "allowedRoutes", lp)
    for ap, addr in _items(spec, "addresses", "spec"):
        _str(addr, "type", ap)
        _str(addr, "value", ap, required=True)


_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


def _check_route_match(match: Obj, path: str) -> None:
    mpath = _map(match, "path", path)
    if mpath is not None:
        _enum(mpath, "type", f"{path}.path", ("Exact", "PathPrefix", "RegularExpression"), default="PathPrefix")
        value = _str(mpath, "value", f"{path}.path")
        if value is None:
            mpath["value"] = "/"
        elif mpath["type"] != "RegularExpression" and not value.startswith("/"):
            raise _fail(f"{path}.path.value", 'a path starting with "/"', value)
        elif mpath["type"] == "RegularExpression":
            try:
                re.compile(value)
            except re.error as exc:
                raise _fail(f"{path}.path.value", f"a valid regular expression ({exc})", value) from None
    for key in ("headers", "queryParams"):
        for hp, header in _items(match, key, path):
            _enum(header, "type", hp, ("Exact", "RegularExpression"), default="Exact")
            _str(header, "name", hp, required=True)
            _str(header, "value", hp, required=True)
    _enum(match, "method", path, _HTTP_METHODS)


def _check_http_route(spec: Obj, obj: Obj) -> None:
    for pp, ref in _items(spec, "parentRefs", "spec"):
        _str(ref, "group", pp)
        _str(ref, "kind", pp)
        _str(ref, "name", pp, required=True)
        _str(ref, "namespace", pp)
        _str(ref, "sectionName", pp)
        _int(ref, "port", pp, lo=1, hi=65535)
    _str_list(spec, "hostnames", "spec")
    for rp, rule in _items(spec, "rules", "spec"):
        for mp, match in _items(rule, "matches", rp):
            _check_route_match(match, mp)
        _items(rule, "filters", rp)
        for bp, backend in _items(rule, "backendRefs", rp):
            _str(backend, "group", bp)
            _str(backend, "kind", bp)
            _str(backend, "name", bp, required=True)
            _str(backend, "namespace", bp)
            _int(backend, "port", bp, lo=1, hi=65535)
            if backend.get("weight") is None:
                backend["weight"] = 1
            else:
                _int(backend, "weight", bp, lo=0, hi=1_000_000)
        timeouts = _map(rule, "timeouts", rp)
        if timeouts is not None:
            _duration(timeouts, "request", f"{rp}.timeouts")
            _duration(timeouts, "backendRequest", f"{rp}.timeouts")
        retry = _map(rule, "retry", rp)
        if retry is not None:
            _int(retry, "attempts", f"{rp}.retry", lo=0)
            _duration(retry, "backoff", f"{rp}.retry")
            for i, code in enumerate(_list(retry, "codes", f"{rp}.retry")):
                if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
                    raise _fail(f"{rp}.retry.codes[{i}]", "an HTTP status code 400-599", code)


_SPEC_CHECKS: dict[str, Callable[[Obj, Obj], None]] = {
    "Namespace": _check_namespace,
    "Node": _check_node,
    "ServiceAccount": _check_service_account,
    "Pod": _check_pod,
    "Deployment": _check_deployment,
    "Service": _check_service,
    "Endpoints": _check_endpoints,
    "AuthorizationPolicy": _check_authorization_policy,
    "PeerAuthentication": _check_peer_authentication,
    "Gateway": _check_gateway,
    "HTTPRoute": _check_http_route,
}

# Kinds whose spec may be absent (the others default to {} but then fail their required fields).
_NO_SPEC_KINDS = frozenset({"ServiceAccount", "Endpoints"})


def validate_object(obj: dict[str, Any]) -> dict[str, Any]:
    """Check `obj` and return a normalised deep copy (defaults filled). Raises `ValidationError`.

    Also raises `UnknownKindError` (from `kind_for_manifest`) for a missing or unknown kind.
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
    out = copy.deepcopy(obj)
    out["apiVersion"] = info.api_version
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
