"""Reading TLS credentials from Secrets with Istio's key names (`ambient.tls.credentials`): a
`kubernetes.io/tls` Secret (tls.crt / tls.key / ca.crt), a generic one (cert / key / cacert), a separate
`<name>-cacert` Secret for the CA, and what is missing named in the error (never a value)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from ambient.tls.credentials import ClientCredential, KeyPair, ca_certificates, client_credential, key_pair, secret_data
from ambient.tls.errors import CredentialError, TlsError


def secret(name: str, type_: str = "Opaque", **data: str) -> dict[str, Any]:
    return {"kind": "Secret", "type": type_, "metadata": {"name": name, "namespace": "egress"},
            "data": {k.replace("_", "."): base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def lookup(*secrets: dict[str, Any]) -> Any:
    by_name = {s["metadata"]["name"]: s for s in secrets}
    return by_name.get


TLS = secret("client", "kubernetes.io/tls", tls_crt="CRT", tls_key="KEY", ca_crt="CA")
GENERIC = secret("client", cert="CRT", key="KEY", cacert="CA")


@pytest.mark.parametrize(("data", "expected"), [
    ({"tls.crt": b"C", "tls.key": b"K"}, KeyPair(b"C", b"K")),
    ({"cert": b"C", "key": b"K"}, KeyPair(b"C", b"K")),
    # both shapes: the generic keys come first, as in Istio's ExtractCertInfo
    ({"cert": b"G", "key": b"GK", "tls.crt": b"T", "tls.key": b"TK"}, KeyPair(b"G", b"GK")),
    # an empty generic pair does not hide a usable tls pair
    ({"cert": b"", "key": b"", "tls.crt": b"T", "tls.key": b"TK"}, KeyPair(b"T", b"TK")),
    ({"tls.crt": b"C"}, "not the keys (cert and key) or (tls.crt and tls.key); found: tls.crt"),
    ({"cert": b"C", "tls.key": b"K"}, "found: cert, tls.key"),
    ({}, "found: no keys"),
    ({"cert": b"", "key": b""}, "found keys 'cert' and 'key', but they were empty"),
    ({"tls.crt": b"", "tls.key": b"K"}, "found keys 'tls.crt' and 'tls.key', but they were empty"),
    ({"a": b"", "b": b"", "c": b"", "d": b"", "e": b""}, "found: a, b, c, and 2 more"),
], ids=["tls", "generic", "generic-first", "empty-generic", "no-key", "mixed", "empty-secret", "empty-generic-only",
        "empty-tls", "many-keys"])
def test_key_pair(data: dict[str, bytes], expected: KeyPair | str) -> None:
    if isinstance(expected, KeyPair):
        assert key_pair(data, "Secret egress/client") == expected
    else:
        with pytest.raises(CredentialError) as err:
            key_pair(data, "Secret egress/client")
        assert err.value.message.startswith("Secret egress/client: ") and expected in err.value.message
        assert isinstance(err.value, TlsError)


@pytest.mark.parametrize(("data", "expected"), [
    ({"ca.crt": b"A"}, b"A"),
    ({"cacert": b"G", "ca.crt": b"T"}, b"G"),  # cacert first (Istio's ExtractRoot)
    ({"cacert": b"", "ca.crt": b"T"}, b"T"),
    ({"cacert": b""}, "found key 'cacert', but it was empty"),
    ({"tls.crt": b"C", "tls.key": b"K"}, "not the key cacert or ca.crt; found: tls.crt, tls.key"),
], ids=["ca.crt", "cacert-first", "empty-cacert", "empty", "missing"])
def test_ca_certificates(data: dict[str, bytes], expected: bytes | str) -> None:
    if isinstance(expected, bytes):
        assert ca_certificates(data, "Secret egress/client") == expected
    else:
        with pytest.raises(CredentialError, match=expected):
            ca_certificates(data, "Secret egress/client")


def test_secret_data_decodes_and_never_shows_values() -> None:
    assert secret_data(TLS, "s") == {"tls.crt": b"CRT", "tls.key": b"KEY", "ca.crt": b"CA"}
    # stringData (a static file; the API server merges it into data) wins over data
    assert secret_data({"data": {"key": "S0VZ"}, "stringData": {"key": "other"}}, "s") == {"key": b"other"}
    with pytest.raises(CredentialError, match="data key 'cert' is not base64") as err:
        secret_data({"data": {"cert": "SECRET-VALUE!"}}, "Secret egress/client")
    assert "SECRET-VALUE" not in str(err.value)


@pytest.mark.parametrize(("secrets", "mutual", "verify", "expected"), [
    ((TLS,), True, True, ClientCredential("egress/client", KeyPair(b"CRT", b"KEY"), b"CA")),
    ((GENERIC,), True, True, ClientCredential("egress/client", KeyPair(b"CRT", b"KEY"), b"CA")),
    # SIMPLE: only the CA is read (no client certificate is presented)
    ((TLS,), False, True, ClientCredential("egress/client", None, b"CA")),
    # the CA from a separate <name>-cacert Secret wins over the Secret's own
    ((TLS, secret("client-cacert", cacert="OTHER")), True, True,
     ClientCredential("egress/client", KeyPair(b"CRT", b"KEY"), b"OTHER")),
    # SIMPLE with only the -cacert Secret: enough
    ((secret("client-cacert", ca_crt="ONLY"),), False, True, ClientCredential("egress/client", None, b"ONLY")),
    # insecureSkipVerify: no CA needed
    ((secret("client", tls_crt="CRT", tls_key="KEY"),), True, False,
     ClientCredential("egress/client", KeyPair(b"CRT", b"KEY"), None)),
    ((), True, True, "credentialName Secret egress/client not found"),
    ((), False, True, "credentialName Secret egress/client not found (nor egress/client-cacert)"),
    # no CA anywhere: an error (no fall back to the system roots)
    ((secret("client", tls_crt="CRT", tls_key="KEY"),), True, True,
     "credentialName Secret egress/client: found the Secret, but not the key cacert or ca.crt"),
    # a -cacert Secret without the CA keys is an error, not a fall back to the main Secret's CA
    ((TLS, secret("client-cacert", other="X")), True, True, "CA Secret egress/client-cacert: found the Secret"),
    ((secret("client", cacert="CA"),), True, True, "not the keys (cert and key) or (tls.crt and tls.key)"),
], ids=["tls", "generic", "simple", "cacert-secret", "simple-cacert-only", "skip-verify", "missing", "missing-simple",
        "no-ca", "bad-cacert-secret", "no-key-pair"])
def test_client_credential(secrets: tuple[dict[str, Any], ...], mutual: bool, verify: bool,
                           expected: ClientCredential | str) -> None:
    if isinstance(expected, ClientCredential):
        assert client_credential(lookup(*secrets), "egress", "client", mutual=mutual, verify=verify) == expected
    else:
        with pytest.raises(CredentialError) as err:
            client_credential(lookup(*secrets), "egress", "client", mutual=mutual, verify=verify)
        assert expected in err.value.message
        if "not found" in expected:  # says where the Secret must be
            assert err.value.hint is not None and "namespace egress" in err.value.hint
