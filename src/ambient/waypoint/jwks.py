"""The waypoint's JSON Web Key Sets for RequestAuthentication: inline `jwks` parsed once, `jwksUri` fetched
from inside the cluster, cached and refreshed.

Role: `await cache.ensure(rules)` before authenticating a request makes sure every `jwksUri` of `rules` has
been fetched (single flight per URI: concurrent requests wait for the same fetch); `cache.keys(rule)` then
answers the key set synchronously (what `ambient.l7.request_auth.authenticate` calls).

Invariants (Istio's behaviour when istiod inlines remote JWKS): keys are refreshed every
`refresh` seconds (default 20 min, Istio's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL) by the first request after
they went stale; a failed fetch keeps the last good keys, and is retried no sooner than `retry_after`
seconds; a URI never fetched successfully has no keys, so its tokens are refused (401 "Jwks remote fetch is
failed"), never accepted. A response larger than `max_bytes` or slower than `timeout` is a failed fetch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import httpx
import jwt

from ambient.l7.request_auth import JwtRule

log = logging.getLogger(__name__)

Fetch = Callable[[str], Awaitable[bytes]]


@dataclass(frozen=True)
class JwksSettings:
    refresh: float = 1200.0  # seconds between refreshes of a jwksUri's keys
    retry_after: float = 5.0  # seconds before a failed fetch is tried again
    timeout: float = 5.0  # seconds for one fetch
    max_bytes: int = 256 * 1024  # a JWKS larger than this is refused


@dataclass
class _Entry:
    keys: jwt.PyJWKSet | None = None
    fetched: float = float("-inf")  # monotonic time of the last successful fetch
    failed: float = float("-inf")  # monotonic time of the last failed fetch
    lock: asyncio.Lock | None = None


class JwksCache:
    def __init__(self, settings: JwksSettings | None = None, *, fetch: Fetch | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or JwksSettings()
        self._fetch = fetch or self._http_get
        self._clock = clock
        self._remote: dict[str, _Entry] = {}
        self._inline: dict[str, jwt.PyJWKSet | None] = {}

    def keys(self, rule: JwtRule) -> jwt.PyJWKSet | None:
        if rule.jwks is not None:
            if rule.jwks not in self._inline:
                if len(self._inline) > 256:  # bounded: rules come and go with config
                    self._inline.clear()
                try:
                    self._inline[rule.jwks] = jwt.PyJWKSet.from_json(rule.jwks)
                except (jwt.PyJWKError, jwt.PyJWKSetError, ValueError, TypeError):
                    self._inline[rule.jwks] = None
            return self._inline[rule.jwks]
        if rule.jwks_uri is not None:
            entry = self._remote.get(rule.jwks_uri)
            return entry.keys if entry is not None else None
        return None

    async def ensure(self, rules: Iterable[JwtRule]) -> None:
        for rule in rules:
            if rule.jwks is None and rule.jwks_uri is not None:
                await self._ensure(rule.jwks_uri)

    def _due(self, entry: _Entry) -> bool:
        now = self._clock()
        return now - entry.fetched >= self.settings.refresh and now - entry.failed >= self.settings.retry_after

    async def _ensure(self, uri: str) -> None:
        entry = self._remote.get(uri)
        if entry is None:
            if len(self._remote) > 256:
                self._remote.clear()
            entry = self._remote[uri] = _Entry(lock=asyncio.Lock())
        if not self._due(entry):
            return
        assert entry.lock is not None
        async with entry.lock:
            if not self._due(entry):  # fetched by the request we waited for
                return
            try:
                body = await asyncio.wait_for(self._fetch(uri), self.settings.timeout)
                if len(body) > self.settings.max_bytes:
                    raise ValueError(f"JWKS larger than {self.settings.max_bytes} bytes")
                entry.keys = jwt.PyJWKSet.from_json(body.decode())
                entry.fetched = self._clock()
                log.info("waypoint: fetched JWKS %s (%d keys)", uri, len(entry.keys.keys))
            except (TimeoutError, OSError, ValueError, httpx.HTTPError, jwt.PyJWKError, jwt.PyJWKSetError) as exc:
                entry.failed = self._clock()
                log.warning("waypoint: cannot fetch JWKS %s: %s (%s)", uri, exc or type(exc).__name__,
                            "keeping the previous keys" if entry.keys is not None else "its tokens are refused")

    async def _http_get(self, uri: str) -> bytes:
        async with (httpx.AsyncClient(timeout=self.settings.timeout, follow_redirects=False,
                                      trust_env=False) as client,
                    client.stream("GET", uri) as resp):
            resp.raise_for_status()
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > self.settings.max_bytes:
                    raise ValueError(f"JWKS larger than {self.settings.max_bytes} bytes")
            return bytes(body)
