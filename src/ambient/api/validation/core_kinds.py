"""Spec checks of the core Kubernetes kinds: Namespace, Node, ServiceAccount, Pod, Deployment, DaemonSet, Service,
Endpoints.

Role: one `_check_<kind>(spec, obj)` per kind, called by `validate_object` through its dispatch table;
`check_pod_spec` is also used for Deployment and DaemonSet templates.

Invariants:
- Each check validates and fills defaults in place on the (already deep-copied) object: Pod
  `serviceAccountName` = the deprecated `serviceAccount` if given, else default, `restartPolicy` = Always,
  port `protocol` = TCP, Deployment `replicas` = 1, Service `type` = ClusterIP and `targetPort` = port.
  Defaulting an already defaulted spec changes nothing. (The rest of Kubernetes' defaults are the API
  server's: `ambient.api.defaults`, applied by the store after validation.)
- Only what the local cluster can run is accepted (e.g. ClusterIP services only); other fields stay loose.
"""

from __future__ import annotations

from ambient.api.validation.fields import (
    Obj,
    _bool,
    _check_cidr,
    _check_ip,
    _check_port_name,
    _enum,
    _fail,
    _int,
    _items,
    _map,
    _port_number,
    _show,
    _str,
    _str_list,
    _str_map,
)
from ambient.api.validation.metadata import _check_annotations, _check_labels, _label_selector, check_name


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
        _check_probe(c, probe, path)
    _map(c, "resources", path)
    _map(c, "securityContext", path)


_PROBE_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")


def _check_probe(c: Obj, key: str, path: str) -> None:
    """What the kubelet's prober needs: one handler it can run, sane numbers (Kubernetes' own rules)."""
    probe = _map(c, key, path)
    if probe is None:
        return
    pp = f"{path}.{key}"
    for field, low in (("initialDelaySeconds", 0), ("periodSeconds", 1), ("timeoutSeconds", 1),
                       ("successThreshold", 1), ("failureThreshold", 1), ("terminationGracePeriodSeconds", 1)):
        _int(probe, field, pp, lo=low)
    if key != "readinessProbe" and probe.get("successThreshold") not in (None, 1):
        raise _fail(f"{pp}.successThreshold", "1 (liveness and startup probes)", probe["successThreshold"])
    handlers = [h for h in _PROBE_HANDLERS if probe.get(h) is not None]
    if len(handlers) != 1:
        raise _fail(pp, "exactly one handler of exec, httpGet, tcpSocket",
                    f"{', '.join(handlers) or 'none'}")
    if handlers[0] == "grpc":
        raise _fail(f"{pp}.grpc", "exec, httpGet or tcpSocket", "grpc",
                    hint="the local kubelet does not run gRPC health checks")
    body = _map(probe, handlers[0], pp) or {}
    hp = f"{pp}.{handlers[0]}"
    if handlers[0] == "exec":
        _str_list(body, "command", hp)
        return
    port = body.get("port")
    if isinstance(port, str):  # IntOrString: a string is a container port's name
        _check_port_name(port, f"{hp}.port")
    else:
        _port_number(port, f"{hp}.port")
    _str(body, "host", hp)
    if handlers[0] == "httpGet":
        _str(body, "path", hp)
        _enum(body, "scheme", hp, ("HTTP", "HTTPS"))
        for hh, header in _items(body, "httpHeaders", hp):
            _str(header, "name", hh, required=True)
            _str(header, "value", hh)


def check_pod_spec(spec: Obj, path: str = "spec") -> None:
    """Validate and default a Pod spec in place (also used for Deployment templates)."""
    names: set[str] = set()
    for cp, c in _items(spec, "containers", path, required=True, nonempty=True):
        _check_container(c, cp, names)
    for cp, c in _items(spec, "initContainers", path):
        _check_container(c, cp, names)
    _str(spec, "nodeName", path)
    if spec.get("serviceAccount") is not None:  # the deprecated spelling, still read by Kubernetes
        check_name(spec["serviceAccount"], f"{path}.serviceAccount")
    if spec.get("serviceAccountName") is None:
        spec["serviceAccountName"] = spec.get("serviceAccount") or "default"
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
    _check_selected_template(spec, "Deployment")
    _map(spec, "strategy", "spec")
    _int(spec, "minReadySeconds", "spec", lo=0)


def _check_daemon_set(spec: Obj, obj: Obj) -> None:
    _check_selected_template(spec, "DaemonSet")
    _map(spec, "updateStrategy", "spec")
    _int(spec, "minReadySeconds", "spec", lo=0)


def _check_selected_template(spec: Obj, kind: str) -> None:
    """`selector` + `template` of a pod controller: the selector selects the template's labels, the template
    is a valid pod spec that restarts always."""
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
        raise _fail("spec.template.spec.restartPolicy", f"Always (the only value a {kind} allows)",
                    tspec["restartPolicy"])


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
    _check_labels(spec, "spec", "selector")
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


def _check_event(spec: Obj, obj: Obj) -> None:
    """A core/v1 Event, as kube-apiserver validates one: its involvedObject lives in the Event's namespace
    (when it names one), type is Normal or Warning (when set), count is not negative."""
    ref = _map(obj, "involvedObject", "", required=True) or {}
    for key in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath"):
        _str(ref, key, "involvedObject")
    namespace = (obj.get("metadata") or {}).get("namespace") or "default"
    if ref.get("namespace") and ref["namespace"] != namespace:
        raise _fail("involvedObject.namespace", f'the Event\'s namespace "{namespace}"', ref["namespace"])
    for key in ("reason", "message", "firstTimestamp", "lastTimestamp", "action", "reportingComponent",
                "reportingInstance"):
        _str(obj, key, "")
    if obj.get("type") not in (None, ""):
        _enum(obj, "type", "", ("Normal", "Warning"))
    _int(obj, "count", "", lo=0)
    source = _map(obj, "source", "") or {}
    _str(source, "component", "source")
    _str(source, "host", "source")
