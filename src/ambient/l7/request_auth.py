"""Istio RequestAuthentication (security.istio.io/v1) at a waypoint: JWT end-user authentication, pure.

Role: `parse_request_authentication(obj)` -> `RequestAuthentication`; `applicable(...)` keeps those whose
targetRefs name this waypoint's Gateway or the destination Service; `authenticate(rules, headers, query,
keys, now)` finds the request's tokens, verifies them and answers an `AuthResult`: the request principal
(`<iss>/<sub>`), the claims, and what to do to the forwarded request. Keys come from the injected
`keys(rule)` (inline `jwks`, or a cache of `jwksUri` filled by the caller), the time from `now`: no I/O.
Signatures are checked by PyJWT (with `cryptography`): RS256/384/512, PS256/384/512, ES256/384, EdDSA.

Semantics (Istio, Envoy's jwt_authn as istiod configures it: requires_any(providers..., allow_missing)):
- Token locations per rule: `fromHeaders` (name, optional prefix such as "Bearer ") and `fromParams`;
  without either, the `Authorization: Bearer <token>` header and the `access_token` query parameter.
- No token anywhere: the request goes on unauthenticated (no principal); an AuthorizationPolicy decides.
- A token that is present must verify: its `iss` names a rule that looks where it was found ("Jwt issuer is
  not configured" otherwise), the signature checks against a key of that rule (matching `kid` when the
  token names one), `exp` / `nbf` hold (60 s clock skew, as Envoy), and when the rule lists `audiences`
  the token's `aud` contains one of them. Any failure -> 401 with Envoy's wording; nothing is forwarded.
- A verified token: principal `iss/sub`, claims kept for `request.auth.*` conditions; unless
  `forwardOriginalToken`, the header carrying it is removed from the forwarded request;
  `outputClaimToHeaders` sets each header to the claim's value (strings, numbers and booleans).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import jwt

from ambient.l7.errors import ConfigError

CLOCK_SKEW = 60.0  # seconds, Envoy's jwt_authn default
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")


@dataclass(frozen=True, slots=True)
class FromHeader:
    name: str  # lower-cased
    prefix: str = ""


# where a rule looks for tokens when it names no location (Istio's default)
DEFAULT_HEADERS = (FromHeader("authorization", "Bearer "),)
DEFAULT_PARAMS = ("access_token",)


@dataclass(frozen=True, slots=True)
class JwtRule:
    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str | None = None  # inline JWKS (JSON text)
    jwks_uri: str | None = None
    from_headers: tuple[FromHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    forward_original_token: bool = False
    output_claim_to_headers: tuple[tuple[str, str], ...] = ()  # (header, claim)


@dataclass(frozen=True, slots=True)
class RequestAuthentication:
    name: str
    namespace: str
    targets: tuple[tuple[str, str, str], ...] = ()  # (kind, name, namespace)
    rules: tuple[JwtRule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class AuthResult:
    """`failure` set: answer 401 with it. Else `principal` is "" when unauthenticated."""

    principal: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict)
    failure: str = ""
    remove_headers: frozenset[str] = frozenset()
    set_headers: tuple[tuple[str, str], ...] = ()

    @property
    def audiences(self) -> tuple[str, ...]:
        aud = self.claims.get("aud")
        if isinstance(aud, str):
            return (aud,)
        return tuple(str(a) for a in aud) if isinstance(aud, list) else ()


UNAUTHENTICATED = AuthResult()


def parse_request_authentication(obj: Mapping[str, Any]) -> RequestAuthentication:
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    spec = obj.get("spec") or {}
    where = f"RequestAuthentication {namespace}/{meta.get('name')}"
    refs = list(spec.get("targetRefs") or ())
    if spec.get("targetRef"):
        refs.append(spec["targetRef"])
    targets = tuple((str(r.get("kind")), str(r.get("name")), str(r.get("namespace") or namespace)) for r in refs)
    rules = []
    for i, r in enumerate(spec.get("jwtRules") or ()):
        if r.get("jwks"):
            try:
                jwt.PyJWKSet.from_json(str(r["jwks"]))
            except (jwt.PyJWKError, jwt.PyJWKSetError, ValueError, TypeError) as exc:
                raise ConfigError(f"{where} jwtRules[{i}].jwks: not a usable JWKS: {exc}") from None
        headers = tuple(FromHeader(str(h["name"]).lower(), str(h.get("prefix") or ""))
                        for h in r.get("fromHeaders") or ())
        params = tuple(str(p) for p in r.get("fromParams") or ())
        if not headers and not params:
            headers, params = DEFAULT_HEADERS, DEFAULT_PARAMS
        rules.append(JwtRule(
            str(r["issuer"]), tuple(str(a) for a in r.get("audiences") or ()), r.get("jwks") or None,
            r.get("jwksUri") or None, headers, params, bool(r.get("forwardOriginalToken")),
            tuple((str(o["header"]).lower(), str(o["claim"])) for o in r.get("outputClaimToHeaders") or ()),
        ))
    return RequestAuthentication(str(meta.get("name", "")), namespace, targets, tuple(rules))


def applicable(policies: Iterable[RequestAuthentication], service: tuple[str, str] | None,
               gateway: tuple[str, str]) -> list[RequestAuthentication]:
    """Those whose targetRefs name this waypoint's Gateway or the destination Service ((name, namespace))."""
    out = []
    for p in policies:
        for kind, name, ns in p.targets:
            if (kind == "Gateway" and (name, ns) == gateway) or (kind == "Service" and (name, ns) == service):
                out.append(p)
                break
    return out


def _tokens(rules: Sequence[JwtRule], headers: Mapping[str, str], query: str) -> list[tuple[str, str, str]]:
    """(token, where kind "header"/"param", name) of every distinct token the rules look for."""
    params: dict[str, str] | None = None
    found: list[tuple[str, str, str]] = []
    for rule in rules:
        for h in rule.from_headers:
            value = headers.get(h.name)
            if value is None:
                continue
            if h.prefix:
                if not value.startswith(h.prefix):
                    continue
                value = value[len(h.prefix):]
            value = value.strip()
            if value and (value, "header", h.name) not in found:
                found.append((value, "header", h.name))
        for p in rule.from_params:
            if params is None:
                params = {}
                for k, v in parse_qsl(query, keep_blank_values=True):
                    params.setdefault(k, v)
            value = params.get(p, "")
            if value and (value, "param", p) not in found:
                found.append((value, "param", p))
    return found


def _looks_at(rule: JwtRule, kind: str, name: str) -> bool:
    if kind == "header":
        return any(h.name == name for h in rule.from_headers)
    return name in rule.from_params


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


VERIFIED_CACHE_SIZE = 1024  # verified tokens remembered (Envoy's jwt_cache_config keeps 100 by default)
# (token, id(key set) or 0 for the unverified payload) -> (the key set, claims)
TokenCache = dict[tuple[str, int], tuple[Any, Mapping[str, Any]]]


def _check_claims(claims: Mapping[str, Any], rule: JwtRule, now: float) -> str:
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if isinstance(exp, int | float) and now > exp + CLOCK_SKEW:
        return "Jwt is expired"
    if isinstance(nbf, int | float) and now + CLOCK_SKEW < nbf:
        return "Jwt not yet valid"
    if rule.audiences:
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else list(aud) if isinstance(aud, list) else []
        if not set(auds) & set(rule.audiences):
            return "Audiences in Jwt are not allowed"
    return ""


def verify(token: str, rule: JwtRule, keyset: jwt.PyJWKSet | None, now: float,
           cache: TokenCache | None = None) -> tuple[Mapping[str, Any] | None, str]:
    """(claims, "") when `token` verifies under `rule`, else (None, Envoy's reason). `cache` remembers tokens
    whose signature verified with that very key set (a refreshed set is a new object: nothing carries over);
    time and audience are checked on every use."""
    if keyset is None:
        return None, "Jwks remote fetch is failed"
    if cache is not None:
        hit = cache.get((token, id(keyset)))
        # the entry holds the key set itself: while cached it cannot be freed and its id reused by another
        if hit is not None and hit[0] is keyset:
            reason = _check_claims(hit[1], rule, now)
            return (None, reason) if reason else (hit[1], "")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return None, "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        return None, "Jwt verification fails"
    kid = header.get("kid")
    candidates = [k for k in keyset.keys if kid is None or k.key_id == kid]
    if not candidates:
        return None, "Jwks doesn't have key to match kid or alg from Jwt"
    for key in candidates:
        try:
            claims = jwt.decode(token, key.key, algorithms=[alg], leeway=CLOCK_SKEW,
                                options={"verify_aud": False, "verify_iss": False, "verify_exp": False,
                                         "verify_nbf": False, "verify_iat": False})
        except jwt.PyJWTError:
            continue
        if cache is not None:
            if len(cache) >= VERIFIED_CACHE_SIZE:
                cache.clear()
            cache[(token, id(keyset))] = (keyset, claims)
        reason = _check_claims(claims, rule, now)
        return (None, reason) if reason else (claims, "")
    return None, "Jwt verification fails"


def authenticate(
    policies: Sequence[RequestAuthentication],
    headers: Mapping[str, str],
    query: str,
    keys: Callable[[JwtRule], jwt.PyJWKSet | None],
    now: float,
    cache: TokenCache | None = None,
) -> AuthResult:
    rules = [r for p in policies for r in p.rules]
    if not rules:
        return UNAUTHENTICATED
    tokens = _tokens(rules, headers, query)
    if not tokens:
        return UNAUTHENTICATED
    result: AuthResult | None = None
    for token, kind, name in tokens:
        try:
            iss = _unverified_issuer(token, cache)
        except jwt.PyJWTError:
            return AuthResult(failure="Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")
        matching = [r for r in rules if r.issuer == iss and _looks_at(r, kind, name)]
        if not matching:
            return AuthResult(failure="Jwt issuer is not configured")
        claims: Mapping[str, Any] | None = None
        reason = ""
        chosen = matching[0]
        for rule in matching:
            claims, reason = verify(token, rule, keys(rule), now, cache)
            if claims is not None:
                chosen = rule
                break
        if claims is None:
            return AuthResult(failure=reason)
        if result is None:
            remove = frozenset() if chosen.forward_original_token or kind != "header" else frozenset({name})
            out = []
            for header, claim in chosen.output_claim_to_headers:
                value = _claim(claims, claim)
                if isinstance(value, bool):
                    out.append((header, "true" if value else "false"))
                elif isinstance(value, str | int | float):
                    out.append((header, str(value)))
            result = AuthResult(f"{iss}/{claims.get('sub', '')}", claims, "", remove, tuple(out))
    assert result is not None
    return result


def _unverified_issuer(token: str, cache: TokenCache | None) -> Any:
    if cache is not None:
        hit = cache.get((token, 0))
        if hit is not None:
            return hit[1].get("iss")
    claims = jwt.decode(token, options={"verify_signature": False})
    if cache is not None:  # key 0: the unverified payload, only used to find the token's issuer
        if len(cache) >= VERIFIED_CACHE_SIZE:
            cache.clear()
        cache[(token, 0)] = (None, claims)
    return claims.get("iss")


def claim_values(claims: Mapping[str, Any], path: Sequence[str]) -> list[str] | None:
    """`request.auth.claims[a][b]` -> the claim's values as strings (a list claim gives each element); None
    when absent."""
    value: Any = claims
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, list):
        return [v if isinstance(v, str) else json.dumps(v) for v in value]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    return [value if isinstance(value, str) else json.dumps(value)]
