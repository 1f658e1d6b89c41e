"""Spec checks of Istio's networking kinds (ServiceEntry) and of the core `Secret`.

Role: one `_check_<kind>(spec, obj)` per kind, called by `validate_object` through its dispatch table.

Invariants (Istio's ServiceEntry validation, networking.istio.io/v1):
- `hosts` is required: DNS names, a wildcard only as the leftmost label (`*.example.test`); resolution DNS
  without endpoints needs non-wildcard hosts (they are what gets resolved).
- `ports` is required and non-empty: numbers 1-65535, unique; `protocol` one of Istio's; `name` unique.
- `resolution` NONE (default) / STATIC / DNS / DNS_ROUND_ROBIN; `location` MESH_EXTERNAL (default) /
  MESH_INTERNAL. Defaults are written in, so re-validation is a no-op.
- STATIC needs `endpoints` (or a `workloadSelector`) whose addresses are IPs; DNS endpoint addresses are
  host names or IPs. `addresses` are IPs or CIDRs.
- A Secret's `stringData` is merged into `data` (base64), as the Kubernetes API server does; a
  `kubernetes.io/tls` Secret needs `tls.crt` and `tls.key`. Error messages never quote a Secret's values.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re

from ambient.api.validation.fields import (
    Obj,
    _check_cidr,
    _check_ip,
    _enum,
    _fail,
    _int,
    _items,
    _list,
    _map,
    _str,
)
from ambient.api.validation.metadata import check_name

SE_RESOLUTIONS = ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN")
SE_LOCATIONS = ("MESH_EXTERNAL", "MESH_INTERNAL")
SE_PROTOCOLS = ("HTTP", "HTTPS", "GRPC", "HTTP2", "MONGO", "TCP", "TLS")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
SECRET_TLS = "kubernetes.io/tls"


def _check_host(host: object, path: str, *, wildcard: bool = True) -> str:
    if not isinstance(host, str) or not host:
        raise _fail(path, "a host name (e.g. api.example.test)", host)
    name = host.lower().rstrip(".")
    labels = name.split(".")
    if labels[0] == "*" and wildcard:
        labels = labels[1:]
    if not labels or len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise _fail(path, "a DNS name (a wildcard only as the first label: *.example.test)", host)
    return host


def _check_service_entry(spec: Obj, obj: Obj) -> None:
    hosts = _list(spec, "hosts", "spec", required=True, nonempty=True)
    for i, host in enumerate(hosts):
        _check_host(host, f"spec.hosts[{i}]")
    if len({str(h).lower() for h in hosts}) != len(hosts):
        raise _fail("spec.hosts", "unique host names")
    for i, addr in enumerate(_list(spec, "addresses", "spec")):
        if not isinstance(addr, str):
            raise _fail(f"spec.addresses[{i}]", "an IP address or CIDR", addr)
        _check_cidr(addr, f"spec.addresses[{i}]")
    resolution = _enum(spec, "resolution", "spec", SE_RESOLUTIONS, default="NONE")
    _enum(spec, "location", "spec", SE_LOCATIONS, default="MESH_EXTERNAL")
    numbers: set[int] = set()
    names: set[str] = set()
    for pp, port in _items(spec, "ports", "spec", required=True, nonempty=True):
        number = _int(port, "number", pp, lo=1, hi=65535, required=True)
        if number in numbers:
            raise _fail(f"{pp}.number", f"a port number not listed twice (port {number})")
        numbers.add(int(number or 0))
        protocol = port.get("protocol")
        if protocol is not None:
            if not isinstance(protocol, str) or protocol.upper() not in SE_PROTOCOLS:
                raise _fail(f"{pp}.protocol", f"one of {', '.join(SE_PROTOCOLS)}", protocol)
            port["protocol"] = protocol.upper()
        name = _str(port, "name", pp)
        if name is not None:
            if name in names:
                raise _fail(f"{pp}.name", f'a unique port name ("{name}" is used twice)')
            names.add(name)
        _int(port, "targetPort", pp, lo=1, hi=65535)
    for i, item in enumerate(_list(spec, "exportTo", "spec")):
        if item not in (".", "*"):
            check_name(item, f"spec.exportTo[{i}]", subdomain=False)
    endpoints = _items(spec, "endpoints", "spec")
    selector = _map(spec, "workloadSelector", "spec")
    if selector is not None and endpoints:
        raise _fail("spec", "endpoints and workloadSelector are mutually exclusive")
    for ep_path, ep in endpoints:
        address = _str(ep, "address", ep_path)
        if resolution == "STATIC":
            if address is None:
                raise _fail(f"{ep_path}.address", "required field is missing (resolution STATIC)")
            if not address.startswith("unix://"):
                _check_ip(address, f"{ep_path}.address")
        elif address is not None and not _is_ip(address):
            _check_host(address, f"{ep_path}.address", wildcard=False)
        ports = _map(ep, "ports", ep_path)
        for key, value in (ports or {}).items():
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
                raise _fail(f"{ep_path}.ports.{key}", "a port number 1-65535", value)
        _int(ep, "weight", ep_path, lo=0, hi=2**32 - 1)
        _str(ep, "serviceAccount", ep_path)
    if resolution == "STATIC" and not endpoints and selector is None:
        raise _fail("spec.endpoints", "at least one endpoint with an IP address (resolution STATIC)",
                    hint="or use resolution DNS to resolve the hosts, or NONE to pass traffic through")
    if resolution in ("DNS", "DNS_ROUND_ROBIN") and not endpoints:
        for i, host in enumerate(hosts):
            if str(host).startswith("*"):
                raise _fail(f"spec.hosts[{i}]", "a host name without wildcard (resolution DNS resolves it)",
                            host)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_secret(spec: Obj, obj: Obj) -> None:
    kind = obj.setdefault("type", "Opaque")
    if not isinstance(kind, str) or not kind:
        raise _fail("type", "a string (e.g. Opaque, kubernetes.io/tls)", kind)
    data = _map(obj, "data", "") or {}
    for key, value in data.items():
        if not isinstance(value, str):
            raise _fail(f"data.{key}", "a base64 string")  # never show the value
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _fail(f"data.{key}", "base64-encoded bytes (the value is not valid base64)") from None
    string_data = _map(obj, "stringData", "")
    if string_data is not None:
        for key, value in string_data.items():
            if not isinstance(value, str):
                raise _fail(f"stringData.{key}", "a string")
            data[key] = base64.b64encode(value.encode()).decode()
        obj.pop("stringData")
        obj["data"] = data
    if kind == SECRET_TLS:
        missing = [k for k in ("tls.crt", "tls.key") if k not in data]
        if missing:
            raise _fail("data", f"the keys tls.crt and tls.key (type {SECRET_TLS}); missing: {', '.join(missing)}",
                        hint="kubectl create secret tls NAME --cert=... --key=... writes both")


GATEWAY_SERVER_PROTOCOLS = ("HTTP", "HTTPS", "GRPC", "HTTP2", "MONGO", "TCP", "TLS")
TLS_MODES = ("PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL")


def _check_istio_gateway(spec: Obj, obj: Obj) -> None:
    """networking.istio.io/v1 Gateway: servers with a port (number, protocol, name), hosts and, for HTTPS,
    tls (mode SIMPLE with a credentialName: a kubernetes.io/tls Secret of the gateway's namespace)."""
    selector = _map(spec, "selector", "spec")
    for key, value in (selector or {}).items():
        if not isinstance(value, str):
            raise _fail(f"spec.selector.{key}", "a string", value)
    for sp, server in _items(spec, "servers", "spec", required=True, nonempty=True):
        port = _map(server, "port", sp, required=True) or {}
        _int(port, "number", f"{sp}.port", lo=1, hi=65535, required=True)
        proto = port.get("protocol")
        if not isinstance(proto, str) or proto.upper() not in GATEWAY_SERVER_PROTOCOLS:
            raise _fail(f"{sp}.port.protocol", f"one of {', '.join(GATEWAY_SERVER_PROTOCOLS)}", proto)
        port["protocol"] = proto.upper()
        _str(port, "name", f"{sp}.port")
        hosts = _list(server, "hosts", sp, required=True, nonempty=True)
        for i, host in enumerate(hosts):
            text = str(host)
            bare = text.split("/", 1)[1] if "/" in text else text
            if bare != "*":
                _check_host(bare, f"{sp}.hosts[{i}]")
        tls = _map(server, "tls", sp)
        if tls is not None:
            _enum(tls, "mode", f"{sp}.tls", TLS_MODES)
            _str(tls, "credentialName", f"{sp}.tls")
        if port["protocol"] == "HTTPS" and not (tls or {}).get("httpsRedirect") and not (tls or {}).get("mode"):
            raise _fail(f"{sp}.tls", "tls.mode for an HTTPS server (SIMPLE with a credentialName)")
