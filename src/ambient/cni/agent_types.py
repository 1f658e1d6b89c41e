"""The node agent's settings, error, and the interfaces it is given (API client, netns resolver/recorder).

Role: what `NodeAgent` (agent.py) is configured with and what its callers provide, kept apart from the agent
so the Kubernetes entry point (`ambient.kube.nodeagent`) and tests can build them without the agent's logic.
Everything here is re-exported by `ambient.cni.agent`, where callers import it from.

Invariants:
- `AgentSettings` is immutable (frozen); sockets live in `run_dir` unless given explicitly.
- `AgentApi` is the only way the agent talks to the cluster API; `NetnsResolver` maps a pod object to its
  netns path (None = unknown), `NetnsRecorder` remembers what CNI ADD said (optional).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ambient.cni.agent_server import PLUGIN_EVENT_SOCKET
from ambient.cni.apply import Backend
from ambient.cni.errors import CniError

Obj = dict[str, Any]
ZDS_SOCKET = "ztunnel.sock"
DEFAULT_EXCLUDED = ("kube-system", "istio-system")
NetnsResolver = Callable[[Mapping[str, Any]], str | None]


class NetnsRecorder(Protocol):
    """Remembers the netns path the CNI ADD gave for a pod (Kubernetes: the resolver reads it back later)."""

    def record(self, uid: str, netns: str) -> None: ...

    def forget(self, uid: str) -> None: ...


def watch_specs(node: str) -> list[tuple[str, dict[str, str]]]:
    """What the agent watches: its node's pods (field selector) and every namespace (enrollment labels)."""
    return [("Pod", {"field_selector": f"spec.nodeName={node}"}), ("Namespace", {})]


class NodeAgentError(CniError):
    """The node agent could not capture a pod (answered to the CNI plugin as HTTP 500)."""


class AgentApi(Protocol):
    """The part of `ambient.api.client.AsyncApiClient` the agent uses (a fake implements it in tests)."""

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Obj: ...

    async def list(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[Obj], str]: ...

    async def patch(self, kind: str, name: str, namespace: str | None, patch: Obj, *, status: bool = False) -> Obj: ...

    def watch(
        self, kind: str, namespace: str | None = None, resource_version: str | None = None,
        label_selector: str | None = None, timeout: float | None = None, field_selector: str | None = None,
    ) -> AsyncIterator[Any]: ...


@dataclass(frozen=True)
class AgentSettings:
    node: str
    run_dir: Path
    zds_socket: Path
    backend: Backend = "iptables"
    dns_capture: bool = True  # node default; the pod annotation `ambient.istio.io/dns-capture` overrides it
    exclude_namespaces: tuple[str, ...] = DEFAULT_EXCLUDED
    node_netns: str | None = None  # where the probe ipset/SNAT live; None = the agent's own netns
    zds_wait: float = 0.5  # how long a pod add waits for a connected proxy before going `pending`
    # How long a CNI ADD waits for a connected proxy and its Ack before failing (the runtime retries the
    # sandbox); below the plugin's 5 s timeout for the whole /cmdadd, rules included.
    cni_add_proxy_wait: float = 2.0
    retry_interval: float = 1.0  # pending pods are re-sent to the proxy this often
    resync_interval: float = 10.0  # full reconcile even without watch events

    @property
    def plugin_event_socket(self) -> Path:
        return self.run_dir / PLUGIN_EVENT_SOCKET
