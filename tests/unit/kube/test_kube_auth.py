"""TokenReview authentication of CA callers against the scripted API server (recorded TokenReview answer of a
projected, pod-bound service-account token)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kube_fakeapi import FakeKubeApi, recorded

from ambient.kube.auth import TokenAuthenticator, TokenIdentity
from ambient.kube.errors import KubeAuthError
from ambient.kube.source import KubeSource

PROXY_TOKEN = "eyJhbGciOiJSUzI1NiJ9.proxy-token.sig"
POD_PATH = "/api/v1/namespaces/ambient-system/pods/ztunnel-4kq8z"
REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def review(**status_changes: Any) -> dict[str, Any]:
    answer = recorded("tokenreview-proxy")
    answer["status"].update(status_changes)
    return answer


@pytest.fixture
def authn(fake_api: FakeKubeApi, source: KubeSource) -> TokenAuthenticator:
    fake_api.objects[POD_PATH] = recorded("pod-ztunnel")
    return TokenAuthenticator(source, audiences=["istio-ca"])


async def test_pod_bound_token_gives_identity_and_node(fake_api: FakeKubeApi, authn: TokenAuthenticator) -> None:
    fake_api.token_reviews[PROXY_TOKEN] = review()
    ident = await authn.authenticate(f"Bearer {PROXY_TOKEN}")
    assert ident == TokenIdentity("ambient-system", "ztunnel", "kind-worker")
    namespace, sa, node = ident  # unpacks as the CA expects
    assert (namespace, sa, node) == ("ambient-system", "ztunnel", "kind-worker")
    (req,) = fake_api.requests(REVIEW_PATH)
    assert req.method == "POST"
    assert req.body["kind"] == "TokenReview" and req.body["apiVersion"] == "authentication.k8s.io/v1"
    assert req.body["spec"] == {"token": PROXY_TOKEN, "audiences": ["istio-ca"]}
    assert fake_api.requests(POD_PATH), "node binding must be checked against the pod object"


async def test_successful_review_is_cached(fake_api: FakeKubeApi, authn: TokenAuthenticator) -> None:
    fake_api.token_reviews[PROXY_TOKEN] = review()
    for _ in range(3):
        await authn.authenticate(PROXY_TOKEN)
    assert len(fake_api.requests(REVIEW_PATH)) == 1


async def test_invalid_token_is_refused_with_the_api_reason(fake_api: FakeKubeApi, authn: TokenAuthenticator) -> None:
    with pytest.raises(KubeAuthError, match="invalid bearer token"):
        await authn.authenticate("not-a-token")
    with pytest.raises(KubeAuthError, match="invalid bearer token"):
        await authn.authenticate("not-a-token")
    assert len(fake_api.requests(REVIEW_PATH)) == 2  # refusals are not cached


async def test_wrong_audience_is_refused(fake_api: FakeKubeApi, authn: TokenAuthenticator) -> None:
    fake_api.token_reviews[PROXY_TOKEN] = review(audiences=["https://kubernetes.default.svc.cluster.local"])
    with pytest.raises(KubeAuthError, match="audiences") as info:
        await authn.authenticate(PROXY_TOKEN)
    assert "istio-ca" in (info.value.hint or "")


async def test_audience_unaware_answer_is_refused(fake_api: FakeKubeApi, authn: TokenAuthenticator) -> None:
    answer = review()
    del answer["status"]["audiences"]
    fake_api.token_reviews[PROXY_TOKEN] = answer
    with pytest.raises(KubeAuthError, match="none reported"):
        await authn.authenticate(PROXY_TOKEN)


async def test_non_service_account_user_is_refused(fake_api: FakeKubeApi, authn: TokenAuthenticator) -> None:
    answer = review()
    answer["status"]["user"] = {"username": "kubernetes-admin", "groups": ["kubeadm:cluster-admins"]}
    fake_api.token_reviews[PROXY_TOKEN] = answer
    with pytest.raises(KubeAuthError, match="not a service account"):
        await authn.authenticate(PROXY_TOKEN)


async def test_token_of_a_deleted_pod_is_refused(fake_api: FakeKubeApi, authn: TokenAuthenticator) -> None:
    fake_api.token_reviews[PROXY_TOKEN] = review()
    del fake_api.objects[POD_PATH]
    with pytest.raises(KubeAuthError, match="no longer exists"):
        await authn.authenticate(PROXY_TOKEN)


async def test_token_of_an_earlier_pod_with_the_same_name_is_refused(
    fake_api: FakeKubeApi, authn: TokenAuthenticator
) -> None:
    fake_api.token_reviews[PROXY_TOKEN] = review()
    fake_api.objects[POD_PATH]["metadata"]["uid"] = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(KubeAuthError, match="earlier pod"):
        await authn.authenticate(PROXY_TOKEN)


async def test_node_claim_must_match_the_pod(fake_api: FakeKubeApi, authn: TokenAuthenticator) -> None:
    fake_api.token_reviews[PROXY_TOKEN] = review()
    fake_api.objects[POD_PATH]["spec"]["nodeName"] = "kind-worker2"
    with pytest.raises(KubeAuthError, match="bound to node kind-worker"):
        await authn.authenticate(PROXY_TOKEN)


async def test_pod_binding_without_node_claim_uses_the_pod_node(
    fake_api: FakeKubeApi, authn: TokenAuthenticator
) -> None:
    answer = review()
    extra = answer["status"]["user"]["extra"]
    for key in ("authentication.kubernetes.io/node-name", "authentication.kubernetes.io/node-uid"):
        del extra[key]  # API servers before ServiceAccountTokenPodNodeInfo
    fake_api.token_reviews[PROXY_TOKEN] = answer
    assert (await authn.authenticate(PROXY_TOKEN)).node_name == "kind-worker"


async def test_unbound_token_gets_no_node(fake_api: FakeKubeApi, authn: TokenAuthenticator) -> None:
    answer = review()
    answer["status"]["user"] = copy.deepcopy(answer["status"]["user"])
    answer["status"]["user"]["extra"] = {}
    fake_api.token_reviews[PROXY_TOKEN] = answer
    assert await authn.authenticate(PROXY_TOKEN) == TokenIdentity("ambient-system", "ztunnel", "")
    assert not fake_api.requests(POD_PATH)


async def test_missing_rbac_for_tokenreviews_is_explained(fake_api: FakeKubeApi, authn: TokenAuthenticator) -> None:
    fake_api.forbidden.add(REVIEW_PATH)
    with pytest.raises(KubeAuthError, match="cannot review the token") as info:
        await authn.authenticate(PROXY_TOKEN)
    assert info.value.http_status == 403
    assert "ClusterRole" in (info.value.hint or "")


async def test_empty_token_is_refused(authn: TokenAuthenticator) -> None:
    with pytest.raises(KubeAuthError, match="no bearer token"):
        await authn.authenticate("Bearer ")


async def test_cached_review_expires(fake_api: FakeKubeApi, source: KubeSource) -> None:
    fake_api.objects[POD_PATH] = recorded("pod-ztunnel")
    fake_api.token_reviews[PROXY_TOKEN] = review()
    now = [1000.0]
    authn = TokenAuthenticator(source, cache_ttl=30, clock=lambda: now[0])
    await authn.authenticate(PROXY_TOKEN)
    now[0] += 29
    await authn.authenticate(PROXY_TOKEN)
    assert len(fake_api.requests(REVIEW_PATH)) == 1
    now[0] += 2
    del fake_api.objects[POD_PATH]  # the pod went away: the next review after expiry refuses
    with pytest.raises(KubeAuthError, match="no longer exists"):
        await authn.authenticate(PROXY_TOKEN)
    assert len(fake_api.requests(REVIEW_PATH)) == 2
