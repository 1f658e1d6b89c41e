"""An in-memory stand-in for `ApiClient` (same methods and errors as the contract) for CLI unit tests."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from typer.testing import Result

from ambient.api.errors import AlreadyExistsError, NotFoundError
from ambient.api.kinds import kind_for_manifest, resolve_kind
from ambient.api.validation import validate_object


@dataclass
class FakeEvent:
    type: str
    object: dict[str, Any]


@dataclass
class FakeClient:
    """Objects keyed by (Kind, namespace, name); a global resource version like the real store."""

    objects: dict[tuple[str, str | None, str], dict[str, Any]] = field(default_factory=dict)
    rv: int = 0
    events: list[FakeEvent] = field(default_factory=list)  # what watch() replays
    calls: list[str] = field(default_factory=list)

    def _key(self, kind: str, name: str, namespace: str | None) -> tuple[str, str | None, str]:
        info = resolve_kind(kind)
        return info.kind, (namespace or "default") if info.namespaced else None, name

    def _obj_key(self, obj: dict[str, Any]) -> tuple[str, str | None, str]:
        """As the real store: the kind from apiVersion and kind (two Gateway kinds share the name)."""
        meta = obj["metadata"]
        return self._key(kind_for_manifest(obj.get("apiVersion"), obj["kind"]).kind, meta["name"],
                         meta.get("namespace"))

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = validate_object(obj)
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("creationTimestamp", "2020-01-01T00:00:00Z")
        self.objects[self._obj_key(obj)] = obj
        return copy.deepcopy(obj)

    def create(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.calls.append("create")
        meta = obj["metadata"]
        if self._obj_key(obj) in self.objects:
            raise AlreadyExistsError(f'{resolve_kind(obj["kind"]).plural} "{meta["name"]}" already exists')
        return self._store(obj)

    def apply_many(self, objs: list[dict[str, Any]], **_: Any) -> list[tuple[dict[str, Any], str]]:
        self.calls.append(f"apply_many:{len(objs)}")
        out = []
        for obj in objs:
            meta = obj["metadata"]
            old = self.objects.get(self._obj_key(obj))
            if old is None:
                out.append((self._store(obj), "created"))
            elif old["spec" if "spec" in obj else "metadata"] == obj.get("spec", meta):
                out.append((copy.deepcopy(old), "unchanged"))
            else:
                out.append((self._store(obj), "configured"))
        return out

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        key = self._key(kind, name, namespace)
        if key not in self.objects:
            plural = resolve_kind(kind).plural
            where = f' in namespace "{key[1]}"' if key[1] else ""
            raise NotFoundError(f'{plural} "{name}"{where} not found')
        return copy.deepcopy(self.objects[key])

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[dict[str, Any]], str]:
        info = resolve_kind(kind)
        want = dict(p.split("=", 1) for p in label_selector.split(",")) if label_selector else {}
        items = [
            copy.deepcopy(o) for (k, ns, _), o in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
            if k == info.kind and (namespace is None or ns == namespace)
            and all((o["metadata"].get("labels") or {}).get(a) == b for a, b in want.items())
        ]
        return items, str(self.rv)

    def patch(self, kind: str, name: str, namespace: str | None, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"patch:{patch}")
        obj = self.get(kind, name, namespace)
        for fld, changes in patch.get("metadata", {}).items():
            current = obj["metadata"].setdefault(fld, {})
            for k, v in changes.items():
                if v is None:
                    current.pop(k, None)
                else:
                    current[k] = v
        return self._store(obj)

    def delete(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        obj = self.get(kind, name, namespace)
        del self.objects[self._key(kind, name, namespace)]
        self.calls.append(f"delete:{name}")
        return obj

    def watch(self, kind: str, namespace: str | None = None, resource_version: str | None = None,
              label_selector: str | None = None, timeout: float | None = None,
              field_selector: str | None = None) -> Iterator[FakeEvent]:
        self.calls.append(f"watch:{resource_version}" + (f":{field_selector}" if field_selector else ""))
        while self.events:
            event = self.events.pop(0)
            if event.type == "DELETED":
                meta = event.object["metadata"]
                self.objects.pop(self._key(event.object["kind"], meta["name"], meta.get("namespace")), None)
            yield event


Runner = Callable[..., Result]
