"""Delta ADS server: pushes the index's resources to node proxies over gRPC (grpc.aio).

Role: `ResourceCache` holds the serialized resources per type URL with a content-hash version each and a
change sequence; `XdsServer` implements `DeltaAggregatedResources` for many concurrent streams, sending
each proxy only what it does not have.

Invariants:
- Subscriptions follow delta xDS: a first request without names (or with `*`) is a wildcard subscription
  (every resource of the type, as a node proxy wants); `*` in `resource_names_unsubscribe` ends the
  wildcard (an on-demand proxy subscribes and unsubscribes `*` in one request: "nothing yet"). A request
  naming resources is always answered, as istiod answers it: each name (a resource name, or an address
  alias `<network>/<ip>` of a workload or service) comes back as the resource (with its aliases) or, when
  nothing has that name, in `removed_resources`, so a proxy waiting on demand never waits forever. Later
  changes of a named resource (or of one an alias later resolves to) are pushed to that stream. A stream
  remembers at most `max_unresolved_names` (default 10,000 per type) names that do not resolve yet; beyond
  that a name is still answered (removal) but not watched, counted as `names_refused` in proxy-status.
- Order within a push (the referenced before the referrer, as a workload names its policies): new and
  changed Authorizations first, then Addresses, then Authorization removals. A proxy therefore never holds
  a workload that references a policy the control plane has but has not sent it yet, and never loses a
  policy before the workloads stop naming it. (istiod pushes Address before Authorization and relies
  on ztunnel skipping a referenced policy it lacks; our proxy fails closed on it instead, so the order
  matters here.)
- A resource's version is a hash of its bytes, so a proxy reconnecting (even to a restarted control plane)
  with `initial_resource_versions` receives exactly the resources that differ and the removals.
- Each stream remembers what it sent (name -> version); a push is the difference between the cache and
  that memory. The memory is updated when sending, whatever the reply: a NACK (any reply carrying
  `error_detail`, whatever its code: ztunnel NACKs with code 0) is logged and recorded for proxy-status
  (the acked version does not advance), and the same version is never re-sent in a loop.
- Every subscribed type gets a first response even when empty: proxies become ready on the first ACK.
- Removed resources leave tombstones (so pushes are O(changes)); tombstones beyond a bound are compacted,
  after which a stream that is too far behind falls back to a full diff.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message

from ambient.protocol.gen.istio.workload import workload_pb2 as wl
from ambient.protocol.xds import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    NODE_PROXY_TYPE_URLS,
    AggregatedDiscoveryServiceServicer,
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    Resource,
    add_AggregatedDiscoveryServiceServicer_to_server,
)

log = logging.getLogger(__name__)

MAX_TOMBSTONES = 10_000
# Types whose resources others reference by name (workloads list their policies): within a push their
# upserts go before, and their removals after, every other type.
REFERENCED_TYPES: tuple[str, ...] = (AUTHORIZATION_TYPE_URL,)
MAX_UNRESOLVED_NAMES = 10_000  # per stream and type: subscribed names that match nothing (yet)
# Authenticates a stream: (invocation metadata, node id) -> None if allowed, else the reason it is not.
Authenticator = Callable[[Mapping[str, str], str], str | None]


@dataclass(slots=True)
class _Entry:
    name: str
    seq: int
    version: str
    resource: Resource | None  # None: a tombstone (removed)
    aliases: tuple[str, ...] = ()


def resource_version(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:16]


def _ip_text(raw: bytes) -> str:
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return raw.hex()


def address_aliases(msg: Message) -> tuple[str, ...]:
    """The names an on-demand proxy may ask an Address by, besides its resource name: `<network>/<ip>` of
    each workload IP or service VIP (as istiod's `AddressInfo.Aliases`)."""
    if not isinstance(msg, wl.Address):
        return ()
    if msg.HasField("workload"):
        w = msg.workload
        return tuple(f"{w.network}/{_ip_text(a)}" for a in w.addresses)
    if msg.HasField("service"):
        return tuple(f"{a.network}/{_ip_text(a.address)}" for a in msg.service.addresses)
    return ()


class ResourceCache:
    """Serialized resources per type URL, ordered by the sequence number of their last change."""

    def __init__(self, type_urls: tuple[str, ...] = NODE_PROXY_TYPE_URLS) -> None:
        self.seq = 0
        self._entries: dict[str, dict[str, _Entry]] = {t: {} for t in type_urls}
        self._type_seq: dict[str, int] = {t: 0 for t in type_urls}
        self._compacted: dict[str, int] = {t: 0 for t in type_urls}
        self._tombstones: dict[str, int] = {t: 0 for t in type_urls}
        self._live: dict[str, int] = {t: 0 for t in type_urls}
        self._aliases: dict[str, dict[str, dict[str, None]]] = {t: {} for t in type_urls}  # alias -> names
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
                self._unalias(type_url, old)
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
                self._unalias(type_url, old)
                del entries[name]
                if old.resource is None:
                    self._tombstones[type_url] -= 1
                    self._live[type_url] += 1
            else:
                self._live[type_url] += 1
            entry = _Entry(name, seq, version, res, address_aliases(msg) if type_url == ADDRESS_TYPE_URL else ())
            entries[name] = entry
            for alias in entry.aliases:
                self._aliases[type_url].setdefault(alias, {})[name] = None
            changed += 1
        if changed:
            self.seq = seq
            self._type_seq[type_url] = seq
            self.changed_at = time.monotonic()
            self._compact(type_url)
            for ev in self._listeners:
                ev.set()
        return changed

    def _unalias(self, type_url: str, entry: _Entry) -> None:
        index = self._aliases[type_url]
        for alias in entry.aliases:
            names = index.get(alias)
            if names is not None:
                names.pop(entry.name, None)
                if not names:
                    del index[alias]

    def resolve(self, type_url: str, name: str) -> list[Resource]:
        """The live resources a subscribed name stands for: the resource of that name, else those the name
        is an alias of (e.g. `/10.244.1.2`); [] when nothing has it. Resources carry their aliases."""
        entries = self._entries[type_url]
        entry = entries.get(name)
        if entry is not None and entry.resource is not None:
            found = [entry]
        else:
            found = [entries[n] for n in self._aliases[type_url].get(name, {}) if n in entries]
        out = []
        for e in found:
            if e.resource is None:
                continue
            if e.aliases:
                res = Resource()
                res.CopyFrom(e.resource)
                res.aliases.extend(e.aliases)
                out.append(res)
            else:
                out.append(e.resource)
        return out

    def aliases(self, type_url: str, name: str) -> tuple[str, ...]:
        entry = self._entries[type_url].get(name)
        return entry.aliases if entry is not None else ()

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
    wildcard: bool = True
    names: set[str] = field(default_factory=set)  # resource names subscribed (when not wildcard)
    alias_subs: set[str] = field(default_factory=set)  # other subscribed names: aliases, not found yet
    answer: list[str] = field(default_factory=list)  # named subscriptions the next push must answer
    resync: bool = False  # the next push is a full diff (the wildcard was just switched on)
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
    nacked_version: str = ""  # the version of the last reply when that reply was a NACK
    names_refused: int = 0  # unresolved names not watched (over the stream's bound)


def apply_subscription(
    ts: TypeStatus, subscribe: list[str], unsubscribe: list[str], initial_versions: Mapping[str, str]
) -> bool:
    """Apply one request's subscription changes to `ts` (delta xDS semantics, see the module docstring).
    Returns True when a push is due (first subscription, wildcard switched on, or names to answer)."""
    due = False
    if not ts.subscribed:
        ts.subscribed = True
        ts.wildcard = not subscribe or "*" in subscribe
        ts.known = dict(initial_versions)
        due = True
    elif "*" in subscribe and not ts.wildcard:
        ts.wildcard = ts.resync = due = True
    if "*" in unsubscribe:
        ts.wildcard = False
    if not ts.wildcard:
        ts.names.update(ts.known)  # what the proxy holds stays subscribed: it keeps getting its updates
    for name in unsubscribe:
        if name != "*":
            ts.names.discard(name)
            ts.alias_subs.discard(name)
            ts.known.pop(name, None)  # the proxy dropped it: no removal owed
    named = [n for n in subscribe if n != "*"]
    if named:
        ts.answer.extend(named)
        due = True
    return due


@dataclass
class Connection:
    id: int
    node_id: str
    peer: str
    connected_at: float = field(default_factory=time.time)
    types: dict[str, TypeStatus] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class XdsServer(AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """The DeltaAggregatedResources servicer over a `ResourceCache`."""

    def __init__(
        self,
        cache: ResourceCache,
        *,
        authenticator: Authenticator | None = None,
        max_unresolved_names: int = MAX_UNRESOLVED_NAMES,
    ) -> None:
        self.cache = cache
        self.authenticator = authenticator
        self.max_unresolved_names = max_unresolved_names
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
            if req.HasField("error_detail"):  # any error_detail is a NACK, whatever its code
                ts.nacks += 1
                ts.last_nack = req.error_detail.message or f"code {req.error_detail.code}"
                ts.nacked_version = version or ts.sent_version
                log.warning(
                    "xDS NACK from %s for %s (nonce %s, version %s): %s",
                    conn.node_id,
                    type_url,
                    req.response_nonce,
                    version,
                    ts.last_nack,
                )
            elif version is not None:
                ts.acked_version = version
                ts.acked_at = time.time()
                ts.nacked_version = ""
        subscribe = list(req.resource_names_subscribe)
        unsubscribe = list(req.resource_names_unsubscribe)
        if req.response_nonce and not subscribe and not unsubscribe:
            return  # a plain ACK/NACK
        if apply_subscription(ts, subscribe, unsubscribe, dict(req.initial_resource_versions)):
            conn.wake.set()

    async def _push_loop(self, conn: Connection, context: grpc.aio.ServicerContext) -> None:
        while True:
            await conn.wake.wait()
            conn.wake.clear()
            # Plan every type against one instant of the cache (no await in between), then write in the
            # order the module docstring states: referenced upserts, the rest, referenced removals.
            plans = {t: self._plan(t, ts) for t, ts in list(conn.types.items()) if ts.subscribed}
            for type_url in REFERENCED_TYPES:
                plan = plans.get(type_url)
                if plan is not None and (plan[0] or plan[2]):
                    await self._write(conn, type_url, plan[0], [], context)
            for type_url, plan in plans.items():
                if type_url not in REFERENCED_TYPES and plan is not None and (plan[0] or plan[1] or plan[2]):
                    await self._write(conn, type_url, plan[0], plan[1], context)
            for type_url in REFERENCED_TYPES:
                plan = plans.get(type_url)
                if plan is not None and plan[1]:
                    await self._write(conn, type_url, [], plan[1], context)

    def _plan(self, type_url: str, ts: TypeStatus) -> tuple[list[Resource], list[str], bool] | None:
        """(resources to send, names to remove, must answer even if empty) for one type, or None."""
        seq = self.cache.type_seq(type_url)
        answer, ts.answer = list(dict.fromkeys(ts.answer)), []
        first = not ts.initial_sent
        if not first and seq <= ts.seen_seq and not answer and not ts.resync:
            return None
        since = 0 if first or ts.resync else ts.seen_seq
        send, removed = self.cache.diff(type_url, ts.known, since)
        ts.seen_seq, ts.resync = seq, False
        if not ts.wildcard:
            send = [r for r in send if self._wanted(type_url, ts, r.name)]
        sent = {r.name for r in send}
        for name in answer:
            found = self.cache.resolve(type_url, name)
            if not ts.wildcard and (not found or found[0].name != name) and name not in ts.alias_subs:
                # an alias, or not there yet: watched, so its later arrival is pushed (within a bound)
                if len(ts.alias_subs) < self.max_unresolved_names:
                    ts.alias_subs.add(name)
                else:
                    ts.names_refused += 1
                    if ts.names_refused == 1:
                        log.warning("an xDS stream subscribed over %d unresolved %s names; further ones are "
                                    "answered but not watched", self.max_unresolved_names, type_url)
            if not found:
                if name not in removed:
                    removed.append(name)  # "removed" is how delta xDS says "no such resource"
                continue
            for res in found:
                if not ts.wildcard:
                    ts.names.add(res.name)
                if res.name not in sent:
                    sent.add(res.name)
                    send.append(res)
        return send, removed, first or bool(answer)

    def _wanted(self, type_url: str, ts: TypeStatus, name: str) -> bool:
        if name in ts.names:
            return True
        if any(a in ts.alias_subs for a in self.cache.aliases(type_url, name)):
            ts.names.add(name)
            return True
        return False

    async def _write(
        self,
        conn: Connection,
        type_url: str,
        send: list[Resource],
        removed: list[str],
        context: grpc.aio.ServicerContext,
    ) -> None:
        ts = conn.types[type_url]
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
                    "nacked_version": ts.nacked_version,
                    "names_refused": ts.names_refused,
                    "wildcard": ts.wildcard,
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
