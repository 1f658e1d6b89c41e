"""Re-evaluation of live connections on a consistent view of the state.

Role: the node proxy re-checks its live connections on every state change (live revocation). xDS delivers
Addresses and Authorizations in separate responses, so a published view can briefly hold a workload that
names a policy not received yet. A *new* connection to it fails closed on such a view (`authz.evaluate`),
but a *live* connection must not be torn down on a state that is not yet consistent (an ALLOW being applied
would otherwise cut the very connections it allows). `ConsistentChanges` wraps a store listener and hands
it each change with a view in which every workload naming a missing policy is replaced by its version from
the last view it delivered: the connection is judged by the policies that workload had until the missing
one arrives, and the change that brings it is judged on the complete state.

Invariants:
- Pure bookkeeping, synchronous, in the state writer's context (it is a store listener).
- Only workloads with dangling references are replaced; every other workload and every policy are the
  latest, so a DENY takes effect at once for everything whose picture is complete.
- A workload with no earlier version is passed as it is (nothing can be live to it: new connections to it
  failed closed while its reference dangled).
- The delivered view is never published to the data path: new connections keep deciding on the store's
  current view (fail closed).
- Each deferral is counted (`deferred`) and logged once per (workload, missing policies).
"""

from __future__ import annotations

import dataclasses
import logging

from ambient.state.model import Workload
from ambient.state.store import Listener, StateChange, StateView

log = logging.getLogger(__name__)


def consistent_view(current: StateView, fallback: StateView) -> tuple[StateView, dict[str, tuple[str, ...]]]:
    """(`current` with each workload that names a missing policy replaced by its `fallback` version,
    uid -> the missing policy keys). Returns `current` itself when nothing dangles."""
    dangling = current.dangling_policy_refs()
    if not dangling:
        return current, {}
    earlier: dict[str, Workload | None] = {}
    for uid in dangling:
        before = fallback.workload(uid)
        if before is not None:
            earlier[uid] = before
    return (current.with_workloads(earlier) if earlier else current), dangling


class ConsistentChanges:
    """A store listener that forwards every change to `listener` on a consistent view (module docstring)."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._last: StateView | None = None
        self._logged: dict[str, tuple[str, ...]] = {}
        self.deferred = 0  # changes delivered with at least one workload held at an earlier version

    def __call__(self, change: StateChange) -> None:
        view, dangling = consistent_view(change.current, self._last if self._last is not None else change.previous)
        self._last = view
        if dangling:
            self.deferred += 1
            for uid, keys in dangling.items():
                if self._logged.get(uid) != keys:
                    wl = change.current.workload(uid)
                    who = f"{wl.namespace}/{wl.name}" if wl is not None else uid
                    log.info(
                        "live connections to %s judged on its previous policies: %s not received yet",
                        who,
                        ", ".join(keys),
                    )
            self._logged = dict(dangling)
            change = dataclasses.replace(change, current=view)
        elif self._logged:
            self._logged = {}
        self._listener(change)
