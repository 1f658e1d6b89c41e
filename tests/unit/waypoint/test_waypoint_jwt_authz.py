"""AuthorizationPolicy on JWT attributes (requestPrincipals, request.auth.* conditions) and the JWKS cache."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ambient.l7.request_auth import JwtRule
from ambient.waypoint.jwks import JwksCache, JwksSettings
from ambient.waypoint.l7authz import RequestAttrs, evaluate, parse_policy

JWKS = b'{"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}'


def policy(action: str, rule: dict[str, Any]) -> Any:
    return parse_policy({"kind": "AuthorizationPolicy", "metadata": {"name": "p", "namespace": "shop"},
                         "spec": {"action": action, "targetRefs": [{"kind": "Service", "name": "reviews"}],
                                  "rules": [rule]}})


REQUIRE = policy("ALLOW", {"from": [{"source": {"requestPrincipals": ["issuer/subject"]}}]})
REQUIRE_ANY = policy("ALLOW", {"from": [{"source": {"requestPrincipals": ["*"]}}]})
DENY_MISSING = policy("DENY", {"from": [{"source": {"notRequestPrincipals": ["*"]}}]})
GROUP = policy("ALLOW", {"when": [{"key": "request.auth.claims[groups]", "values": ["group1"]}]})
NESTED = policy("ALLOW", {"when": [{"key": "request.auth.claims[org][team]", "values": ["a"]}]})
AUD = policy("ALLOW", {"when": [{"key": "request.auth.audiences", "values": ["bookinfo"]}]})


def attrs(principal: str | None, **claims: Any) -> RequestAttrs:
    return RequestAttrs(principal="spiffe://cluster.local/ns/shop/sa/curl", method="GET", path="/",
                        request_principal=principal, auth_claims=claims)


@pytest.mark.parametrize(("p", "req", "allowed"), [
    (REQUIRE, attrs("issuer/subject"), True),
    (REQUIRE, attrs("issuer/other"), False),
    (REQUIRE, attrs(""), False),
    (REQUIRE_ANY, attrs(""), False),  # no token: "*" does not match
    (REQUIRE_ANY, attrs("i/s"), True),
    (DENY_MISSING, attrs(""), False),
    (DENY_MISSING, attrs("i/s"), True),
    (GROUP, attrs("i/s", groups=["group1", "group2"]), True),
    (GROUP, attrs("i/s", groups=["group2"]), False),
    (GROUP, attrs("i/s"), False),
    (GROUP, attrs("i/s", groups="group1"), True),
    (NESTED, attrs("i/s", org={"team": "a"}), True),
    (AUD, attrs("i/s", aud=["x", "bookinfo"]), True),
    (AUD, attrs("i/s", aud="x"), False),
    (REQUIRE, attrs(None), False),  # not established (L4): fail safe for ALLOW
    (DENY_MISSING, attrs(None), False),  # ... and for DENY
])
def test_jwt_attributes(p: Any, req: RequestAttrs, allowed: bool) -> None:
    assert evaluate([p], req).allowed is allowed


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_jwks_cache_fetches_once_refreshes_and_keeps_keys_on_failure() -> None:
    calls: list[str] = []
    fail = False

    async def fetch(uri: str) -> bytes:
        calls.append(uri)
        await asyncio.sleep(0.01)
        if fail:
            raise OSError("connection refused")
        return JWKS

    clock = Clock()
    cache = JwksCache(JwksSettings(refresh=60, retry_after=5), fetch=fetch, clock=clock)
    rule = JwtRule("iss", jwks_uri="http://jwks/keys")
    assert cache.keys(rule) is None
    await asyncio.gather(*(cache.ensure([rule]) for _ in range(5)))
    assert len(calls) == 1  # single flight
    keys = cache.keys(rule)
    assert keys is not None and keys.keys[0].key_id == "k"
    clock.now = 30
    await cache.ensure([rule])
    assert len(calls) == 1  # still fresh
    clock.now, fail = 61, True
    await cache.ensure([rule])
    assert len(calls) == 2 and cache.keys(rule) is keys  # failed refresh keeps the last good keys
    clock.now = 63
    await cache.ensure([rule])
    assert len(calls) == 2  # retried no sooner than retry_after
    clock.now, fail = 67, False
    await cache.ensure([rule])
    assert len(calls) == 3


async def test_jwks_never_fetched_has_no_keys_and_oversize_is_refused() -> None:
    async def fetch(uri: str) -> bytes:
        return b"x" * 100

    cache = JwksCache(JwksSettings(max_bytes=10), fetch=fetch)
    rule = JwtRule("iss", jwks_uri="http://jwks/keys")
    await cache.ensure([rule])
    assert cache.keys(rule) is None
