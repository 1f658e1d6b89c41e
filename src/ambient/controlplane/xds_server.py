"""Delta ADS server: pushes the index's resources to node proxies over gRPC (grpc.aio).

Role: `ResourceCache` holds the serialized resources per type URL with a content-hash version each and a
change sequence; `XdsServer` implements `DeltaAggregatedResources` for many concurrent streams, sending
each proxy only what it does not have.

Invariants:
- Wildcard subscriptions only (a node proxy wants every Address and Authorization). Named subscriptions
  are accepted and treated as wildcard.
- A resource's version is a hash of its bytes, so a proxy reconnecting (even to a restarted control plane)
  with `initial_resource_versions` receives exactly the resources that differ and the removals.
- Each stream remembers what it sent (name -> version); a push is the difference between the cache and
  that memory. The memory is updated when sending, whatever the reply: a NACK is logged with its
  `error_detail` and recorded for proxy-status, and the same version is never re-sent in a loop.
- Every subscribed type gets a first response even when empty: proxies become ready on the first ACK.
- Removed resources leave tombstones (so pushes are O(changes)); tombstones beyond a bound are compacted,
  after which a stream that is too far behind falls back to a full diff.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message

from ambient.protocol.xds import (
    NODE_PROXY_TYPE_URLS,
    AggregatedDiscoveryServiceServicer,
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    Resource,
    add_AggregatedDiscoveryServiceServicer_to_server,
)

log = logging.getLogger(__name__)

MAX_TOMBSTONES = 10_000
# Authenticates a stream: (invocation metadata, node id) -> None if allowed, else the reason it is not.
Authenticator = Callable[[Mapping[str, str], str], str | None]


@dataclass(slots=True)
class _Entry:
    name: str
    seq: int
    version: str
    resource: Resource | None  # None: a tombstone (removed)


def resource_version(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:16]


class ResourceCache:
    """Serialized resources per type URL, ordered by the sequence number of their last change."""

    def __init__(self, type_urls: tuple[str, ...] = NODE_PROXY_TYPE_URLS) -> None:
        self.seq = 0
        self._entries: dict[str, dict[str, _Entry]] = {t: {} for t in type_urls}
        self._type_seq: dict[str, int] = {t: 0 for t in type_urls}
        self._compacted: dict[str, int] = {t: 0 for t in type_urls}
        self._tombstones: dict[str, int] = {t: 0 for t in type_urls}
        self._live: dict[str, int] = {t: 0 for t in type_urls}
        self._listeners: set[asyncio.Event] = set()
        self.changed_at: float = time.monotonic()

    @property
    def type_urls(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def version(self, type_url: str) -> str:
        return str(self._type_seq[type_url])

    def type_seq(self, type_url: str) -> int:
        return self._type_seq[type_url]

    def count(self, type_url: str) -> int:
        return self._live[type_url]

    def apply(self, type_url: str, changes: Mapping[str, Message | None]) -> int:
        """Upsert (message) or remove (None) resources by name. Returns how many really changed."""
        entries = self._entries[type_url]
        seq = self.seq + 1
        changed = 0
        for name, msg in changes.items():
            old = entries.get(name)
            if msg is None:
                if old is None or old.resource is None:
                    continue
                del entries[name]
                entries[name] = _Entry(name, seq, "", None)
                self._live[type_url] -= 1
                self._tombstones[type_url] += 1
                changed += 1
                continue
            payload = msg.SerializeToString(deterministic=True)
            version = resource_version(payload)
            if old is not None and old.version == version:
                continue
            res = Resource(name=name, version=version, resource=any_pb2.Any(type_url=type_url, value=payload))
            if old is not None:
                del entries[name]
                if old.resource is None:
                    self._tombstones[type_url] -= 1
                    self._live[type_url] += 1
            else:
                self._live[type_url] += 1
            entries[name] = _Entry(name, seq, version, res)
            changed += 1
        if changed:
            self.seq = seq
            self._type_seq[type_url] = seq
            self.changed_at = time.monotonic()
            self._compact(type_url)
            for ev in self._listeners:
                ev.set()
        return changed

    def _compact(self, type_url: str) -> None:
        if self._tombstones[type_url] <= MAX_TOMBSTONES:
            return
        entries = self._entries[type_url]
        for name in [n for n, e in entries.items() if e.resource is None]:
            self._compacted[type_url] = max(self._compacted[type_url], entries[name].seq)
            del entries[name]
        self._tombstones[type_url] = 0

    def subscribe(self, event: asyncio.Event) -> None:
        self._listeners.add(event)

    def unsubscribe(self, event: asyncio.Event) -> None:
        self._listeners.discard(event)

    def diff(self, type_url: str, known: dict[str, str], since: int) -> tuple[list[Resource], list[str]]:
        """What a client that has `known` (name -> version) and saw changes up to `since` is missing."""
        entries = self._entries[type_url]
        send: list[Resource] = []
        removed: list[str] = []
        if since >= self._compacted[type_url] and since > 0:
            candidates: list[_Entry] = []
            for entry in reversed(entries.values()):
                if entry.seq <= since:
                    break
                candidates.append(entry)
            for entry in reversed(candidates):
                if entry.resource is None:
                    if entry.name in known:
                        removed.append(entry.name)
                elif known.get(entry.name) != entry.version:
                    send.append(entry.resource)
            return send, removed
        for name, entry in entries.items():
            if entry.resource is not None and known.get(name) != entry.version:
                send.append(entry.resource)
        removed = [n for n in known if n not in entries or entries[n].resource is None]
        return send, removed


# -------------------------------------------------------------------------------------- connections

_conn_ids = itertools.count(1)
_nonces = itertools.count(1)


@dataclass
class TypeStatus:
    """What one stream has for one type URL (for proxy-status)."""

    subscribed: bool = False
    initial_sent: bool = False
    known: dict[str, str] = field(default_factory=dict)
    seen_seq: int = 0
    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float = 0.0
    acked_version: str = ""
    acked_at: float = 0.0
    pending: dict[str, str] = field(default_factory=dict)  # nonce -> system version
    nacks: int = 0
    last_nack: str = ""


@dataclass
class Connection:
    id: int
    node_id: str
    peer: str
    connected_at: float = field(default_factory=time.time)
    types: dict[str, TypeStatus] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def parse_node_id(node_id: str) -> dict[str, str]:
    """`ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local` -> {type, ip, pod, namespace}; {} if malformed."""
    parts = node_id.split("~")
    if len(parts) != 4:
        return {}
    pod, _, ns = parts[2].partition(".")
    return {"type": parts[0], "ip": parts[1], "pod": pod, "namespace": ns}


class XdsServer(AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """The DeltaAggregatedResources servicer over a `ResourceCache`."""

    def __init__(self, cache: ResourceCache, *, authenticator: Authenticator | None = None) -> None:
        self.cache = cache
        self.authenticator = authenticator
        self.connections: dict[int, Connection] = {}

    def register(self, server: grpc.aio.Server) -> None:
        add_AggregatedDiscoveryServiceServicer_to_server(self, server)

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[DeltaDiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> None:
        conn = Connection(next(_conn_ids), "", context.peer())
        self.cache.subscribe(conn.wake)
        try:
            async with asyncio.TaskGroup() as tg:
                pusher = tg.create_task(self._push_loop(conn, context))
                try:
                    async for req in request_iterator:
                        await self._on_request(conn, req, context)
                finally:
                    pusher.cancel()
        finally:
            self.cache.unsubscribe(conn.wake)
            if self.connections.pop(conn.id, None) is not None:
                log.info("xDS stream %d from %s (%s) closed", conn.id, conn.node_id, conn.peer)

    async def _on_request(
        self, conn: Connection, req: DeltaDiscoveryRequest, context: grpc.aio.ServicerContext
    ) -> None:
        if not conn.node_id:
            conn.node_id = req.node.id or "unknown"
            if self.authenticator is not None:
                md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
                reason = self.authenticator(md, conn.node_id)
                if reason is not None:
                    log.warning("xDS stream from %s (%s) refused: %s", conn.node_id, conn.peer, reason)
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
            self.connections[conn.id] = conn
            log.info("xDS stream %d from %s (%s) opened", conn.id, conn.node_id, conn.peer)
        type_url = req.type_url
        if type_url not in self.cache.type_urls:
            log.warning("xDS %s asked for unknown type %s; ignoring", conn.node_id, type_url)
            return
        ts = conn.types.setdefault(type_url, TypeStatus())
        if req.response_nonce:
            version = ts.pending.pop(req.response_nonce, None)
            if req.HasField("error_detail") and req.error_detail.code != 0:
                ts.nacks += 1
                ts.last_nack = req.error_detail.message
                log.warning(
                    "xDS NACK from %s for %s (nonce %s, version %s): %s",
                    conn.node_id,
                    type_url,
                    req.response_nonce,
                    version,
                    req.error_detail.message,
                )
            elif version is not None:
                ts.acked_version = version
                ts.acked_at = time.time()
            return
        if not ts.subscribed:
            ts.subscribed = True
            ts.known = dict(req.initial_resource_versions)
            conn.wake.set()

    async def _push_loop(self, conn: Connection, context: grpc.aio.ServicerContext) -> None:
        while True:
            await conn.wake.wait()
            conn.wake.clear()
            for type_url, ts in list(conn.types.items()):
                if ts.subscribed:
                    await self._push(conn, type_url, ts, context)

    async def _push(self, conn: Connection, type_url: str, ts: TypeStatus, context: grpc.aio.ServicerContext) -> None:
        seq = self.cache.type_seq(type_url)
        if ts.initial_sent and seq <= ts.seen_seq:
            return
        send, removed = self.cache.diff(type_url, ts.known, ts.seen_seq if ts.initial_sent else 0)
        ts.seen_seq = seq
        if ts.initial_sent and not send and not removed:
            return
        ts.initial_sent = True
        nonce = f"{next(_nonces):x}"
        version = self.cache.version(type_url)
        resp = DeltaDiscoveryResponse(
            system_version_info=version, type_url=type_url, resources=send, removed_resources=removed, nonce=nonce
        )
        for r in send:
            ts.known[r.name] = r.version
        for name in removed:
            ts.known.pop(name, None)
        ts.pending[nonce] = version
        if len(ts.pending) > 64:  # a proxy that never answers must not grow this without bound
            ts.pending.pop(next(iter(ts.pending)))
        ts.sent_version, ts.sent_nonce, ts.sent_at = version, nonce, time.time()
        await context.write(resp)

    # ------------------------------------------------------------------ status
    def status(self) -> list[dict[str, Any]]:
        """One entry per connected proxy: node id, peer, per type sent/acked versions, lag, NACKs."""
        out = []
        for conn in sorted(self.connections.values(), key=lambda c: c.node_id):
            types = {}
            for type_url, ts in conn.types.items():
                current = self.cache.version(type_url)
                acked = int(ts.acked_version) if ts.acked_version else 0
                types[type_url] = {
                    "current_version": current,
                    "sent_version": ts.sent_version,
                    "acked_version": ts.acked_version,
                    "lag_versions": max(0, int(current) - acked),
                    "synced": ts.acked_version == current,
                    "resources": len(ts.known),
                    "nacks": ts.nacks,
                    "last_nack": ts.last_nack,
                    "acked_at": ts.acked_at,
                }
            out.append(
                {
                    "id": conn.id,
                    "node_id": conn.node_id,
                    "peer": conn.peer,
                    "connected_at": conn.connected_at,
                    "types": types,
                }
            )
        return out
