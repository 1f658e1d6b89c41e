"""`credentialName` in the waypoint's TLS origination (no network): resolution against the Secrets of the
waypoint's namespace, kept until the Secrets change; the credential wins over the file fields; an unusable
credential is 503 UF naming the Secret, never its contents."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from ambient.cluster.outside import write_certificates
from ambient.l7.traffic_policy import OriginationTls, resolve
from ambient.tls.credentials import ClientCredential, KeyPair
from ambient.waypoint.errors import UpstreamError
from ambient.waypoint.origination import Credentials, client_context, open_tls

MUTUAL = OriginationTls("MUTUAL", credential_name="api-client")


def secret(ns: str, name: str, **data: bytes) -> dict[tuple[str, str], dict[str, Any]]:
    return {(ns, name): {"kind": "Secret", "metadata": {"name": name, "namespace": ns},
                         "data": {k.replace("_", "."): base64.b64encode(v).decode() for k, v in data.items()}}}


def test_credential_name_is_parsed_with_the_policy() -> None:
    policy = resolve({"tls": {"mode": "MUTUAL", "credentialName": "api-client", "sni": "api.example.test"}}, None, 80)
    assert policy.tls == OriginationTls("MUTUAL", "api.example.test", credential_name="api-client")


def test_resolution_reads_the_waypoint_namespace_and_follows_secret_changes() -> None:
    creds = Credentials("egress")
    assert creds.resolve(OriginationTls("SIMPLE"), {}) is None  # no credentialName: the file fields apply
    # a Secret of that name in another namespace is not the waypoint's
    with pytest.raises(UpstreamError) as err:
        creds.resolve(MUTUAL, secret("shop", "api-client", tls_crt=b"C", tls_key=b"K", ca_crt=b"A"))
    assert (err.value.status, err.value.flags) == (503, "UF")
    assert "credentialName Secret egress/api-client not found" in err.value.message
    assert err.value.hint is not None and "namespace egress" in err.value.hint
    secrets = secret("egress", "api-client", tls_crt=b"C", tls_key=b"K", ca_crt=b"A")
    first = creds.resolve(MUTUAL, secrets)
    assert first == ClientCredential("egress/api-client", KeyPair(b"C", b"K"), b"A")
    assert creds.resolve(MUTUAL, secrets) is first  # same Secrets: not decoded again
    rotated = secret("egress", "api-client", tls_crt=b"C2", tls_key=b"K2", ca_crt=b"A")
    assert creds.resolve(MUTUAL, rotated) == ClientCredential("egress/api-client", KeyPair(b"C2", b"K2"), b"A")
    with pytest.raises(UpstreamError, match=r"not the key cacert or ca\.crt"):  # no CA: never the system roots
        creds.resolve(MUTUAL, secret("egress", "api-client", tls_crt=b"C", tls_key=b"K"))
    # insecureSkipVerify: the key pair only
    skip = OriginationTls("MUTUAL", insecure_skip_verify=True, credential_name="api-client")
    assert creds.resolve(skip, secret("egress", "api-client", cert=b"C", key=b"K")) == ClientCredential(
        "egress/api-client", KeyPair(b"C", b"K"), None)


def test_the_credential_wins_over_the_file_fields(tmp_path: Path) -> None:
    ca, crt, key = write_certificates(tmp_path, ["client.example.test"])
    tls = OriginationTls("MUTUAL", ca_certificates="/nonexistent/ca.crt", client_certificate="/nonexistent/c.crt",
                         private_key="/nonexistent/c.key", credential_name="api-client")
    cred = ClientCredential("egress/api-client", KeyPair(crt.read_bytes(), key.read_bytes()), ca.read_bytes())
    ctx = client_context(tls, cred)  # the files are not read
    assert ctx.verify_mode.name == "CERT_REQUIRED" and len(ctx.get_ca_certs()) == 1  # the Secret's CA only


def test_an_unusable_credential_is_503_naming_the_secret_not_its_contents(tmp_path: Path) -> None:
    ca, crt, _ = write_certificates(tmp_path, ["client.example.test"])
    other_key = write_certificates(tmp_path / "other", ["x.example.test"])[2].read_bytes()
    wrong = ClientCredential("egress/api-client", KeyPair(crt.read_bytes(), other_key), ca.read_bytes())
    with pytest.raises(UpstreamError) as err:
        client_context(MUTUAL, wrong)
    assert err.value.status == 503 and "credentialName Secret egress/api-client" in err.value.message
    assert "PRIVATE KEY" not in err.value.message
    with pytest.raises(UpstreamError, match="credentialName Secret egress/api-client unusable"):
        client_context(OriginationTls("SIMPLE", credential_name="api-client"),
                       ClientCredential("egress/api-client", None, b"not a certificate"))


async def test_open_tls_never_opens_without_the_resolved_credential() -> None:
    with pytest.raises(UpstreamError, match="credentialName api-client was not resolved"):
        await open_tls("127.0.0.1", 9, MUTUAL, "api.example.test")
