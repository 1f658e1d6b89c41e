"""Authenticate CA callers on Kubernetes: projected service-account tokens checked with a TokenReview.

Role: `TokenAuthenticator.authenticate(token)` -> `TokenIdentity(namespace, service_account, node_name)`
for the CA (`IstioCertificateService/CreateCertificate`, header `authorization: Bearer <token>`). The CA
then allows impersonation only of service accounts of pods on `node_name`.

Invariants (every refusal is a `KubeAuthError` whose message says why):
- The API server must say `authenticated: true` AND return a `status.audiences` entry that we asked for
  (an audience-unaware answer is refused: a token minted for another service must not get certificates).
- The user must be a service account (`system:serviceaccount:<ns>:<name>`).
- Node binding comes from the pod the token is bound to (extra `authentication.kubernetes.io/pod-name` /
  `pod-uid`): that pod must still exist with the same uid, and its `spec.nodeName` is the node. When the
  token also names a node (`.../node-name`), it must agree. A token bound to no pod gets `node_name ""`
  (its own identity only, never impersonation).
- Successful reviews are cached for a short TTL keyed by the token's SHA-256 (never the token itself);
  refusals are not cached, so a fixed RBAC problem heals at once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from kubernetes_asyncio import client as k8s

from ambient.kube.errors import KubeApiError, KubeAuthError
from ambient.kube.source import KubeSource

DEFAULT_AUDIENCE = "istio-ca"  # the audience the node proxy's projected token is minted for
SA_PREFIX = "system:serviceaccount:"
EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
CACHE_TTL = 30.0
CACHE_MAX = 4096


class TokenIdentity(NamedTuple):
    namespace: str
    service_account: str
    node_name: str  # "" when the token is not bound to a pod


@dataclass(frozen=True)
class ReviewedToken:
    """Everything learnt about a token (the CA logs pod and node on each issuance)."""

    namespace: str
    service_account: str
    node_name: str
    pod_name: str
    pod_uid: str
    audiences: tuple[str, ...]

    @property
    def identity(self) -> TokenIdentity:
        return TokenIdentity(self.namespace, self.service_account, self.node_name)


def _first(extra: dict[str, Any], key: str) -> str:
    value = extra.get(key)
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return str(value or "")


class TokenAuthenticator:
    """TokenReview-based authentication (see module docstring). `source` reads the bound pod."""

    def __init__(
        self,
        source: KubeSource,
        audiences: Iterable[str] = (DEFAULT_AUDIENCE,),
        *,
        cache_ttl: float = CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.audiences = tuple(audiences)
        if not self.audiences:
            raise KubeAuthError("TokenAuthenticator needs at least one audience", hint="e.g. istio-ca")
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._cache: dict[bytes, tuple[float, ReviewedToken]] = {}

    async def authenticate(self, token: str) -> TokenIdentity:
        return (await self.review(token)).identity

    async def review(self, token: str) -> ReviewedToken:
        scheme, _, rest = token.strip().partition(" ")
        if scheme.lower() == "bearer":  # accept the header value as well as the bare token
            token = rest
        token = token.strip()
        if not token:
            raise KubeAuthError("no bearer token", hint="the caller must send `authorization: Bearer <token>`")
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        reviewed = await self._review(token)
        if len(self._cache) >= CACHE_MAX:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
        self._cache[key] = (now + self.cache_ttl, reviewed)
        return reviewed

    async def _token_review(self, token: str) -> dict[str, Any]:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": list(self.audiences)},
        }
        api = k8s.AuthenticationV1Api(self.source.api)
        try:
            answer = await self.source.request_json(
                lambda **kw: api.create_token_review(body=cast(Any, body), **kw), "create tokenreviews"
            )
        except KubeApiError as exc:
            raise KubeAuthError(
                f"cannot review the token: {exc.message}",
                hint=exc.hint or "the control plane needs `create` on tokenreviews (ClusterRole ambient-controlplane)",
                status=exc.http_status,
            ) from exc
        status = answer.get("status")
        return status if isinstance(status, dict) else {}

    async def _review(self, token: str) -> ReviewedToken:
        status = await self._token_review(token)
        if not status.get("authenticated"):
            why = status.get("error") or "the API server did not authenticate it"
            raise KubeAuthError(
                f"token refused: {why}", hint="use a projected service-account token that is not expired"
            )
        granted = tuple(str(a) for a in status.get("audiences") or [])
        if not set(granted) & set(self.audiences):
            raise KubeAuthError(
                f"token refused: its audiences {list(granted) or '(none reported)'} do not include "
                f"{' or '.join(self.audiences)}",
                hint=f"mount a projected serviceAccountToken with audience {self.audiences[0]}",
            )
        user = status.get("user") or {}
        username = str(user.get("username") or "")
        if not username.startswith(SA_PREFIX) or username.count(":") != 3:
            raise KubeAuthError(
                f"token refused: {username or 'an unnamed user'} is not a service account",
                hint="only pods' service-account tokens may request certificates",
            )
        namespace, service_account = username[len(SA_PREFIX) :].split(":")
        extra = user.get("extra") or {}
        pod_name, pod_uid = _first(extra, EXTRA_POD_NAME), _first(extra, EXTRA_POD_UID)
        token_node = _first(extra, EXTRA_NODE_NAME)
        node = ""
        if pod_name:
            node = await self._pod_node(namespace, pod_name, pod_uid)
            if token_node and token_node != node:
                raise KubeAuthError(
                    f"token refused: bound to node {token_node} but pod {namespace}/{pod_name} "
                    f"runs on {node or '(no node)'}"
                )
        return ReviewedToken(namespace, service_account, node, pod_name, pod_uid, granted)

    async def _pod_node(self, namespace: str, pod_name: str, pod_uid: str) -> str:
        try:
            pod = await self.source.get("Pod", pod_name, namespace)
        except KubeApiError as exc:
            if exc.http_status == 404:
                raise KubeAuthError(
                    f"token refused: the pod it is bound to ({namespace}/{pod_name}) no longer exists"
                ) from exc
            raise KubeAuthError(
                f"cannot check the pod the token is bound to ({namespace}/{pod_name}): {exc.message}",
                hint=exc.hint or "the control plane needs `get` on pods",
                status=exc.http_status,
            ) from exc
        meta = pod.get("metadata") or {}
        if pod_uid and str(meta.get("uid") or "") != pod_uid:
            raise KubeAuthError(
                f"token refused: it is bound to an earlier pod named {namespace}/{pod_name} (uid {pod_uid})"
            )
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            raise KubeAuthError(f"token refused: pod {namespace}/{pod_name} has terminated")
        return str((pod.get("spec") or {}).get("nodeName") or "")
