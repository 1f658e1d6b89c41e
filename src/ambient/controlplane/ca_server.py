"""The mesh CA as a gRPC service: `istio.v1.auth.IstioCertificateService/CreateCertificate`.

Role: authenticate the caller through one small async interface, `CallerAuthenticator.authenticate(token)
-> Caller(namespace, service_account, node)`: per-node bearer tokens in the local cluster
(`NodeTokenAuthenticator`, every token stands for the node proxy's identity on its node), projected
service-account tokens reviewed by Kubernetes in Kubernetes mode (`ambient.kube.controlplane`). Then
authorize the requested identity (the caller's own, or - with `metadata.ImpersonatedIdentity`, only for the
node proxy's identity - a service account of a pod scheduled on the caller's node), validate the CSR and
sign it with the persisted root (`identity.ca.LocalCA`). Also issues the control plane's own TLS server
certificate.

Invariants:
- Every refusal is a gRPC status with a message naming the reason: UNAUTHENTICATED (token),
  PERMISSION_DENIED (identity not allowed for this node), INVALID_ARGUMENT (CSR, metadata).
- CSR: a key `identity.csr.csr_key_problem` accepts (EC P-256, P-384 - istio-agent's `ECC_CURVE=P384` -
  or P-521, Ed25519, RSA >= 2048: what Istio's CA signs), exactly one SAN which is a SPIFFE URI in the
  CA's trust domain.
- Lifetime: the requested `validity_duration` (seconds; <= 0 means the default, 24 h), capped at `max_ttl`.
- The response chain is leaf first, root last. Tokens are files of mode 0600, compared in constant time.
- A token file holds the token and nothing else (no trailing newline): clients such as ztunnel send the
  file's bytes verbatim after `Bearer `, and a newline there is an invalid header value. Readers strip
  surrounding whitespace, so files written with a newline by older versions still work.
- Impersonation needs a caller that is the configured node proxy identity (local default
  istio-system/ztunnel) bound to a node; any other authenticated caller gets only its own identity.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple, Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from google.protobuf import struct_pb2

from ambient.controlplane.admission import client_address
from ambient.controlplane.errors import CaRefusedError
from ambient.identity.ca import CLOCK_SKEW, LocalCA
from ambient.identity.csr import csr_key_problem, generate_key, key_to_pem
from ambient.identity.errors import IdentityError
from ambient.identity.spiffe import SpiffeId
from ambient.protocol.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(hours=24)
IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
PROXY_NAMESPACE = "istio-system"
PROXY_SERVICE_ACCOUNT = "ztunnel"
TOKEN_FILE = "token"


def node_token_path(state_dir: Path | str, node: str) -> Path:
    return Path(state_dir) / "nodes" / node / "run" / TOKEN_FILE


class NodeTokens:
    """Per-node bearer tokens, one random token per node in `<state>/nodes/<node>/run/token` (0600, the bare
    token without a newline)."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self._by_token: dict[str, str] = {}

    def ensure(self, node: str) -> str:
        """The node's token, created on first use. Idempotent; safe across restarts."""
        path = node_token_path(self.state_dir, node)
        if path.exists():
            token = path.read_text().strip()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            token = secrets.token_urlsafe(32)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token)  # no newline: the file's bytes are the header value
            os.replace(tmp, path)
        self._by_token[token] = node
        return token

    def _reload(self) -> None:
        nodes = self.state_dir / "nodes"
        if not nodes.is_dir():
            return
        for path in nodes.glob(f"*/run/{TOKEN_FILE}"):
            try:
                self._by_token[path.read_text().strip()] = path.parent.parent.name
            except OSError:
                continue

    def node_for(self, token: str) -> str | None:
        """The node a token belongs to, or None. Constant-time comparison against every known token."""
        for attempt in range(2):
            found = None
            for known, node in self._by_token.items():
                if hmac.compare_digest(known.encode(), token.encode()):
                    found = node
            if found is not None or attempt:
                return found
            self._reload()  # a token created by another process since we last looked
        return None


class Caller(NamedTuple):
    """Who called the CA: its own identity and the node it is bound to ("" = none: no impersonation)."""

    namespace: str
    service_account: str
    node: str


class CallerAuthenticator(Protocol):
    """Maps a bearer token to its `Caller`, or raises `CaRefusedError` (code UNAUTHENTICATED) saying why."""

    async def authenticate(self, token: str) -> Caller: ...


class NodeTokenAuthenticator:
    """Local cluster: a per-node token stands for the node proxy identity on that node."""

    def __init__(
        self,
        tokens: NodeTokens,
        proxy_namespace: str = PROXY_NAMESPACE,
        proxy_service_account: str = PROXY_SERVICE_ACCOUNT,
    ) -> None:
        self.tokens = tokens
        self.proxy = (proxy_namespace, proxy_service_account)

    def node_for(self, token: str) -> str | None:
        return self.tokens.node_for(token)

    async def authenticate(self, token: str) -> Caller:
        node = self.tokens.node_for(token)
        if node is None:
            raise CaRefusedError("the bearer token is not valid for any node of this cluster", code="UNAUTHENTICATED")
        return Caller(self.proxy[0], self.proxy[1], node)


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    value = metadata.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _csr_identity(csr: x509.CertificateSigningRequest) -> SpiffeId:
    problem = csr_key_problem(csr.public_key())
    if problem is not None:
        raise CaRefusedError(problem, code="INVALID_ARGUMENT")
    try:
        sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        raise CaRefusedError(
            "CSR has no subjectAltName: it must carry exactly one SPIFFE URI SAN", code="INVALID_ARGUMENT"
        ) from None
    if len(sans) != 1 or not isinstance(sans[0], x509.UniformResourceIdentifier):
        raise CaRefusedError(
            f"CSR must carry exactly one SAN, a SPIFFE URI; it has {len(sans)}: {[str(s.value) for s in sans]}",
            code="INVALID_ARGUMENT",
        )
    try:
        return SpiffeId.parse(sans[0].value)
    except IdentityError as exc:
        raise CaRefusedError(f"CSR URI SAN is not a SPIFFE id: {exc.message}", code="INVALID_ARGUMENT") from None


class CertificateAuthority:
    """Authentication + authorization + signing, independent of gRPC (the servicer is a thin wrapper).

    `authenticator`: a `CallerAuthenticator`, or `NodeTokens` (wrapped in a `NodeTokenAuthenticator` for
    the proxy identity `proxy_namespace/proxy_service_account`).
    """

    def __init__(
        self,
        ca: LocalCA,
        authenticator: NodeTokens | CallerAuthenticator,
        node_identities: Callable[[str], set[tuple[str, str]]],
        *,
        max_ttl: timedelta = DEFAULT_TTL,
        default_ttl: timedelta = DEFAULT_TTL,
        proxy_namespace: str = PROXY_NAMESPACE,
        proxy_service_account: str = PROXY_SERVICE_ACCOUNT,
    ) -> None:
        self.ca = ca
        if isinstance(authenticator, NodeTokens):
            authenticator = NodeTokenAuthenticator(authenticator, proxy_namespace, proxy_service_account)
        self.authenticator: CallerAuthenticator = authenticator
        self.node_identities = node_identities
        self.max_ttl = max_ttl
        self.default_ttl = default_ttl
        self.proxy = (proxy_namespace, proxy_service_account)
        self.issued = 0

    async def issue(
        self,
        csr_pem: str,
        validity_seconds: int,
        metadata: struct_pb2.Struct | None,
        headers: Mapping[str, str],
    ) -> list[str]:
        token = bearer_token(headers)
        if token is None:
            raise CaRefusedError(
                "no bearer token: send `authorization: Bearer <token>` (the node's token file)",
                code="UNAUTHENTICATED",
            )
        caller = await self.authenticator.authenticate(token)
        node = caller.node
        who = f"{caller.namespace}/{caller.service_account}" + (f" on node {node}" if node else "")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise CaRefusedError(f"CSR does not parse as PEM PKCS#10: {exc}", code="INVALID_ARGUMENT") from None
        if not csr.is_signature_valid:
            raise CaRefusedError("CSR signature is invalid", code="INVALID_ARGUMENT")
        ident = _csr_identity(csr)
        if ident.trust_domain != self.ca.trust_domain:
            raise CaRefusedError(
                f"CSR identity {ident} is not in trust domain {self.ca.trust_domain!r}", code="PERMISSION_DENIED"
            )
        impersonated = ""
        if metadata is not None and IMPERSONATED_IDENTITY in metadata.fields:
            impersonated = metadata.fields[IMPERSONATED_IDENTITY].string_value
        own = (ident.namespace, ident.service_account) == (caller.namespace, caller.service_account)
        if impersonated:
            if impersonated != ident.uri:
                raise CaRefusedError(
                    f"metadata.ImpersonatedIdentity {impersonated!r} differs from the CSR identity {ident}",
                    code="INVALID_ARGUMENT",
                )
            if (caller.namespace, caller.service_account) != self.proxy:
                raise CaRefusedError(
                    f"caller {who} may not impersonate {ident}: only the node proxy "
                    f"({self.proxy[0]}/{self.proxy[1]}) may, a workload gets only its own identity",
                    code="PERMISSION_DENIED",
                )
            if not node:
                raise CaRefusedError(
                    f"caller {who} may not impersonate {ident}: its token is not bound to a pod on a node",
                    code="PERMISSION_DENIED",
                )
            if (ident.namespace, ident.service_account) not in self.node_identities(node):
                raise CaRefusedError(
                    f"node {node} may not impersonate {ident}: no pod on node {node} runs as service account "
                    f"{ident.namespace}/{ident.service_account}",
                    code="PERMISSION_DENIED",
                )
        elif not own:
            raise CaRefusedError(
                f"caller {who} asked for {ident} without metadata.ImpersonatedIdentity; its own identity is "
                f"{caller.namespace}/{caller.service_account}",
                code="PERMISSION_DENIED",
            )
        ttl = timedelta(seconds=validity_seconds) if validity_seconds > 0 else self.default_ttl
        ttl = min(ttl, self.max_ttl)
        try:
            chain = self.ca.sign_csr(csr_pem, ttl=ttl, allowed_identity=ident)
        except IdentityError as exc:
            raise CaRefusedError(f"CSR refused: {exc.message}", code="INVALID_ARGUMENT") from None
        self.issued += 1
        log.info("issued %s to %s for %s", ident, who, ttl)
        return chain


class CaServicer(ca_pb2_grpc.IstioCertificateServiceServicer):  # type: ignore[misc]
    def __init__(self, authority: CertificateAuthority) -> None:
        self.authority = authority

    def register(self, server: grpc.aio.Server) -> None:
        ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(self, server)

    async def CreateCertificate(
        self, request: ca_pb2.IstioCertificateRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.IstioCertificateResponse:
        headers = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        metadata = request.metadata if request.HasField("metadata") else None
        try:
            chain = await self.authority.issue(request.csr, request.validity_duration, metadata, headers)
        except CaRefusedError as exc:
            log.warning("CreateCertificate from %s refused: %s", client_address(context.peer()), exc.message)
            await context.abort(grpc.StatusCode[exc.code], exc.message)
        return ca_pb2.IstioCertificateResponse(cert_chain=chain)


def issue_server_cert(
    ca: LocalCA, identity: str, dns_names: list[str], ttl: timedelta = timedelta(days=365)
) -> tuple[bytes, bytes]:
    """(key PEM, chain PEM leaf+root) for a TLS server: the SPIFFE URI SAN plus DNS (and IP) SANs, which
    the workload CSR path does not allow (exactly one SAN), so it is built here from the root key."""
    import ipaddress

    root_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    key = generate_key()
    now = datetime.now(UTC)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(SpiffeId.parse(identity).uri)]
    for n in dns_names:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            names.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.root_cert.subject)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(159) | 1)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + ttl, ca.root_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.root_pem
    return key_to_pem(key), chain
