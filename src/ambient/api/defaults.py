"""Kubernetes API defaults: the fields kube-apiserver fills in when an object is written without them.

Role: `default_object(obj)` returns a defaulted copy of an object (pure); `fill_defaults(obj)` fills the
same fields in place. The store runs `fill_defaults` on its private, already validated copy of every object
that a create, update/replace, merge/strategic/JSON patch, server-side apply or batch apply writes, dry runs
included, so what is stored, what a write answers and what `kubectl diff` (a dry-run patch) shows are
the defaulted object, as with kube-apiserver (`kubectl describe pod` then prints `timeout=1s period=10s
#success=1 #failure=3` for a probe written without those numbers). Status writes are not defaulted.

Invariants:
- Only absent fields (missing or null) are filled; a value the user set is never changed. The one
  exception is a mirror rather than a default, as in Kubernetes: the deprecated `spec.serviceAccount` of a
  pod spec always equals `spec.serviceAccountName` (which is taken from it when only it is given).
- Idempotent: defaulting a defaulted object changes nothing, so a controller that re-writes an object it
  read (or compares a stored object with one it wrote) sees no difference; defaults depend on the object
  only, never on the store or the time.
- Never raises: a field of an unexpected shape is left alone (validation reports it; the store defaults
  after validating, which is equivalent to Kubernetes' default-then-validate because every default is a
  valid constant).
- Fields a default adds are all in the kinds' field schemas (`validation.schema`), so they are never
  pruned as unknown.

Covered (k8s.io/kubernetes pkg/apis/core/v1/defaults.go, apps/v1/defaults.go, and the Service IP family
fields kube-apiserver's Service registry sets on a single-stack IPv4 cluster):
- Pod spec (Pods and the pod templates of Deployments and DaemonSets): restartPolicy Always, dnsPolicy
  ClusterFirst, schedulerName default-scheduler, securityContext {}, serviceAccountName default (the
  ServiceAccount admission plugin's default; validation fills it too) and its `serviceAccount` mirror.
  Pods only (SetDefaults_Pod): enableServiceLinks true, hostPort = containerPort on a hostNetwork pod,
  resource requests = limits where only limits are given.
- Containers and init containers: imagePullPolicy (Always for an image tagged `:latest` or untagged and
  without a digest, else IfNotPresent), terminationMessagePath /dev/termination-log,
  terminationMessagePolicy File, resources {}, ports' protocol TCP, env `fieldRef.apiVersion` v1, and
  their liveness/readiness/startup probes: timeoutSeconds 1, periodSeconds 10, successThreshold 1,
  failureThreshold 3, httpGet path "/" and scheme HTTP.
- Deployment: replicas 1, strategy RollingUpdate with maxUnavailable 25% and maxSurge 25% (each when
  missing, for the RollingUpdate type only), revisionHistoryLimit 10, progressDeadlineSeconds 600.
- DaemonSet: updateStrategy RollingUpdate with maxUnavailable 1 and maxSurge 0, revisionHistoryLimit 10.
- Service: type ClusterIP, sessionAffinity None (ClientIP: sessionAffinityConfig.clientIP.timeoutSeconds
  10800), ports' protocol TCP and targetPort = port, internalTrafficPolicy Cluster, externalTrafficPolicy
  Cluster when externally reachable (externalIPs), ipFamilyPolicy SingleStack and ipFamilies [IPv4] (the
  local cluster allocates cluster IPs from an IPv4 range only); a headless Service without a selector gets
  RequireDualStack and [IPv4, IPv6], as kube-apiserver gives it.

Local-cluster deviations (deliberately not defaulted, so the local kubelet keeps its documented behaviour):
- `terminationGracePeriodSeconds` (Kubernetes: 30). The local kubelet stops an unset pod's processes after
  2 s (`cluster.kubelet.DEFAULT_GRACE`); a stored 30 would make every deletion of a pod whose process ignores
  SIGTERM, and every liveness kill, wait 30 s, and every test and demo that deletes pods slower.
- `readinessProbe.periodSeconds` (Kubernetes: 10). The local kubelet probes an unset readiness period
  every 0.5 s so pods turn Ready promptly (`cluster.probes.LOCAL_READINESS_PERIOD`); a stored 10 would
  delay every pod whose first readiness probe fails (waypoints and gateways among them) by up to 10 s, and
  turn NotReady detection from 1.5 s into 30 s. `kubectl describe` shows `period=0s` for such a probe.
Not covered: kinds the local cluster does not serve (ReplicaSet, StatefulSet, Job: `fill_pod_template`
would apply to their templates), volumes, lifecycle hooks, the Namespace `kubernetes.io/metadata.name`
label, Endpoints ports' protocol (the endpoints controller writes it; a user's selector-less Endpoints
are kept exactly as written), and admission plugins other than the ServiceAccount default (priority,
default tolerations).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

Obj = dict[str, Any]

PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
# Probe numbers, and the probes that get each (readinessProbe.periodSeconds: see the module docstring).
_PROBE_DEFAULTS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("timeoutSeconds", 1, PROBES),
    ("periodSeconds", 10, ("livenessProbe", "startupProbe")),
    ("successThreshold", 1, PROBES),
    ("failureThreshold", 3, PROBES),
)
_EXTERNALLY_REACHABLE = ("NodePort", "LoadBalancer")
DEFAULT_IP_FAMILY = "IPv4"  # the local cluster's only Service IP family (cluster.services.SERVICE_CIDR)


def _absent(d: Obj, key: str) -> bool:
    return d.get(key) is None


def _set(d: Obj, key: str, value: Any) -> None:
    if d.get(key) is None:
        d[key] = value


def _dicts(value: Any) -> Iterator[Obj]:
    """The object items of a list (anything else yields nothing: validation's business)."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item


def _map(d: Obj, key: str) -> Obj | None:
    value = d.get(key)
    return value if isinstance(value, dict) else None


def image_pull_policy(image: Any) -> str:
    """Always for `name:latest` or an untagged name without a digest (the tag then is `latest`), else
    IfNotPresent (a digest without a tag, or any other tag)."""
    if not isinstance(image, str) or not image:
        return "IfNotPresent"  # no reference to parse: kube-apiserver's parser finds no tag either
    name, at, _digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.rpartition(":")[2] if ":" in last else ("" if at else "latest")
    return "Always" if tag == "latest" else "IfNotPresent"


def fill_probe(probe: Obj, key: str) -> None:
    for field, value, probes in _PROBE_DEFAULTS:
        if key in probes:
            _set(probe, field, value)
    http = _map(probe, "httpGet")
    if http is not None:
        _set(http, "path", "/")
        _set(http, "scheme", "HTTP")


def fill_container(c: Obj) -> None:
    _set(c, "imagePullPolicy", image_pull_policy(c.get("image")))
    _set(c, "terminationMessagePath", "/dev/termination-log")
    _set(c, "terminationMessagePolicy", "File")
    _set(c, "resources", {})
    for port in _dicts(c.get("ports")):
        _set(port, "protocol", "TCP")
    for env in _dicts(c.get("env")):
        field_ref = _map(_map(env, "valueFrom") or {}, "fieldRef")
        if field_ref is not None:
            _set(field_ref, "apiVersion", "v1")
    for key in PROBES:
        probe = _map(c, key)
        if probe is not None:
            fill_probe(probe, key)


def _containers(spec: Obj) -> Iterator[Obj]:
    for key in ("initContainers", "containers"):
        yield from _dicts(spec.get(key))


def fill_pod_spec(spec: Obj) -> None:
    """The defaults of every pod spec, a Pod's or a pod template's (SetDefaults_PodSpec and below)."""
    _set(spec, "restartPolicy", "Always")
    _set(spec, "dnsPolicy", "ClusterFirst")
    _set(spec, "schedulerName", "default-scheduler")
    _set(spec, "securityContext", {})
    # `serviceAccount` is the deprecated spelling: read when it is the only one given, else a mirror.
    account = spec.get("serviceAccountName")
    if account is None or account == "":
        account = spec.get("serviceAccount") or "default"
        spec["serviceAccountName"] = account
    spec["serviceAccount"] = account
    for c in _containers(spec):
        fill_container(c)


def fill_pod(obj: Obj) -> None:
    """A Pod: its spec, plus the defaults Kubernetes gives Pods only (not templates)."""
    spec = _map(obj, "spec")
    if spec is None:
        return
    fill_pod_spec(spec)
    _set(spec, "enableServiceLinks", True)
    host_network = spec.get("hostNetwork") is True
    for c in _containers(spec):
        if host_network:
            for port in _dicts(c.get("ports")):
                if _absent(port, "hostPort") and port.get("containerPort") is not None:
                    port["hostPort"] = port["containerPort"]
        resources = _map(c, "resources")
        limits = _map(resources or {}, "limits")
        if resources is not None and limits:
            requests = resources.get("requests")
            if requests is None:
                requests = resources["requests"] = {}
            if isinstance(requests, dict):
                for name, value in limits.items():
                    requests.setdefault(name, value)


def fill_pod_template(spec: Obj) -> None:
    """The pod template of a workload's spec (Deployment, DaemonSet; ReplicaSet, StatefulSet, Job alike)."""
    template = _map(spec, "template")
    tspec = _map(template or {}, "spec")
    if tspec is not None:
        fill_pod_spec(tspec)


def _rolling(spec: Obj, field: str, defaults: Obj) -> None:
    strategy = spec.get(field)
    if strategy is None:
        strategy = spec[field] = {}
    if not isinstance(strategy, dict):
        return
    _set(strategy, "type", "RollingUpdate")
    if strategy["type"] != "RollingUpdate":
        return
    rolling = strategy.get("rollingUpdate")
    if rolling is None:
        rolling = strategy["rollingUpdate"] = {}
    if isinstance(rolling, dict):
        for key, value in defaults.items():
            _set(rolling, key, value)


def fill_deployment(obj: Obj) -> None:
    spec = _map(obj, "spec")
    if spec is None:
        return
    _set(spec, "replicas", 1)
    _rolling(spec, "strategy", {"maxUnavailable": "25%", "maxSurge": "25%"})
    _set(spec, "revisionHistoryLimit", 10)
    _set(spec, "progressDeadlineSeconds", 600)
    fill_pod_template(spec)


def fill_daemon_set(obj: Obj) -> None:
    spec = _map(obj, "spec")
    if spec is None:
        return
    _rolling(spec, "updateStrategy", {"maxUnavailable": 1, "maxSurge": 0})
    _set(spec, "revisionHistoryLimit", 10)
    fill_pod_template(spec)


def fill_service(obj: Obj) -> None:
    spec = _map(obj, "spec")
    if spec is None:
        return
    _set(spec, "type", "ClusterIP")
    _set(spec, "sessionAffinity", "None")
    if spec["sessionAffinity"] == "ClientIP":
        config = spec.get("sessionAffinityConfig")
        if config is None:
            config = spec["sessionAffinityConfig"] = {}
        if isinstance(config, dict):
            client_ip = config.get("clientIP")
            if client_ip is None:
                client_ip = config["clientIP"] = {}
            if isinstance(client_ip, dict):
                _set(client_ip, "timeoutSeconds", 10800)
    for port in _dicts(spec.get("ports")):
        _set(port, "protocol", "TCP")
        if port.get("targetPort") in (None, 0, "") and port.get("port") is not None:
            port["targetPort"] = port["port"]
    stype = spec["type"]
    if stype in ("ClusterIP", *_EXTERNALLY_REACHABLE):
        _set(spec, "internalTrafficPolicy", "Cluster")
    if stype in _EXTERNALLY_REACHABLE or (stype == "ClusterIP" and spec.get("externalIPs")):
        _set(spec, "externalTrafficPolicy", "Cluster")
    if stype == "ExternalName":
        return  # no cluster IP, so no IP family
    headless_unselected = spec.get("clusterIP") == "None" and not spec.get("selector")
    _set(spec, "ipFamilyPolicy", "RequireDualStack" if headless_unselected else "SingleStack")
    if _absent(spec, "ipFamilies") or spec["ipFamilies"] == []:
        both = headless_unselected and spec["ipFamilyPolicy"] != "SingleStack"
        spec["ipFamilies"] = [DEFAULT_IP_FAMILY, "IPv6"] if both else [DEFAULT_IP_FAMILY]


_BY_KIND: dict[str, Callable[[Obj], None]] = {
    "Pod": fill_pod,
    "Deployment": fill_deployment,
    "DaemonSet": fill_daemon_set,
    "Service": fill_service,
}


def fill_defaults(obj: Obj, kind: str | None = None) -> Obj:
    """Fill the defaults of `obj` in place and return it; `kind` is the internal kind (`KindInfo.kind`),
    by default the object's own `kind` (the core kinds' wire and internal names are the same)."""
    fill = _BY_KIND.get(kind if kind is not None else str(obj.get("kind") or ""))
    if fill is not None:
        fill(obj)
    return obj


def default_object(obj: Obj, kind: str | None = None) -> Obj:
    """A defaulted deep copy of `obj` (the input is not modified)."""
    return fill_defaults(copy.deepcopy(obj), kind)
