"""HTTP/1.1 for the waypoint: the downstream server and the upstream client, on `h11` with a fast path.

`serve_http1(stream, handler, limits, initial)` serves requests from one inner HBONE stream (keep-alive,
pipelining in order, request and response bodies streamed). `Http1Upstream(stream).exchange(request, host,
headers, writer, accept)` sends a request to a backend and streams the answer back (a thin driver of the
sans-IO `h1exchange.UpstreamExchange`); the connection is `reusable` afterwards when both sides finished
cleanly (the waypoint pools such connections).

Plain messages (see `h1fast`: HTTP/1.1, origin-form, Content-Length or no body, no Connection/Expect/
Upgrade/Transfer-Encoding) are parsed and written without h11, which is most of the waypoint's CPU
otherwise. Downstream, the first message that is not plain is handed to h11 from its first byte and h11
serves the rest of the connection; upstream, a bodiless request is written directly and a response that
is not plain is handed to h11 (its state advanced past the request first). h11 therefore still decides
every malformed or unusual message, with the same answers as before.

Upgrades (see `upgrade`): h11 parses a request asking for one (`Request.upgrade`); `_Writer.upgrade` answers
101 and hands the raw stream to the handler, after which the connection serves no more requests;
`Http1Upstream.exchange_upgrade` sends one on a connection that is never reused.

Invariants:
- Bounded memory: h11 buffers at most `limits.max_header_bytes` of an incomplete request head (beyond it:
  431 and close); bodies move one chunk at a time; nothing is read ahead of the handler.
- Malformed input (bad request line, bad header, bad chunked framing, missing Host) is answered with 400
  (431 for oversized heads) when no response has started, then the connection is closed; it never raises
  out of `serve_http1`. A handler failure after the response started closes the connection (the client
  sees a truncated message, never a wrong one).
- Slow heads are reaped: once the first byte of a request arrived, its head must complete within
  `limits.header_timeout`; an idle keep-alive connection is closed after `limits.idle_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import h11

from ambient.hbone.errors import HboneError
from ambient.hbone.pipe import ByteStream
from ambient.waypoint import h1fast, upgrade
from ambient.waypoint.deadline import IoDeadline
from ambient.waypoint.errors import HttpProtocolError, UpstreamError
from ambient.waypoint.h1exchange import (
    NEED_DATA,
    BodyChunk,
    ResponseEnd,
    ResponseHead,
    UpstreamExchange,
    decode_headers,
    encode_headers,
)
from ambient.waypoint.messages import Handler, Limits, Request, ResponseWriter, reason_phrase, strip_hop_by_hop

log = logging.getLogger(__name__)
READ_CHUNK = h1fast.READ_CHUNK


_decode = decode_headers
_encode = encode_headers


class _Reader:
    """Pulls h11 events, reading from the stream only when h11 needs data."""

    def __init__(self, conn: h11.Connection, stream: ByteStream, limits: Limits) -> None:
        self.conn = conn
        self.stream = stream
        self.limits = limits

    async def _feed(self, wait: float) -> None:
        async with asyncio.timeout(wait):
            data = await self.stream.read(READ_CHUNK)
        self.conn.receive_data(data)

    async def next_event(self, wait: float) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self._feed(wait)

    async def next_request(self) -> Any:
        """The next Request event; None on a clean close or an idle timeout."""
        started = bool(self.conn.trailing_data[0])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.header_timeout if started else None
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                wait = self.limits.idle_timeout if deadline is None else max(0.0, deadline - loop.time())
                try:
                    await self._feed(wait)
                except TimeoutError:
                    if deadline is not None:
                        raise HttpProtocolError("request head not completed in time", status=408) from None
                    return None
                if deadline is None and self.conn.trailing_data[0]:
                    deadline = loop.time() + self.limits.header_timeout
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            return event


class _Body:
    def __init__(self, reader: _Reader) -> None:
        self._reader = reader
        self._done = False

    async def read(self) -> bytes:
        if self._done:
            return b""
        conn = self._reader.conn
        if conn.they_are_waiting_for_100_continue and conn.our_state is h11.SEND_RESPONSE:
            await self._reader.stream.write(conn.send(h11.InformationalResponse(
                status_code=100, headers=[], reason=reason_phrase(100))) or b"")
        try:
            event = await self._reader.next_event(self._reader.limits.idle_timeout)
        except h11.RemoteProtocolError as exc:
            raise HttpProtocolError(f"malformed request body: {exc}") from None
        except TimeoutError:
            raise HttpProtocolError("request body stalled", status=408) from None
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            self._done = True
            return b""
        raise HttpProtocolError("client closed the connection in the middle of the request body")


class _Writer:
    def __init__(self, conn: h11.Connection, stream: ByteStream, head: bool, write_timeout: float) -> None:
        self._write_timeout = write_timeout
        self._conn = conn
        self._stream = stream
        self._head = head
        self._started = False
        self._ended = False
        self._length_framed = False
        self._pending = b""
        self.upgraded = False

    @property
    def started(self) -> bool:
        return self._started

    @property
    def ended(self) -> bool:
        return self._ended

    async def _send(self, event: Any) -> None:
        data = self._pending + (self._conn.send(event) or b"")
        self._pending = b""
        if data:
            try:
                # a client that stops reading (slow read) is cut off instead of holding us forever
                async with asyncio.timeout(self._write_timeout):
                    await self._stream.write(data)
            except TimeoutError:
                raise HttpProtocolError("client stopped reading", status=408) from None

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        headers = strip_hop_by_hop(headers)
        self._length_framed = any(k == "content-length" for k, _ in headers)
        self._started = True
        # held back and sent with the first body bytes: one tunnel frame instead of two
        self._pending = self._conn.send(h11.Response(status_code=status, headers=_encode(headers),
                                                     reason=reason_phrase(status))) or b""

    async def write(self, data: bytes) -> None:
        if data and not self._head:
            await self._send(h11.Data(data=data))

    async def upgrade(self, headers: list[tuple[str, str]]) -> tuple[ByteStream, bytes]:
        """Answer `101 Switching Protocols` with `headers` (see `upgrade.switching_headers`) and hand over the
        raw connection: (stream, bytes the client already sent after its request). No HTTP follows on it."""
        conn = self._conn
        if self._started or conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
            raise HttpProtocolError("cannot switch protocols here")
        self._started = self._ended = self.upgraded = True
        await self._send(h11.InformationalResponse(status_code=101, headers=_encode(headers),
                                                   reason=reason_phrase(101)))
        return self._stream, bytes(conn.trailing_data[0])

    async def end(self, trailers: list[tuple[str, str]] | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        # trailers only exist in chunked framing (never for HEAD / content-length responses)
        keep = trailers if trailers and not self._length_framed and not self._head else []
        await self._send(h11.EndOfMessage(headers=_encode(keep)))


def _build_request(event: Any, reader: _Reader) -> Request:
    if event.http_version not in (b"1.0", b"1.1"):
        raise HttpProtocolError(f"HTTP version {bytes(event.http_version).decode('latin-1')} is not supported",
                                status=505)
    method = bytes(event.method).decode("latin-1")
    target = bytes(event.target).decode("latin-1")
    headers = _decode(event.headers)
    # h11 bounds only heads still incomplete in its buffer; a head that arrived whole is measured here
    if len(target) + sum(len(k) + len(v) + 4 for k, v in headers) > reader.limits.max_header_bytes:
        raise HttpProtocolError("request head too large", status=431)
    host = next((v for k, v in headers if k == "host"), "")
    if target.startswith(("http://", "https://")):  # absolute-form (a client that thinks we are a proxy)
        parts = urlsplit(target)
        host = parts.netloc or host
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    elif not (target.startswith("/") or (method == "OPTIONS" and target == "*")):
        raise HttpProtocolError(f"unsupported request target {target[:64]!r}")
    if method == "CONNECT":
        raise HttpProtocolError("CONNECT is not supported inside the mesh tunnel", status=405)
    length_s = next((v for k, v in headers if k == "content-length"), None)
    chunked = any(k == "transfer-encoding" for k, _ in headers)
    length = int(length_s) if length_s is not None and length_s.isdigit() else None
    protocols = upgrade.requested_upgrade(headers) if event.http_version == b"1.1" else None
    if protocols is not None and (chunked or length):
        raise HttpProtocolError("an upgrade request cannot carry a body")
    clean = [(k, v) for k, v in strip_hop_by_hop(headers) if k != "host"]
    return Request(method, target, host, clean, _Body(reader), "HTTP/1.1" if event.http_version == b"1.1"
                   else "HTTP/1.0", content_length=length, has_body=chunked or bool(length), upgrade=protocols)


async def _error_response(conn: h11.Connection, stream: ByteStream, status: int, text: str) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = text.encode()
    with contextlib.suppress(h11.LocalProtocolError, HboneError, OSError):
        data = conn.send(h11.Response(status_code=status, reason=reason_phrase(status), headers=[
            (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]))
        data = (data or b"") + (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        await stream.write(data)


async def _drain_body(reader: _Reader, budget: int = 64 * 1024) -> None:
    """Read and drop what is left of a request body (often just its EndOfMessage) so the connection can be
    reused; give up (the caller then closes) beyond `budget` bytes or a stall."""
    try:
        while reader.conn.their_state is h11.SEND_BODY:
            event = await reader.next_event(reader.limits.header_timeout)
            if isinstance(event, h11.Data):
                budget -= len(event.data)
                if budget < 0:
                    return
            elif not isinstance(event, h11.EndOfMessage):
                return
    except (h11.RemoteProtocolError, TimeoutError, HboneError, OSError):
        return


async def serve_http1(stream: ByteStream, handler: Handler, limits: Limits, initial: bytes = b"") -> None:
    """Serve HTTP/1.1 requests on `stream` until the client closes or an error closes the connection.

    Plain requests take the fast path (`h1fast`); the first request that is not plain, and every request
    after it on the connection, is parsed by h11 from its first byte."""
    fc = h1fast.FastConn(stream, limits, initial)
    if not h1fast.enabled():  # the plain library path: h11 from the first byte
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        fc.hand_to_h11(conn)
        await _serve_h11(conn, _Reader(conn, stream, limits), stream, handler, limits)
        return
    try:
        await _serve_fast(fc, stream, handler, limits)
    finally:
        fc.close()  # its timers


async def _serve_fast(fc: h1fast.FastConn, stream: ByteStream, handler: Handler, limits: Limits) -> None:
    while True:
        try:
            head = await fc.next_head()
        except HttpProtocolError as exc:
            await h1fast.fast_error_response(stream, exc.status, f"bad request: {exc.message}\n", False)
            break
        if head is None:
            break
        if head is False:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
            fc.hand_to_h11(conn)
            await _serve_h11(conn, _Reader(conn, stream, limits), stream, handler, limits)
            return
        assert isinstance(head, h1fast.Head)
        request, body = h1fast.fast_request(head, fc)
        is_head = request.method == "HEAD"
        writer = h1fast.FastWriter(stream, is_head, limits.idle_timeout, fc.write_deadline)
        outcome = await _run_handler(handler, request, writer,
                                     functools.partial(h1fast.fast_error_response, stream, head=is_head))
        if outcome is _GONE:
            return
        if outcome is _CLOSE:
            break
        if not writer.ended:
            if not writer.started:
                await h1fast.fast_error_response(stream, 500, "no response\n", is_head)
            break
        if not body.done and not await body.drain():
            break  # unread request body: do not reuse
    with contextlib.suppress(HboneError, OSError):
        await stream.write_eof()


_OK, _CLOSE, _GONE = "ok", "close", "gone"


async def _run_handler(
    handler: Handler, request: Request, writer: _Writer | h1fast.FastWriter,
    error_response: Callable[[int, str], Awaitable[None]],
) -> str:
    """Run `handler`: `_OK`, `_CLOSE` (it failed: answer what can be answered, then close) or `_GONE` (the
    downstream connection broke: write nothing more)."""
    try:
        await handler(request, writer)
    except HttpProtocolError as exc:
        log.info("waypoint: HTTP/1.1 exchange failed: %s", exc.message)
        if not writer.started:
            await error_response(exc.status, f"bad request: {exc.message}\n")
        return _CLOSE
    except (HboneError, OSError) as exc:  # the downstream tunnel broke under us
        log.info("waypoint: downstream connection lost: %s", exc)
        return _GONE
    except Exception:
        log.exception("waypoint: request handler failed")
        if not writer.started:
            await error_response(500, "internal error\n")
        return _CLOSE
    return _OK


async def _serve_h11(conn: h11.Connection, reader: _Reader, stream: ByteStream, handler: Handler,
                     limits: Limits) -> None:
    while True:
        try:
            event = await reader.next_request()
            if event is None:
                break
            request = _build_request(event, reader)
        except h11.RemoteProtocolError as exc:
            await _error_response(conn, stream, exc.error_status_hint, f"bad request: {exc}\n")
            break
        except HttpProtocolError as exc:
            await _error_response(conn, stream, exc.status, f"bad request: {exc.message}\n")
            break
        writer = _Writer(conn, stream, request.method == "HEAD", limits.idle_timeout)
        outcome = await _run_handler(handler, request, writer,
                                     lambda status, text: _error_response(conn, stream, status, text))
        if outcome is _GONE or writer.upgraded:  # an upgraded session ended: its splice half-closed both ways
            return
        if outcome is _CLOSE:
            break
        if not writer.ended:
            if not writer.started:
                await _error_response(conn, stream, 500, "no response\n")
            break
        if conn.their_state is h11.SEND_BODY and conn.our_state is h11.DONE:
            await _drain_body(reader)
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            break  # unread request body, Connection: close, or HTTP/1.0: do not reuse
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            break
    with contextlib.suppress(HboneError, OSError):
        await stream.write_eof()


# ------------------------------------------------------------------------------------------ upstream


class Http1Upstream:
    """One HTTP/1.1 connection to a backend (over an HBONE tunnel or TCP), reusable for the next request
    once an exchange finished cleanly (`reusable`). One exchange at a time."""

    def __init__(self, stream: ByteStream, limits: Limits | None = None) -> None:
        self.stream = stream
        self.limits = limits or Limits()
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=self.limits.max_header_bytes)
        self.reusable = False
        self.exchanges = 0
        self._read_deadline = IoDeadline()  # the response reads' idle timeout, one timer for the connection

    def close(self) -> None:
        self.reusable = False
        self._read_deadline.close()
        self.stream.close()

    async def exchange(
        self,
        request: Request,
        host: str,
        headers: list[tuple[str, str]],
        writer: ResponseWriter,
        accept: Callable[[int], bool] | None = None,
    ) -> int:
        """Send `request` (with `headers`, already filtered) and stream the response to `writer`.

        `accept(status)` is asked once the response head arrived: False abandons the response (for a
        retry) before anything reached `writer`. Returns the upstream status. Raises `UpstreamError`
        (`before_response=True` when the backend sent nothing, e.g. it had closed an idle connection).
        The bytes and framing are decided by `h1exchange.UpstreamExchange`; this only moves them."""
        self.reusable = False
        self.exchanges += 1
        ex = UpstreamExchange(self.conn, request.method, request.target, host, headers,
                              content_length=request.content_length, has_body=request.has_body,
                              max_head=self.limits.max_header_bytes)
        try:
            if request.has_body:
                async with asyncio.TaskGroup() as tg:
                    complete = await self._receive(ex, writer, accept, tg.create_task(self._send_body(ex, request)))
            else:  # the whole request in one write, and no body pump task
                await self.stream.write(ex.start())
                complete = await self._receive(ex, writer, accept, None)
        except* TimeoutError:
            raise UpstreamError("upstream stalled", status=504, flags="UT") from None
        except* (HboneError, OSError) as group:
            raise UpstreamError(f"upstream connection failed: {group.exceptions[0]}", status=503, flags="UC",
                                before_response=not ex.got_response) from None
        except* UpstreamError as group:
            err = group.exceptions[0]
            assert isinstance(err, UpstreamError)
            err.before_response = not ex.got_response
            raise err from None
        except* HttpProtocolError as group:  # the downstream request body broke
            raise group.exceptions[0] from None
        self.reusable = complete and ex.reusable()
        return ex.status

    async def _send_body(self, ex: UpstreamExchange, request: Request) -> None:
        await self.stream.write(ex.start())
        while chunk := await request.body.read():
            await self.stream.write(ex.body(chunk))
        data = ex.end_of_body()
        if data:
            await self.stream.write(data)

    async def _receive(self, ex: UpstreamExchange, writer: ResponseWriter, accept: Callable[[int], bool] | None,
                       sender: asyncio.Task[None] | None) -> bool:
        """Stream the response to `writer`; True when it completed and the connection may be in sync."""
        while True:
            event = ex.next_event()
            if event is NEED_DATA:
                with self._read_deadline.within(self.limits.idle_timeout):
                    data = await self.stream.read(READ_CHUNK)
                ex.receive(data)
            elif isinstance(event, ResponseHead):
                if accept is not None and not accept(event.status):
                    if sender is not None:
                        sender.cancel()
                    return False
                await writer.start(event.status, event.headers)
            elif isinstance(event, BodyChunk):
                await writer.write(event.data)
            elif isinstance(event, ResponseEnd):
                await writer.end(event.trailers)
                # a request body still streaming after the full response is of no use any more
                if sender is not None and not sender.done():
                    sender.cancel()
                    return False
                return True

    async def exchange_upgrade(
        self, request: Request, host: str, headers: list[tuple[str, str]], writer: ResponseWriter,
    ) -> tuple[int, list[tuple[str, str]] | None, bytes]:
        """Send the upgrade `request` (no body) with its upgrade headers; returns (101, the 101's headers, bytes
        the backend sent after it) when the backend switched protocols (the caller then owns `stream` as a raw
        byte stream), else streams the response to `writer` and returns (status, None, b"").
        The connection is never `reusable` afterwards. Raises `UpstreamError` as `exchange` does."""
        self.reusable = False
        self.exchanges += 1
        conn = self.conn
        assert request.upgrade is not None
        out = upgrade.upstream_headers([("host", host), *((k, v) for k, v in headers if k != "te")], request.upgrade)
        reader = _Reader(conn, self.stream, self.limits)
        got_response = False
        try:
            try:
                data = (conn.send(h11.Request(method=request.method, target=request.target, headers=_encode(out)))
                        or b"") + (conn.send(h11.EndOfMessage()) or b"")
            except h11.LocalProtocolError as exc:
                raise UpstreamError(f"cannot forward request: {exc}", status=400, flags="DPE") from None
            await self.stream.write(data)
            status = 0
            while True:
                event = await reader.next_event(self.limits.idle_timeout)
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 101:
                        return 101, _decode(event.headers), bytes(conn.trailing_data[0])
                elif isinstance(event, h11.Response):
                    got_response = True
                    status = event.status_code
                    await writer.start(status, _decode(event.headers))
                elif isinstance(event, h11.Data):
                    await writer.write(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    await writer.end(_decode(event.headers) or None)
                    return status, None, b""
                else:  # ConnectionClosed before the end
                    raise UpstreamError("upstream closed the connection before the response was complete",
                                        status=502, flags="UC")
        except h11.RemoteProtocolError as exc:
            raise UpstreamError(f"upstream sent malformed HTTP/1.1: {exc}", status=502, flags="UPE") from None
        except TimeoutError:
            raise UpstreamError("upstream stalled", status=504, flags="UT") from None
        except (HboneError, OSError) as exc:
            raise UpstreamError(f"upstream connection failed: {exc}", status=503, flags="UC",
                                before_response=not got_response) from None
