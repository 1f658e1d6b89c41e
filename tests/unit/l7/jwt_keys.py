"""Test keys and tokens for RequestAuthentication tests (RS256 and ES256), made fresh per run."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "testing@secure.istio.io"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(*, other: bool = False) -> str:
    keys = []
    for kid, key, alg in (("rsa1", OTHER_KEY if other else RSA_KEY, "RS256"), ("ec1", EC_KEY, "ES256")):
        algo = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
        jwk = json.loads(algo.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
    return json.dumps({"keys": keys})


def token(sub: str = "subject", *, iss: str = ISSUER, alg: str = "RS256", expires_in: float = 3600,
          key: Any = None, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": iss, "sub": sub, "iat": now, "exp": int(now + expires_in), **claims}
    signer = key or (RSA_KEY if alg == "RS256" else EC_KEY)
    return jwt.encode(payload, signer, algorithm=alg, headers={"kid": "rsa1" if alg == "RS256" else "ec1"})
