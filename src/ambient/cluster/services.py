"""Service VIP allocation and Endpoints computation (pure), used by the controller-manager.

Invariants:
- ClusterIPs come from 10.96.0.0/16; the network address, 10.96.0.1 (reserved, like the Kubernetes API VIP)
  and 10.96.0.10 (the cluster DNS VIP) are never handed out, nor is the broadcast address.
- No two Services share a VIP: the allocator is rebuilt from the stored Services (the store is the
  persistence), the oldest holder of a duplicated address keeps it and the others are re-allocated.
- Endpoints list only Ready pods (condition Ready=True, a podIP, not being deleted) matching the selector;
  matching pods that are not Ready go to `notReadyAddresses`. A named `targetPort` resolves per pod via
  `containers[].ports[].name`, so pods with different port numbers land in different subsets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from ambient.api.selectors import matches_labels
from ambient.cluster.errors import ClusterError

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
RESERVED = frozenset({ipaddress.ip_address("10.96.0.1"), ipaddress.ip_address("10.96.0.10")})


class VipExhaustedError(ClusterError):
    """Every address of the service range is in use."""


class VipAllocator:
    """The set of ClusterIPs in use and the next free one (lowest first: predictable, easy to read)."""

    def __init__(self, cidr: ipaddress.IPv4Network | ipaddress.IPv6Network = SERVICE_CIDR) -> None:
        self.cidr = cidr
        self.used: set[str] = set()
        self._cursor = int(cidr.network_address) + 1

    def reserve(self, ip: str) -> bool:
        """Mark `ip` used; False when it is already taken, reserved or outside the range."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr not in self.cidr or addr in RESERVED or ip in self.used:
            return False
        if addr in (self.cidr.network_address, self.cidr.broadcast_address):
            return False
        self.used.add(ip)
        return True

    def release(self, ip: str) -> None:
        self.used.discard(ip)

    def allocate(self) -> str:
        first = int(self.cidr.network_address) + 1
        last = int(self.cidr.broadcast_address) - 1
        size = last - first + 1
        for step in range(size):
            n = first + (self._cursor - first + step) % size
            candidate = str(ipaddress.ip_address(n))
            if self.reserve(candidate):
                self._cursor = n + 1
                return candidate
        raise VipExhaustedError(
            f"no free service IP left in {self.cidr} ({len(self.used)} in use)",
            hint="delete unused Services",
        )


def plan_cluster_ips(services: Iterable[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """The Services whose `spec.clusterIP` must be (re)written, with the address to write.

    Services that have a valid, unique address keep it (oldest first); the rest get a fresh one. Headless
    Services (`clusterIP: None`) are left alone.
    """
    ordered = sorted(
        services,
        key=lambda s: (s["metadata"].get("creationTimestamp") or "", s["metadata"].get("namespace") or "",
                       s["metadata"]["name"]),
    )
    alloc = VipAllocator()
    needs: list[tuple[str, str]] = []
    for svc in ordered:
        ip = (svc.get("spec") or {}).get("clusterIP")
        key = (svc["metadata"].get("namespace") or "default", svc["metadata"]["name"])
        if ip == "None":
            continue
        if not ip or not alloc.reserve(ip):
            needs.append(key)
    return {key: alloc.allocate() for key in needs}


def pod_is_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp") or not status.get("podIP"):
        return False
    if status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def resolve_target_port(port: dict[str, Any], pod: dict[str, Any]) -> int | None:
    """The pod port a Service port targets; None when a named targetPort is not declared by the pod."""
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for container in (pod.get("spec") or {}).get("containers") or []:
        for cport in container.get("ports") or []:
            if cport.get("name") == target:
                return int(cport["containerPort"])
    return None


def compute_endpoints(service: dict[str, Any], pods: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The Endpoints object (same name/namespace as the Service) for the current pods."""
    meta = service["metadata"]
    ns = meta.get("namespace") or "default"
    spec = service.get("spec") or {}
    selector = spec.get("selector") or {}
    ports = spec.get("ports") or []
    # Key: the tuple of resolved ports -> (ready addresses, not-ready addresses)
    subsets: dict[tuple[tuple[str, int, str], ...], tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    if selector:
        for pod in pods:
            pmeta = pod.get("metadata") or {}
            if (pmeta.get("namespace") or "default") != ns or not matches_labels(selector, pmeta.get("labels")):
                continue
            ip = (pod.get("status") or {}).get("podIP")
            if not ip or pmeta.get("deletionTimestamp"):
                continue
            resolved: list[tuple[str, int, str]] = []
            for p in ports:
                number = resolve_target_port(p, pod)
                if number is not None:
                    resolved.append((p.get("name") or "", number, p.get("protocol") or "TCP"))
            if not resolved:
                continue
            address = {
                "ip": ip,
                "nodeName": (pod.get("spec") or {}).get("nodeName"),
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pmeta.get("name"), "uid": pmeta.get("uid")},
            }
            ready, not_ready = subsets.setdefault(tuple(resolved), ([], []))
            (ready if pod_is_ready(pod) else not_ready).append(address)
    out_subsets = []
    for resolved_key, (ready, not_ready) in sorted(subsets.items()):
        subset: dict[str, Any] = {
            "ports": [{"name": n, "port": num, "protocol": proto} if n else {"port": num, "protocol": proto}
                      for n, num, proto in resolved_key],
        }
        if ready:
            subset["addresses"] = sorted(ready, key=lambda a: a["ip"])
        if not_ready:
            subset["notReadyAddresses"] = sorted(not_ready, key=lambda a: a["ip"])
        out_subsets.append(subset)
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": meta["name"], "namespace": ns, "labels": dict(meta.get("labels") or {})},
        "subsets": out_subsets,
    }


def endpoints_differ(current: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    if current is None:
        return True
    return (current.get("subsets") or []) != desired["subsets"] or (
        (current.get("metadata") or {}).get("labels") or {}) != desired["metadata"]["labels"]
