"""HTTP/2 (prior knowledge) upstream of the waypoint: used for gRPC and for ports declared HTTP2/GRPC, where
HTTP/1.1 cannot carry the request (trailers, `te: trailers`).

`Http2Upstream(stream).exchange(request, host, headers, writer, accept)` runs one request on its own
HTTP/2 connection over one tunnel, with the same contract as `Http1Upstream.exchange` (so the waypoint pools
both the same way): one exchange at a time, reusable afterwards when the connection is still healthy.

Invariants: all reading happens inside `exchange` (its TaskGroup owns the body pump); request DATA waits
for the peer's flow-control window; response DATA is acknowledged as it is handed to the writer, so
nothing accumulates; every write drains `h2.data_to_send()` under one lock (frame order = HPACK order).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes

from ambient.hbone.errors import HboneError
from ambient.hbone.pipe import ByteStream
from ambient.waypoint.errors import HttpProtocolError, UpstreamError
from ambient.waypoint.messages import Limits, Request, ResponseWriter

READ_CHUNK = 64 * 1024


def _text(headers: Any) -> list[tuple[str, str]]:
    return [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in headers]


class Http2Upstream:
    def __init__(self, stream: ByteStream, limits: Limits | None = None) -> None:
        self.stream = stream
        self.limits = limits or Limits()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(4 * 1024 * 1024)
        self._lock = asyncio.Lock()
        self._window = asyncio.Event()
        self.reusable = False
        self.exchanges = 0
        self._dead = False

    def close(self) -> None:
        self.reusable = False
        self.stream.close()

    async def _flush(self) -> None:
        async with self._lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.write(data)

    async def _send_body(self, sid: int, request: Request) -> None:
        while chunk := await request.body.read():
            view = memoryview(chunk)
            while view:
                window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                if window <= 0:
                    self._window.clear()
                    await self._window.wait()
                    continue
                self.conn.send_data(sid, bytes(view[:window]))
                view = view[window:]
                await self._flush()
        self.conn.end_stream(sid)
        await self._flush()

    async def exchange(
        self,
        request: Request,
        host: str,
        headers: list[tuple[str, str]],
        writer: ResponseWriter,
        accept: Callable[[int], bool] | None = None,
    ) -> int:
        self.reusable = False
        self.exchanges += 1
        conn = self.conn
        sid = conn.get_next_available_stream_id()
        out = [(":method", request.method), (":scheme", "http"), (":authority", host), (":path", request.target)]
        out += [(k, v) for k, v in headers if k != "te"]
        if request.is_grpc or (request.header("te") or "").lower() == "trailers":
            out.append(("te", "trailers"))  # the only TE value HTTP/2 allows; gRPC servers require it
        if request.content_length is not None and request.has_body:
            out.append(("content-length", str(request.content_length)))
        try:
            conn.send_headers(sid, out, end_stream=not request.has_body)
        except h2.exceptions.ProtocolError as exc:
            raise UpstreamError(f"cannot forward request over HTTP/2: {exc}", status=502, flags="UPE") from None
        status = 0
        got_response = False
        trailers: list[tuple[str, str]] | None = None
        try:
            await self._flush()
            async with asyncio.TaskGroup() as tg:
                pump = tg.create_task(self._send_body(sid, request)) if request.has_body else None
                done = False
                while not done:
                    async with asyncio.timeout(self.limits.idle_timeout):
                        data = await self.stream.read(READ_CHUNK)
                    if not data:
                        raise UpstreamError("upstream closed the HTTP/2 connection", status=502, flags="UC")
                    for ev in conn.receive_data(data):
                        if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                            head = _text(ev.headers)
                            status = int(next((v for k, v in head if k == ":status"), "0") or 0)
                            if 100 <= status < 200:
                                continue
                            got_response = True
                            if accept is not None and not accept(status):
                                self._abandon(sid, pump)
                                await self._flush()
                                return status
                            await writer.start(status, [(k, v) for k, v in head if not k.startswith(":")])
                        elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                            await writer.write(bytes(ev.data))
                            conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                        elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                            trailers = _text(ev.headers)
                        elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                            done = True
                        elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                            raise UpstreamError(f"upstream reset the request ({ErrorCodes(ev.error_code).name})",
                                                status=502, flags="UR")
                        elif isinstance(ev, h2.events.WindowUpdated):
                            self._window.set()
                        elif isinstance(ev, h2.events.ConnectionTerminated):
                            self._dead = True
                            if not done:
                                raise UpstreamError("upstream sent GOAWAY", status=502, flags="UC")
                    await self._flush()
                if not got_response:
                    raise UpstreamError("upstream ended the stream without a response", status=502, flags="UPE")
                await writer.end(trailers)
                if pump is not None and not pump.done():
                    self._abandon(sid, pump)  # the response is complete: stop sending the body
        except* h2.exceptions.ProtocolError as group:
            raise UpstreamError(f"upstream broke HTTP/2: {group.exceptions[0]}", status=502, flags="UPE",
                                before_response=not got_response) from None
        except* TimeoutError:
            raise UpstreamError("upstream stalled", status=504, flags="UT") from None
        except* (HboneError, OSError) as group:
            raise UpstreamError(f"upstream connection failed: {group.exceptions[0]}", status=503, flags="UC",
                                before_response=not got_response) from None
        except* UpstreamError as group:
            err = group.exceptions[0]
            assert isinstance(err, UpstreamError)
            err.before_response = not got_response
            raise err from None
        except* HttpProtocolError as group:
            raise group.exceptions[0] from None
        await self._flush()
        self.reusable = not self._dead
        return status

    def _abandon(self, sid: int, pump: asyncio.Task[None] | None) -> None:
        if pump is not None:
            pump.cancel()
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.reset_stream(sid, ErrorCodes.CANCEL)
