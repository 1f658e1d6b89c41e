"""Indexed stores of workloads, services and authorization policies, with exactly one writer.

Role: hold what the node proxy knows about the mesh (from delta xDS or a static file) and answer the
lookups of the data path (by uid, by (network, ip), by identity, by VIP, by hostname, policies by scope).

Invariants:
- ONE writer. `StateStore.take_writer()` hands out the only `StateWriter`; a second call raises. The xDS
  client (or the static-file loader) owns it. Conversion from protobuf happens *before* `apply`, so a
  malformed resource never leaves a half-applied delta.
- Readers never lock and never see a partial update: `StateStore.current` is an immutable `StateView`;
  `apply` builds the next view copy-on-write (shallow dict copies, O(N) pointer copies, no deep copies)
  and publishes it with a single reference assignment. A reader that holds a view keeps a consistent
  picture for as long as it holds it.
- Listeners run synchronously after the swap, in the writer's context, each isolated: one that raises is
  logged and does not prevent the others or the store from progressing.
- A view may hold a workload naming a policy it lacks (xDS delivers Addresses and Authorizations in separate
  responses): `dangling_policy_refs()` lists them from an index of references (cheap when there are none).
  New connections fail closed on such a view; live ones are re-evaluated through `state.consistency`.
- Index values that can hold several members keep them in order of arrival; a lookup that wants one member
  returns the most recent (e.g. two workloads claiming the same IP: the last upsert wins, and removing it
  uncovers the earlier one rather than leaving a hole).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ambient.state.errors import WriterTakenError
from ambient.state.model import (
    Authorization,
    IPAddress,
    NetworkMode,
    Scope,
    Service,
    Workload,
    canonical_ip,
    service_key,
)

log = logging.getLogger(__name__)

AddrKey = tuple[str, IPAddress]  # (network, ip)


@dataclass(frozen=True)
class StateDelta:
    """An xDS-like change: upserts plus removals by resource name, applied atomically.

    `removed_addresses` are `istio.workload.Address` resource names: a workload uid or a service
    "namespace/hostname" (a uid is tried first, as the reference does). `removed_policies` are
    "namespace/name". With `replace=True` the delta is a full state: everything not in it is removed
    (a state-of-the-world load, e.g. a static config file).
    """

    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    policies: tuple[Authorization, ...] = ()
    removed_addresses: tuple[str, ...] = ()
    removed_policies: tuple[str, ...] = ()
    replace: bool = False


@dataclass(frozen=True)
class StateChange:
    """What one `apply` changed: keys upserted and removed per kind, and both views."""

    previous: StateView
    current: StateView
    workloads_upserted: frozenset[str] = frozenset()
    workloads_removed: frozenset[str] = frozenset()
    services_upserted: frozenset[str] = frozenset()
    services_removed: frozenset[str] = frozenset()
    policies_upserted: frozenset[str] = frozenset()
    policies_removed: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (
            self.workloads_upserted
            or self.workloads_removed
            or self.services_upserted
            or self.services_removed
            or self.policies_upserted
            or self.policies_removed
        )

    @property
    def policies_changed(self) -> bool:
        """True when authorization outcomes may differ (policies, or workloads' policy references)."""
        return bool(self.policies_upserted or self.policies_removed or self.workloads_upserted)


class _Multi:
    """A copy-on-write multimap: key -> ordered set of members (a dict used as an ordered set).

    Published views share the inner sets. A forked (writable) copy duplicates an inner set the first time
    an apply touches that key, then mutates its private copy in place, so one apply costs O(touched keys
    + their sizes) rather than O(members) per add: 10,000 pods of one service account stay linear.
    """

    __slots__ = ("_data", "_owned")

    def __init__(self, data: dict[Any, dict[str, None]] | None = None) -> None:
        self._data: dict[Any, dict[str, None]] = data if data is not None else {}
        self._owned: set[Any] | None = None  # keys whose inner set this (writable) copy owns

    def fork(self) -> _Multi:
        forked = _Multi(dict(self._data))
        forked._owned = set()
        return forked

    def freeze(self) -> None:
        self._owned = None

    def members(self, key: Any) -> Iterable[str]:
        return self._data.get(key, {}).keys()

    def populated(self) -> Iterable[Any]:
        """Keys with at least one member."""
        return self._data.keys()

    def last(self, key: Any) -> str | None:
        inner = self._data.get(key)
        return next(reversed(inner)) if inner else None

    def add(self, key: Any, member: str) -> None:
        inner = self._writable(key)
        inner.pop(member, None)  # re-adding moves it to the end: "most recent wins"
        inner[member] = None

    def remove(self, key: Any, member: str) -> None:
        if member not in self._data.get(key, {}):
            return
        inner = self._writable(key)
        del inner[member]
        if not inner:
            del self._data[key]

    def _writable(self, key: Any) -> dict[str, None]:
        assert self._owned is not None, "a published view's index is read-only"
        inner = self._data.get(key)
        if inner is not None and key in self._owned:
            return inner
        inner = dict(inner) if inner else {}
        self._data[key] = inner
        self._owned.add(key)
        return inner


@dataclass(frozen=True)
class _Indexes:
    workloads: dict[str, Workload] = field(default_factory=dict)
    workloads_by_addr: _Multi = field(default_factory=_Multi)  # (network, ip) -> uids
    workloads_by_identity: _Multi = field(default_factory=_Multi)  # SPIFFE id -> uids
    services: dict[str, Service] = field(default_factory=dict)
    services_by_vip: _Multi = field(default_factory=_Multi)  # (network, ip) -> service keys
    services_by_hostname: _Multi = field(default_factory=_Multi)  # hostname -> service keys
    endpoints: _Multi = field(default_factory=_Multi)  # service key -> uids, in order of arrival
    policies: dict[str, Authorization] = field(default_factory=dict)
    global_policies: dict[str, None] = field(default_factory=dict)  # ordered set of keys
    namespace_policies: _Multi = field(default_factory=_Multi)  # namespace -> NAMESPACE-scope keys
    policy_refs: _Multi = field(default_factory=_Multi)  # policy key -> uids of workloads naming it

    def fork(self) -> _Indexes:
        """A writable copy: shallow dict copies, multimaps forked copy-on-write."""
        return _Indexes(
            workloads=dict(self.workloads),
            workloads_by_addr=self.workloads_by_addr.fork(),
            workloads_by_identity=self.workloads_by_identity.fork(),
            services=dict(self.services),
            services_by_vip=self.services_by_vip.fork(),
            services_by_hostname=self.services_by_hostname.fork(),
            endpoints=self.endpoints.fork(),
            policies=dict(self.policies),
            global_policies=dict(self.global_policies),
            namespace_policies=self.namespace_policies.fork(),
            policy_refs=self.policy_refs.fork(),
        )

    def freeze(self) -> _Indexes:
        for multi in (
            self.workloads_by_addr,
            self.workloads_by_identity,
            self.services_by_vip,
            self.services_by_hostname,
            self.endpoints,
            self.namespace_policies,
            self.policy_refs,
        ):
            multi.freeze()
        return self


class StateView:
    """An immutable, consistent snapshot of the state. All lookups are O(1) dict reads.

    Implements the narrow views the data path needs: `authz.evaluate.PolicyView` and
    `state.route.RouteView`.
    """

    __slots__ = ("_ix", "version")

    def __init__(self, ix: _Indexes | None = None, version: int = 0) -> None:
        self._ix = ix if ix is not None else _Indexes()
        self.version = version

    def __repr__(self) -> str:
        ix = self._ix
        return (
            f"StateView(version={self.version}, workloads={len(ix.workloads)}, "
            f"services={len(ix.services)}, policies={len(ix.policies)})"
        )

    # -- workloads
    def workload(self, uid: str) -> Workload | None:
        return self._ix.workloads.get(uid)

    def workloads(self) -> Iterable[Workload]:
        return self._ix.workloads.values()

    def workload_by_ip(self, ip: IPAddress, network: str = "") -> Workload | None:
        uid = self._ix.workloads_by_addr.last((network, canonical_ip(ip)))
        return self._ix.workloads[uid] if uid is not None else None

    def workloads_by_identity(self, identity: str) -> tuple[Workload, ...]:
        """Workloads running as a SPIFFE identity (the certificate manager's "which pods need certs")."""
        return tuple(self._ix.workloads[u] for u in self._ix.workloads_by_identity.members(identity))

    # -- services
    def service(self, key: str) -> Service | None:
        return self._ix.services.get(key)

    def service_by_hostname(self, namespace: str, hostname: str) -> Service | None:
        return self._ix.services.get(service_key(namespace, hostname))

    def services_by_hostname(self, hostname: str) -> tuple[Service, ...]:
        """Every namespace's Service with this hostname (the DNS proxy's lookup)."""
        return tuple(self._ix.services[k] for k in self._ix.services_by_hostname.members(hostname))

    def services(self) -> Iterable[Service]:
        return self._ix.services.values()

    def service_by_vip(self, ip: IPAddress, network: str = "") -> Service | None:
        key = self._ix.services_by_vip.last((network, canonical_ip(ip)))
        return self._ix.services[key] if key is not None else None

    def endpoints(self, key: str) -> tuple[Workload, ...]:
        """Workloads backing the Service `key` ("ns/hostname"), in order of arrival (deterministic for a
        given sequence of deltas, which keeps seeded load-balancing tests reproducible)."""
        return tuple(self._ix.workloads[u] for u in self._ix.endpoints.members(key))

    # -- policies
    def policy(self, key: str) -> Authorization | None:
        return self._ix.policies.get(key)

    def policies(self) -> Iterable[Authorization]:
        return self._ix.policies.values()

    def global_policies(self) -> tuple[Authorization, ...]:
        return tuple(self._ix.policies[k] for k in self._ix.global_policies)

    def namespace_policies(self, namespace: str) -> tuple[Authorization, ...]:
        """Policies with scope NAMESPACE living in `namespace`."""
        return tuple(self._ix.policies[k] for k in self._ix.namespace_policies.members(namespace))

    def dangling_policy_refs(self) -> dict[str, tuple[str, ...]]:
        """uid -> policy keys the workload names that this view does not hold ({} for a consistent view).
        Cost: O(distinct referenced policies), not O(workloads)."""
        out: dict[str, list[str]] = {}
        for key in self._ix.policy_refs.populated():
            if key not in self._ix.policies:
                for uid in self._ix.policy_refs.members(key):
                    out.setdefault(uid, []).append(key)
        return {uid: tuple(keys) for uid, keys in out.items()}

    def with_workloads(self, workloads: dict[str, Workload | None]) -> StateView:
        """A copy of this view with some workloads replaced (None: removed); same version. For building a
        consistent view to re-evaluate live connections on (`state.consistency`)."""
        ix = self._ix.fork()
        for uid, wl in workloads.items():
            _remove_workload(ix, uid)
            if wl is not None:
                _add_workload(ix, wl)
        return StateView(ix.freeze(), self.version)

    # -- debug
    def config_dump(self) -> dict[str, Any]:
        """A JSON-able dict with keys `workloads`, `services`, `policies` (the admin /config_dump)."""
        from ambient.state.dump import dump_state

        return dump_state(self)


Listener = Callable[[StateChange], None]


class StateStore:
    """Holds the current `StateView`; hands out its single writer; notifies listeners of changes."""

    def __init__(self) -> None:
        self._current = StateView()
        self._writer: StateWriter | None = None
        self._listeners: list[Listener] = []

    @property
    def current(self) -> StateView:
        """The latest published view. Cheap: grab it once per connection/decision and use it throughout."""
        return self._current

    def take_writer(self) -> StateWriter:
        if self._writer is not None:
            raise WriterTakenError(
                "this state store already has a writer",
                hint="only the xDS client (or the static config loader) may write; readers use .current",
            )
        self._writer = StateWriter(self)
        return self._writer

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(change)` after each non-empty apply. Returns a function that unsubscribes."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _publish(self, change: StateChange) -> None:
        self._current = change.current  # the one atomic swap readers observe
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # a broken listener must not stall the state or the other listeners
                log.exception("state change listener %r failed", listener)


class StateWriter:
    """The single writer of a `StateStore`. Get it with `StateStore.take_writer()`."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def apply(self, delta: StateDelta) -> StateChange:
        """Apply `delta` atomically and publish the new view. Returns what changed."""
        prev = self._store.current
        ix = _Indexes().fork() if delta.replace else prev._ix.fork()
        w_up: set[str] = set()
        w_rm: set[str] = set()
        s_up: set[str] = set()
        s_rm: set[str] = set()
        p_up: set[str] = set()
        p_rm: set[str] = set()

        if delta.replace:
            # Report as removed whatever the full state no longer contains.
            w_rm = set(prev._ix.workloads) - {w.uid for w in delta.workloads}
            s_rm = set(prev._ix.services) - {s.key for s in delta.services}
            p_rm = set(prev._ix.policies) - {p.key for p in delta.policies}
        else:
            for name in delta.removed_addresses:
                if name in ix.workloads:
                    _remove_workload(ix, name)
                    w_rm.add(name)
                elif name in ix.services:
                    _remove_service(ix, name)
                    s_rm.add(name)
            for name in delta.removed_policies:
                if name in ix.policies:
                    _remove_policy(ix, name)
                    p_rm.add(name)

        # An upsert equal to what the previous view held is not reported (xDS resends are common); one
        # removed and re-added identically in the same delta is neither removed nor upserted.
        for wl in delta.workloads:
            if ix.workloads.get(wl.uid) != wl:
                _remove_workload(ix, wl.uid)
                _add_workload(ix, wl)
            if prev._ix.workloads.get(wl.uid) != wl:
                w_up.add(wl.uid)
            w_rm.discard(wl.uid)
        for svc in delta.services:
            if ix.services.get(svc.key) != svc:
                _remove_service(ix, svc.key)
                _add_service(ix, svc)
            if prev._ix.services.get(svc.key) != svc:
                s_up.add(svc.key)
            s_rm.discard(svc.key)
        for pol in delta.policies:
            if ix.policies.get(pol.key) != pol:
                _remove_policy(ix, pol.key)
                _add_policy(ix, pol)
            if prev._ix.policies.get(pol.key) != pol:
                p_up.add(pol.key)
            p_rm.discard(pol.key)

        change = StateChange(
            previous=prev,
            current=StateView(ix.freeze(), prev.version + 1),
            workloads_upserted=frozenset(w_up),
            workloads_removed=frozenset(w_rm),
            services_upserted=frozenset(s_up),
            services_removed=frozenset(s_rm),
            policies_upserted=frozenset(p_up),
            policies_removed=frozenset(p_rm),
        )
        if change.empty:
            return StateChange(previous=prev, current=prev)
        self._store._publish(change)
        return change


# ---------------------------------------------------------------------------------- index maintenance


def _by_addr(wl: Workload) -> bool:
    """A host-network workload shares its node's IP with every other one on that node: ztunnel never looks
    it up by address (`WorkloadStore::insert` skips HostNetwork), so an IP names the pod-network workload."""
    return wl.network_mode is not NetworkMode.HOST_NETWORK


def _add_workload(ix: _Indexes, wl: Workload) -> None:
    ix.workloads[wl.uid] = wl
    if _by_addr(wl):
        for ip in wl.addresses:
            ix.workloads_by_addr.add((wl.network, canonical_ip(ip)), wl.uid)
    ix.workloads_by_identity.add(wl.identity, wl.uid)
    for svc in wl.services:
        ix.endpoints.add(svc, wl.uid)
    for key in wl.authorization_policies:
        ix.policy_refs.add(key, wl.uid)


def _remove_workload(ix: _Indexes, uid: str) -> None:
    wl = ix.workloads.pop(uid, None)
    if wl is None:
        return
    if _by_addr(wl):
        for ip in wl.addresses:
            ix.workloads_by_addr.remove((wl.network, canonical_ip(ip)), uid)
    ix.workloads_by_identity.remove(wl.identity, uid)
    for svc in wl.services:
        ix.endpoints.remove(svc, uid)
    for key in wl.authorization_policies:
        ix.policy_refs.remove(key, uid)


def _add_service(ix: _Indexes, svc: Service) -> None:
    ix.services[svc.key] = svc
    for addr in svc.addresses:
        ix.services_by_vip.add((addr.network, canonical_ip(addr.address)), svc.key)
    ix.services_by_hostname.add(svc.hostname, svc.key)


def _remove_service(ix: _Indexes, key: str) -> None:
    svc = ix.services.pop(key, None)
    if svc is None:
        return
    for addr in svc.addresses:
        ix.services_by_vip.remove((addr.network, canonical_ip(addr.address)), key)
    ix.services_by_hostname.remove(svc.hostname, key)


def _add_policy(ix: _Indexes, pol: Authorization) -> None:
    ix.policies[pol.key] = pol
    if pol.scope == Scope.GLOBAL:
        ix.global_policies[pol.key] = None
    elif pol.scope == Scope.NAMESPACE:
        ix.namespace_policies.add(pol.namespace, pol.key)


def _remove_policy(ix: _Indexes, key: str) -> None:
    pol = ix.policies.pop(key, None)
    if pol is None:
        return
    ix.global_policies.pop(key, None)
    ix.namespace_policies.remove(pol.namespace, key)


def view_of(
    workloads: Iterable[Workload] = (),
    services: Iterable[Service] = (),
    policies: Iterable[Authorization] = (),
) -> StateView:
    """A standalone view built from resources (tests, the explain command, static snapshots)."""
    store = StateStore()
    store.take_writer().apply(
        StateDelta(workloads=tuple(workloads), services=tuple(services), policies=tuple(policies))
    )
    return store.current
