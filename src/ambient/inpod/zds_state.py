"""Sans-IO ZDS state machines: the proxy side (`ProxyZds`) and the agent side (`AgentZds`).

Messages in, decisions out; no sockets, no asyncio, no fd syscalls. The transport (`ambient.inpod.zds`)
reads packets, decodes them with `zds_codec`, feeds them here and performs what comes back.

Proxy side, per connection (the object itself lives across reconnections and remembers the pods it serves):

    phase      | Add          | Keep        | Del          | SnapshotSent
    -----------+--------------+-------------+--------------+------------------------------
    SNAPSHOT   | serve/replace| mark kept   | ProtocolError| -> RUNNING, reconcile
    RUNNING    | serve/replace| ProtocolErr | stop serving | ProtocolError (second one)

  `connection_started()` returns the Hello to send and enters SNAPSHOT. Re-Add of a uid already served with
  the same netns inode is idempotent (nothing to do but Ack); a different inode means the pod's sandbox was
  recreated: replace. At SnapshotSent every served pod that was neither added nor kept since Hello is torn
  down ("reconcile"). Every request is answered with an Ack; the proxy NACKs what its callbacks refuse.

Agent side, per connection:

    AWAIT_HELLO --Hello(V1)--> SNAPSHOT --Ack(SnapshotSent)--> READY
  Exactly one request is outstanding at a time (the reference is strictly request/Ack). In SNAPSHOT only
  Add/Keep/SnapshotSent may be sent; in READY only Add/Del. An Ack with no outstanding request, a Hello that
  is not V1 or arrives twice are protocol errors; an Ack with an error is returned as a NACK result.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ambient.inpod.errors import ZdsProtocolError
from ambient.inpod.zds_codec import (
    VERSION_V1,
    Ack,
    AddPod,
    DelPod,
    Hello,
    KeepPod,
    Request,
    SnapshotSent,
    WorkloadInfo,
)

# --- proxy side: decisions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartPod:
    """Start serving a pod in `netns_fd` (`replace=True`: stop the old instance of this uid first)."""

    uid: str
    info: WorkloadInfo
    netns_fd: int
    replace: bool = False


@dataclass(frozen=True)
class AlreadyServing:
    """Re-Add of a pod with the same netns: nothing to do; the transport closes the duplicate fd."""

    uid: str
    netns_fd: int


@dataclass(frozen=True)
class KeepServing:
    """Keep during the snapshot. `known=False`: the proxy has no such pod (no fd to serve it): Ack anyway."""

    uid: str
    known: bool


@dataclass(frozen=True)
class StopPod:
    """Stop serving a pod (`known=False`: not served; Del is idempotent)."""

    uid: str
    known: bool


@dataclass(frozen=True)
class SnapshotDone:
    """Reconcile: keep `keep_uids`, tear down `stale_uids` (served before but absent from the snapshot)."""

    keep_uids: frozenset[str]
    stale_uids: frozenset[str]


ProxyDecision = StartPod | AlreadyServing | KeepServing | StopPod | SnapshotDone


class ProxyPhase(enum.Enum):
    IDLE = "idle"  # not connected
    SNAPSHOT = "snapshot"  # Hello sent, receiving Add/Keep
    RUNNING = "running"  # SnapshotSent received


@dataclass
class ProxyZds:
    """Proxy-side protocol state. `served` maps uid -> netns inode of pods the proxy serves."""

    served: dict[str, int] = field(default_factory=dict)
    phase: ProxyPhase = ProxyPhase.IDLE
    _seen: set[str] = field(default_factory=set)

    def connection_started(self) -> Hello:
        """A new connection to the agent: the first packet is our Hello; a fresh snapshot follows."""
        self.phase = ProxyPhase.SNAPSHOT
        self._seen = set()
        return Hello(version=VERSION_V1)

    def connection_lost(self) -> None:
        # Pods stay served: the dataplane keeps running while the agent is away; the next snapshot reconciles.
        self.phase = ProxyPhase.IDLE
        self._seen = set()

    def receive(self, request: Request, *, netns_inode: int | None = None) -> ProxyDecision:
        """Decide what one request means. `netns_inode` (st_ino of the Add's fd) is required for an Add.

        Raises `ZdsProtocolError` for a request not allowed in the current phase; the state is then
        unchanged and the transport should NACK and drop the connection.
        """
        phase = self.phase
        if phase is ProxyPhase.IDLE:
            raise ZdsProtocolError(f"ZDS {type(request).__name__} received before the connection started")
        match request:
            case AddPod(uid=uid, info=info, netns_fd=fd):
                if netns_inode is None:
                    raise ValueError("an Add needs the netns inode of its fd")
                if phase is ProxyPhase.SNAPSHOT:
                    self._seen.add(uid)
                old = self.served.get(uid)
                self.served[uid] = netns_inode
                if old == netns_inode:
                    return AlreadyServing(uid=uid, netns_fd=fd)
                return StartPod(uid=uid, info=info, netns_fd=fd, replace=old is not None)
            case KeepPod(uid=uid):
                if phase is not ProxyPhase.SNAPSHOT:
                    raise ZdsProtocolError(
                        f"ZDS Keep for pod {uid} after the snapshot was complete",
                        hint="Keep is only valid between Hello and SnapshotSent; the agent is out of sync",
                    )
                self._seen.add(uid)
                return KeepServing(uid=uid, known=uid in self.served)
            case DelPod(uid=uid):
                if phase is not ProxyPhase.RUNNING:
                    raise ZdsProtocolError(
                        f"ZDS Del for pod {uid} during the snapshot",
                        hint="the snapshot only lists pods to add or keep; a Del must follow SnapshotSent",
                    )
                return StopPod(uid=uid, known=self.served.pop(uid, None) is not None)
            case SnapshotSent():
                if phase is not ProxyPhase.SNAPSHOT:
                    raise ZdsProtocolError(
                        "second ZDS SnapshotSent on one connection",
                        hint="a snapshot is sent once per connection; the agent is out of sync",
                    )
                keep = frozenset(self._seen)
                # A Keep for a pod we never had cannot be served (we have no netns fd for it): not kept.
                keep = frozenset(u for u in keep if u in self.served)
                stale = frozenset(self.served) - keep
                for uid in stale:
                    del self.served[uid]
                self.phase = ProxyPhase.RUNNING
                self._seen = set()
                return SnapshotDone(keep_uids=keep, stale_uids=stale)
        raise ZdsProtocolError(f"not a ZDS request: {request!r}")  # pragma: no cover

    def forget(self, uid: str) -> None:
        """The proxy could not serve a pod it was told to (its callback failed): do not count it as served."""
        self.served.pop(uid, None)


# --- agent side -----------------------------------------------------------------------------------------


class AgentPhase(enum.Enum):
    AWAIT_HELLO = "await-hello"
    SNAPSHOT = "snapshot"
    READY = "ready"


@dataclass(frozen=True)
class AckResult:
    """The answer to `request`: `error` is empty for an ACK, the proxy's reason for a NACK."""

    request: Request
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class AgentZds:
    """Agent-side protocol state for one proxy connection."""

    phase: AgentPhase = AgentPhase.AWAIT_HELLO
    outstanding: Request | None = None

    def receive_hello(self, hello: Hello) -> None:
        if self.phase is not AgentPhase.AWAIT_HELLO:
            raise ZdsProtocolError("ZDS Hello received twice on one connection")
        if hello.version != VERSION_V1:
            raise ZdsProtocolError(
                f"ZDS Hello with unsupported version {hello.version} (expected V1={VERSION_V1})",
                hint="the node proxy and node agent versions do not match; upgrade the older one",
            )
        self.phase = AgentPhase.SNAPSHOT

    def send(self, request: Request) -> Request:
        """Check that `request` may be sent now and mark it outstanding. Returns it for chaining."""
        if self.phase is AgentPhase.AWAIT_HELLO:
            raise ZdsProtocolError(f"cannot send {type(request).__name__} before the proxy's Hello")
        if self.outstanding is not None:
            raise ZdsProtocolError(
                f"cannot send {type(request).__name__}: {type(self.outstanding).__name__} still awaits its Ack"
            )
        snapshot = self.phase is AgentPhase.SNAPSHOT
        allowed: tuple[type, ...] = (AddPod, KeepPod, SnapshotSent) if snapshot else (AddPod, DelPod)
        if not isinstance(request, allowed):
            raise ZdsProtocolError(f"ZDS {type(request).__name__} is not allowed in phase {self.phase.value}")
        self.outstanding = request
        return request

    def receive_ack(self, ack: Ack) -> AckResult:
        request = self.outstanding
        if request is None:
            raise ZdsProtocolError("ZDS Ack received with no request outstanding")
        self.outstanding = None
        if isinstance(request, SnapshotSent) and ack.ok:
            self.phase = AgentPhase.READY
        return AckResult(request=request, error=ack.error)
