"""Errors of the in-pod package (netns handling and the ZDS agent <-> proxy protocol). One base: `InpodError`.

ZDS errors split by who is at fault, because callers react differently:
- `ZdsDecodeError` (and subclasses): one packet could not be turned into a message (truncated, garbage,
  unknown message, wrong number of fds). The connection is dropped; the peer reconnects and resyncs.
- `ZdsProtocolError`: a well-formed message arrived in a state where it is not allowed (Keep after the
  snapshot, a second SnapshotSent, a bad Hello version, an unsolicited Ack). Also drops the connection.
- `ZdsNackError`: the proxy understood an Add/Del but refused it; surfaced to the agent's caller, the
  connection stays up.
- `ZdsNotConnectedError` / `ZdsConnectionError`: no proxy to talk to, or it went away mid-request; the agent
  marks the pod `pending` and retries (the snapshot on reconnect covers it anyway).
"""

from __future__ import annotations

from ambient.core.errors import AmbientError


class InpodError(AmbientError):
    """Base of the in-pod package's errors."""


class ZdsError(InpodError):
    """Base of ZDS (node agent <-> node proxy) errors."""


class ZdsDecodeError(ZdsError):
    """A packet could not be decoded into a ZDS message."""


class ZdsTruncatedError(ZdsDecodeError):
    """The packet or its ancillary data was cut short (MSG_TRUNC / MSG_CTRUNC, or a cut protobuf)."""


class ZdsMalformedError(ZdsDecodeError):
    """The packet is not a valid protobuf of the expected message type."""


class ZdsUnknownMessageError(ZdsDecodeError):
    """The message parsed but carries no known oneof variant (empty, or a variant from a newer peer)."""


class ZdsFdCountError(ZdsDecodeError):
    """An Add did not carry exactly one fd, or another message carried any fd."""


class ZdsProtocolError(ZdsError):
    """A valid message arrived in a state where the protocol does not allow it."""


class ZdsNackError(ZdsError):
    """The proxy answered an Add/Del with a non-empty `Ack.error`."""

    def __init__(self, uid: str, error: str, *, request: str = "add") -> None:
        super().__init__(
            f"node proxy refused {request} of pod {uid}: {error}",
            hint="see the node proxy's log for this pod uid; the agent retries and the pod stays 'pending'",
        )
        self.uid = uid
        self.error = error
        self.request = request


class ZdsNotConnectedError(ZdsError):
    """No node proxy is connected (or its snapshot has not finished) within the wait time."""


class ZdsConnectionError(ZdsError):
    """The connection to the peer failed or closed while a request was in flight."""
