"""RequestAuthentication + AuthorizationPolicy at the waypoint, end to end on loopback (Istio's jwt task):
a valid token is 200, an expired / wrong-issuer / badly signed one 401 (nothing reaches a backend), no token
403 from the policy requiring a request principal; a `when` on a claim allows only the right group; the
token is not forwarded unless asked, and a claim can be copied into a header."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from ambient.bench.loopback import loopback
from helpers import Http1Client as H1

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "l7"))
from jwt_keys import ISSUER, OTHER_KEY, jwks, token

pytestmark = pytest.mark.timeout(60)

META = {"namespace": "shop", "creationTimestamp": "2024-01-01T00:00:00Z"}


def ra(**rule: Any) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication", "metadata": {"name": "jwt", **META},
            "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
                     "jwtRules": [{"issuer": ISSUER, "jwks": jwks(), **rule}]}}


def ap(rule: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "require", **META},
            "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}], "action": "ALLOW",
                     "rules": [rule]}}


REQUIRE = ap({"from": [{"source": {"requestPrincipals": [f"{ISSUER}/subject"]}}]})


def bearer(t: str) -> dict[str, str]:
    return {"authorization": f"Bearer {t}"}


async def test_valid_200_invalid_401_missing_403() -> None:
    async with loopback([ra(outputClaimToHeaders=[{"header": "x-jwt-sub", "claim": "sub"}]), REQUIRE]) as lb:
        c = H1(await lb.open())
        for alg in ("RS256", "ES256"):
            status, _, body = await c.request("/", bearer(token(alg=alg)))
            assert status == 200, body
            seen = json.loads(body)["headers"]
            assert "authorization" not in seen and seen["x-jwt-sub"] == "subject"
        reached = len(lb.backend_seen)
        for bad, reason in ((token(expires_in=-3600), b"Jwt is expired"),
                            (token(iss="other-issuer"), b"Jwt issuer is not configured"),
                            (token(key=OTHER_KEY), b"Jwt verification fails")):
            status, _, body = await c.request("/", bearer(bad))
            assert (status, body.strip()) == (401, reason)
        status, _, body = await c.request("/")
        assert (status, body.strip()) == (403, b"RBAC: access denied")
        assert len(lb.backend_seen) == reached  # none of the refused requests reached a backend
        status, _, _ = await c.request("/", bearer(token("someone-else")))
        assert status == 403  # authenticated, but not the principal the policy wants
        c.stream.close()


async def test_claim_condition_allows_only_the_right_group() -> None:
    group = ap({"from": [{"source": {"requestPrincipals": ["*"]}}],
                "when": [{"key": "request.auth.claims[groups]", "values": ["group1"]}]})
    async with loopback([ra(forwardOriginalToken=True), group]) as lb:
        c = H1(await lb.open())
        status, _, body = await c.request("/", bearer(token(groups=["group1", "group2"])))
        assert status == 200 and "authorization" in json.loads(body)["headers"]
        status, _, _ = await c.request("/", bearer(token(groups=["group2"])))
        assert status == 403
        c.stream.close()
