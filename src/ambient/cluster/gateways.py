"""The ingress gateway (Gateway API) controller of the local cluster, run by the controller-manager, as
Istio's gateway deployment controller does for `gatewayClassName: istio`.

For every such `Gateway` it keeps, in the Gateway's namespace (names as Istio's: `<gateway>-istio`):
- a ServiceAccount `<gateway>-istio`: the gateway's identity
  `spiffe://cluster.local/ns/<ns>/sa/<gateway>-istio`;
- a Deployment `<gateway>-istio` (1 replica) whose pods run `python -m ambient.gateway` (listeners of the
  Gateway, HTTPRoutes attached to it, TLS certificates from Secrets, all followed from the cluster API),
  labelled `gateway.networking.k8s.io/gateway-name=<gateway>` and `istio.io/dataplane-mode: ambient`;
- a Service `<gateway>-istio` with one port per listener port (plus 15021 status-port) selecting them;
and writes the Gateway's status: `Accepted`, `Programmed` (True once the Service has its VIP and a gateway
pod is Ready), `status.addresses` (the Service VIP) and one `status.listeners` entry per listener
(`Accepted`, `Programmed`, `ResolvedRefs`: an HTTPS listener whose certificate Secret is missing, of the
wrong type, or in another namespace gets `ResolvedRefs=False` / `InvalidCertificateRef` and is not
served). A Gateway of a class nobody serves here gets `Accepted=False` naming the known classes.

Deviation from Istio, documented: Istio's gateway pods are not captured and speak HBONE themselves; here
the gateway pods are captured by their node proxy (dataplane-mode ambient), so the HBONE tunnel to a meshed
backend is opened by the node proxy with the gateway pod's certificate - the same SPIFFE identity reaches
the destination, its policies and its waypoint; a non-meshed backend gets plain TCP.

Design: `plan_gateway` and `ingress_status` are pure (table-tested); the controller reads, decides with
them and writes, and shares the waypoint controller's idempotent create/patch (`WaypointController._ensure`)
and its orphan rule (objects carry an ownerReference to the Gateway and the managed label
`gateway.istio.io/managed: istio.io-gateway-controller`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from ambient.api.errors import ConflictError, NotFoundError
from ambient.cluster import layout as L
from ambient.cluster.services import pod_is_ready
from ambient.cluster.waypoints import (
    DATAPLANE_MODE_LABEL,
    GATEWAY_NAME_LABEL,
    MANAGED_LABEL,
    WAYPOINT_CLASS,
    WaypointConfig,
    WaypointController,
    _condition,
    _now,
    gateway_objects,
    gateway_owner,
    service_vip,
    status_differs,
)

log = logging.getLogger("ambient.controllers.gateways")

Obj = dict[str, Any]

INGRESS_CLASS = "istio"
KNOWN_CLASSES = (INGRESS_CLASS, WAYPOINT_CLASS)
INGRESS_MANAGED_VALUE = "istio.io-gateway-controller"
STATUS_PORT = 15021
METRICS_PORT = 15020  # Prometheus metrics (/stats/prometheus), as Istio's gateways
CONTAINER = "istio-proxy"
TLS_SECRET_TYPE = "kubernetes.io/tls"


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _ns(obj: Obj) -> str:
    return str(_meta(obj).get("namespace") or "default")


def gateway_class(gateway: Obj) -> str:
    return str((gateway.get("spec") or {}).get("gatewayClassName") or "")


def deployment_name(gateway: Obj) -> str:
    return f"{_meta(gateway)['name']}-istio"


def listeners(gateway: Obj) -> list[Obj]:
    return [x for x in (gateway.get("spec") or {}).get("listeners") or [] if isinstance(x, dict)]


def gateway_args(gateway: Obj, cfg: WaypointConfig) -> list[str]:
    return ["-m", "ambient.gateway", "--name", _meta(gateway)["name"], "--namespace", _ns(gateway),
            "--api-socket", cfg.api_socket, "--ready", f"0.0.0.0:{STATUS_PORT}",
            "--metrics", f"0.0.0.0:{METRICS_PORT}"]


def plan_gateway(gateway: Obj, cfg: WaypointConfig) -> list[Obj]:
    """The ServiceAccount, Deployment and Service of an ingress Gateway (pure)."""
    name = _meta(gateway)["name"]
    labels = {GATEWAY_NAME_LABEL: name, MANAGED_LABEL: INGRESS_MANAGED_VALUE}
    extra = {k: v for k, v in ((_meta(gateway).get("labels") or {}).items()) if k == "istio"}
    pod_labels = {**labels, **extra, DATAPLANE_MODE_LABEL: "ambient"}
    ports = sorted({int(x["port"]) for x in listeners(gateway) if x.get("port")})
    container: Obj = {
        "name": CONTAINER,
        "image": "ambient/gateway",  # informational: the local cluster runs command + args
        "command": [cfg.python],
        "args": gateway_args(gateway, cfg),
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": "status-port", "containerPort": STATUS_PORT},
                  {"name": "http-envoy-prom", "containerPort": METRICS_PORT},
                  *({"containerPort": p} for p in ports)],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": STATUS_PORT},
                           "periodSeconds": 1, "timeoutSeconds": 2},
    }
    svc_ports = [{"name": "status-port", "port": STATUS_PORT, "targetPort": STATUS_PORT}]
    svc_ports += [{"name": f"port-{p}", "port": p, "targetPort": p} for p in ports]
    svc_spec: Obj = {"selector": {GATEWAY_NAME_LABEL: name}, "ports": svc_ports}
    return gateway_objects(gateway, deployment_name(gateway), labels, pod_labels, 2, container, svc_spec)


def certificate_problem(listener: Obj, gateway_ns: str, secrets: dict[tuple[str, str], Obj]) -> str | None:
    """Why an HTTPS listener's certificate cannot be used (None: it can, or the listener needs none)."""
    if str(listener.get("protocol") or "") != "HTTPS":
        return None
    tls = listener.get("tls") or {}
    if str(tls.get("mode") or "Terminate") != "Terminate":
        return f"TLS mode {tls.get('mode')} is not supported (only Terminate)"
    refs = tls.get("certificateRefs") or []
    if not refs:
        return "an HTTPS listener needs tls.certificateRefs"
    ref = refs[0]
    kind, group = ref.get("kind") or "Secret", ref.get("group") or ""
    ns = ref.get("namespace") or gateway_ns
    if kind != "Secret" or group not in ("", "core"):
        return f"certificate reference kind {group}/{kind} is not supported (use a Secret)"
    if ns != gateway_ns:
        return f"certificate Secret {ns}/{ref.get('name')} is in another namespace (no ReferenceGrant support)"
    secret = secrets.get((ns, str(ref.get("name"))))
    if secret is None:
        return f"invalid certificate reference /Secret/{ns}/{ref.get('name')}: secret not found"
    if secret.get("type") != TLS_SECRET_TYPE or not {"tls.crt", "tls.key"} <= set(secret.get("data") or {}):
        return f"Secret {ns}/{ref.get('name')} is not of type {TLS_SECRET_TYPE} with tls.crt and tls.key"
    return None


def ingress_status(gateway: Obj, service: Obj | None, pods: list[Obj], secrets: dict[tuple[str, str], Obj],
                   attached: dict[str, int] | None = None, *, now: str | None = None) -> Obj:
    """The status of a Gateway of a class served here or not (pure)."""
    ns = _ns(gateway)
    previous = list((gateway.get("status") or {}).get("conditions") or [])
    generation = _meta(gateway).get("generation")
    stamp = now or _now()
    cls = gateway_class(gateway)
    if cls not in KNOWN_CLASSES:
        message = (f'gatewayClassName "{cls}" is not served by this cluster (classes: '
                   f'{", ".join(KNOWN_CLASSES)}); no gateway is deployed for it')
        return {"conditions": [
            _condition("Accepted", False, "InvalidParameters", message, previous, generation, stamp),
            _condition("Programmed", False, "Invalid", message, previous, generation, stamp)]}
    vip = service_vip(service)
    ready = [p for p in pods if pod_is_ready(p)]
    svc_name = deployment_name(gateway)
    if service is None or vip is None:
        programmed = (False, "Pending", f"waiting for Service {ns}/{svc_name} to get its address")
    elif not ready:
        programmed = (False, "Pending", f"waiting for a Ready gateway pod of Deployment {ns}/{svc_name} "
                                        f"({len(pods)} pod(s), 0 ready)")
    else:
        host = f"{svc_name}.{ns}.svc.{L.CLUSTER_DOMAIN}"
        programmed = (True, "Programmed", f"Resource programmed, assigned to service(s) {host}")
    listener_status = []
    for listener in listeners(gateway):
        old = next((x.get("conditions") or [] for x in (gateway.get("status") or {}).get("listeners") or []
                    if isinstance(x, dict) and x.get("name") == listener.get("name")), [])
        problem = certificate_problem(listener, ns, secrets)
        proto = str(listener.get("protocol") or "")
        supported = proto in ("HTTP", "HTTPS")
        conds = [
            _condition("Accepted", supported, "Accepted" if supported else "UnsupportedProtocol",
                       "No errors found" if supported else f"protocol {proto} is not supported (HTTP, HTTPS)",
                       old, generation, stamp),
            _condition("ResolvedRefs", problem is None, "ResolvedRefs" if problem is None else "InvalidCertificateRef",
                       problem or "No errors found", old, generation, stamp),
            _condition("Programmed", supported and problem is None,
                       "Programmed" if supported and problem is None else "Invalid",
                       "No errors found" if supported and problem is None else (problem or "not served"),
                       old, generation, stamp),
        ]
        listener_status.append({"name": listener.get("name"),
                                "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
                                "attachedRoutes": (attached or {}).get(str(listener.get("name")), 0),
                                "conditions": conds})
    return {
        "conditions": [
            _condition("Accepted", True, "Accepted", "Resource accepted", previous, generation, stamp),
            _condition("Programmed", *programmed, previous, generation, stamp),
        ],
        "addresses": [{"type": "IPAddress", "value": vip}] if vip else [],
        "listeners": listener_status,
    }


def attached_routes(gateway: Obj, routes: list[Obj]) -> dict[str, int]:
    """How many HTTPRoutes attach to each listener (parentRef to the Gateway, sectionName/port matching)."""
    name, ns = _meta(gateway)["name"], _ns(gateway)
    out: dict[str, int] = {}
    for listener in listeners(gateway):
        count = 0
        for route in routes:
            for ref in (route.get("spec") or {}).get("parentRefs") or []:
                if (ref.get("kind") or "Gateway") != "Gateway" or ref.get("name") != name:
                    continue
                if (ref.get("namespace") or _ns(route)) != ns:
                    continue
                if ref.get("sectionName") not in (None, listener.get("name")):
                    continue
                if ref.get("port") not in (None, listener.get("port")):
                    continue
                count += 1
                break
        out[str(listener.get("name"))] = count
    return out


class IngressGatewayController:
    """Converges `istio`-class Gateways to their ServiceAccount + Deployment + Service, writes status."""

    OWNED_KINDS = ("ServiceAccount", "Deployment", "Service")

    def __init__(self, client: Any, cfg: WaypointConfig) -> None:
        self.client = client
        self.cfg = cfg
        self._objects = WaypointController(client, cfg)  # its idempotent create/patch

    async def reconcile(self) -> bool:
        gateways, _ = await self.client.list("Gateway")
        live_gws = [g for g in gateways if not _meta(g).get("deletionTimestamp")]
        ingress = [g for g in live_gws if gateway_class(g) == INGRESS_CLASS]
        live = {(_ns(g), _meta(g)["name"], str(_meta(g).get("uid"))) for g in ingress}
        selector = f"{MANAGED_LABEL}={INGRESS_MANAGED_VALUE}"
        changed = False
        existing: dict[str, dict[tuple[str, str], Obj]] = {}
        for kind in self.OWNED_KINDS:
            items, _ = await self.client.list(kind, label_selector=selector)
            existing[kind] = {}
            for obj in items:
                if orphaned_ingress(obj, live):
                    with contextlib.suppress(NotFoundError):
                        await self.client.delete(kind, _meta(obj)["name"], _ns(obj))
                        log.info("gateway gone: deleted %s %s/%s", kind, _ns(obj), _meta(obj)["name"])
                        changed = True
                else:
                    existing[kind][(_ns(obj), _meta(obj)["name"])] = obj
        for gw in ingress:
            for want in plan_gateway(gw, self.cfg):
                have = existing[want["kind"]].get((_ns(want), _meta(want)["name"]))
                changed |= await self._objects._ensure(want, have)
        others = [g for g in live_gws if gateway_class(g) not in KNOWN_CLASSES]
        if ingress or others:
            await self._write_status(ingress + others, selector)
        return changed

    async def _write_status(self, gateways: list[Obj], selector: str) -> None:
        services, _ = await self.client.list("Service", label_selector=selector)
        pods, _ = await self.client.list("Pod", label_selector=selector)
        secrets_list, _ = await self.client.list("Secret")
        routes, _ = await self.client.list("HTTPRoute")
        secrets = {(_ns(s), _meta(s)["name"]): s for s in secrets_list}
        by_svc = {(_ns(s), _meta(s)["name"]): s for s in services}
        for gw in gateways:
            name, ns = _meta(gw)["name"], _ns(gw)
            mine = [p for p in pods if _ns(p) == ns and (_meta(p).get("labels") or {}).get(GATEWAY_NAME_LABEL) == name
                    and not _meta(p).get("deletionTimestamp")]
            status = ingress_status(gw, by_svc.get((ns, deployment_name(gw))), mine, secrets,
                                    attached_routes(gw, routes))
            if not status_differs(gw, status):
                continue
            with contextlib.suppress(NotFoundError, ConflictError):
                await self.client.patch("Gateway", name, ns, {"status": status}, status=True)
                programmed = status["conditions"][1]
                log.info("gateway %s/%s: Programmed=%s (%s)", ns, name, programmed["status"], programmed["message"])


def orphaned_ingress(obj: Obj, live: set[tuple[str, str, str]]) -> bool:
    """A managed object whose owning ingress Gateway (namespace, name, uid) no longer exists."""
    if (_meta(obj).get("labels") or {}).get(MANAGED_LABEL) != INGRESS_MANAGED_VALUE:
        return False
    ref = gateway_owner(obj)
    return ref is not None and (_ns(obj), str(ref.get("name")), str(ref.get("uid"))) not in live


# ----------------------------------------------------------------------------- the classic Istio ingress

CLASSIC_NAMESPACE = "istio-system"
CLASSIC_NAME = "istio-ingressgateway"
CLASSIC_SERVICE_ACCOUNT = "istio-ingressgateway-service-account"
CLASSIC_LABELS = {"app": CLASSIC_NAME, "istio": "ingressgateway"}
# 80 and 443 as Istio's ingress Service; 8081 too: the listener port of the walk-through's Gateway, so
# `ambient port-forward -n istio-system svc/istio-ingressgateway 8081:8081` works as written there.
CLASSIC_PORTS = (("http2", 80), ("https", 443), ("http-8081", 8081))


def classic_ingress_objects(cfg: WaypointConfig) -> list[Obj]:
    """What `ambient install ingress` applies, as `istioctl install --set
    components.ingressGateways[0].enabled=true` does: namespace istio-system, the ServiceAccount
    istio-ingressgateway-service-account, the Deployment and Service istio-ingressgateway (selector
    `istio: ingressgateway`). istio-system is never captured: the gateway speaks HBONE itself with its own
    identity (certificate from the control plane's CA with its pod token, workload state over xDS)."""
    labels = dict(CLASSIC_LABELS)
    args = ["-m", "ambient.gateway", "--name", CLASSIC_NAME, "--namespace", CLASSIC_NAMESPACE,
            "--api-socket", cfg.api_socket, "--ready", f"0.0.0.0:{STATUS_PORT}", "--metrics", f"0.0.0.0:{METRICS_PORT}",
            "--classic-labels", ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            "--xds", cfg.controlplane, "--root-cert", cfg.root_cert,
            "--service-account", CLASSIC_SERVICE_ACCOUNT]
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    meta = {"namespace": CLASSIC_NAMESPACE, "labels": dict(labels)}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CLASSIC_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {**meta, "name": CLASSIC_SERVICE_ACCOUNT}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {**meta, "name": CLASSIC_NAME},
         "spec": {"replicas": 1, "selector": {"matchLabels": dict(labels)},
                  "template": {"metadata": {"labels": dict(labels)}, "spec": {
                      "serviceAccountName": CLASSIC_SERVICE_ACCOUNT,
                      "terminationGracePeriodSeconds": 2,
                      "containers": [{
                          "name": CONTAINER, "image": "ambient/gateway", "command": [cfg.python], "args": args,
                          "env": env,
                          "ports": [{"name": "status-port", "containerPort": STATUS_PORT},
                                    {"name": "http-envoy-prom", "containerPort": METRICS_PORT},
                                    *({"name": n, "containerPort": p} for n, p in CLASSIC_PORTS)],
                          "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": STATUS_PORT},
                                             "periodSeconds": 1, "timeoutSeconds": 2},
                      }]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {**meta, "name": CLASSIC_NAME},
         "spec": {"selector": {"istio": "ingressgateway"},
                  "ports": [{"name": "status-port", "port": STATUS_PORT, "targetPort": STATUS_PORT},
                            *({"name": n, "port": p, "targetPort": p} for n, p in CLASSIC_PORTS)]}},
    ]
