"""The control plane in Kubernetes mode: objects, CA root, caller authentication and status from the API server.

Role: everything `ambient controlplane --source kubernetes` needs beyond the local mode, wired into the same
`ambient.controlplane.app.ControlPlane`:
- objects: `KubeSource` (list+watch, the same translation as the local source);
- the CA root: persisted in the Secret `ambient-ca` (keys `root-cert.pem`, `root-key.pem`) of the control
  plane's namespace, created on first start; the root certificate is published in the ConfigMap
  `ambient-ca-root-cert` (key `root-cert.pem`), which the node proxies mount, and re-published if it is
  deleted or edited;
- callers: `KubeCallerAuthenticator` maps projected service-account tokens (TokenReview, audience
  `istio-ca` by default) to `Caller(namespace, service_account, node of the bound pod)`;
- AuthorizationPolicy status: merge patches of the `status` subresource.

Invariants:
- The root key never touches the local disk in this mode (the Secret is its only store); the key is never
  logged.
- Two replicas racing to create the Secret converge on one root: a create answered 409 AlreadyExists makes
  the loser read the winner's Secret. The ConfigMap is only ever written with the root of the loaded Secret.
- Writes use only the verbs the Role in deploy/kubernetes grants (get, create, update: no patch, no list).
- Every refusal of a caller is a `CaRefusedError` (UNAUTHENTICATED) carrying the review's reason.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from kubernetes_asyncio import client as k8s

from ambient.controlplane.app import ControlPlane, StatusWriter
from ambient.controlplane.ca_server import Caller
from ambient.controlplane.errors import CaRefusedError
from ambient.core.errors import AmbientError
from ambient.identity.ca import LocalCA
from ambient.kube.auth import DEFAULT_AUDIENCE, TokenAuthenticator
from ambient.kube.errors import KubeApiError, KubeAuthError, KubeError
from ambient.kube.resources import resource
from ambient.kube.source import KubeSource

log = logging.getLogger(__name__)

Obj = dict[str, Any]
CA_SECRET = "ambient-ca"
ROOT_CERT_CONFIGMAP = "ambient-ca-root-cert"
ROOT_CERT_KEY = "root-cert.pem"
ROOT_KEY_KEY = "root-key.pem"
DEFAULT_NAMESPACE = "ambient-system"
DEFAULT_SERVICE_ACCOUNT = "ambient-controlplane"
SERVICE_NAME = "ambient-controlplane"  # the Service in front of the Deployment (deploy/kubernetes)
DEFAULT_PROXY_SERVICE_ACCOUNT = "ztunnel"
REPUBLISH_INTERVAL = 60.0
LABELS = {"app.kubernetes.io/part-of": "ambient", "app.kubernetes.io/managed-by": "ambient-controlplane"}


def own_namespace() -> str:
    """The namespace this pod runs in (env POD_NAMESPACE from the downward API, else the SA mount)."""
    env = os.environ.get("POD_NAMESPACE")
    if env:
        return env
    try:
        return Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


# ------------------------------------------------------------------ CA root: Secret + ConfigMap
class CaStore:
    """The CA root in Secret `ambient-ca` and its certificate in ConfigMap `ambient-ca-root-cert`."""

    def __init__(self, source: KubeSource, namespace: str) -> None:
        self.source = source
        self.namespace = namespace
        self.core = k8s.CoreV1Api(source.api)

    async def _call(self, what: str, method: Any, *args: Any, **kw: Any) -> Obj:
        return await self.source.request_json(lambda **extra: method(*args, **kw, **extra), what)

    async def _read(self, kind: str, name: str) -> Obj | None:
        method = self.core.read_namespaced_secret if kind == "secrets" else self.core.read_namespaced_config_map
        try:
            return await self._call(f"get {kind} {self.namespace}/{name}", method, name, self.namespace)
        except KubeApiError as exc:
            if exc.http_status == 404:
                return None
            raise

    async def load_or_create(self, *, max_ttl: timedelta, trust_domain: str | None = None) -> LocalCA:
        """The CA from the Secret; a new root (and Secret) when there is none."""
        kw: dict[str, Any] = {"max_ttl": max_ttl}
        if trust_domain:
            kw["trust_domain"] = trust_domain
        for _attempt in range(3):
            secret = await self._read("secrets", CA_SECRET)
            if secret is not None:
                return self._ca_from_secret(secret, kw)
            ca = LocalCA.create(**kw)
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": CA_SECRET, "namespace": self.namespace, "labels": LABELS},
                "type": "Opaque",
                "data": {ROOT_CERT_KEY: _b64(ca.root_pem), ROOT_KEY_KEY: _b64(ca.key_pem)},
            }
            try:
                await self._call(
                    f"create secrets {self.namespace}/{CA_SECRET}",
                    self.core.create_namespaced_secret,
                    self.namespace,
                    body=cast(Any, body),
                )
            except KubeApiError as exc:
                if exc.http_status == 409:  # another replica created it first: use that one
                    log.info("Secret %s/%s was created concurrently; loading it", self.namespace, CA_SECRET)
                    continue
                raise
            log.info("created a new CA root in Secret %s/%s", self.namespace, CA_SECRET)
            return ca
        raise KubeError(
            f"Secret {self.namespace}/{CA_SECRET} keeps appearing and disappearing",
            hint=f"is another process deleting it? check `kubectl -n {self.namespace} get secret {CA_SECRET}`",
        )

    def _ca_from_secret(self, secret: Obj, kw: dict[str, Any]) -> LocalCA:
        data = secret.get("data") or {}
        try:
            cert, key = base64.b64decode(data[ROOT_CERT_KEY]), base64.b64decode(data[ROOT_KEY_KEY])
        except (KeyError, ValueError, TypeError):
            raise KubeError(
                f"Secret {self.namespace}/{CA_SECRET} lacks valid {ROOT_CERT_KEY} / {ROOT_KEY_KEY} entries",
                hint="delete it to let the control plane create a new root (every workload certificate is then "
                "re-issued), or restore both keys",
            ) from None
        try:
            ca = LocalCA.load(cert, key, **kw)
        except AmbientError as exc:  # IdentityError: not PEM, not an EC key, key and certificate differ
            raise KubeError(
                f"Secret {self.namespace}/{CA_SECRET} does not hold a usable CA: {exc}",
                hint="restore the Secret, or delete it to create a new root",
            ) from exc
        log.info("loaded the CA root from Secret %s/%s", self.namespace, CA_SECRET)
        return ca

    async def publish_root(self, root_pem: bytes) -> bool:
        """Make ConfigMap `ambient-ca-root-cert` hold `root_pem`. True when it was written."""
        text = root_pem.decode()
        what = f"configmaps {self.namespace}/{ROOT_CERT_CONFIGMAP}"
        for _attempt in range(3):
            current = await self._read("configmaps", ROOT_CERT_CONFIGMAP)
            if current is None:
                body: Obj = {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CERT_CONFIGMAP, "namespace": self.namespace, "labels": LABELS},
                    "data": {ROOT_CERT_KEY: text},
                }
                method: Any = self.core.create_namespaced_config_map
                args: tuple[Any, ...] = (self.namespace,)
            elif (current.get("data") or {}).get(ROOT_CERT_KEY) == text:
                return False
            else:
                body = dict(current, data={**(current.get("data") or {}), ROOT_CERT_KEY: text})
                method = self.core.replace_namespaced_config_map  # update (PUT): the Role grants no patch
                args = (ROOT_CERT_CONFIGMAP, self.namespace)
            try:
                await self._call(f"write {what}", method, *args, body=cast(Any, body))
            except KubeApiError as exc:
                if exc.http_status == 409:  # created or changed meanwhile: look again
                    continue
                raise
            log.info("published the CA root certificate in ConfigMap %s/%s", self.namespace, ROOT_CERT_CONFIGMAP)
            return True
        raise KubeError(f"{what} keeps changing while the root certificate is published")

    async def keep_published(self, root_pem: bytes, interval: float = REPUBLISH_INTERVAL) -> None:
        """Re-publish forever (a deleted ConfigMap keeps new node proxy pods from starting)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.publish_root(root_pem)
            except KubeError as exc:
                log.warning("could not check ConfigMap %s/%s: %s", self.namespace, ROOT_CERT_CONFIGMAP, exc)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------ callers
class KubeCallerAuthenticator:
    """`CallerAuthenticator` over TokenReview: the token's service account, and the node of its bound pod."""

    def __init__(self, source: KubeSource, audiences: Iterable[str] = (DEFAULT_AUDIENCE,)) -> None:
        self.tokens = TokenAuthenticator(source, audiences=audiences)

    async def authenticate(self, token: str) -> Caller:
        try:
            ident = await self.tokens.authenticate(token)
        except KubeAuthError as exc:
            message = exc.message + (f" ({exc.hint})" if exc.hint else "")
            raise CaRefusedError(message, code="UNAUTHENTICATED") from exc
        except KubeError as exc:  # API unreachable while reviewing: refuse, the caller retries
            raise CaRefusedError(f"cannot review the token now: {exc.message}", code="UNAUTHENTICATED") from exc
        return Caller(ident.namespace, ident.service_account, ident.node_name)


# ------------------------------------------------------------------ status
def status_writer(source: KubeSource) -> StatusWriter:
    """Merge-patch the `status` subresource of a custom object (AuthorizationPolicy conditions)."""
    custom = k8s.CustomObjectsApi(source.api)

    async def write(kind: str, namespace: str, name: str, patch: Obj) -> Obj:
        res = resource(kind)
        return await source.request_json(
            lambda **kw: custom.patch_namespaced_custom_object_status(
                res.group, res.version, namespace, res.plural, name, body=patch, **kw
            ),
            f"patch {res.plural}/status {namespace}/{name}",
            _content_type="application/merge-patch+json",
        )

    return write


# ------------------------------------------------------------------ the whole process
def default_dns_names(namespace: str) -> list[str]:
    """The names node proxies dial (`--xds=ambient-controlplane.ambient-system.svc:15012`)."""
    return [f"{SERVICE_NAME}.{namespace}.svc", f"{SERVICE_NAME}.{namespace}.svc.cluster.local"]


async def build(
    source: KubeSource,
    state_dir: Path | str,
    listen: str,
    *,
    namespace: str,
    audiences: Sequence[str] = (DEFAULT_AUDIENCE,),
    tls: bool = True,
    max_ttl: timedelta = timedelta(hours=24),
    root_namespace: str = DEFAULT_NAMESPACE,
    proxy_namespace: str | None = None,
    proxy_service_account: str = DEFAULT_PROXY_SERVICE_ACCOUNT,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    dns_names: Sequence[str] = (),
) -> tuple[ControlPlane, CaStore]:
    """A `ControlPlane` reading `source`, with its CA root loaded from (or created in) the Secret and the root
    certificate published. The caller runs `cp.run()` (and `store.keep_published`)."""
    store = CaStore(source, namespace)
    ca = await store.load_or_create(max_ttl=max_ttl)
    await store.publish_root(ca.root_pem)
    await asyncio.to_thread(Path(state_dir).mkdir, parents=True, exist_ok=True)
    cp = ControlPlane(
        state_dir,
        listen,
        source=source,
        tls=tls,
        max_ttl=max_ttl,
        root_namespace=root_namespace,
        status_writer=status_writer(source),
        ca=ca,
        authenticator=KubeCallerAuthenticator(source, audiences),
        proxy_namespace=proxy_namespace or namespace,
        proxy_service_account=proxy_service_account,
        server_identity=f"spiffe://{ca.trust_domain}/ns/{namespace}/sa/{service_account}",
        dns_names=dns_names or default_dns_names(namespace),
    )
    return cp, store


async def serve(kubeconfig: str | None = None, **kw: Any) -> None:
    """Connect (in-cluster or `kubeconfig`), build the control plane and run it until cancelled."""
    async with await KubeSource.connect(kubeconfig) as source:
        cp, store = await build(source, **kw)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(store.keep_published(cp.ca.root_pem), name="publish-root-cert")
            await cp.run()  # returns only by cancellation, which also cancels the group
