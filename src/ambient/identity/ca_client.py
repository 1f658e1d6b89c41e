"""Client of the control plane's CA (`istio.v1.auth.IstioCertificateService/CreateCertificate`).

Role: make a fresh EC P-256 key + CSR for an identity, send it with the node's bearer token (and
`metadata.ImpersonatedIdentity` when asking on behalf of a pod), and return a validated `CertBundle`.

Invariants: the private key never leaves this process; a refusal raises `CaRequestError` carrying the
CA's gRPC status and message (which names the reason); one gRPC channel is reused across calls.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import struct_pb2

from ambient.identity.certs import CertBundle
from ambient.identity.csr import make_csr
from ambient.identity.errors import IdentityError
from ambient.identity.spiffe import SpiffeId
from ambient.protocol.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc

IMPERSONATED_IDENTITY = "ImpersonatedIdentity"


class CaRequestError(IdentityError):
    """The CA refused or could not be reached. `code` is the gRPC status code name."""

    def __init__(self, message: str, *, code: str = "UNAVAILABLE", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class CaClient:
    def __init__(
        self,
        address: str,
        *,
        token: str | Callable[[], str | None] | None,
        root_cert: bytes | None = None,
        server_name: str | None = "istiod.istio-system.svc",
        cluster_id: str = "Kubernetes",
        timeout: float = 10.0,
    ) -> None:
        self.address = address
        self._token = token
        self.cluster_id = cluster_id
        self.timeout = timeout
        options: list[tuple[str, Any]] = []
        if root_cert is None:
            self._channel = grpc.aio.insecure_channel(address)
        else:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            creds = grpc.ssl_channel_credentials(root_certificates=root_cert)
            self._channel = grpc.aio.secure_channel(address, creds, options=options)
        self._stub = ca_pb2_grpc.IstioCertificateServiceStub(self._channel)

    async def aclose(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> CaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def fetch(
        self, identity: SpiffeId | str, *, ttl: timedelta | None = None, impersonate: bool = True
    ) -> CertBundle:
        """A new certificate for `identity` (ImpersonatedIdentity set unless `impersonate=False`)."""
        ident = identity if isinstance(identity, SpiffeId) else SpiffeId.parse(identity)
        kc = make_csr(ident)
        req = ca_pb2.IstioCertificateRequest(
            csr=kc.csr_pem.decode(), validity_duration=int(ttl.total_seconds()) if ttl else 0
        )
        if impersonate:
            req.metadata.CopyFrom(
                struct_pb2.Struct(fields={IMPERSONATED_IDENTITY: struct_pb2.Value(string_value=ident.uri)})
            )
        token = self._token() if callable(self._token) else self._token
        md = [("clusterid", self.cluster_id)]
        if token:
            md.append(("authorization", f"Bearer {token}"))
        try:
            resp = await self._stub.CreateCertificate(req, metadata=md, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise CaRequestError(
                f"CA {self.address} refused a certificate for {ident}: {exc.code().name}: {exc.details()}",
                code=exc.code().name,
            ) from None
        if not resp.cert_chain:
            raise CaRequestError(f"CA {self.address} returned an empty chain for {ident}", code="INTERNAL")
        bundle = CertBundle.from_pem(kc.key_pem, list(resp.cert_chain))
        if bundle.identity != ident:
            raise CaRequestError(f"CA issued {bundle.identity} when {ident} was asked", code="INTERNAL")
        return bundle
