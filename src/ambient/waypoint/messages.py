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

# The reason phrases Envoy writes in an HTTP/1.1 status line (Http::CodeUtility::toString): its own table,
# whatever phrase the backend sent; "Unknown" for any other code.
REASON_PHRASES: dict[int, bytes] = {code: text.encode("ascii") for code, text in {
    100: "Continue", 101: "Switching Protocols",
    200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information", 204: "No Content",
    205: "Reset Content", 206: "Partial Content", 207: "Multi-Status", 208: "Already Reported", 226: "IM Used",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    305: "Use Proxy", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 409: "Conflict", 410: "Gone", 411: "Length Required", 412: "Precondition Failed",
    413: "Payload Too Large", 414: "URI Too Long", 415: "Unsupported Media Type", 416: "Range Not Satisfiable",
    417: "Expectation Failed", 421: "Misdirected Request", 422: "Unprocessable Entity", 423: "Locked",
    424: "Failed Dependency", 425: "Too Early", 426: "Upgrade Required", 428: "Precondition Required",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported", 506: "Variant Also Negotiates",
    507: "Insufficient Storage", 508: "Loop Detected", 510: "Not Extended", 511: "Network Authentication Required",
}.items()}


def reason_phrase(status: int) -> bytes:
    """The reason phrase of an HTTP/1.1 status line, as Envoy writes it."""
    return REASON_PHRASES.get(status, b"Unknown")


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
