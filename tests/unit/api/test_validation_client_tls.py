"""DestinationRule `trafficPolicy.tls` (ClientTLSSettings) validation: what Istio's ValidateTLS accepts and
refuses, at the top level, in portLevelSettings and in subsets."""

from __future__ import annotations

from typing import Any

import pytest

from ambient.api.errors import ValidationError
from ambient.api.validation import validate_object


def dr(tls: dict[str, Any], where: str = "top") -> dict[str, Any]:
    policy: dict[str, Any] = {"tls": tls}
    if where == "port":
        policy = {"portLevelSettings": [{"port": {"number": 443}, "tls": tls}]}
    spec: dict[str, Any] = {"host": "api.example.test", "trafficPolicy": policy}
    if where == "subset":
        spec = {"host": "api.example.test", "subsets": [{"name": "v1", "trafficPolicy": policy}]}
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "api", "namespace": "egress"}, "spec": spec}


@pytest.mark.parametrize("tls", [
    {"mode": "MUTUAL", "credentialName": "client"},
    {"mode": "MUTUAL", "credentialName": "client", "sni": "api.example.test", "subjectAltNames": ["api.example.test"]},
    {"mode": "MUTUAL", "credentialName": "client", "insecureSkipVerify": True},  # the Secret may hold no CA
    {"mode": "SIMPLE", "credentialName": "client"},
    {"mode": "SIMPLE"},
    {"mode": "SIMPLE", "insecureSkipVerify": True},
    {"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem", "caCertificates": "/ca.pem"},
    {"mode": "ISTIO_MUTUAL"},
    {"mode": "DISABLE"},
])
@pytest.mark.parametrize("where", ["top", "port", "subset"])
def test_accepted(tls: dict[str, Any], where: str) -> None:
    validate_object(dr(tls, where))


@pytest.mark.parametrize(("tls", "message"), [
    ({"mode": "MUTUAL", "credentialName": "client", "clientCertificate": "/c.pem"},
     "clientCertificate cannot be given with credentialName"),
    ({"mode": "SIMPLE", "credentialName": "client", "caCertificates": "/ca.pem"},
     "caCertificates cannot be given with credentialName"),
    ({"mode": "MUTUAL", "credentialName": "client", "privateKey": "/k.pem", "caCrl": "/crl.pem"},
     "privateKey, caCrl cannot be given with credentialName"),
    ({"mode": "MUTUAL"}, "mode MUTUAL needs clientCertificate and privateKey, or a credentialName"),
    ({"mode": "MUTUAL", "clientCertificate": "/c.pem"}, "mode MUTUAL needs privateKey"),
    ({"mode": "SIMPLE", "credentialName": "client", "insecureSkipVerify": True},
     "cannot be given when insecureSkipVerify is true"),
    ({"mode": "SIMPLE", "subjectAltNames": ["x"], "insecureSkipVerify": True},
     "cannot be given when insecureSkipVerify is true"),
    ({"mode": "MUTUAL", "credentialName": "client", "caCertificates": "/ca.pem", "insecureSkipVerify": True},
     "caCertificates and subjectAltNames cannot be given when insecureSkipVerify is true"),
    ({"mode": "MUTUAL", "credentialName": 7}, "credentialName"),
    ({"mode": "SIMPLE", "insecureSkipVerify": "yes"}, "insecureSkipVerify"),
    ({"mode": "SIMPLE", "subjectAltNames": [1]}, "subjectAltNames[0]"),
    ({"mode": "STRICT"}, "mode"),
])
@pytest.mark.parametrize("where", ["top", "port", "subset"])
def test_refused(tls: dict[str, Any], message: str, where: str) -> None:
    with pytest.raises(ValidationError) as err:
        validate_object(dr(tls, where))
    assert message in err.value.message and ".tls" in err.value.message
