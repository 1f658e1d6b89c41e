"""The waypoint's upstream HTTP/1.1 exchange without I/O: the request head, then response events.

Role: `Http1Upstream.exchange` (in `http1`) is a thin driver around `UpstreamExchange`: it writes what
`start()` / `body()` / `end_of_body()` return, feeds what it reads to `receive()` (b"" at end of stream),
and acts on `next_event()`: `ResponseHead`, `BodyChunk`, `ResponseEnd`, or `NEED_DATA` (read more, within the
idle timeout). Everything about bytes and framing is decided here, so it is tested without sockets.

Two paths, chosen per exchange (the fast one only when `h1fast.enabled()`):
- fast (most traffic): a request without a body, on a connection h11 has nothing pending for, is written
  with `h1fast.request_head`; a plain response (`h1fast.parse_response_head`: Content-Length or no body) is
  parsed without h11. A response that is not plain is handed to h11 from its first byte, with h11's state
  first advanced past the request (as if h11 had written it), so h11 decides every unusual message.
- h11: requests with a body (Content-Length or chunked) and everything after a hand-over.

Invariants:
- The request head always carries `host` first and never `te`; a body is framed by Content-Length when the
  length is known, else chunked.
- A head h11 refuses to write (e.g. a bad header value) is `UpstreamError` 400 DPE; a malformed response is
  502 UPE; a connection closed before the response completed is 502 UC (the driver adds `before_response`).
- `reusable()` is True only when the response completed with no byte left over and the peer did not close:
  on the fast path the buffer is empty and no end of stream was seen; on the h11 path both sides are DONE with
  no trailing data, and the connection is then cycled for the next request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import h11

from ambient.waypoint import h1fast
from ambient.waypoint.errors import UpstreamError


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    headers: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class BodyChunk:
    data: bytes


@dataclass(frozen=True, slots=True)
class ResponseEnd:
    trailers: list[tuple[str, str]] | None


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
Event = ResponseHead | BodyChunk | ResponseEnd | _NeedData

_FAST_HEAD, _FAST_BODY, _H11, _DONE = range(4)


def decode_headers(headers: Any) -> list[tuple[str, str]]:
    # latin-1 maps every byte: never fails on odd header bytes (h11 already rejected invalid ones)
    return [(bytes(k).decode("latin-1").lower(), bytes(v).decode("latin-1")) for k, v in headers]


def encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def request_headers(host: str, headers: list[tuple[str, str]], content_length: int | None,
                    has_body: bool) -> list[tuple[str, str]]:
    """The forwarded request's header fields: Host first, no TE, the body's framing last."""
    out = [("host", host), *((k, v) for k, v in headers if k != "te")]
    if content_length is not None:
        out.append(("content-length", str(content_length)))
    elif has_body:
        out.append(("transfer-encoding", "chunked"))
    return out


class UpstreamExchange:
    """One request/response on an upstream HTTP/1.1 connection whose h11 state is `conn` (see module doc)."""

    def __init__(self, conn: h11.Connection, method: str, target: str, host: str, headers: list[tuple[str, str]],
                 *, content_length: int | None, has_body: bool, max_head: int) -> None:
        self.conn = conn
        self.method = method
        self.target = target
        self.has_body = has_body
        self.max_head = max_head
        self.headers = request_headers(host, headers, content_length, has_body)
        fast = (None if has_body or conn.our_state is not h11.IDLE or conn.trailing_data[0] or not h1fast.enabled()
                else h1fast.request_head(method, target, self.headers))
        self._fast_head = fast
        self._state = _FAST_HEAD if fast is not None else _H11
        self._head = b"" if fast is not None else self._h11_head()
        self._buf = bytearray()
        self._eof = False
        self._remaining = 0
        self.got_response = False
        self.status = 0

    @property
    def fast(self) -> bool:
        return self._fast_head is not None

    def _h11_head(self) -> bytes:
        try:
            return self.conn.send(h11.Request(method=self.method, target=self.target,
                                              headers=encode_headers(self.headers))) or b""
        except h11.LocalProtocolError as exc:
            raise UpstreamError(f"cannot forward request: {exc}", status=400, flags="DPE") from None

    # ---------------------------------------------------------------- request bytes
    def start(self) -> bytes:
        """The bytes to write first: the whole request when it has no body, else its head."""
        if self._fast_head is not None:
            return self._fast_head
        if self.has_body:
            return self._head
        return self._head + (self.conn.send(h11.EndOfMessage()) or b"")

    def body(self, chunk: bytes) -> bytes:
        return self.conn.send(h11.Data(data=chunk)) or b""

    def end_of_body(self) -> bytes:
        return self.conn.send(h11.EndOfMessage()) or b""

    # ---------------------------------------------------------------- response events
    def receive(self, data: bytes) -> None:
        """Bytes read from the upstream; b"" when it closed its side."""
        if self._state == _H11:
            self.conn.receive_data(data)
            return
        if not data:
            self._eof = True
        self._buf += data

    def next_event(self) -> Event:
        """The next response event, or `NEED_DATA`. Raises `UpstreamError` for a broken response."""
        while True:
            if self._state == _FAST_HEAD:
                event = self._fast_head_event()
                if event is None:
                    continue  # handed to h11
                return event
            if self._state == _FAST_BODY:
                return self._fast_body_event()
            if self._state == _H11:
                return self._h11_event()
            raise AssertionError("the exchange already ended")

    def _fast_head_event(self) -> Event | None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if buf and (self._eof or h1fast.not_plain_yet(buf, self.max_head)):
                self._to_h11()
                return None
            if self._eof:
                raise UpstreamError("upstream closed the connection before the response was complete",
                                    status=502, flags="UC")
            return NEED_DATA
        parsed = None if end + 4 > self.max_head else h1fast.parse_response_head(bytes(buf[:end]))
        bodiless = self.method == "HEAD" or (parsed is not None and parsed.status in h1fast.NO_BODY_STATUS)
        if parsed is None or (parsed.content_length is None and not bodiless):  # e.g. read-until-close
            self._to_h11()
            return None
        del buf[:end + 4]
        self.got_response = True
        self.status = parsed.status
        self._remaining = 0 if bodiless else parsed.content_length or 0
        self._state = _FAST_BODY
        return ResponseHead(parsed.status, parsed.headers)

    def _to_h11(self) -> None:
        """Hand the response to h11 from its first byte, its state advanced past the request."""
        self._h11_head()
        self.conn.send(h11.EndOfMessage())
        self.conn.receive_data(bytes(self._buf))
        if self._eof:
            self.conn.receive_data(b"")
        self._buf.clear()
        self._state = _H11

    def _fast_body_event(self) -> Event:
        if not self._remaining:
            self._state = _DONE
            return ResponseEnd(None)
        if not self._buf:
            if self._eof:
                raise UpstreamError("upstream sent malformed HTTP/1.1: peer closed connection without sending "
                                    "complete message body", status=502, flags="UPE")
            return NEED_DATA
        n = min(self._remaining, len(self._buf))
        piece = bytes(self._buf[:n])
        del self._buf[:n]
        self._remaining -= n
        return BodyChunk(piece)

    def _h11_event(self) -> Event:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamError(f"upstream sent malformed HTTP/1.1: {exc}", status=502, flags="UPE") from None
            if event is h11.NEED_DATA:
                return NEED_DATA
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                self.got_response = True
                self.status = event.status_code
                return ResponseHead(event.status_code, decode_headers(event.headers))
            if isinstance(event, h11.Data):
                return BodyChunk(bytes(event.data))
            if isinstance(event, h11.EndOfMessage):
                self._state = _DONE
                return ResponseEnd(decode_headers(event.headers) or None)
            raise UpstreamError("upstream closed the connection before the response was complete",  # closed
                                status=502, flags="UC")

    def reusable(self) -> bool:
        """After `ResponseEnd`: whether the connection can carry the next request (cycles h11's state)."""
        if self._state != _DONE:
            return False
        if self._fast_head is not None and self.conn.our_state is h11.IDLE:
            return not self._buf and not self._eof  # bytes nobody asked for: out of sync
        conn = self.conn
        # (a peer that already closed its side, e.g. after a read-until-close body, is not reusable)
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE and not conn.trailing_data[1]:
            try:
                conn.start_next_cycle()
                return True
            except h11.LocalProtocolError:
                return False
        return False
