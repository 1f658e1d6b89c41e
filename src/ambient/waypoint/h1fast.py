"""A fast path for the common HTTP/1.1 messages, beside `h11` (which stays the reference for everything else).

`h11` costs the waypoint more CPU than anything else it does per request (event objects, state machine,
header normalisation, all in Python). Most traffic is plain: an HTTP/1.1 request in origin-form with one
Host, no body or a Content-Length body; a response with a Content-Length body. The parsers and writers
here handle such messages directly, and `FastConn` / `FastBody` / `FastWriter` are the downstream
connection, request body and response writer built on them; `ambient.waypoint.http1` uses them and hands
anything else to `h11`.

Invariants:
- Never more permissive than h11: every field is checked with h11's own grammar (the patterns of
  `h11._abnf`, compiled over bytes; h11 is pinned and checked at first use, see `enabled`: with the setting
  AMBIENT_FAST_PATHS=0, another h11 version or missing names, h11 handles every message); a message the fast
  parser does not accept in full
  gives None, and the caller falls back to h11 from the first byte of that message, so h11 decides (and
  words) every rejection, exactly as before.
- Only messages whose framing is unambiguous are taken: no Transfer-Encoding, at most one Content-Length
  (ASCII digits), no `Connection` other than keep-alive, no Expect/Upgrade, HTTP/1.1 only.
- Output is what h11 would write for the same events (lower-case names as given, `HTTP/1.1 <code> <reason>`
  with Envoy's reason phrase (`messages.reason_phrase`, given to h11 too), Transfer-Encoding chunked
  appended when a body has no length); headers that h11 would
  refuse to send (CR/LF in a value, a bad name, conflicting lengths) are refused here too: None, and the
  caller writes with h11 (upstream requests) or fails the exchange and closes (responses), as h11 did.
- Bounded memory, as with h11: a head is parsed once CRLF CRLF is buffered and only within
  `limits.max_header_bytes` (beyond it, h11 answers 431); a Content-Length body moves one read at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass

import h11

from ambient.core import fastpaths
from ambient.hbone.errors import HboneError
from ambient.hbone.pipe import ByteStream
from ambient.waypoint.deadline import IoDeadline
from ambient.waypoint.errors import HttpProtocolError
from ambient.waypoint.messages import Limits, Request, reason_phrase, strip_hop_by_hop

READ_CHUNK = 64 * 1024

PINS = {"h11": "0.16.0"}
PRIVATE_NAMES = ("h11._abnf:token", "h11._abnf:field_vchar", "h11._abnf:field_content")


def _grammar() -> tuple[bytes, bytes, bytes] | None:
    """h11's grammar (h11._abnf), as bytes; None when this h11 does not have it (the fast path is then off)."""
    if fastpaths.missing_names(PRIVATE_NAMES):
        return None
    from h11 import _abnf

    return (_abnf.token.encode("ascii"), _abnf.field_vchar.encode("ascii"), _abnf.field_content.encode("ascii"))


_NEVER = rb"(?!)"  # a pattern that matches nothing (no grammar: the fast path is off anyway)
_GRAMMAR = _grammar()


def enabled() -> bool:
    """Whether the fast path runs in this process (`core.fastpaths`: setting, h11 version, h11._abnf names);
    when not, `http1` uses h11 for every message."""
    return _GRAMMAR is not None and fastpaths.enabled("waypoint HTTP/1.1", PINS, PRIVATE_NAMES)


# h11's grammar, compiled over bytes (so that \s is ASCII whitespace only, as in h11)
_TOKEN, _FIELD_VCHAR, _FIELD_CONTENT = _GRAMMAR or (_NEVER, _NEVER, _NEVER)
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (/[\x21-\x7e]*) HTTP/1\.1")
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([0-9]{3})(?: (?:[ \t]|" + _FIELD_VCHAR + rb")*)?")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*((?:" + _FIELD_CONTENT + rb")?)[ \t]*")
# outgoing names and values, as str (ASCII-only classes: \s must not match latin-1 whitespace like \xa0)
_NAME = re.compile(_TOKEN.decode("ascii"))
_VALUE = re.compile("(?:" + _FIELD_CONTENT.decode("ascii") + ")?", re.ASCII)
_METHOD = re.compile(_TOKEN)
_TARGET = re.compile(rb"[\x21-\x7e]+")
_DIGITS = re.compile(rb"[0-9]+")

# request headers that change framing or connection handling: such requests go to h11
_REQUEST_SPECIAL = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"connection", b"content-length",
                              b"host"})
_RESPONSE_SPECIAL = frozenset({b"transfer-encoding", b"connection", b"content-length"})
NO_BODY_STATUS = (204, 304)


@dataclass(slots=True)
class Head:
    """A parsed request or response head (names lower-cased, values decoded as latin-1)."""

    method: str  # requests only
    target: str  # requests only
    status: int  # responses only
    headers: list[tuple[str, str]]
    host: str
    content_length: int | None


def _parse_fields(lines: list[bytes], special: frozenset[bytes]) -> tuple[list[tuple[str, str]], dict[bytes, bytes],
                                                                            ] | None:
    headers: list[tuple[str, str]] = []
    seen: dict[bytes, bytes] = {}
    match = _HEADER_LINE.fullmatch
    for line in lines:
        m = match(line)
        if m is None:  # obs-fold, bad name, control characters, bare LF ...: h11 decides
            return None
        name = m.group(1).lower()
        value = m.group(2)
        if name in special:
            if name in seen:  # repeated framing header: h11 decides
                return None
            seen[name] = value
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    return headers, seen


def parse_request_head(head: bytes) -> Head | None:
    """`head`: the request line and header lines, without the final CRLF CRLF. None: leave it to h11."""
    lines = head.split(b"\r\n")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        return None
    method = m.group(1)
    if method == b"CONNECT":
        return None
    parsed = _parse_fields(lines[1:], _REQUEST_SPECIAL)
    if parsed is None:
        return None
    headers, seen = parsed
    host = seen.get(b"host")
    if host is None or b"transfer-encoding" in seen or b"expect" in seen or b"upgrade" in seen:
        return None
    connection = seen.get(b"connection")
    if connection is not None and connection.lower() != b"keep-alive":
        return None
    length = seen.get(b"content-length")
    if length is not None and _DIGITS.fullmatch(length) is None:
        return None
    return Head(method.decode("latin-1"), m.group(2).decode("latin-1"), 0, headers, host.decode("latin-1"),
                int(length) if length is not None else None)


def parse_response_head(head: bytes) -> Head | None:
    """A final (2xx-5xx) HTTP/1.1 response head with Content-Length framing (or a status that has no body).
    None: leave it to h11 (1xx, chunked, read-until-close, Connection: close, anything odd)."""
    lines = head.split(b"\r\n")
    m = _STATUS_LINE.fullmatch(lines[0])
    if m is None:
        return None
    status = int(m.group(1))
    if status < 200:
        return None
    parsed = _parse_fields(lines[1:], _RESPONSE_SPECIAL)
    if parsed is None:
        return None
    headers, seen = parsed
    if b"transfer-encoding" in seen:
        return None
    connection = seen.get(b"connection")
    if connection is not None and connection.lower() != b"keep-alive":
        return None
    length = seen.get(b"content-length")
    if length is not None and _DIGITS.fullmatch(length) is None:
        return None
    return Head("", "", status, headers, "", int(length) if length is not None else None)


def header_block(headers: list[tuple[str, str]]) -> bytes | None:
    """`name: value\\r\\n` lines as h11 writes them; None when h11 would refuse a header (or it is not latin-1).
    Each name and value is checked on its own: a value with CRLF inside must not pass as two headers."""
    name_ok, value_ok = _NAME.fullmatch, _VALUE.fullmatch
    for k, v in headers:
        if name_ok(k) is None or value_ok(v) is None:
            return None
    try:
        return "".join([f"{k}: {v}\r\n" for k, v in headers]).encode("latin-1")
    except UnicodeEncodeError:
        return None


def request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes | None:
    """An HTTP/1.1 request head; `headers` must start with Host (as h11 puts it). None: let h11 write it."""
    try:
        line = f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
    except UnicodeEncodeError:
        return None
    if _METHOD.fullmatch(line, 0, len(method)) is None or _TARGET.fullmatch(line, len(method) + 1,
                                                                            len(line) - 11) is None:
        return None
    block = header_block(headers)
    return None if block is None else line + block + b"\r\n"


@dataclass(slots=True)
class ResponseFraming:
    head: bytes
    length: int | None  # body bytes to send (None: chunked)
    length_framed: bool  # a Content-Length header was given


def response_head(status: int, headers: list[tuple[str, str]], head_request: bool) -> ResponseFraming | None:
    """The head h11 would send for a response to a keep-alive HTTP/1.1 request and how to frame its body.
    `headers` are already without hop-by-hop headers. None: h11 would refuse it (caller fails the response)."""
    if not 200 <= status < 1000:
        return None
    lengths = [v for k, v in headers if k == "content-length"]
    length: int | None
    if lengths:
        values = {p.strip() for v in lengths for p in v.split(",")}
        if len(values) != 1:
            return None
        value = values.pop()
        if not (value.isascii() and value.isdigit()):
            return None
        length = int(value)
        if len(lengths) > 1 or value != lengths[0]:  # h11 sends the one normalised value
            headers = [(k, v) for k, v in headers if k != "content-length"] + [("content-length", value)]
    elif status in NO_BODY_STATUS:
        length = 0
    else:
        length = None  # a body of unknown length: chunked
        headers = [*headers, ("Transfer-Encoding", "chunked")]
    if status in NO_BODY_STATUS or head_request:
        length = 0
    block = header_block(headers)
    if block is None:
        return None
    return ResponseFraming(b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status)) + block + b"\r\n", length,
                           bool(lengths))


_H11_HEAD_END = re.compile(rb"\n\r?\n")


def not_plain_yet(buf: bytearray, max_head: int) -> bool:
    """For a buffer without CRLF CRLF: would h11 already act on it (an obviously invalid first byte, a head
    ended by bare LFs, too many bytes)? Then the fast path must not wait for more."""
    return buf[0] < 0x21 or len(buf) > max_head or _H11_HEAD_END.search(buf) is not None


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def last_chunk(trailers: list[tuple[str, str]]) -> bytes | None:
    block = header_block(trailers) if trailers else b""
    return None if block is None else b"0\r\n" + block + b"\r\n"


# ------------------------------------------------------------------------------- downstream connection


class FastConn:
    """The fast path's side of a downstream connection: the bytes read and not yet parsed, and the timeouts of
    its reads and of the responses' writes (one reusable timer each, see `deadline`; `close` releases them)."""

    def __init__(self, stream: ByteStream, limits: Limits, initial: bytes) -> None:
        self.stream = stream
        self.limits = limits
        self.buf = bytearray(initial)
        self.eof = False
        self.read_deadline = IoDeadline()
        self.write_deadline = IoDeadline()
        self.loop = asyncio.get_running_loop()  # once: asking per request costs a getpid() system call (3.11)

    def close(self) -> None:
        self.read_deadline.close()
        self.write_deadline.close()

    async def next_head(self) -> Head | bool | None:
        """The next plain request head; None on a clean close or an idle timeout; False when the buffered
        bytes are not a plain request (the caller hands them to h11, which decides)."""
        buf = self.buf
        limits = self.limits
        loop = self.loop
        deadline = loop.time() + limits.header_timeout if buf else None
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                if end + 4 > limits.max_header_bytes:
                    return False
                head = parse_request_head(bytes(buf[:end]))
                if head is None:
                    return False
                del buf[:end + 4]
                return head
            if buf and (self.eof or not_plain_yet(buf, limits.max_header_bytes)):
                return False
            if self.eof:
                return None
            wait = limits.idle_timeout if deadline is None else max(0.0, deadline - loop.time())
            try:
                with self.read_deadline.within(wait):
                    data = await self.stream.read(READ_CHUNK)
            except TimeoutError:
                if deadline is not None:
                    raise HttpProtocolError("request head not completed in time", status=408) from None
                return None
            if not data:
                self.eof = True
                continue
            buf += data
            if deadline is None:
                deadline = loop.time() + limits.header_timeout

    def hand_to_h11(self, conn: h11.Connection) -> None:
        conn.receive_data(bytes(self.buf))
        self.buf.clear()
        if self.eof:
            conn.receive_data(b"")


class FastBody:
    """A Content-Length request body read by the fast path."""

    def __init__(self, fc: FastConn, length: int) -> None:
        self._fc = fc
        self.remaining = length

    @property
    def done(self) -> bool:
        return self.remaining == 0

    async def read(self, wait: float | None = None) -> bytes:
        if self.remaining == 0:
            return b""
        fc = self._fc
        if not fc.buf:
            if fc.eof:
                raise HttpProtocolError("client closed the connection in the middle of the request body")
            try:
                with fc.read_deadline.within(fc.limits.idle_timeout if wait is None else wait):
                    data = await fc.stream.read(READ_CHUNK)
            except TimeoutError:
                raise HttpProtocolError("request body stalled", status=408) from None
            if not data:
                fc.eof = True
                raise HttpProtocolError("client closed the connection in the middle of the request body")
            fc.buf += data
        n = min(self.remaining, len(fc.buf))
        data = bytes(fc.buf[:n])
        del fc.buf[:n]
        self.remaining -= n
        return data

    async def drain(self, budget: int = 64 * 1024) -> bool:
        """Read and drop the rest (see `_drain_body`); True when the body ended."""
        try:
            while self.remaining:
                budget -= len(await self.read(self._fc.limits.header_timeout))
                if budget < 0:
                    return False
        except (HttpProtocolError, HboneError, OSError):
            return False
        return True


class FastWriter:
    """The response to a fast-path request, written as h11 would write it."""

    def __init__(self, stream: ByteStream, head: bool, write_timeout: float, deadline: IoDeadline | None = None,
                 ) -> None:
        self._stream = stream
        self._head = head
        self._write_timeout = write_timeout
        self._deadline = deadline or IoDeadline()  # the connection's (FastConn.write_deadline)
        self._started = False
        self._ended = False
        self._remaining: int | None = None  # body bytes still due (None: chunked)
        self._pending = b""

    @property
    def started(self) -> bool:
        return self._started

    @property
    def ended(self) -> bool:
        return self._ended

    async def _send(self, data: bytes) -> None:
        data = self._pending + data
        self._pending = b""
        if data:
            try:
                with self._deadline.within(self._write_timeout):
                    await self._stream.write(data)
            except TimeoutError:
                raise HttpProtocolError("client stopped reading", status=408) from None

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self._started = True
        framing = response_head(status, strip_hop_by_hop(headers), self._head)
        if framing is None:
            raise HttpProtocolError(f"cannot send response {status}: invalid status or headers", status=502)
        self._remaining = framing.length
        self._pending = framing.head  # sent with the first body bytes: one tunnel frame instead of two

    async def write(self, data: bytes) -> None:
        if not data or self._head:
            return
        if self._remaining is None:
            await self._send(chunk(data))
            return
        if len(data) > self._remaining:
            raise HttpProtocolError("response body longer than its content-length", status=502)
        self._remaining -= len(data)
        await self._send(data)

    async def end(self, trailers: list[tuple[str, str]] | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        if self._remaining is None:
            last = last_chunk(trailers or [])
            if last is None:
                raise HttpProtocolError("invalid response trailers", status=502)
            await self._send(last)
        elif self._remaining:
            raise HttpProtocolError("response body shorter than its content-length", status=502)
        else:
            await self._send(b"")


def fast_request(head: Head, fc: FastConn) -> tuple[Request, FastBody]:
    # as `_build_request` for a plain origin-form HTTP/1.1 head (the fast parser took no other kind)
    body = FastBody(fc, head.content_length or 0)
    clean = [(k, v) for k, v in strip_hop_by_hop(head.headers) if k != "host"]
    return Request(head.method, head.target, head.host, clean, body, "HTTP/1.1", content_length=head.content_length,
                   has_body=bool(head.content_length)), body


async def fast_error_response(stream: ByteStream, status: int, text: str, head: bool) -> None:
    """What `_error_response` sends, for a request h11 never saw."""
    body = text.encode()
    data = (b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, reason_phrase(status), len(body))) + (b"" if head else body)
    with contextlib.suppress(HboneError, OSError):
        await stream.write(data)
