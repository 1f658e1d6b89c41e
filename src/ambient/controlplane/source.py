"""Where the control plane reads objects from: one interface, the local cluster API behind it now.

Role: `ObjectSource` is list + watch per kind with Kubernetes semantics (a list returns a resourceVersion;
a watch from it streams ADDED/MODIFIED/DELETED/BOOKMARK; a too-old version fails with 410 Gone).
The control plane follows each kind with `ambient.api.informer.inform` (list -> replace, watch -> events,
resume, re-list on 410, back-off); a Kubernetes source (`ambient.kube.source.KubeSource`) implements the same
Protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from ambient.api.client import AsyncApiClient, WatchEvent

Obj = dict[str, Any]


class ObjectSource(Protocol):
    async def list(self, kind: str) -> tuple[list[Obj], str]: ...

    def watch(self, kind: str, resource_version: str) -> AsyncIterator[WatchEvent]: ...


class ApiObjectSource:
    """The local cluster API server (over its Unix socket)."""

    def __init__(self, socket_path: Path | str, *, watch_timeout: float = 300.0) -> None:
        self._client = AsyncApiClient(socket_path)
        self._watch_timeout = watch_timeout

    async def aclose(self) -> None:
        await self._client.aclose()

    async def list(self, kind: str) -> tuple[list[Obj], str]:
        return await self._client.list(kind)

    def watch(self, kind: str, resource_version: str) -> AsyncIterator[WatchEvent]:
        return self._client.watch(kind, resource_version=resource_version, timeout=self._watch_timeout)

    async def write_status(self, kind: str, namespace: str, name: str, patch: Obj) -> None:
        await self._client.patch(kind, name, namespace, patch, status=True)
