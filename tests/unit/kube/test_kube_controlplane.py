"""The control plane in Kubernetes mode against the scripted API server: the CA authenticates callers with
TokenReview and binds them to the node of their pod, the CA root lives in Secret `ambient-ca` and its
certificate in ConfigMap `ambient-ca-root-cert`, and the whole process (KubeSource -> index -> TLS gRPC with
the Service's DNS name) issues certificates and gates xDS by token."""

from __future__ import annotations

import asyncio
import base64
import copy
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from google.protobuf import struct_pb2
from kube_fakeapi import FakeKubeApi, recorded

from ambient.controlplane.ca_server import CertificateAuthority
from ambient.controlplane.errors import CaRefusedError
from ambient.controlplane.index import MeshIndex
from ambient.identity.ca import LocalCA
from ambient.identity.ca_client import CaClient, CaRequestError
from ambient.identity.csr import make_csr
from ambient.identity.spiffe import SpiffeId
from ambient.kube import controlplane as kcp
from ambient.kube.errors import KubeError
from ambient.kube.resources import RESOURCES
from ambient.kube.source import KubeSource
from ambient.state.store import StateStore
from ambient.xds.client import XdsClient, node_id

pytestmark = pytest.mark.timeout(60)

PROXY_TOKEN = "eyJhbGciOiJSUzI1NiJ9.proxy-token.sig"  # ambient-system/ztunnel, pod ztunnel-4kq8z on kind-worker
WORKLOAD_TOKEN = "eyJhbGciOiJSUzI1NiJ9.web-token.sig"  # demo/web, pod web-7d9c6b5f4-x2lqp on kind-worker
POD_PATH = "/api/v1/namespaces/ambient-system/pods/ztunnel-4kq8z"
WEB_POD_PATH = "/api/v1/namespaces/demo/pods/web-7d9c6b5f4-x2lqp"
SECRET_PATH = "/api/v1/namespaces/ambient-system/secrets/ambient-ca"
CONFIGMAP_PATH = "/api/v1/namespaces/ambient-system/configmaps/ambient-ca-root-cert"
WEB = "spiffe://cluster.local/ns/demo/sa/web"  # pod web-... runs on kind-worker
CLIENT = "spiffe://cluster.local/ns/demo/sa/client"  # pod client runs on kind-worker2
RECORDINGS = {"Namespace": "namespaces", "Pod": "pods", "Service": "services",
              "AuthorizationPolicy": "authorizationpolicies", "PeerAuthentication": "peerauthentications",
              "Gateway": "gateways"}


def path_of(kind: str) -> str:
    res = RESOURCES[kind]
    base = "/api/v1" if not res.group else f"/apis/{res.group}/{res.version}"
    return f"{base}/{res.plural}"


def web_review() -> dict[str, Any]:
    answer = recorded("tokenreview-proxy")
    user = answer["status"]["user"]
    user["username"] = "system:serviceaccount:demo:web"
    user["extra"]["authentication.kubernetes.io/pod-name"] = ["web-7d9c6b5f4-x2lqp"]
    user["extra"]["authentication.kubernetes.io/pod-uid"] = ["a3b4c5d6-e7f8-4a09-8b1c-2d3e4f506172"]
    return answer


def script_cluster(fake_api: FakeKubeApi) -> None:
    """Recorded objects for every watched kind, the bound pods, and the two tokens' reviews."""
    for kind, name in RECORDINGS.items():
        fake_api.lists[path_of(kind)] = [recorded(name)]
    fake_api.objects[POD_PATH] = recorded("pod-ztunnel")
    web = next(p for p in recorded("pods")["items"] if p["metadata"]["name"].startswith("web-"))
    fake_api.objects[WEB_POD_PATH] = web
    fake_api.token_reviews[PROXY_TOKEN] = recorded("tokenreview-proxy")
    fake_api.token_reviews[WORKLOAD_TOKEN] = web_review()


def index_of_recorded_pods() -> MeshIndex:
    index = MeshIndex()
    index.replace("Pod", recorded("pods")["items"])
    return index


def csr_for(identity: str) -> str:
    return make_csr(SpiffeId.parse(identity)).csr_pem.decode()


def impersonating(identity: str) -> struct_pb2.Struct:
    return struct_pb2.Struct(fields={"ImpersonatedIdentity": struct_pb2.Value(string_value=identity)})


@pytest.fixture
def authority(fake_api: FakeKubeApi, source: KubeSource) -> CertificateAuthority:
    script_cluster(fake_api)
    ca = LocalCA.create(max_ttl=timedelta(hours=1))
    return CertificateAuthority(ca, kcp.KubeCallerAuthenticator(source, ["istio-ca"]),
                                index_of_recorded_pods().node_service_accounts, max_ttl=timedelta(hours=1),
                                proxy_namespace="ambient-system", proxy_service_account="ztunnel")


# ------------------------------------------------------------------ CA: TokenReview + node binding
async def test_proxy_gets_a_service_account_of_a_pod_on_its_bound_node(
    fake_api: FakeKubeApi, authority: CertificateAuthority
) -> None:
    chain = await authority.issue(csr_for(WEB), 3600, impersonating(WEB), {"authorization": f"Bearer {PROXY_TOKEN}"})
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    (req,) = fake_api.requests("/apis/authentication.k8s.io/v1/tokenreviews")
    assert req.body["spec"] == {"token": PROXY_TOKEN, "audiences": ["istio-ca"]}
    assert fake_api.requests(POD_PATH), "the node must come from the pod the token is bound to"
    # its own identity, without impersonation, as the manifests run it (ambient-system/ztunnel)
    own = "spiffe://cluster.local/ns/ambient-system/sa/ztunnel"
    assert await authority.issue(csr_for(own), 0, None, {"authorization": f"Bearer {PROXY_TOKEN}"})


async def test_foreign_nodes_service_account_is_refused_with_a_reason(authority: CertificateAuthority) -> None:
    with pytest.raises(CaRefusedError) as err:
        await authority.issue(csr_for(CLIENT), 3600, impersonating(CLIENT), {"authorization": f"Bearer {PROXY_TOKEN}"})
    assert err.value.code == "PERMISSION_DENIED"
    assert "node kind-worker may not impersonate" in err.value.message
    assert "no pod on node kind-worker runs as service account demo/client" in err.value.message


async def test_wrong_audience_is_refused(fake_api: FakeKubeApi, authority: CertificateAuthority) -> None:
    answer = recorded("tokenreview-proxy")
    answer["status"]["audiences"] = ["https://kubernetes.default.svc.cluster.local"]
    fake_api.token_reviews[PROXY_TOKEN] = answer
    with pytest.raises(CaRefusedError) as err:
        await authority.issue(csr_for(WEB), 3600, impersonating(WEB), {"authorization": f"Bearer {PROXY_TOKEN}"})
    assert err.value.code == "UNAUTHENTICATED"
    assert "do not include istio-ca" in err.value.message


async def test_token_bound_to_a_replaced_pod_is_refused(fake_api: FakeKubeApi, authority: CertificateAuthority) -> None:
    pod = copy.deepcopy(fake_api.objects[POD_PATH])
    pod["metadata"]["uid"] = "another-uid"
    fake_api.objects[POD_PATH] = pod
    with pytest.raises(CaRefusedError) as err:
        await authority.issue(csr_for(WEB), 3600, impersonating(WEB), {"authorization": f"Bearer {PROXY_TOKEN}"})
    assert err.value.code == "UNAUTHENTICATED" and "earlier pod" in err.value.message


async def test_a_workload_gets_only_its_own_identity(authority: CertificateAuthority) -> None:
    headers = {"authorization": f"Bearer {WORKLOAD_TOKEN}"}
    chain = await authority.issue(csr_for(WEB), 3600, None, headers)
    assert len(chain) == 2
    # web runs on kind-worker like the proxy, but only the proxy's service account may impersonate
    other = "spiffe://cluster.local/ns/demo/sa/other"
    with pytest.raises(CaRefusedError) as err:
        await authority.issue(csr_for(other), 3600, impersonating(other), headers)
    assert err.value.code == "PERMISSION_DENIED" and "only the node proxy (ambient-system/ztunnel)" in err.value.message
    with pytest.raises(CaRefusedError) as err:
        await authority.issue(csr_for(other), 3600, None, headers)
    assert "its own identity is demo/web" in err.value.message


# ------------------------------------------------------------------ CA root persistence
async def test_root_is_created_once_in_the_secret_and_published(fake_api: FakeKubeApi, source: KubeSource) -> None:
    store = kcp.CaStore(source, "ambient-system")
    ca = await store.load_or_create(max_ttl=timedelta(hours=1))
    secret = fake_api.objects[SECRET_PATH]
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["root-cert.pem"]) == ca.root_pem
    assert base64.b64decode(secret["data"]["root-key.pem"]) == ca.key_pem
    assert await store.publish_root(ca.root_pem) is True
    assert fake_api.objects[CONFIGMAP_PATH]["data"] == {"root-cert.pem": ca.root_pem.decode()}
    assert await store.publish_root(ca.root_pem) is False  # unchanged: no write

    # a restart (a new process) loads the same root, and a stale ConfigMap is updated (PUT, not patch)
    again = await kcp.CaStore(source, "ambient-system").load_or_create(max_ttl=timedelta(hours=1))
    assert again.root_pem == ca.root_pem and again.key_pem == ca.key_pem
    fake_api.objects[CONFIGMAP_PATH]["data"]["root-cert.pem"] = "stale"
    assert await store.publish_root(ca.root_pem) is True
    assert fake_api.objects[CONFIGMAP_PATH]["data"]["root-cert.pem"] == ca.root_pem.decode()
    writes = [(r.method, r.path) for r in fake_api.log if r.method not in ("GET",)]
    assert writes == [
        ("POST", "/api/v1/namespaces/ambient-system/secrets"),
        ("POST", "/api/v1/namespaces/ambient-system/configmaps"),
        ("PUT", CONFIGMAP_PATH),
    ]


async def test_a_concurrently_created_secret_wins(fake_api: FakeKubeApi, source: KubeSource) -> None:
    winner = LocalCA.create()
    fake_api.objects[SECRET_PATH] = {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "ambient-ca", "namespace": "ambient-system", "resourceVersion": "7"},
        "data": {"root-cert.pem": base64.b64encode(winner.root_pem).decode(),
                 "root-key.pem": base64.b64encode(winner.key_pem).decode()},
    }
    store = kcp.CaStore(source, "ambient-system")
    real_read = store._read
    reads = 0

    async def first_read_misses(kind: str, name: str) -> Any:
        # our first GET happened before the other replica's create: it found nothing
        nonlocal reads
        reads += 1
        return None if reads == 1 else await real_read(kind, name)

    store._read = first_read_misses  # type: ignore[method-assign]
    ca = await store.load_or_create(max_ttl=timedelta(hours=1))
    assert ca.root_pem == winner.root_pem and ca.key_pem == winner.key_pem
    posts = [r for r in fake_api.log if r.method == "POST"]
    assert len(posts) == 1  # our create was answered 409 AlreadyExists, then the winner's Secret was read


async def test_a_broken_secret_is_reported_not_replaced(fake_api: FakeKubeApi, source: KubeSource) -> None:
    fake_api.objects[SECRET_PATH] = {"apiVersion": "v1", "kind": "Secret",
                                     "metadata": {"name": "ambient-ca", "resourceVersion": "3"},
                                     "data": {"root-cert.pem": base64.b64encode(b"junk").decode()}}
    with pytest.raises(KubeError, match=r"lacks valid root-cert\.pem / root-key\.pem"):
        await kcp.CaStore(source, "ambient-system").load_or_create(max_ttl=timedelta(hours=1))
    assert not [r for r in fake_api.log if r.method != "GET"]


# ------------------------------------------------------------------ the whole control plane
async def test_controlplane_serves_ca_and_xds_from_kubernetes(
    fake_api: FakeKubeApi, source: KubeSource, tmp_path: Path
) -> None:
    script_cluster(fake_api)
    cp, _store = await kcp.build(source, tmp_path / "state", "127.0.0.1:0", namespace="ambient-system",
                                max_ttl=timedelta(hours=1))
    root = fake_api.objects[CONFIGMAP_PATH]["data"]["root-cert.pem"].encode()
    assert root == cp.ca.root_pem
    async with asyncio.TaskGroup() as tg:
        cp_task = tg.create_task(cp.run())
        await asyncio.wait_for(cp.ready.wait(), 20)
        addr = f"127.0.0.1:{cp.port}"
        # TLS verified against the published root, under the Service's DNS name the manifests dial
        async with CaClient(addr, token=PROXY_TOKEN, root_cert=root,
                            server_name="ambient-controlplane.ambient-system.svc") as ca:
            bundle = await ca.fetch(WEB)
            assert bundle.identity.uri == WEB
            with pytest.raises(CaRequestError) as err:
                await ca.fetch(CLIENT)
            assert err.value.code == "PERMISSION_DENIED" and "kind-worker" in err.value.message
        async with CaClient(addr, token="forged", root_cert=root,
                            server_name="ambient-controlplane.ambient-system.svc") as ca:
            with pytest.raises(CaRequestError) as err:
                await ca.fetch(WEB)
            assert err.value.code == "UNAUTHENTICATED" and "invalid bearer token" in err.value.message

        # xDS: a reviewed token syncs the recorded workloads; a forged one is refused by the interceptor
        good = XdsClient(addr, StateStore().take_writer(), node=node_id("10.244.1.2", "ztunnel-4kq8z",
                         "ambient-system"), token=PROXY_TOKEN, root_cert=root,
                         server_name="ambient-controlplane.ambient-system.svc")
        bad = XdsClient(addr, StateStore().take_writer(), node=node_id("10.244.1.3", "z", "ambient-system"),
                        token="forged", root_cert=root, server_name="ambient-controlplane.ambient-system.svc",
                        backoff_min=0.05)
        tasks = [tg.create_task(good.run()), tg.create_task(bad.run())]
        await asyncio.wait_for(good.ready.wait(), 20)
        for _ in range(200):
            if "UNAUTHENTICATED" in bad.last_error:
                break
            await asyncio.sleep(0.05)
        assert "UNAUTHENTICATED" in bad.last_error and "invalid bearer token" in bad.last_error
        assert not bad.ready.is_set()
        assert cp.cache.count("type.googleapis.com/istio.workload.Address") > 0
        for t in [*tasks, cp_task]:
            t.cancel()
    assert not [r for r in fake_api.log if r.path.endswith("/nodes")], "no per-node tokens in Kubernetes mode"


async def test_the_deployments_command_line_runs_against_the_api(fake_api: FakeKubeApi, tmp_path: Path) -> None:
    """`ambient controlplane` with the Deployment's arguments (address and state dir made local): it creates the
    CA Secret, publishes the root, serves the CA over TLS as ambient-controlplane.ambient-system.svc, and stops
    cleanly on SIGTERM."""
    import signal
    import socket
    import sys

    from kube_fakeapi import write_kubeconfig

    script_cluster(fake_api)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["controlplane", "--source=kubernetes", f"--listen=127.0.0.1:{port}", f"--state-dir={tmp_path / 'st'}",
            "--root-namespace=ambient-system", "--token-audience=istio-ca"]
    env = {**os.environ, "POD_NAMESPACE": "ambient-system",
           "KUBECONFIG": str(write_kubeconfig(tmp_path / "kubeconfig", fake_api.url))}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    log_path = tmp_path / "controlplane.log"
    with log_path.open("wb") as log_file:  # a file, not a pipe: nothing blocks on an unread pipe
        proc = await asyncio.create_subprocess_exec(str(Path(sys.executable).parent / "ambient"), *args, env=env,
                                                    stdout=log_file, stderr=log_file)
    try:
        for _ in range(300):
            if CONFIGMAP_PATH in fake_api.objects or proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert CONFIGMAP_PATH in fake_api.objects, log_path.read_text()
        root = fake_api.objects[CONFIGMAP_PATH]["data"]["root-cert.pem"].encode()
        assert base64.b64decode(fake_api.objects[SECRET_PATH]["data"]["root-cert.pem"]) == root
        bundle = None
        for _ in range(100):
            async with CaClient(f"127.0.0.1:{port}", token=PROXY_TOKEN, root_cert=root, timeout=2,
                                server_name="ambient-controlplane.ambient-system.svc") as ca:
                try:
                    bundle = await ca.fetch(WEB)
                    break
                except CaRequestError as exc:
                    assert exc.code == "UNAVAILABLE", exc.message  # still syncing
            await asyncio.sleep(0.1)
        assert bundle is not None and bundle.identity.uri == WEB, log_path.read_text()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
