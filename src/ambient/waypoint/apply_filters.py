"""Applying an HTTPRoute rule's filters to a request being forwarded (`filters.py` holds the pure model):
request headers, Host and path rewritten, and a response writer that applies the ResponseHeaderModifier
to whatever head goes back (the backend's, a 101, or the waypoint's own answers for that rule).
"""

from __future__ import annotations

from ambient.hbone.pipe import ByteStream
from ambient.l7.filters import HeaderModifier, RuleFilters
from ambient.waypoint.errors import UpstreamError
from ambient.waypoint.messages import Request, ResponseWriter


def apply_filters(
    filters: RuleFilters, fwd: Request, writer: ResponseWriter, path: str, query: str
) -> tuple[Request, ResponseWriter]:
    """The request as the rule's filters make it (headers, Host, path) and the writer that applies its
    ResponseHeaderModifier. Policy was evaluated on the request as received, as in Istio."""
    if filters.request_headers is not None:
        fwd.headers = filters.request_headers.apply(fwd.headers)
    rewrite = filters.rewrite
    if rewrite is not None:
        if rewrite.hostname is not None:
            fwd.authority = rewrite.hostname
        if rewrite.path is not None:
            fwd.target = rewrite.path.apply(path) + (f"?{query}" if query else "")
    if filters.response_headers is not None:
        writer = HeaderModifyingWriter(writer, filters.response_headers)
    return fwd, writer


class HeaderModifyingWriter:
    """A `ResponseWriter` that passes everything through and applies a ResponseHeaderModifier to the head."""

    __slots__ = ("_inner", "_modifier")

    def __init__(self, inner: ResponseWriter, modifier: HeaderModifier) -> None:
        self._inner = inner
        self._modifier = modifier

    @property
    def started(self) -> bool:
        return self._inner.started

    @property
    def ended(self) -> bool:
        return self._inner.ended

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        await self._inner.start(status, self._modifier.apply(headers))

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def end(self, trailers: list[tuple[str, str]] | None = None) -> None:
        await self._inner.end(trailers)

    async def upgrade(self, headers: list[tuple[str, str]]) -> tuple[ByteStream, bytes]:
        switch = getattr(self._inner, "upgrade", None)
        if switch is None:
            raise UpstreamError("downstream cannot switch protocols", status=502, flags="UPE")
        result: tuple[ByteStream, bytes] = await switch(self._modifier.apply(headers))
        return result
