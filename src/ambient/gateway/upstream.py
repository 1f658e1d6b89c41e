"""How the ingress gateway reaches a backend: one HTTP/1.1 exchange per upstream stream.

Two dialers, chosen by how the gateway pod is deployed:
- `TcpDialer` (a gateway pod captured by its node proxy, the Gateway API deployment): plain TCP to the
  Service VIP; the node proxy turns it into HBONE with the pod's identity.
- `HboneDialer` (a pod the node proxies do not capture, the classic `istio-ingressgateway` in
  istio-system, as Istio's ingress): the gateway decides like a node proxy (`state.route.decide_outbound`
  on the workload state from xDS, the gateway's own pod as the source) and opens an HBONE stream with its
  own certificate to the destination pod's node proxy (or the Service's waypoint); a non-meshed endpoint
  gets plain TCP.

Each request gets a stream of its own and the response ends it (`Connection: close` upstream): the node
proxies write one access line per request, as the walk-through shows. `exchange` speaks HTTP/1.1 with h11.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, Protocol

import h11

from ambient.gateway.errors import GatewayError


class UpstreamError(GatewayError):
    """The backend could not be reached or broke the exchange."""


class ByteStream(Protocol):
    async def read(self, max_bytes: int = -1) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def write_eof(self) -> None: ...

    def close(self) -> None: ...


class _TcpStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._r, self._w = reader, writer

    async def read(self, max_bytes: int = -1) -> bytes:
        return await self._r.read(max_bytes if max_bytes > 0 else 65536)

    async def write(self, data: bytes) -> None:
        self._w.write(data)
        await self._w.drain()

    async def write_eof(self) -> None:
        if self._w.can_write_eof():
            self._w.write_eof()

    def close(self) -> None:
        self._w.close()


class _HboneByteStream:
    def __init__(self, stream: Any) -> None:
        self._s = stream

    async def read(self, max_bytes: int = -1) -> bytes:
        return bytes(await self._s.read(max_bytes if max_bytes > 0 else 65536))

    async def write(self, data: bytes) -> None:
        await self._s.write(data)

    async def write_eof(self) -> None:
        await self._s.write_eof()

    def close(self) -> None:
        self._s.close()


class Dialer(Protocol):
    async def open(self, ip: str, port: int) -> ByteStream: ...


class TcpDialer:
    async def open(self, ip: str, port: int) -> ByteStream:
        try:
            reader, writer = await asyncio.open_connection(ip, port)
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {ip}:{port}: {exc.strerror or exc}") from None
        return _TcpStream(reader, writer)


class HboneDialer:
    """Dials like a node proxy for the gateway's own (uncaptured) pod: `source()` is its Workload."""

    def __init__(self, *, client: Any, certs: Callable[[], Any], state: Callable[[], Any],
                 source: Callable[[], Any], rng: random.Random | None = None) -> None:
        self._client, self._certs, self._state, self._source = client, certs, state, source
        self._rng = rng or random.Random()

    async def open(self, ip: str, port: int) -> ByteStream:
        from ambient.hbone.errors import HboneError
        from ambient.state import route

        view = self._state()
        source = self._source()
        if source is None:
            raise UpstreamError("the gateway's own workload is not in the xDS state yet")
        decision = route.decide_outbound(source, ip_address(ip), port, view, self._rng)
        if isinstance(decision, route.Reject):
            raise UpstreamError(decision.reason)
        if isinstance(decision, (route.Hbone, route.ViaWaypoint)):
            try:
                stream = await self._client.connect(self._certs(), (str(decision.address.ip), decision.address.port),
                                                    set(decision.expected_identities), str(decision.authority), {})
            except HboneError as exc:
                raise UpstreamError(exc.message) from None
            return _HboneByteStream(stream)
        if isinstance(decision, route.DirectHostname):
            return await TcpDialer().open(decision.hostname, decision.port)
        addr = decision.address
        return await TcpDialer().open(str(addr.ip), addr.port)


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]


async def exchange(stream: ByteStream, method: str, target: str, headers: list[tuple[str, str]],
                   body: bytes | None) -> Response:
    """Send one request on `stream` (Connection: close) and return the response head; the body is read as
    it is iterated, and the stream closed at its end."""
    conn = h11.Connection(h11.CLIENT)
    out = [(k, v) for k, v in headers if k not in ("connection", "content-length", "transfer-encoding")]
    out.append(("connection", "close"))
    if body:
        out.append(("content-length", str(len(body))))
    try:
        await stream.write(conn.send(h11.Request(method=method, target=target, headers=out)))
        if body:
            await stream.write(conn.send(h11.Data(data=body)))
        await stream.write(conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.read(65536))
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                break
            raise UpstreamError(f"unexpected upstream event {type(event).__name__}")
    except h11.RemoteProtocolError as exc:
        stream.close()
        raise UpstreamError(f"upstream protocol error: {exc}") from None
    except (OSError, ConnectionError) as exc:
        stream.close()
        raise UpstreamError(f"upstream connection failed: {exc}") from None

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(await stream.read(65536))
                elif isinstance(ev, h11.Data):
                    yield bytes(ev.data)
                elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return
        finally:
            stream.close()

    head = [(k.decode().lower(), v.decode("latin-1")) for k, v in event.headers]
    return Response(event.status_code, event.reason.decode("latin-1"), head, chunks())
