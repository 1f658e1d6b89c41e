"""The cluster unit tests' in-process API client: the async client surface the controller-manager and the
kubelet use (`ambient.api.client.AsyncApiClient`'s methods), served by a real `ambient.api.store.Store`, with
no sockets. Watches are not served: the tests drive whole passes themselves."""

from __future__ import annotations

from typing import Any

from ambient.api.store import Store


class StoreClient:
    """The async client surface the controllers and the kubelet use, served by an in-process Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.store.create(obj)

    async def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.store.get(kind, name, namespace)

    async def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
                   field_selector: str | None = None) -> tuple[list[dict[str, Any]], str]:
        return self.store.list(kind, namespace, label_selector, field_selector)

    async def update(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.store.update(obj)

    async def update_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.store.update_status(obj)

    async def patch(self, kind: str, name: str, namespace: str | None, patch: dict[str, Any], *,
                    status: bool = False) -> dict[str, Any]:
        return self.store.patch(kind, name, namespace, patch, status=status)

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.store.delete(kind, name, namespace)

    def watch(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError
