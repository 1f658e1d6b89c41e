"""RequestAuthentication: token location, verification (RS256, ES256), Envoy's failure reasons (pure)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from jwt_keys import ISSUER, OTHER_KEY, jwks, token

from ambient.l7.errors import ConfigError
from ambient.l7.request_auth import (
    JwtRule,
    applicable,
    authenticate,
    claim_values,
    parse_request_authentication,
)


def ra(**rule: Any) -> dict[str, Any]:
    return {"kind": "RequestAuthentication", "metadata": {"name": "jwt", "namespace": "shop"},
            "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
                     "jwtRules": [{"issuer": ISSUER, "jwks": jwks(), **rule}]}}


def run(obj: dict[str, Any], headers: dict[str, str] | None = None, query: str = "") -> Any:
    policy = parse_request_authentication(obj)
    keys: dict[str, jwt.PyJWKSet] = {}

    def key_of(rule: JwtRule) -> jwt.PyJWKSet | None:
        assert rule.jwks is not None
        return keys.setdefault(rule.jwks, jwt.PyJWKSet.from_json(rule.jwks))

    return authenticate([policy], headers or {}, query, key_of, time.time())


def bearer(t: str) -> dict[str, str]:
    return {"authorization": f"Bearer {t}"}


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_valid_token_gives_the_request_principal(alg: str) -> None:
    got = run(ra(), bearer(token(alg=alg, groups=["group1"])))
    assert got.failure == "" and got.principal == f"{ISSUER}/subject"
    assert got.claims["groups"] == ["group1"]
    assert got.remove_headers == {"authorization"}  # forwardOriginalToken defaults to false


@pytest.mark.parametrize(("tok", "reason"), [
    (lambda: token(expires_in=-3600), "Jwt is expired"),
    (lambda: token(iss="someone-else"), "Jwt issuer is not configured"),
    (lambda: token(key=OTHER_KEY), "Jwt verification fails"),
    (lambda: "not.a.jwt", "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
])
def test_invalid_tokens_fail_with_envoys_reason(tok: Any, reason: str) -> None:
    assert run(ra(), bearer(tok())).failure == reason


def test_no_token_is_unauthenticated_not_a_failure() -> None:
    got = run(ra(), {})
    assert got.failure == "" and got.principal == ""


def test_expiry_has_sixty_seconds_of_clock_skew() -> None:
    assert run(ra(), bearer(token(expires_in=-30))).failure == ""


def test_audiences() -> None:
    assert run(ra(audiences=["bookinfo"]), bearer(token(aud="bookinfo"))).failure == ""
    assert run(ra(audiences=["bookinfo"]), bearer(token(aud=["x", "bookinfo"]))).failure == ""
    assert run(ra(audiences=["bookinfo"]), bearer(token(aud="other"))).failure == "Audiences in Jwt are not allowed"


def test_from_headers_params_forward_and_output_claims() -> None:
    obj = ra(fromHeaders=[{"name": "x-jwt", "prefix": "Token "}], fromParams=["tok"], forwardOriginalToken=True,
             outputClaimToHeaders=[{"header": "x-sub", "claim": "sub"}, {"header": "x-team", "claim": "org.team"}])
    got = run(obj, {"x-jwt": "Token " + token(org={"team": "a"})})
    assert got.principal.endswith("/subject") and got.remove_headers == frozenset()
    assert dict(got.set_headers) == {"x-sub": "subject", "x-team": "a"}
    assert run(obj, {}, "tok=" + token()).principal.endswith("/subject")
    # the default Authorization header is not looked at when fromHeaders is set
    assert run(obj, bearer(token(key=OTHER_KEY))).principal == ""


def test_default_access_token_param() -> None:
    assert run(ra(), {}, "access_token=" + token()).principal.endswith("/subject")


def test_bad_inline_jwks_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_request_authentication(ra(jwks="{not json"))


def test_applicable_by_gateway_or_service() -> None:
    p = parse_request_authentication(ra())
    assert applicable([p], ("reviews", "shop"), ("waypoint", "shop")) == [p]
    assert applicable([p], ("reviews", "shop"), ("other", "shop")) == []


def test_claim_values() -> None:
    claims = {"groups": ["a", "b"], "org": {"team": "x"}, "admin": True}
    assert claim_values(claims, ["groups"]) == ["a", "b"]
    assert claim_values(claims, ["org", "team"]) == ["x"]
    assert claim_values(claims, ["admin"]) == ["true"]
    assert claim_values(claims, ["missing"]) is None


def test_verified_token_cache_is_per_key_set_and_rechecks_time() -> None:
    policy = parse_request_authentication(ra())
    rule = policy.rules[0]
    keyset = jwt.PyJWKSet.from_json(jwks())
    cache: dict[Any, Any] = {}
    good = token(expires_in=100)
    now = time.time()
    assert authenticate([policy], bearer(good), "", lambda r: keyset, now, cache).failure == ""
    assert (good, id(keyset)) in cache
    # the same token, cached: still expires
    assert authenticate([policy], bearer(good), "", lambda r: keyset, now + 1000, cache).failure == "Jwt is expired"
    # keys rotated (a new set without the signing key): the cached verification does not carry over
    rotated = jwt.PyJWKSet.from_json(jwks(other=True))
    assert authenticate([policy], bearer(good), "", lambda r: rotated, now, cache).failure == "Jwt verification fails"
    assert rule.issuer == ISSUER
