"""Local-cluster pod tokens: mint/verify, the key file, the CA issuing exactly the pod's own identity, xDS
admission, and the kubelet side (token file written for a pod)."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2

from ambient.cluster import podruntime as rt
from ambient.controlplane import pod_tokens as T
from ambient.controlplane.app import ControlPlane
from ambient.controlplane.ca_server import Caller, CertificateAuthority, NodeTokenAuthenticator, NodeTokens
from ambient.controlplane.errors import CaRefusedError
from ambient.controlplane.index import MeshIndex
from ambient.identity.ca import LocalCA
from ambient.identity.csr import make_csr
from ambient.identity.spiffe import SpiffeId

KEY = b"k" * 32
CLAIMS = T.PodClaims("shop", "waypoint", "waypoint-5g8k9", "uid-1", "node-1")


def pod(name: str = "waypoint-5g8k9", uid: str = "uid-1", sa: str = "waypoint", node: str = "node-1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "uid": uid},
            "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "c", "command": ["x"]}]},
            "status": {"podIP": "10.244.1.9", "phase": "Running"}}


# ----------------------------------------------------------------------------- mint / verify


def test_round_trip_and_prefix() -> None:
    token = T.mint(KEY, CLAIMS)
    assert token.startswith("amb1.") and T.is_pod_token(token)
    got = T.verify(KEY, token)
    assert (got.namespace, got.service_account, got.pod, got.uid, got.node) == (
        "shop", "waypoint", "waypoint-5g8k9", "uid-1", "node-1")
    assert got.issued_at > 0


def _reclaim(token: str, **changes: str) -> str:
    """The same signature over different claims (what a forger can do without the key)."""
    prefix, body, mac = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    new = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{prefix}.{new}.{mac}"


@pytest.mark.parametrize("mangle", [
    lambda t: _reclaim(t, sa="default"),  # another service account
    lambda t: _reclaim(t, ns="istio-system"),
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature bits
    lambda t: T.mint(b"x" * 32, CLAIMS),  # another cluster's key
    lambda t: "amb1.",
    lambda t: "amb1.e30.",  # {} without a signature
    lambda t: "amb1.!!!.@@@",
    lambda t: "node-token-not-a-pod-token",
])
def test_forged_or_malformed_tokens_are_unauthenticated(mangle: Any) -> None:
    with pytest.raises(CaRefusedError) as err:
        T.verify(KEY, mangle(T.mint(KEY, CLAIMS)))
    assert err.value.code == "UNAUTHENTICATED"


def test_claims_must_name_pod_and_account() -> None:
    with pytest.raises(CaRefusedError, match="lacks"):
        T.verify(KEY, T.mint(KEY, T.PodClaims("shop", "", "p", "u", "n")))


def test_key_created_once_with_mode_0600(tmp_path: Path) -> None:
    key = T.load_or_create_key(tmp_path)
    path = T.key_path(tmp_path)
    assert path == tmp_path / "ca" / "token-key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert T.load_or_create_key(tmp_path) == key and len(key) == 32
    assert [p.name for p in path.parent.iterdir()] == ["token-key"]  # no temporary files left


# ----------------------------------------------------------------------------- authenticators


async def test_pod_authenticator_is_revoked_with_the_pod(tmp_path: Path) -> None:
    alive = {("shop", "waypoint-5g8k9", "uid-1")}
    auth = T.PodTokenAuthenticator(tmp_path, lambda ns, name, uid: (ns, name, uid) in alive)
    token = T.mint(T.load_or_create_key(tmp_path), CLAIMS)
    assert await auth.authenticate(token) == Caller("shop", "waypoint", "")  # no node: no impersonation
    alive.clear()
    with pytest.raises(CaRefusedError, match="no longer exists"):
        await auth.authenticate(token)


async def test_local_authenticator_dispatches_by_prefix(tmp_path: Path) -> None:
    nodes = NodeTokens(tmp_path)
    node_token = nodes.ensure("node-1")
    local = T.LocalAuthenticator(T.PodTokenAuthenticator(tmp_path), NodeTokenAuthenticator(nodes))
    assert await local.authenticate(node_token) == Caller("istio-system", "ztunnel", "node-1")
    pod_token = T.mint(T.load_or_create_key(tmp_path), CLAIMS)
    assert await local.authenticate(pod_token) == Caller("shop", "waypoint", "")
    with pytest.raises(CaRefusedError):
        await local.authenticate("amb1.garbage.sig")


# ----------------------------------------------------------------------------- the CA


@pytest.fixture
def authority(tmp_path: Path) -> tuple[CertificateAuthority, str, str]:
    ca = LocalCA.load_or_create(tmp_path / "ca", max_ttl=timedelta(hours=1))
    index = MeshIndex()
    index.upsert("Pod", pod())
    index.upsert("Pod", pod("web-1", "uid-2", "web"))  # same node, another account
    nodes = NodeTokens(tmp_path)
    local = T.LocalAuthenticator(T.PodTokenAuthenticator(tmp_path), NodeTokenAuthenticator(nodes))
    return (CertificateAuthority(ca, local, index.node_service_accounts),
            T.mint(T.load_or_create_key(tmp_path), CLAIMS), nodes.ensure("node-1"))


def _csr(uri: str) -> str:
    return make_csr(SpiffeId.parse(uri)).csr_pem.decode()


def _impersonate(uri: str) -> struct_pb2.Struct:
    return struct_pb2.Struct(fields={"ImpersonatedIdentity": struct_pb2.Value(string_value=uri)})


async def test_ca_issues_a_pod_exactly_its_own_identity(authority: tuple[CertificateAuthority, str, str]) -> None:
    ca, pod_token, node_token = authority
    own = "spiffe://cluster.local/ns/shop/sa/waypoint"
    chain = await ca.issue(_csr(own), 0, None, {"authorization": f"Bearer {pod_token}"})
    assert len(chain) == 2  # leaf first, root last
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(u) for u in sans.get_values_for_type(x509.UniformResourceIdentifier)] == [own]

    other = "spiffe://cluster.local/ns/shop/sa/web"  # a pod on the same node: still not this pod's
    with pytest.raises(CaRefusedError) as err:
        await ca.issue(_csr(other), 0, None, {"authorization": f"Bearer {pod_token}"})
    assert err.value.code == "PERMISSION_DENIED"
    with pytest.raises(CaRefusedError, match="only the node proxy") as err:
        await ca.issue(_csr(other), 0, _impersonate(other), {"authorization": f"Bearer {pod_token}"})
    assert err.value.code == "PERMISSION_DENIED"
    # The node token keeps working as before (impersonation of the node's pods).
    chain = await ca.issue(_csr(other), 0, _impersonate(other), {"authorization": f"Bearer {node_token}"})
    assert len(chain) == 2


def test_xds_admission_accepts_live_pod_tokens_only(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path, tls=False)
    token = T.mint(T.load_or_create_key(tmp_path), CLAIMS)
    md = {"authorization": f"Bearer {token}"}
    assert "no longer exists" in (cp._authenticate(md, "waypoint~x") or "")
    cp.index.upsert("Pod", pod())
    assert cp._authenticate(md, "waypoint~x") is None
    assert "signature" in (cp._authenticate({"authorization": "Bearer " + _reclaim(token, sa="x")}, "n") or "")
    assert cp._authenticate({"authorization": f"Bearer {cp.tokens.ensure('node-1')}"}, "ztunnel~x") is None
    assert cp._authenticate({"authorization": "Bearer nope"}, "ztunnel~x") is not None


# ----------------------------------------------------------------------------- kubelet side


def test_kubelet_writes_a_token_for_the_pod(tmp_path: Path) -> None:
    path = rt.write_pod_token(tmp_path, "node-1", pod())
    assert path == T.pod_token_path(tmp_path, "node-1", "uid-1")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    claims = T.verify(T.load_or_create_key(tmp_path), path.read_text().strip())
    assert (claims.namespace, claims.service_account, claims.pod, claims.uid, claims.node) == (
        "shop", "waypoint", "waypoint-5g8k9", "uid-1", "node-1")
    rt.remove_pod_token(tmp_path, "node-1", "uid-1")
    assert not path.parent.exists()
