"""Kubernetes Events (core/v1 `Event`): how they are built, correlated and kept (pure: no I/O).

Role: the cluster's components record what happened to an object (`Scheduled`, `Created`, `Unhealthy`,
`BackOff`, ...) as Event objects in the object's namespace, which `kubectl describe` and `kubectl get events`
show. Emitting is `ambient.cluster.events.EventRecorder` (a bounded fire-and-forget queue); deciding whether
an occurrence is a new Event, a repeat of one (count + 1) or dropped is `Correlator` here; keeping the store
bounded (TTL, caps) is `ambient.api.store` with the limits of `EventLimits`.

Semantics, as client-go's event correlator and kube-apiserver:
- An Event is named `<object name>.<hex of the first occurrence's Unix nanoseconds>`, in the involved object's
  namespace (`default` for cluster-scoped objects such as Nodes). `involvedObject` is an ObjectReference
  (kind, namespace, name, uid, apiVersion, resourceVersion; `fieldPath` `spec.containers{NAME}` for a
  container's events); `source` is the component and host, `reportingComponent`/`reportingInstance` the same.
- Repeats: an occurrence with the same source, object (fieldPath included), type, reason and message as one
  already written is a repeat: the Event's `count` is raised and `lastTimestamp` moved (a patch), never a new
  Event. Ten occurrences with the same source, object, type and reason but different messages within ten
  minutes make further ones one Event "(combined from similar events): <latest message>", counted likewise.
- Spam filter: each source + object has a token bucket of 25 writes refilled at one per 5 minutes; an
  occurrence without a token is not written, but it is counted, so the next write carries the true count.
  A crash-looping or probe-failing pod therefore costs a few dozen writes, then one per 5 minutes.
- Kept: an Event expires `EventLimits.ttl` (1 h, kube-apiserver's --event-ttl) after its last occurrence
  (the newest of lastTimestamp, series.lastObservedTime, eventTime and creationTimestamp); at most
  `per_object` Events per involved object and `total` overall are stored, the least recently written going
  first (`ambient.api.store`), so no client can flood the store.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ambient.api.tables import parse_timestamp

Obj = dict[str, Any]

NORMAL = "Normal"
WARNING = "Warning"
TYPES = (NORMAL, WARNING)

# client-go's correlator defaults (k8s.io/client-go/tools/record/events_cache.go).
SPAM_BURST = 25
SPAM_REFILL_SECONDS = 300.0
AGGREGATE_MAX = 10
AGGREGATE_WINDOW_SECONDS = 600.0
CACHE_ENTRIES = 4096
COMBINED_PREFIX = "(combined from similar events): "
MAX_MESSAGE_CHARS = 1024  # a longer message (a probe's output) is cut: events are for people, not logs


@dataclass(frozen=True)
class EventLimits:
    """What the API server keeps: `ttl` seconds after the last occurrence, `per_object` Events per involved
    object, `total` Events overall (the least recently written are removed first)."""

    ttl: float = 3600.0
    per_object: int = 50
    total: int = 5000


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> float | None:
    """An RFC 3339 timestamp as seconds since the epoch, None when absent or malformed."""
    ts = parse_timestamp(value)
    return ts.timestamp() if ts is not None else None


def last_seen(event: Obj) -> float | None:
    """When the Event last happened (or was created): what its TTL counts from."""
    series = event.get("series") if isinstance(event.get("series"), dict) else {}
    meta = event.get("metadata") if isinstance(event.get("metadata"), dict) else {}
    times = [parse_time(v) for v in (event.get("lastTimestamp"), (series or {}).get("lastObservedTime"),
                                     event.get("eventTime"), (meta or {}).get("creationTimestamp"))]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def reference(obj: Obj, field_path: str | None = None) -> Obj:
    """The ObjectReference of `obj` (an API object as read from the server), as `involvedObject`."""
    meta = obj.get("metadata") or {}
    ref: Obj = {"kind": obj.get("kind", ""), "name": meta.get("name", "")}
    if meta.get("namespace"):
        ref["namespace"] = meta["namespace"]
    for key in ("uid", "resourceVersion"):
        if meta.get(key):
            ref[key] = meta[key]
    if obj.get("apiVersion"):
        ref["apiVersion"] = obj["apiVersion"]
    if field_path:
        ref["fieldPath"] = field_path
    return ref


def container_path(name: str) -> str:
    """The fieldPath of a pod's container, as the kubelet writes it."""
    return f"spec.containers{{{name}}}"


def event_namespace(ref: Obj) -> str:
    return str(ref.get("namespace") or "default")


def new_event(ref: Obj, event_type: str, reason: str, message: str, component: str, host: str | None,
              now: float, name_ns: int | None = None) -> Obj:
    """A new Event (count 1) about `ref`; the name is derived from `name_ns` (Unix nanoseconds, hex; default:
    `now`'s), which a recorder keeps strictly increasing so that two events of one instant differ."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    stamp = rfc3339(now)
    source: Obj = {"component": component}
    if host:
        source["host"] = host
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{ref.get('name', 'unknown')}.{name_ns if name_ns is not None else int(now * 1e9):x}",
                     "namespace": event_namespace(ref)},
        "involvedObject": dict(ref),
        "reason": reason,
        "message": message,
        "source": source,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "type": event_type,
        "eventTime": None,
        "reportingComponent": component,
        "reportingInstance": host or "",
    }


def _object_key(event: Obj) -> tuple[str, ...]:
    ref, source = event["involvedObject"], event["source"]
    return (str(source.get("component", "")), str(source.get("host", "")), str(ref.get("kind", "")),
            str(ref.get("namespace", "")), str(ref.get("name", "")), str(ref.get("uid", "")),
            str(ref.get("apiVersion", "")))


def _aggregate_key(event: Obj) -> tuple[str, ...]:
    return (*_object_key(event), str(event["type"]), str(event["reason"]), str(event.get("reportingComponent", "")),
            str(event.get("reportingInstance", "")))


def _event_key(event: Obj) -> tuple[str, ...]:
    return (*_object_key(event), str(event["involvedObject"].get("fieldPath", "")), str(event["type"]),
            str(event["reason"]), str(event["message"]))


@dataclass
class _Seen:
    """What was last written for one event key: the Event's name, first time and count."""

    name: str
    namespace: str
    first: str
    count: int
    written: bool  # False until the create went through (a create the spam filter held back)


@dataclass
class _Similar:
    messages: set[str] = field(default_factory=set)
    since: float = 0.0


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass(frozen=True)
class Decision:
    """What to write for one occurrence: `create` the Event, `patch` it (count, lastTimestamp, message) under
    `name`, or nothing (`skip`: the spam filter held it back; its count is kept for the next write)."""

    action: str  # create | patch | skip
    event: Obj
    name: str
    namespace: str
    key: tuple[str, ...]
    patch: Obj | None = None


class Correlator:
    """client-go's EventCorrelator (aggregate, deduplicate, spam-filter), for one component. Not thread-safe:
    one recorder task drives it. Caches are LRU-bounded (`CACHE_ENTRIES`), so memory stays bounded too."""

    def __init__(self, *, burst: int = SPAM_BURST, refill_seconds: float = SPAM_REFILL_SECONDS,
                 clock: Any = time.time) -> None:
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.clock = clock
        self._seen: OrderedDict[tuple[str, ...], _Seen] = OrderedDict()
        self._similar: OrderedDict[tuple[str, ...], _Similar] = OrderedDict()
        self._buckets: OrderedDict[tuple[str, ...], _Bucket] = OrderedDict()

    @staticmethod
    def _remember(cache: OrderedDict[tuple[str, ...], Any], key: tuple[str, ...], value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > CACHE_ENTRIES:
            cache.popitem(last=False)

    def _aggregate(self, event: Obj, now: float) -> tuple[Obj, tuple[str, ...]]:
        """The event as it is to be counted, and its dedup key: itself, or the combined event of its kind."""
        key = _aggregate_key(event)
        similar = self._similar.get(key)
        if similar is None or now - similar.since > AGGREGATE_WINDOW_SECONDS:
            similar = _Similar(since=now)
        similar.messages.add(str(event["message"]))
        self._remember(self._similar, key, similar)
        if len(similar.messages) < AGGREGATE_MAX:
            return event, _event_key(event)
        combined = dict(event)
        combined["message"] = COMBINED_PREFIX + str(event["message"])
        return combined, key

    def _allow(self, event: Obj, now: float) -> bool:
        key = _object_key(event)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) / self.refill_seconds)
        bucket.at = now
        self._remember(self._buckets, key, bucket)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def observe(self, event: Obj) -> Decision:
        """Correlate one occurrence (a `new_event` result) and say what to write."""
        now = float(self.clock())
        event, key = self._aggregate(event, now)
        seen = self._seen.get(key)
        out = dict(event)
        if seen is None:
            seen = _Seen(out["metadata"]["name"], out["metadata"]["namespace"], out["firstTimestamp"], 1, False)
        else:
            seen.count += 1
            out["metadata"] = {"name": seen.name, "namespace": seen.namespace}
            out["firstTimestamp"] = seen.first
            out["count"] = seen.count
        self._remember(self._seen, key, seen)
        if not self._allow(out, now):
            return Decision("skip", out, seen.name, seen.namespace, key)
        if not seen.written:
            return Decision("create", out, seen.name, seen.namespace, key)
        patch = {"count": out["count"], "lastTimestamp": out["lastTimestamp"], "message": out["message"]}
        return Decision("patch", out, seen.name, seen.namespace, key, patch)

    def written(self, decision: Decision) -> None:
        """The write of `decision` went through: later repeats patch the Event."""
        seen = self._seen.get(decision.key)
        if seen is not None and seen.name == decision.name:
            seen.written = True

    def forget(self, decision: Decision) -> None:
        """The Event of `decision` is gone from the server (expired, evicted): the next repeat creates it
        again, with the count so far."""
        seen = self._seen.get(decision.key)
        if seen is not None and seen.name == decision.name:
            seen.written = False
