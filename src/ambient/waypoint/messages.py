"""The HTTP vocabulary shared by the waypoint's HTTP/1.1 and HTTP/2 servers and its forwarding code.

A server parses a request into `Request` (headers lower-cased, hop-by-hop headers removed, body readable
with `await request.body.read()` -> b"" at the end) and calls `await handler(request, writer)`. The handler
answers through the `ResponseWriter`: `start(status, headers)`, `write(data)` any number of times,
`end(trailers)`. The handler owns every task it starts, so when it returns the exchange is over.

Invariants: after the handler returns, a server that sees `writer.started and not writer.ended` aborts the
exchange (HTTP/1.1: close the connection; HTTP/2: RST_STREAM) instead of pretending the response was
complete; a handler that never started answers 500. Limits bound every buffer (`Limits`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

# Headers that describe one hop, never forwarded (RFC 9110 7.6.1; RFC 9113 8.2.2 for HTTP/2).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te",
    "proxy-authenticate", "proxy-authorization", "trailer", "http2-settings",
})
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of one downstream connection (protocols.md section 2; reliability.md HTTP/2 abuse)."""

    max_header_bytes: int = 64 * 1024  # request line + headers (HTTP/1.1), header list (HTTP/2)
    max_concurrent_streams: int = 100
    stream_window: int = 1024 * 1024
    max_resets: int = 200  # RST_STREAMs received per `reset_window` before GOAWAY (rapid reset)
    reset_window: float = 10.0
    idle_timeout: float = 300.0  # keep-alive connection without a request
    header_timeout: float = 30.0  # a started request must complete its headers in this time


class Body(Protocol):
    async def read(self) -> bytes: ...


class EmptyBody:
    async def read(self) -> bytes:
        return b""


class BytesBody:
    """A body already in memory (replayable: retries re-create it from `data`)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._done = not data

    async def read(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        return self.data


@dataclass
class Request:
    method: str
    target: str  # path with query, as received (origin-form)
    authority: str  # Host / :authority
    headers: list[tuple[str, str]]  # lower-cased names, no pseudo-headers, no hop-by-hop headers
    body: Body = field(default_factory=EmptyBody)
    protocol: str = "HTTP/1.1"  # or "HTTP/2"
    scheme: str = "http"
    content_length: int | None = None
    has_body: bool = True  # False when the request is known to carry no body (END_STREAM, no length)
    upgrade: str | None = None  # HTTP/1.1 only: the protocols of an upgrade request (see `upgrade`)

    def header(self, name: str) -> str | None:
        """All values of `name`, comma-joined (None when absent)."""
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    def header_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in self.headers:
            out[k] = f"{out[k]}, {v}" if k in out else v
        return out

    @property
    def is_grpc(self) -> bool:
        return (self.header("content-type") or "").startswith("application/grpc")


class ResponseWriter(Protocol):
    @property
    def started(self) -> bool: ...

    @property
    def ended(self) -> bool: ...

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None: ...

    async def write(self, data: bytes) -> None: ...

    async def end(self, trailers: list[tuple[str, str]] | None = None) -> None: ...


Handler = Callable[[Request, ResponseWriter], Awaitable[None]]


def strip_hop_by_hop(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers and any header the `Connection` header names."""
    named = {t.strip().lower() for k, v in headers if k == "connection" for t in v.split(",")}
    return [(k, v) for k, v in headers if k not in HOP_BY_HOP and k not in named]


async def respond_text(
    writer: ResponseWriter, status: int, text: str, extra: list[tuple[str, str]] | None = None
) -> None:
    """A small local response (403 RBAC, 404, 503 ...)."""
    body = text.encode()
    headers = [("content-type", "text/plain"), ("content-length", str(len(body)))] + (extra or [])
    await writer.start(status, headers)
    await writer.write(body)
    await writer.end()
