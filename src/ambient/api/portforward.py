"""`pods/portforward` as kubectl 1.32 speaks it: SPDY/3.1 tunnelled over a WebSocket, portforward.k8s.io.

kubectl asks for WebSocket subprotocol `SPDY/3.1+portforward.k8s.io`; every binary message then carries
bytes of a SPDY/3.1 session in which kubectl is the client. For each local connection it opens two streams
(SYN_STREAM, headers `streamtype: error|data`, `port`, `requestid`): the server replies SYN_REPLY to each,
connects to the pod's port from inside the pod (the `PodConnector`), copies the data stream both ways
(DATA frames; FIN half-closes) and writes a failure to connect as text on the error stream.
Pings are answered; flow control (WINDOW_UPDATE, SETTINGS) is not enforced by kubectl's SPDY library and
is ignored here. Header blocks are zlib-compressed with the SPDY/3 dictionary, one compression context per
direction for the whole session (SPDY/3 section 2.6.10.1).

Invariants: a malformed frame or header block ends the session (GOAWAY, then close); every pod connection
is closed when its stream is reset or the session ends; frames are written one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from ambient.api.errors import ApiError
from ambient.api.pods import PodConnector, UpgradeRequiredError

PROTOCOL = "SPDY/3.1+portforward.k8s.io"
VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
MAX_FRAME = 1 << 24 - 1
_CHUNK = 32 * 1024
# The zlib dictionary of SPDY/3 header compression (a constant of the SPDY/3 specification, 1423 bytes).
SPDY3_DICTIONARY = (
    b'\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04p'
    b'ost\x00\x00\x00\x03put\x00\x00\x00\x06delete\x00\x00\x00\x05trac'
    b'e\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-charset\x00\x00\x00'
    b'\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00\x00\x00\ra'
    b'ccept-ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\r'
    b'authorization\x00\x00\x00\rcache-control\x00\x00\x00\nconnection'
    b'\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10content-encoding'
    b'\x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-leng'
    b'th\x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-md'
    b'5\x00\x00\x00\rcontent-range\x00\x00\x00\x0ccontent-type\x00\x00'
    b'\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect'
    b'\x00\x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04h'
    b'ost\x00\x00\x00\x08if-match\x00\x00\x00\x11if-modified-since'
    b'\x00\x00\x00\rif-none-match\x00\x00\x00\x08if-range\x00\x00\x00'
    b'\x13if-unmodified-since\x00\x00\x00\rlast-modified\x00\x00\x00'
    b'\x08location\x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\x00'
    b'\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authorization'
    b'\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretr'
    b'y-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07t'
    b'railer\x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgra'
    b'de\x00\x00\x00\nuser-agent\x00\x00\x00\x04vary\x00\x00\x00\x03'
    b'via\x00\x00\x00\x07warning\x00\x00\x00\x10www-authenticate\x00\x00'
    b'\x00\x06method\x00\x00\x00\x03get\x00\x00\x00\x06statu'
    b's\x00\x00\x00\x06200 OK\x00\x00\x00\x07version\x00\x00\x00\x08HT'
    b'TP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\x00\x00\x00\nset-c'
    b'ookie\x00\x00\x00\nkeep-alive\x00\x00\x00\x06origin100101201202205'
    b'2063003023033043053063074024054064074084094104114124134144154164'
    b'17502504505203 Non-Authoritative Information204 No Content301 Mo'
    b'ved Permanently400 Bad Request401 Unauthorized403 Forbidden404 N'
    b'ot Found500 Internal Server Error501 Not Implemented503 Service '
    b'UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:0'
    b'0:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,ima'
    b'ge/png,image/jpg,image/gif,application/xml,application/xhtml+xml'
    b',text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sd'
    b'chcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.')


class SpdyError(Exception):
    """The peer broke the SPDY framing; the session ends."""


def encode_headers(headers: dict[str, str]) -> bytes:
    """An uncompressed SPDY/3 name/value block."""
    out = [struct.pack("!I", len(headers))]
    for name, value in headers.items():
        n, v = name.lower().encode(), value.encode()
        out += [struct.pack("!I", len(n)), n, struct.pack("!I", len(v)), v]
    return b"".join(out)


def decode_headers(block: bytes) -> dict[str, str]:
    """Parse an uncompressed name/value block (multiple values joined by NUL are kept as one string)."""
    try:
        (count,), pos, out = struct.unpack_from("!I", block), 4, {}
        for _ in range(count):
            (n,) = struct.unpack_from("!I", block, pos)
            name = block[pos + 4:pos + 4 + n].decode()
            pos += 4 + n
            (v,) = struct.unpack_from("!I", block, pos)
            out[name] = block[pos + 4:pos + 4 + v].decode()
            pos += 4 + v
    except (struct.error, UnicodeDecodeError) as exc:
        raise SpdyError(f"bad header block: {exc}") from None
    return out


def control_frame(ftype: int, flags: int, payload: bytes) -> bytes:
    return struct.pack("!HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    return struct.pack("!II", stream_id & 0x7FFFFFFF, ((FLAG_FIN if fin else 0) << 24) | len(data)) + data


def split_frames(buffer: bytearray) -> list[tuple[bool, int, int, bytes]]:
    """Take every complete frame off the front of `buffer`: (is_control, type_or_stream, flags, payload)."""
    frames = []
    while len(buffer) >= 8:
        first, second = struct.unpack_from("!II", buffer)
        length = second & 0xFFFFFF
        if len(buffer) < 8 + length:
            break
        payload = bytes(buffer[8:8 + length])
        del buffer[:8 + length]
        control = bool(first & 0x80000000)
        if control and (first >> 16) & 0x7FFF != VERSION:
            raise SpdyError(f"unsupported SPDY version {(first >> 16) & 0x7FFF}")
        frames.append((control, first & 0xFFFF if control else first & 0x7FFFFFFF, second >> 24, payload))
    return frames


@dataclass
class _Stream:
    kind: str  # "data" | "error"
    port: int
    request_id: str
    writer: asyncio.StreamWriter | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pending: list[bytes] = field(default_factory=list)
    fin_from_client: bool = False


class _Session:
    def __init__(self, ws: web.WebSocketResponse, pod: dict[str, Any], connector: PodConnector,
                 tg: asyncio.TaskGroup) -> None:
        self.ws, self.pod, self.connector, self.tg = ws, pod, connector, tg
        self.inflate = zlib.decompressobj(zdict=SPDY3_DICTIONARY)
        self.deflate = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=SPDY3_DICTIONARY)
        self.send_lock = asyncio.Lock()
        self.streams: dict[int, _Stream] = {}
        self.errors: dict[str, int] = {}  # request id -> its error stream

    async def send(self, frame: bytes) -> None:
        async with self.send_lock:
            await self.ws.send_bytes(frame)

    async def reply(self, stream_id: int) -> None:
        async with self.send_lock:  # compress under the lock: the context's order is the wire order
            block = self.deflate.compress(encode_headers({})) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
            await self.ws.send_bytes(control_frame(SYN_REPLY, 0, struct.pack("!I", stream_id) + block))

    async def handle(self, control: bool, ftype: int, flags: int, payload: bytes) -> None:
        if not control:
            await self.on_data(ftype, flags, payload)
        elif ftype == SYN_STREAM:
            if len(payload) < 10:
                raise SpdyError("short SYN_STREAM")
            (sid,) = struct.unpack_from("!I", payload)
            sid &= 0x7FFFFFFF
            try:
                headers = decode_headers(self.inflate.decompress(payload[10:]))
            except zlib.error as exc:
                raise SpdyError(f"bad header compression: {exc}") from None
            try:
                port = int(headers.get("port", ""))
            except ValueError:
                port = 0
            stream = _Stream(headers.get("streamtype", ""), port, headers.get("requestid", ""))
            self.streams[sid] = stream
            await self.reply(sid)
            if stream.kind == "error":
                self.errors[stream.request_id] = sid
            elif stream.kind == "data":
                self.tg.create_task(self.run_data(sid, stream))
        elif ftype == RST_STREAM:
            (sid,) = struct.unpack_from("!I", payload)
            self.close_stream(sid & 0x7FFFFFFF)
        elif ftype == PING:
            await self.send(control_frame(PING, 0, payload[:4]))
        elif ftype == GOAWAY:
            raise EOFError
        # SETTINGS, WINDOW_UPDATE, HEADERS: nothing to do

    async def on_data(self, sid: int, flags: int, payload: bytes) -> None:
        stream = self.streams.get(sid)
        if stream is None or stream.kind != "data":
            return  # the error stream's FIN, or a stream already gone
        if stream.writer is None:
            stream.pending.append(payload)
        elif payload:
            stream.writer.write(payload)
            with contextlib.suppress(ConnectionError):
                await stream.writer.drain()
        if flags & FLAG_FIN:
            stream.fin_from_client = True
            if stream.writer is not None and stream.writer.can_write_eof():
                with contextlib.suppress(OSError):
                    stream.writer.write_eof()

    def close_stream(self, sid: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None and stream.writer is not None:
            stream.writer.close()

    async def run_data(self, sid: int, stream: _Stream) -> None:
        try:
            reader, writer = await self.connector.connect(self.pod, stream.port)
        except (ApiError, OSError, TimeoutError) as exc:
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            name = (self.pod.get("metadata") or {}).get("name")
            text = f"error forwarding port {stream.port} to pod {name}: {message}"
            err = self.errors.get(stream.request_id)
            if err is not None:
                await self.send(data_frame(err, text.encode(), fin=True))
            await self.send(data_frame(sid, b"", fin=True))
            return
        stream.writer = writer
        for chunk in stream.pending:
            writer.write(chunk)
        stream.pending.clear()
        if stream.fin_from_client and writer.can_write_eof():
            writer.write_eof()
        try:
            while chunk := await reader.read(_CHUNK):
                await self.send(data_frame(sid, chunk))
            await self.send(data_frame(sid, b"", fin=True))
        except (ConnectionError, OSError):
            with contextlib.suppress(ConnectionError, OSError):
                await self.send(data_frame(sid, b"", fin=True))
        finally:
            writer.close()


async def serve_portforward(request: web.Request, pod: dict[str, Any], connector: PodConnector) -> web.StreamResponse:
    ws = web.WebSocketResponse(protocols=(PROTOCOL,), autoping=True, heartbeat=None, max_msg_size=MAX_FRAME + 8)
    ready = ws.can_prepare(request)
    if not ready.ok or ready.protocol != PROTOCOL:
        raise UpgradeRequiredError(
            f"port-forward needs a WebSocket upgrade with subprotocol {PROTOCOL}",
            hint="use kubectl 1.31 or later (plain SPDY is not served), or `ambient port-forward`",
        )
    await ws.prepare(request)
    buffer = bytearray()
    try:
        async with asyncio.TaskGroup() as tg:
            session = _Session(ws, pod, connector, tg)
            try:
                async for msg in ws:
                    if msg.type != WSMsgType.BINARY:
                        continue
                    buffer += msg.data
                    for frame in split_frames(buffer):
                        await session.handle(*frame)
            except SpdyError:
                await session.send(control_frame(GOAWAY, 0, struct.pack("!II", 0, 1)))
            except EOFError:
                pass
            finally:
                for sid in list(session.streams):
                    session.close_stream(sid)
                await ws.close()
    except (ConnectionError, asyncio.CancelledError):
        pass
    return ws
