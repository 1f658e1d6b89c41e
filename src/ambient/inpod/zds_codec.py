"""Sans-IO codec of ZDS packets: bytes (+ fds) <-> typed messages. No sockets here.

ZDS runs over a unix SOCK_SEQPACKET socket: one protobuf message per packet, no length prefix, the pod's
netns fd in SCM_RIGHTS alongside an Add. The agent sends `WorkloadRequest`s, the proxy sends one `ZdsHello`
first and then one `WorkloadResponse` (an `Ack`) per request.

Invariants:
- Decoding validates everything that is knowable from one packet: receive flags (MSG_TRUNC/MSG_CTRUNC mean
  the kernel dropped bytes or fds), protobuf validity, a known oneof variant, and the fd count (exactly one
  for Add, zero for everything else). Each failure is a distinct `ZdsDecodeError` subclass.
- The codec never closes or dups fds: on a decode error the caller still owns the received fds and must
  close them (the transport does).
- Messages are small immutable dataclasses so the state machines and callers never touch protobuf objects.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from ambient.inpod.errors import (
    ZdsFdCountError,
    ZdsMalformedError,
    ZdsTruncatedError,
    ZdsUnknownMessageError,
)
from ambient.protocol.gen.istio.workload.zds import zds_pb2

# The receive buffer of the reference; a larger packet arrives with MSG_TRUNC and is rejected.
MAX_PACKET = 1024
# Ancillary space for this many fds: one more than any valid message carries, so "two fds" is reported
# as a wrong count rather than hidden as control-data truncation.
MAX_FDS = 2
VERSION_V1 = zds_pb2.V1


@dataclass(frozen=True)
class WorkloadInfo:
    """Who the pod is (for the proxy's logs and to pick the certificate identity)."""

    name: str = ""
    namespace: str = ""
    service_account: str = ""


@dataclass(frozen=True)
class Hello:
    """Proxy -> agent, first packet of a connection."""

    version: int = VERSION_V1


@dataclass(frozen=True)
class AddPod:
    """Agent -> proxy: serve this pod; `netns_fd` travels in SCM_RIGHTS (not in the protobuf)."""

    uid: str
    info: WorkloadInfo = field(default_factory=WorkloadInfo)
    netns_fd: int = -1


@dataclass(frozen=True)
class KeepPod:
    """Agent -> proxy, snapshot only: keep serving this pod as it is."""

    uid: str


@dataclass(frozen=True)
class DelPod:
    """Agent -> proxy: stop serving this pod."""

    uid: str


@dataclass(frozen=True)
class SnapshotSent:
    """Agent -> proxy: the snapshot is complete."""


@dataclass(frozen=True)
class Ack:
    """Proxy -> agent reply to each request. A non-empty `error` is a NACK."""

    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


Request = AddPod | KeepPod | DelPod | SnapshotSent


def _check_flags(flags: int) -> None:
    if flags & socket.MSG_TRUNC:
        raise ZdsTruncatedError(
            f"ZDS packet larger than {MAX_PACKET} bytes was truncated (MSG_TRUNC)",
            hint="the peer sent an oversized message; is it speaking ZDS?",
        )
    if flags & socket.MSG_CTRUNC:
        raise ZdsTruncatedError(
            "ZDS packet's ancillary data was truncated (MSG_CTRUNC): too many fds attached",
            hint="an Add carries exactly one netns fd; other messages carry none",
        )


def _read_varint(data: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(data):
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    return None


def _ends_early(data: bytes) -> bool:
    """True if the top-level fields run past the end of `data` (a cut packet rather than garbage).

    The protobuf runtime reports both as "corrupt"; telling them apart makes the error actionable.
    """
    pos = 0
    while pos < len(data):
        tag = _read_varint(data, pos)
        if tag is None:
            return True
        key, pos = tag
        wire_type = key & 7
        if wire_type == 0:
            v = _read_varint(data, pos)
            if v is None:
                return True
            pos = v[1]
        elif wire_type == 2:
            n = _read_varint(data, pos)
            if n is None or n[1] + n[0] > len(data):
                return True
            pos = n[1] + n[0]
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
            if pos > len(data):
                return True
        else:
            return False  # groups or invalid wire types: garbage, not truncation
    return False


def _parse(message: zds_pb2.ZdsHello | zds_pb2.WorkloadRequest | zds_pb2.WorkloadResponse, data: bytes) -> None:
    try:
        message.ParseFromString(data)
    except DecodeError as e:
        cls = ZdsTruncatedError if _ends_early(data) else ZdsMalformedError
        raise cls(
            f"cannot decode ZDS {message.DESCRIPTOR.name} ({len(data)} bytes): {e}",
            hint="the peer is not speaking ZDS or the packet was corrupted",
        ) from e


def _require_no_fds(what: str, fds: list[int]) -> None:
    if fds:
        raise ZdsFdCountError(f"ZDS {what} carried {len(fds)} fd(s); only an Add may carry one (the netns)")


# --- proxy -> agent ---------------------------------------------------------------------------------


def encode_hello(version: int = VERSION_V1) -> bytes:
    return zds_pb2.ZdsHello(version=version).SerializeToString()  # type: ignore[arg-type]


def decode_hello(data: bytes, fds: list[int] | None = None, flags: int = 0) -> Hello:
    _check_flags(flags)
    _require_no_fds("Hello", fds or [])
    msg = zds_pb2.ZdsHello()
    _parse(msg, data)
    return Hello(version=int(msg.version))


def encode_ack(error: str = "") -> bytes:
    return zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error=error)).SerializeToString()


def decode_response(data: bytes, fds: list[int] | None = None, flags: int = 0) -> Ack:
    _check_flags(flags)
    _require_no_fds("Ack", fds or [])
    msg = zds_pb2.WorkloadResponse()
    _parse(msg, data)
    if msg.WhichOneof("payload") != "ack":
        raise ZdsUnknownMessageError(
            f"ZDS response carries no known message ({len(data)} bytes, expected an Ack)",
            hint="the peer may speak a newer ZDS version",
        )
    return Ack(error=msg.ack.error)


# --- agent -> proxy ---------------------------------------------------------------------------------


def encode_request(request: Request) -> tuple[bytes, list[int]]:
    """Encode one request; returns the packet bytes and the fds to attach (the netns for an Add)."""
    msg = zds_pb2.WorkloadRequest()
    fds: list[int] = []
    match request:
        case AddPod(uid=uid, info=info, netns_fd=fd):
            if fd < 0:
                raise ValueError(f"AddPod for {uid} needs a netns fd")
            msg.add.uid = uid
            msg.add.workload_info.name = info.name
            msg.add.workload_info.namespace = info.namespace
            msg.add.workload_info.service_account = info.service_account
            fds = [fd]
        case KeepPod(uid=uid):
            msg.keep.uid = uid
        case DelPod(uid=uid):
            getattr(msg, "del").uid = uid  # `del` is a Python keyword: no attribute syntax
        case SnapshotSent():
            msg.snapshot_sent.SetInParent()
        case _:
            raise TypeError(f"not a ZDS request: {request!r}")
    data = msg.SerializeToString()
    if len(data) > MAX_PACKET:
        raise ValueError(f"ZDS request of {len(data)} bytes exceeds the {MAX_PACKET}-byte packet limit")
    return data, fds


def decode_request(data: bytes, fds: list[int] | None = None, flags: int = 0) -> Request:
    """Decode one agent -> proxy packet. On error the caller still owns (and must close) `fds`."""
    fds = fds or []
    _check_flags(flags)
    msg = zds_pb2.WorkloadRequest()
    _parse(msg, data)
    kind = msg.WhichOneof("payload")
    if kind == "add":
        if len(fds) != 1:
            raise ZdsFdCountError(
                f"ZDS Add for pod {msg.add.uid!r} carried {len(fds)} fds; exactly one (the netns) is required"
            )
        wi = msg.add.workload_info
        info = WorkloadInfo(name=wi.name, namespace=wi.namespace, service_account=wi.service_account)
        return AddPod(uid=msg.add.uid, info=info, netns_fd=fds[0])
    if kind == "keep":
        _require_no_fds("Keep", fds)
        return KeepPod(uid=msg.keep.uid)
    if kind == "del":
        _require_no_fds("Del", fds)
        return DelPod(uid=getattr(msg, "del").uid)
    if kind == "snapshot_sent":
        _require_no_fds("SnapshotSent", fds)
        return SnapshotSent()
    raise ZdsUnknownMessageError(
        f"ZDS request carries no known message ({len(data)} bytes)",
        hint="the agent may speak a newer ZDS version, or this is not a ZDS peer",
    )
