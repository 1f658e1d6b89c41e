"""The controller-manager of the local cluster: scheduler, Deployments, ServiceAccounts, Service VIPs, Endpoints,
waypoint Gateways (`cluster.waypoints`).

Run as `python -m ambient.cluster.controllers --state-dir DIR` (one process per cluster, root netns: it only
talks to the API server over its Unix socket).

Design: level-triggered (`ambient.api.informer.Reconciler`). Informers on the kinds we care about only mark
the world "dirty"; one reconcile pass lists everything and converges (idempotent, so a missed or duplicated
event costs nothing but a pass). A periodic resync covers watch gaps. The decisions live in pure modules
(`scheduler`, `deployments`, `services`); this module only reads, decides with them, and writes.

Invariants:
- Every namespace has a ServiceAccount `default`.
- Every Service (not headless) has a unique ClusterIP from 10.96.0.0/16 and an Endpoints object of the same
  name listing its Ready pods; a Service's Endpoints are deleted with it.
- Every Pod without `spec.nodeName` is bound to a Ready node (patch of spec.nodeName), spreading the pods of
  one owner over the nodes.
- Deployments converge per `deployments.plan` and report status.
- Every Gateway of class `istio-waypoint` has its ServiceAccount, Deployment and Service (and Programmed
  status) per `waypoints.plan_waypoint` / `waypoints.gateway_status`; they go away with the Gateway.
- DaemonSets get status counts from the pods they select (they create no pods: `cluster.staticpods`).
- Conflicts (another writer changed the object) are not errors: the next pass re-reads and retries.
- Events (`cluster.events`, fire and forget): `Scheduled` / `FailedScheduling` on pods as the default-scheduler;
  `SuccessfulCreate` / `SuccessfulDelete` ("Created pod: NAME") on the Deployment as the deployment-controller
  (Kubernetes records these on the ReplicaSet; there are none here). No `ScalingReplicaSet`: no ReplicaSet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, Protocol

from ambient.api.errors import AlreadyExistsError, ApiError, ConflictError, NotFoundError
from ambient.api.events import NORMAL, WARNING
from ambient.api.informer import Reconciler
from ambient.cluster import deployments as deploy_plan
from ambient.cluster.events import EventRecorder
from ambient.cluster.gateways import IngressGatewayController
from ambient.cluster.scheduler import RoundRobinScheduler, node_is_ready
from ambient.cluster.services import compute_endpoints, endpoints_differ, plan_cluster_ips
from ambient.cluster.staticpods import daemonset_status
from ambient.cluster.waypoints import WaypointConfig, WaypointController
from ambient.core import process

log = logging.getLogger("ambient.controllers")

WATCHED_KINDS = ("Pod", "Service", "Deployment", "Node", "Namespace", "Endpoints", "Gateway", "HTTPRoute", "Secret",
                 "DaemonSet")


class Client(Protocol):
    """The subset of `ambient.api.client.AsyncApiClient` the controllers use."""

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]: ...
    async def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]: ...
    async def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
                   field_selector: str | None = None) -> tuple[list[dict[str, Any]], str]: ...
    async def update(self, obj: dict[str, Any]) -> dict[str, Any]: ...
    async def update_status(self, obj: dict[str, Any]) -> dict[str, Any]: ...
    async def patch(self, kind: str, name: str, namespace: str | None,
                    patch: dict[str, Any], *, status: bool = False) -> dict[str, Any]: ...
    async def delete(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]: ...
    def watch(self, kind: str, namespace: str | None = None, resource_version: str | None = None,
              label_selector: str | None = None, timeout: float | None = None,
              field_selector: str | None = None) -> Any: ...


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace") or "default", meta["name"])


class ControllerManager:
    def __init__(self, client: Client, *, resync_seconds: float = 3.0,
                 waypoints: WaypointConfig | None = None) -> None:
        """`waypoints`: run the waypoint Gateway controller (`cluster.waypoints`) with this pod config."""
        self.client = client
        self.waypoints = WaypointController(client, waypoints) if waypoints is not None else None
        # ingress Gateways (class istio) need the same pod config (python, API socket)
        self.gateways = IngressGatewayController(client, waypoints) if waypoints is not None else None
        self.resync_seconds = resync_seconds
        self.scheduler = RoundRobinScheduler()
        # Events as Kubernetes' scheduler and its controllers record them (the Deployment controller also does
        # the ReplicaSet controller's part here: Deployments own their pods directly).
        self.scheduler_events = EventRecorder(client, "default-scheduler")
        self.deployment_events = EventRecorder(client, "deployment-controller")
        self.passes = 0
        self._reconciler = Reconciler(self.reconcile_once, name="reconcile pass", resync=resync_seconds,
                                      retry_delay=0.5, immediate_retry=(ConflictError,), logger=log)

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        """Run until cancelled: one informer per watched kind marks the reconciler dirty."""
        async with asyncio.TaskGroup() as tg:
            for kind in WATCHED_KINDS:
                tg.create_task(self._reconciler.follow(self.client, kind), name=f"watch-{kind}")
            tg.create_task(self._reconciler.run(), name="reconcile")
            for recorder in (self.scheduler_events, self.deployment_events):
                tg.create_task(recorder.run(), name=f"events-{recorder.component}")

    # ------------------------------------------------------------------ one pass

    async def reconcile_once(self) -> None:
        self.passes += 1
        namespaces, _ = await self.client.list("Namespace")
        await self._service_accounts(namespaces)
        if self.waypoints is not None:
            # First: a new waypoint Deployment then gets its pod in this same pass.
            await self.waypoints.reconcile()
        if self.gateways is not None:
            await self.gateways.reconcile()
        nodes, _ = await self.client.list("Node")
        pods, _ = await self.client.list("Pod")
        await self._schedule(pods, nodes)
        deploys, _ = await self.client.list("Deployment")
        changed = await self._deployments(deploys, pods)
        if changed:
            pods, _ = await self.client.list("Pod")
        services, _ = await self.client.list("Service")
        services = await self._cluster_ips(services)
        endpoints, _ = await self.client.list("Endpoints")
        await self._endpoints(services, endpoints, pods)
        daemonsets, _ = await self.client.list("DaemonSet")
        await self._daemonset_status(daemonsets, pods, nodes)

    async def _daemonset_status(self, daemonsets: list[dict[str, Any]], pods: list[dict[str, Any]],
                                nodes: list[dict[str, Any]]) -> None:
        """Status counts only: the DaemonSets describe the node components the supervisor runs, whose pods the
        kubelets publish (`cluster.staticpods`); nothing here creates or deletes a pod for them."""
        for ds in daemonsets:
            status = daemonset_status(ds, pods, nodes)
            if all((ds.get("status") or {}).get(k) == v for k, v in status.items()):
                continue
            ns, name = _key(ds)
            with contextlib.suppress(ConflictError, NotFoundError):
                await self.client.patch("DaemonSet", name, ns, {"status": status}, status=True)

    async def _service_accounts(self, namespaces: list[dict[str, Any]]) -> None:
        existing, _ = await self.client.list("ServiceAccount")
        have = {(_key(sa)) for sa in existing}
        for ns in namespaces:
            name = ns["metadata"]["name"]
            if (ns["metadata"].get("deletionTimestamp")) or (name, "default") in have:
                continue
            with contextlib.suppress(AlreadyExistsError, NotFoundError):
                await self.client.create({"apiVersion": "v1", "kind": "ServiceAccount",
                                          "metadata": {"name": "default", "namespace": name}})

    async def _schedule(self, pods: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> None:
        for pod in pods:
            spec = pod.get("spec") or {}
            if spec.get("nodeName") or pod["metadata"].get("deletionTimestamp"):
                continue
            node = self.scheduler.pick(pod, nodes, pods)
            if node is None:
                if await self._set_unschedulable(pod):
                    self.scheduler_events.event(pod, WARNING, "FailedScheduling", unschedulable_message(pod, nodes))
                continue
            ns, name = _key(pod)
            try:
                bound = await self.client.patch("Pod", name, ns, {"spec": {"nodeName": node}})
            except (NotFoundError, ConflictError):
                continue
            log.info("bound pod %s/%s to %s", ns, name, node)
            self.scheduler_events.event(bound, NORMAL, "Scheduled", f"Successfully assigned {ns}/{name} to {node}")
            spec["nodeName"] = node  # so the next pods of this pass see the spread
            pod["spec"] = spec
            pod["metadata"]["resourceVersion"] = bound["metadata"]["resourceVersion"]

    async def _set_unschedulable(self, pod: dict[str, Any]) -> bool:
        """Mark `pod` Unschedulable; True when this changed its status (the scheduler's event is due)."""
        status = pod.get("status") or {}
        cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "no Ready node available"}
        if cond in (status.get("conditions") or []):
            return False
        ns, name = _key(pod)
        try:
            await self.client.patch("Pod", name, ns, {"status": {"phase": "Pending", "conditions": [cond]}},
                                    status=True)
        except (ConflictError, NotFoundError):
            return False
        return True

    async def _deployments(self, deploys: list[dict[str, Any]], pods: list[dict[str, Any]]) -> bool:
        changed = False
        for deploy in deploys:
            ns, name = _key(deploy)
            result = deploy_plan.plan(deploy, pods)
            for _ in range(result.create):
                for _attempt in range(5):  # a random-name collision is retried with a new name
                    try:
                        created = await self.client.create(
                            deploy_plan.new_pod(deploy, f"{name}-{deploy_plan.random_suffix()}"))
                        self.deployment_events.event(deploy, NORMAL, "SuccessfulCreate",
                                                     f"Created pod: {created['metadata']['name']}")
                        changed = True
                        break
                    except AlreadyExistsError:
                        continue
                    except NotFoundError:
                        break  # namespace going away
            for pod_name in result.delete:
                with contextlib.suppress(NotFoundError):
                    await self.client.delete("Pod", pod_name, ns)
                    self.deployment_events.event(deploy, NORMAL, "SuccessfulDelete", f"Deleted pod: {pod_name}")
                    changed = True
            if (deploy.get("status") or {}) != result.status:
                with contextlib.suppress(ConflictError, NotFoundError):
                    await self.client.patch("Deployment", name, ns, {"status": result.status}, status=True)
        # Garbage-collect pods whose owning Deployment is gone (like Kubernetes' GC).
        live = {(_key(d), d["metadata"].get("uid")) for d in deploys}
        for pod in pods:
            refs = pod["metadata"].get("ownerReferences") or []
            owner = next((r for r in refs if r.get("kind") == "Deployment"), None)
            if owner is None:
                continue
            ns = pod["metadata"].get("namespace") or "default"
            if ((ns, owner.get("name")), owner.get("uid")) not in live:
                with contextlib.suppress(NotFoundError):
                    await self.client.delete("Pod", pod["metadata"]["name"], ns)
                    changed = True
        return changed

    async def _cluster_ips(self, services: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assignments = plan_cluster_ips(services)
        out = []
        for svc in services:
            ip = assignments.get(_key(svc))
            if ip is None:
                out.append(svc)
                continue
            ns, name = _key(svc)
            try:
                svc = await self.client.patch("Service", name, ns, {"spec": {"clusterIP": ip, "clusterIPs": [ip]}})
                log.info("service %s/%s: clusterIP %s", ns, name, ip)
            except (NotFoundError, ConflictError):
                continue
            out.append(svc)
        return out

    async def _endpoints(self, services: list[dict[str, Any]], endpoints: list[dict[str, Any]],
                         pods: list[dict[str, Any]]) -> None:
        current = {_key(e): e for e in endpoints}
        wanted: set[tuple[str, str]] = set()
        for svc in services:
            key = _key(svc)
            wanted.add(key)
            if not (svc.get("spec") or {}).get("selector"):
                continue  # no selector: the user manages its Endpoints (as in Kubernetes)
            desired = compute_endpoints(svc, pods)
            have = current.get(key)
            if not endpoints_differ(have, desired):
                continue
            try:
                if have is None:
                    await self.client.create(desired)
                else:
                    desired["metadata"]["resourceVersion"] = have["metadata"]["resourceVersion"]
                    await self.client.update(desired)
            except (AlreadyExistsError, ConflictError):
                self._reconciler.mark()
            except NotFoundError:
                pass
        for key, ep in current.items():
            if key not in wanted:
                with contextlib.suppress(NotFoundError):
                    await self.client.delete("Endpoints", ep["metadata"]["name"], key[0])


def unschedulable_message(pod: dict[str, Any], nodes: list[dict[str, Any]]) -> str:
    """The scheduler's FailedScheduling message: `0/N nodes are available: <why, per reason>.`"""
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    not_ready = sum(1 for n in nodes if not node_is_ready(n))
    mismatch = sum(1 for n in nodes if node_is_ready(n) and not all(
        ((n["metadata"].get("labels") or {}).get(k) == v) for k, v in selector.items()))
    reasons = [f"{not_ready} node(s) were not Ready" if not_ready else "",
               f"{mismatch} node(s) didn't match Pod's node affinity/selector" if mismatch else ""]
    why = ", ".join(r for r in reasons if r) or "no nodes are registered"
    return f"0/{len(nodes)} nodes are available: {why}."


async def _amain(state_dir: Path) -> None:
    from ambient.api.client import AsyncApiClient

    socket_path = state_dir / "apiserver.sock"
    async with AsyncApiClient(socket_path) as client:
        manager = ControllerManager(client, waypoints=WaypointConfig.for_state_dir(state_dir))
        log.info("controller-manager started (api %s)", socket_path)
        with contextlib.suppress(asyncio.CancelledError):
            await manager.run()
    log.info("controller-manager stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ambient.cluster.controllers", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    process.configure_logging(args.log_level)

    async def run(_: process.Shutdown) -> None:  # SIGTERM/SIGINT cancel it
        await _amain(args.state_dir)

    try:
        process.run(run)
    except ApiError as exc:
        raise SystemExit(f"controller-manager: {exc}") from exc


if __name__ == "__main__":
    main()
