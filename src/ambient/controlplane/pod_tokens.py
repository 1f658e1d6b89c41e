"""Local-cluster "projected service-account tokens": one signed token per pod, accepted by the CA for
exactly that pod's SPIFFE identity.

Role: the kubelet mints a token for every pod it starts (`mint`) and writes it into the pod's directory
(`pod_token_path`), passing the path as env `AMBIENT_TOKEN_FILE`; a process of the pod (e.g. a waypoint)
sends it as `authorization: Bearer <token>` to the CA and to xDS. The control plane verifies it
(`PodTokenAuthenticator`) and maps it to `Caller(namespace, service_account, node="")`: the empty node means
no impersonation, so the CA issues only the pod's own identity.

Format: `amb1.<base64url(JSON claims)>.<base64url(HMAC-SHA256(key, "amb1." + claims part))>`, claims
{ns, sa, pod, uid, node, iat}. The key is 32 random bytes in `<state>/ca/token-key` (mode 0600), created
once by whichever process needs it first (atomic: link of a complete temporary file).

Invariants:
- A token is accepted only with a valid MAC (constant-time compare) and, when the verifier is given a
  `pod_alive` check, only while the pod it names (namespace, name, uid) still exists: deleting the pod
  revokes its token.
- Tokens never grant impersonation (node is empty) and name one service account only.
- Node tokens (random strings, see `ca_server.NodeTokens`) never start with `amb1.`, so the two kinds are
  told apart by the prefix alone.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ambient.controlplane.ca_server import Caller, CallerAuthenticator
from ambient.controlplane.errors import CaRefusedError

TOKEN_PREFIX = "amb1."
KEY_FILE = "token-key"
TOKEN_ENV = "AMBIENT_TOKEN_FILE"
KEY_BYTES = 32

# (namespace, pod name, pod uid) -> does that pod still exist?
PodAlive = Callable[[str, str, str], bool]


@dataclass(frozen=True)
class PodClaims:
    namespace: str
    service_account: str
    pod: str
    uid: str
    node: str
    issued_at: int = 0

    def to_json(self) -> dict[str, object]:
        return {"ns": self.namespace, "sa": self.service_account, "pod": self.pod, "uid": self.uid,
                "node": self.node, "iat": self.issued_at}

    @property
    def spiffe_path(self) -> str:
        return f"ns/{self.namespace}/sa/{self.service_account}"


def key_path(state_dir: Path | str) -> Path:
    return Path(state_dir) / "ca" / KEY_FILE


def pod_token_path(state_dir: Path | str, node: str, uid: str) -> Path:
    """Where the kubelet of `node` keeps the token of pod `uid`."""
    return Path(state_dir) / "nodes" / node / "pods" / uid / "token"


def load_or_create_key(state_dir: Path | str) -> bytes:
    """The signing key, created on first use. Safe when several processes race to create it."""
    path = key_path(state_dir)
    with contextlib.suppress(FileNotFoundError):
        return _read_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(KEY_BYTES) + "\n")
    try:
        os.link(tmp, path)  # fails if another process won the race: then use its key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise CaRefusedError(f"token signing key {path} is malformed", code="INTERNAL",
                             hint="delete it; it is re-created (tokens of running pods then need a re-mint)")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, signed: str) -> bytes:
    return hmac.new(key, signed.encode(), hashlib.sha256).digest()


def mint(key: bytes, claims: PodClaims) -> str:
    body = dict(claims.to_json())
    if not body["iat"]:
        body["iat"] = int(time.time())
    signed = TOKEN_PREFIX + _b64(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    return f"{signed}.{_b64(_mac(key, signed))}"


def is_pod_token(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX)


def verify(key: bytes, token: str) -> PodClaims:
    """The claims of a valid token; raises CaRefusedError(UNAUTHENTICATED) naming what is wrong."""
    if not is_pod_token(token):
        raise CaRefusedError("not a pod token", code="UNAUTHENTICATED")
    signed, dot, mac_text = token.rpartition(".")
    if not dot or signed == TOKEN_PREFIX.rstrip("."):
        raise CaRefusedError("malformed pod token", code="UNAUTHENTICATED")
    try:
        mac = _unb64(mac_text)
    except ValueError:
        raise CaRefusedError("malformed pod token signature", code="UNAUTHENTICATED") from None
    if not hmac.compare_digest(mac, _mac(key, signed)):
        raise CaRefusedError("pod token signature is invalid (forged, or signed with another cluster's key)",
                             code="UNAUTHENTICATED")
    try:
        body = json.loads(_unb64(signed[len(TOKEN_PREFIX):]))
        claims = PodClaims(str(body["ns"]), str(body["sa"]), str(body["pod"]), str(body["uid"]),
                           str(body.get("node") or ""), int(body.get("iat") or 0))
    except (ValueError, KeyError, TypeError):
        raise CaRefusedError("pod token claims do not parse", code="UNAUTHENTICATED") from None
    if not (claims.namespace and claims.service_account and claims.pod and claims.uid):
        raise CaRefusedError("pod token lacks namespace, service account, pod or uid", code="UNAUTHENTICATED")
    return claims


class PodTokenAuthenticator:
    """`CallerAuthenticator` for pod tokens: the caller is the pod's own service account, never a node."""

    def __init__(self, state_dir: Path | str, pod_alive: PodAlive | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.pod_alive = pod_alive
        self._key: bytes | None = None

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = load_or_create_key(self.state_dir)
        return self._key

    def claims(self, token: str) -> PodClaims:
        claims = verify(self.key, token)
        if self.pod_alive is not None and not self.pod_alive(claims.namespace, claims.pod, claims.uid):
            raise CaRefusedError(
                f"pod token of {claims.namespace}/{claims.pod} (uid {claims.uid}) names a pod that no longer "
                "exists", code="UNAUTHENTICATED")
        return claims

    async def authenticate(self, token: str) -> Caller:
        claims = self.claims(token)
        return Caller(claims.namespace, claims.service_account, "")


class LocalAuthenticator:
    """The local cluster's `CallerAuthenticator`: pod tokens (`amb1.` prefix) or per-node tokens."""

    def __init__(self, pods: PodTokenAuthenticator, nodes: CallerAuthenticator) -> None:
        self.pods = pods
        self.nodes = nodes

    async def authenticate(self, token: str) -> Caller:
        if is_pod_token(token):
            return await self.pods.authenticate(token)
        return await self.nodes.authenticate(token)
