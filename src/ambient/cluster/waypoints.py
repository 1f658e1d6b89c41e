"""The waypoint (Gateway) controller of the local cluster, run by the controller-manager.

For every `Gateway` with `gatewayClassName: istio-waypoint` it keeps, in the Gateway's namespace:
- a ServiceAccount `<gateway>` (the waypoint's identity `spiffe://cluster.local/ns/<ns>/sa/<gateway>`),
- a Deployment `<gateway>` (1 replica) whose pods run `python -m ambient.waypoint` listening for HBONE on
  0.0.0.0:15008, with certificate and workload state from the control plane (`--xds`, the pod's token from
  the kubelet in `$AMBIENT_TOKEN_FILE`) and L7 config from the cluster API (`--api-socket`); the pods are
  labelled `gateway.networking.k8s.io/gateway-name=<gateway>`, `istio.io/dataplane-mode: none` (never
  captured: the CONNECT reaches the waypoint itself) and `gateway.istio.io/managed` (the control plane
  marks their Workloads HBONE and as members of the waypoint Service, which is what lets them receive
  traffic for the services they front); the waypoint settings the controller-manager was started with
  (`PASS_ENV`: AMBIENT_WAYPOINT_WORKERS) are passed on in the pod's env, since a pod's env starts clean,
- a Service `<gateway>` (port 15008 `mesh`, appProtocol HBONE) selecting those pods,
and writes the Gateway's status: `Accepted` (always, for this class) and `Programmed` (True once the
Service has its VIP and a waypoint pod is Ready), `status.addresses` = the Service VIP.

Design: `plan_waypoint` and `gateway_status` are pure (table-tested); `WaypointController.reconcile` reads,
decides with them and writes. Owned objects carry an ownerReference to the Gateway (name + uid) and the
managed label; any such object whose Gateway is gone (or is no longer a waypoint) is deleted, so deleting
the Gateway removes everything (the Deployment's pods follow through the Deployment garbage collection).

Invariants: idempotent (a pass that finds everything as planned writes nothing); the Deployment and
Service are rewritten only when the plan's hash (annotation `ambient.io/waypoint-spec-hash`) changes;
status is patched only when it differs (lastTransitionTime kept while a condition's status is unchanged).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ambient.api.errors import AlreadyExistsError, ConflictError, NotFoundError
from ambient.cluster import layout as L
from ambient.cluster.services import pod_is_ready

log = logging.getLogger("ambient.controllers.waypoints")

Obj = dict[str, Any]

WAYPOINT_CLASS = "istio-waypoint"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
MANAGED_LABEL = "gateway.istio.io/managed"
MANAGED_VALUE = "istio.io-mesh-controller"
DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
WAYPOINT_FOR_LABEL = "istio.io/waypoint-for"
HASH_ANNOTATION = "ambient.io/waypoint-spec-hash"
HBONE_PORT = 15008
METRICS_PORT = 15020
READY_PORT = 15021
CONTAINER = "istio-proxy"
DRAIN_SECONDS = 2  # live tunnels may finish this long after SIGTERM (a waypoint upgrade or deletion)
# The pod's termination grace: the drain, the second a worker process may take beyond it before its primary
# kills it, and a second for the primary's own exit (its workers' private directory is removed last): the
# kubelet's SIGKILL must never land on a primary still waiting for its workers.
STOP_GRACE_SECONDS = DRAIN_SECONDS + 2
GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
PASS_ENV = ("AMBIENT_WAYPOINT_WORKERS",)  # waypoint settings taken from the cluster's environment when set


@dataclass(frozen=True)
class WaypointConfig:
    """What every waypoint pod needs to find the cluster (paths are as seen by the pod: same filesystem)."""

    controlplane: str = f"{L.CONTROLPLANE_IP}:{L.CONTROLPLANE_PORT}"
    root_cert: str = "/var/lib/ambient/ca/root-cert.pem"
    api_socket: str = "/var/lib/ambient/apiserver.sock"
    python: str = field(default_factory=lambda: sys.executable)
    env: tuple[tuple[str, str], ...] = ()  # extra env of every waypoint container (name, value)

    @classmethod
    def for_state_dir(cls, state_dir: Path | str, environ: Mapping[str, str] | None = None) -> WaypointConfig:
        """The cluster's files under `state_dir`; the `PASS_ENV` settings set (non-empty) in `environ`
        (default: this process's environment) go to every waypoint pod."""
        state = Path(state_dir).absolute()
        environ = os.environ if environ is None else environ
        env = tuple((name, environ[name]) for name in PASS_ENV if environ.get(name, "").strip())
        return cls(root_cert=str(state / "ca" / "root-cert.pem"), api_socket=str(state / "apiserver.sock"), env=env)


def is_waypoint(gateway: Obj) -> bool:
    return (gateway.get("spec") or {}).get("gatewayClassName") == WAYPOINT_CLASS


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _ns(obj: Obj) -> str:
    return str(_meta(obj).get("namespace") or "default")


def owner_ref(gateway: Obj) -> Obj:
    meta = _meta(gateway)
    return {"apiVersion": GATEWAY_API_VERSION, "kind": "Gateway", "name": meta["name"], "uid": meta.get("uid"),
            "controller": True, "blockOwnerDeletion": True}


def gateway_owner(obj: Obj) -> Obj | None:
    """The Gateway ownerReference of an object, if it has one."""
    for ref in _meta(obj).get("ownerReferences") or []:
        if ref.get("kind") == "Gateway":
            return dict(ref)
    return None


def _spec_hash(spec: Obj) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def gateway_objects(gateway: Obj, name: str, labels: dict[str, str], pod_labels: dict[str, str], grace_seconds: int,
                    container: Obj, svc_spec: Obj) -> list[Obj]:
    """The ServiceAccount, one-replica Deployment and Service a Gateway's controller owns, all named `name` (pure).
    Each spec's hash goes into an annotation: the controller re-applies an object only when its plan changed."""
    deploy_spec: Obj = {
        "replicas": 1,
        "selector": {"matchLabels": {GATEWAY_NAME_LABEL: _meta(gateway)["name"]}},
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {"serviceAccountName": name, "terminationGracePeriodSeconds": grace_seconds,
                     "containers": [container]},
        },
    }
    common = {"name": name, "namespace": _ns(gateway), "labels": dict(labels), "ownerReferences": [owner_ref(gateway)]}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(common)},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {**common, "annotations": {HASH_ANNOTATION: _spec_hash(deploy_spec)}}, "spec": deploy_spec},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {**common, "annotations": {HASH_ANNOTATION: _spec_hash(svc_spec)}}, "spec": svc_spec},
    ]


def waypoint_args(gateway: Obj, cfg: WaypointConfig) -> list[str]:
    name, ns = _meta(gateway)["name"], _ns(gateway)
    return ["-m", "ambient.waypoint",
            "--name", name, "--namespace", ns, "--service-account", name,
            "--listen", f"0.0.0.0:{HBONE_PORT}",
            "--xds", cfg.controlplane, "--root-cert", cfg.root_cert,
            "--api-socket", cfg.api_socket,
            "--metrics", f"0.0.0.0:{METRICS_PORT}", "--ready", f"0.0.0.0:{READY_PORT}",
            "--drain", str(DRAIN_SECONDS)]


def plan_waypoint(gateway: Obj, cfg: WaypointConfig) -> list[Obj]:
    """The ServiceAccount, Deployment and Service of a waypoint Gateway (pure)."""
    name = _meta(gateway)["name"]
    labels = {GATEWAY_NAME_LABEL: name, MANAGED_LABEL: MANAGED_VALUE}
    traffic = (_meta(gateway).get("labels") or {}).get(WAYPOINT_FOR_LABEL)
    pod_labels = {**labels, DATAPLANE_MODE_LABEL: "none"}
    if traffic:
        pod_labels[WAYPOINT_FOR_LABEL] = traffic
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
           {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    env += [{"name": name, "value": value} for name, value in cfg.env]
    container: Obj = {
        "name": CONTAINER,
        "image": "ambient/waypoint",  # informational: the local cluster runs command + args
        "command": [cfg.python],
        "args": waypoint_args(gateway, cfg),
        "env": env,
        "ports": [{"name": "hbone", "containerPort": HBONE_PORT},
                  {"name": "metrics", "containerPort": METRICS_PORT},
                  {"name": "status", "containerPort": READY_PORT}],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": READY_PORT}, "timeoutSeconds": 2},
    }
    svc_spec: Obj = {
        "selector": {GATEWAY_NAME_LABEL: name},
        "ports": [{"name": "mesh", "port": HBONE_PORT, "targetPort": HBONE_PORT, "appProtocol": "HBONE"}],
    }
    return gateway_objects(gateway, name, labels, pod_labels, STOP_GRACE_SECONDS, container, svc_spec)


def service_vip(service: Obj | None) -> str | None:
    ip = ((service or {}).get("spec") or {}).get("clusterIP")
    return str(ip) if ip and ip != "None" else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _condition(ctype: str, ok: bool, reason: str, message: str, previous: list[Obj], generation: Any,
               now: str) -> Obj:
    status = "True" if ok else "False"
    old = next((c for c in previous if isinstance(c, dict) and c.get("type") == ctype), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since or now, "observedGeneration": generation}


def gateway_status(gateway: Obj, service: Obj | None, pods: list[Obj], *, now: str | None = None) -> Obj:
    """The status of a waypoint Gateway given its Service and its pods (pure)."""
    name, ns = _meta(gateway)["name"], _ns(gateway)
    previous = list((gateway.get("status") or {}).get("conditions") or [])
    generation = _meta(gateway).get("generation")
    stamp = now or _now()
    vip = service_vip(service)
    ready = [p for p in pods if pod_is_ready(p)]
    host = f"{name}.{ns}.svc.{L.CLUSTER_DOMAIN}"
    if service is None or vip is None:
        programmed = (False, "Pending", f"waiting for Service {ns}/{name} to get its address")
    elif not ready:
        programmed = (False, "Pending", f"waiting for a Ready waypoint pod of Deployment {ns}/{name} "
                                        f"({len(pods)} pod(s), 0 ready)")
    else:
        programmed = (True, "Programmed", f"Resource programmed, assigned to service(s) {host}:{HBONE_PORT}")
    status: Obj = {
        "conditions": [
            _condition("Accepted", True, "Accepted", "Resource accepted", previous, generation, stamp),
            _condition("Programmed", *programmed, previous, generation, stamp),
        ],
        "addresses": [{"type": "IPAddress", "value": vip}] if vip else [],
    }
    return status


def status_differs(gateway: Obj, status: Obj) -> bool:
    current = gateway.get("status") or {}
    return any(current.get(k) != v for k, v in status.items())


def orphaned(obj: Obj, live: set[tuple[str, str, str]]) -> bool:
    """A managed object whose owning waypoint Gateway (namespace, name, uid) no longer exists."""
    if (_meta(obj).get("labels") or {}).get(MANAGED_LABEL) != MANAGED_VALUE:
        return False
    ref = gateway_owner(obj)
    if ref is None:
        return False
    return (_ns(obj), str(ref.get("name")), str(ref.get("uid"))) not in live


class WaypointController:
    """Converges waypoint Gateways to their ServiceAccount + Deployment + Service and writes their status."""

    OWNED_KINDS = ("ServiceAccount", "Deployment", "Service")

    def __init__(self, client: Any, cfg: WaypointConfig) -> None:
        self.client = client
        self.cfg = cfg

    async def reconcile(self) -> bool:
        """One pass; True when it created, changed or deleted an owned object."""
        gateways, _ = await self.client.list("Gateway")
        waypoints = [g for g in gateways if is_waypoint(g) and not _meta(g).get("deletionTimestamp")]
        live = {(_ns(g), _meta(g)["name"], str(_meta(g).get("uid"))) for g in waypoints}
        changed = False
        existing: dict[str, dict[tuple[str, str], Obj]] = {}
        for kind in self.OWNED_KINDS:
            items, _ = await self.client.list(kind, label_selector=f"{MANAGED_LABEL}={MANAGED_VALUE}")
            existing[kind] = {(_ns(o), _meta(o)["name"]): o for o in items}
            for obj in items:
                if orphaned(obj, live):
                    existing[kind].pop((_ns(obj), _meta(obj)["name"]), None)  # a recreated Gateway re-creates it
                    with contextlib.suppress(NotFoundError):
                        await self.client.delete(kind, _meta(obj)["name"], _ns(obj))
                        log.info("waypoint gone: deleted %s %s/%s", kind, _ns(obj), _meta(obj)["name"])
                        changed = True
        for gw in waypoints:
            for want in plan_waypoint(gw, self.cfg):
                changed |= await self._ensure(want, existing[want["kind"]].get((_ns(want), _meta(want)["name"])))
        if waypoints:
            await self._write_status(waypoints)
        return changed

    async def _ensure(self, want: Obj, have: Obj | None) -> bool:
        kind, name, ns = want["kind"], _meta(want)["name"], _ns(want)
        if have is None:
            try:
                await self.client.create(want)
            except AlreadyExistsError:
                # Exists without our label (a user's object of the same name): adopt only if unowned.
                have = await self.client.get(kind, name, ns)
                if gateway_owner(have) is None and kind == "ServiceAccount":
                    return False  # a user-made ServiceAccount is fine as the waypoint's identity
                if gateway_owner(have) is None:
                    log.warning("waypoint %s/%s: a %s of that name exists and is not managed; leaving it",
                                ns, name, kind)
                    return False
            except NotFoundError:
                return False  # namespace going away
            else:
                log.info("waypoint: created %s %s/%s", kind, ns, name)
                return True
        want_hash = (_meta(want).get("annotations") or {}).get(HASH_ANNOTATION)
        have_hash = (_meta(have).get("annotations") or {}).get(HASH_ANNOTATION)
        if want_hash is None or want_hash == have_hash:
            return False
        patch = {"metadata": {"labels": _meta(want)["labels"], "annotations": _meta(want)["annotations"],
                              "ownerReferences": _meta(want)["ownerReferences"]},
                 "spec": want["spec"]}
        with contextlib.suppress(NotFoundError, ConflictError):
            await self.client.patch(kind, name, ns, patch)
            log.info("waypoint: updated %s %s/%s", kind, ns, name)
            return True
        return False

    async def _write_status(self, waypoints: list[Obj]) -> None:
        services, _ = await self.client.list("Service", label_selector=f"{MANAGED_LABEL}={MANAGED_VALUE}")
        pods, _ = await self.client.list("Pod", label_selector=f"{MANAGED_LABEL}={MANAGED_VALUE}")
        by_svc = {(_ns(s), _meta(s)["name"]): s for s in services}
        for gw in waypoints:
            name, ns = _meta(gw)["name"], _ns(gw)
            mine = [p for p in pods if _ns(p) == ns and (_meta(p).get("labels") or {}).get(GATEWAY_NAME_LABEL) == name
                    and not _meta(p).get("deletionTimestamp")]
            status = gateway_status(gw, by_svc.get((ns, name)), mine)
            if not status_differs(gw, status):
                continue
            with contextlib.suppress(NotFoundError, ConflictError):
                await self.client.patch("Gateway", name, ns, {"status": status}, status=True)
                programmed = status["conditions"][1]
                log.info("waypoint %s/%s: Programmed=%s (%s)", ns, name, programmed["status"], programmed["message"])
