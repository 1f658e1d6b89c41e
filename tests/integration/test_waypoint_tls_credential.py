"""DestinationRule `tls.credentialName` at the waypoint, on loopback, with the certificates coming from Secrets
through the API server (`ApiL7Source`): an egress waypoint in namespace `egress` fronts the ServiceEntry-like
host api.example.test, whose one endpoint is a TLS server on 127.0.0.1 that asks for a client certificate and
answers with its subject.

MUTUAL with a kubernetes.io/tls Secret works and the upstream sees the client certificate (an upgrade
request's connection of its own too); a missing Secret
is 503 UF naming it (nothing reaches the upstream), and creating it later (a generic Secret: cert / key /
cacert) is picked up; replacing the Secret's client certificate is used by the next request, although an
idle connection opened with the old one is pooled; SIMPLE verifies the server with the CA of a separate `<name>-cacert`
Secret only (a Secret holding another CA fails the handshake)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import random
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import h11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ambient.api.client import AsyncApiClient
from ambient.api.server import ApiServer
from ambient.hbone.client import HboneClient
from ambient.hbone.server import HboneServer
from ambient.identity.ca import LocalCA
from ambient.state.model import GatewayAddress, NamespacedHostname, NetworkAddress, Port, Service, Workload
from ambient.state.store import view_of
from ambient.waypoint.config import ApiL7Source
from ambient.waypoint.server import Waypoint, WaypointSettings
from helpers import Http1Client, eventually

pytestmark = pytest.mark.timeout(60)

NS = "egress"
HOST = "api.example.test"
VIP = "240.240.0.7"
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/curl"
WAYPOINT_ID = f"spiffe://cluster.local/ns/{NS}/sa/waypoint"


# ------------------------------------------------------------------------------------------ certificates

@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class ThrowawayCa:
    """A throw-away CA issuing server and client certificates."""

    def __init__(self, name: str) -> None:
        now = dt.datetime.now(dt.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server: bool) -> Pem:
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_secret(name: str, pair: Pem, ca: bytes | None = None) -> dict[str, Any]:
    data = {"tls.crt": _b64(pair.cert), "tls.key": _b64(pair.key)}
    if ca is not None:
        data["ca.crt"] = _b64(ca)
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": NS}, "data": data}


def generic_secret(name: str, **data: bytes) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": name, "namespace": NS},
            "data": {k: _b64(v) for k, v in data.items()}}


def destination_rule(tls: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "api", "namespace": NS}, "spec": {"host": HOST, "trafficPolicy": {"tls": tls}}}


# ------------------------------------------------------------------------------------------ topology

@dataclass
class Upstream:
    """The TLS endpoint: answers every request with the subject CN of the client certificate ("-" when none),
    keep-alive; `subjects` has one entry per accepted connection."""

    port: int = 0
    subjects: list[str] = field(default_factory=list)


async def _serve(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peercert") or {}
    subject = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), "-")
    upstream.subjects.append(subject)
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data:
                    return
            elif isinstance(event, h11.EndOfMessage):
                body = subject.encode()
                writer.write(conn.send(h11.Response(status_code=200, headers=[("content-length", str(len(body)))]))
                             + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                await writer.drain()
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
    except (ConnectionError, h11.ProtocolError, ssl.SSLError):
        pass
    finally:
        writer.close()


@dataclass
class Egress:
    api: AsyncApiClient
    source: ApiL7Source
    upstream: Upstream
    server_ca: ThrowawayCa
    client_ca: ThrowawayCa
    client: HboneClient
    client_certs: Any
    waypoint_addr: tuple[str, int]

    async def request(self, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """GET / on a new tunnel to the host's VIP through the waypoint: (status, body)."""
        stream = await self.client.connect(self.client_certs, self.waypoint_addr, {WAYPOINT_ID}, f"{VIP}:80")
        try:
            status, _, body = await Http1Client(stream, HOST).request("/", headers)
            return status, body
        finally:
            stream.close()

    async def replace(self, obj: dict[str, Any]) -> None:
        """Update an existing object as a whole (PUT at its current resourceVersion)."""
        meta = obj["metadata"]
        current = await self.api.get(obj["kind"], meta["name"], namespace=meta["namespace"])
        await self.api.update({**obj, "metadata": {**meta, "resourceVersion": current["metadata"]["resourceVersion"]}})


@asynccontextmanager
async def egress(tmp_path: Path, objects: list[dict[str, Any]]) -> AsyncIterator[Egress]:
    server_ca, client_ca = ThrowawayCa("api server CA"), ThrowawayCa("api client CA")
    server = server_ca.issue(HOST, server=True)
    (tmp_path / "server.pem").write_bytes(server.cert + server.key)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "server.pem")
    server_ctx.load_verify_locations(cadata=client_ca.pem.decode())
    server_ctx.verify_mode = ssl.CERT_OPTIONAL  # SIMPLE presents none; MUTUAL's must chain to client_ca
    upstream = Upstream()
    mesh_ca = LocalCA.create()
    async with AsyncExitStack() as stack:
        tls_server = await asyncio.start_server(lambda r, w: _serve(upstream, r, w), "127.0.0.1", 0, ssl=server_ctx)
        await stack.enter_async_context(tls_server)
        upstream.port = tls_server.sockets[0].getsockname()[1]
        api_server = ApiServer(tmp_path / "api", bookmark_interval=0.5)
        await api_server.start()
        stack.push_async_callback(api_server.stop)
        api = await stack.enter_async_context(AsyncApiClient(api_server.socket_path))
        await api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        for obj in objects:
            await api.create(obj)
        source = ApiL7Source(api, namespace=NS, retry_delay=0.05)
        tasks = await stack.enter_async_context(asyncio.TaskGroup())
        follow = tasks.create_task(source.run())
        stack.callback(follow.cancel)
        await asyncio.wait_for(source.ready.wait(), 20)
        # the ServiceEntry host as the control plane sends it: a VIP bound to the egress waypoint, one endpoint
        # outside the mesh (plain TCP) whose port 80 is the TLS server's
        waypoint_of = GatewayAddress(NamespacedHostname(NS, f"waypoint.{NS}.svc.cluster.local"))
        svc = Service("api", NS, HOST, (NetworkAddress(ip_address(VIP)),), (Port(80, upstream.port),),
                      waypoint=waypoint_of)
        endpoint = Workload(f"{NS}/api", "api", NS, (ip_address("127.0.0.1"),),
                            services={f"{NS}/{HOST}": (Port(80, upstream.port),)})
        state = view_of([endpoint], [svc])
        out_client = await stack.enter_async_context(HboneClient())
        waypoint = Waypoint(certs=mesh_ca.issue(WAYPOINT_ID), state=lambda: state, l7=source, client=out_client,
                            settings=WaypointSettings(gateway_name="waypoint", gateway_namespace=NS),
                            rng=random.Random(1))
        stack.push_async_callback(waypoint.aclose)
        wp_server = await stack.enter_async_context(
            HboneServer(socket.create_server(("127.0.0.1", 0)), mesh_ca.issue(WAYPOINT_ID), waypoint.handle_connect))
        client = await stack.enter_async_context(HboneClient())
        yield Egress(api, source, upstream, server_ca, client_ca, client, mesh_ca.issue(CLIENT_ID),
                     wp_server.address[:2])


# ------------------------------------------------------------------------------------------ tests

def secret_data(eg: Egress, name: str) -> Any:
    """The `data` of Secret `name` as the waypoint currently holds it (None: it holds none)."""
    found = eg.source.current.secret_lookup(NS)(name)
    return found.get("data") if found is not None else None


async def test_mutual_with_a_tls_secret_presents_its_client_certificate(tmp_path: Path) -> None:
    async with egress(tmp_path, []) as eg:
        await eg.api.create(tls_secret("api-client", eg.client_ca.issue("client-one", server=False), eg.server_ca.pem))
        await eg.api.create(destination_rule({"mode": "MUTUAL", "credentialName": "api-client"}))
        await eventually(lambda: eg.source.current.destination_rules and eg.source.current.secrets,
                         what="the DestinationRule and the Secret at the waypoint")
        assert await eg.request() == (200, b"client-one")
        assert eg.upstream.subjects == ["client-one"]
        # an upgrade request (WebSocket) opens its own connection: originated the same way
        assert await eg.request({"connection": "upgrade", "upgrade": "websocket"}) == (200, b"client-one")
        assert eg.upstream.subjects == ["client-one", "client-one"]


async def test_missing_secret_fails_closed_then_its_creation_is_picked_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ambient.waypoint.access")
    async with egress(tmp_path, [destination_rule({"mode": "MUTUAL", "credentialName": "api-client"})]) as eg:
        status, body = await eg.request()
        assert status == 503 and b"credentialName Secret egress/api-client not found" in body, body
        line = next(r.getMessage() for r in caplog.records if r.name == "ambient.waypoint.access")
        assert "http.status=503" in line and "response_flags=UF" in line and "api-client not found" in line, line
        assert eg.upstream.subjects == []  # answered without opening anything: no plain text, no anonymous TLS
        # the Secret appears (a generic one: cert / key / cacert): the next request uses it, without restarting
        # the waypoint
        one = eg.client_ca.issue("client-one", server=False)
        await eg.api.create(generic_secret("api-client", cert=one.cert, key=one.key, cacert=eg.server_ca.pem))
        await eventually(lambda: eg.source.current.secrets, what="the Secret at the waypoint")
        assert await eg.request() == (200, b"client-one")


async def test_a_replaced_secret_is_used_by_the_next_request(tmp_path: Path) -> None:
    async with egress(tmp_path, [destination_rule({"mode": "MUTUAL", "credentialName": "api-client"})]) as eg:
        await eg.api.create(tls_secret("api-client", eg.client_ca.issue("client-one", server=False), eg.server_ca.pem))
        await eventually(lambda: eg.source.current.secrets, what="the Secret at the waypoint")
        assert await eg.request() == (200, b"client-one")
        assert await eg.request() == (200, b"client-one")
        assert eg.upstream.subjects == ["client-one"]  # the second request rode the pooled connection
        # rotation: the Secret now holds another client certificate
        rotated = tls_secret("api-client", eg.client_ca.issue("client-two", server=False), eg.server_ca.pem)
        await eg.replace(rotated)
        await eventually(lambda: secret_data(eg, "api-client") == rotated["data"], what="the new Secret")
        # the idle connection opened with client-one is not reused: a new handshake presents client-two
        assert await eg.request() == (200, b"client-two")
        assert eg.upstream.subjects == ["client-one", "client-two"]


async def test_simple_verifies_the_server_with_the_cacert_secret_only(tmp_path: Path) -> None:
    async with egress(tmp_path, [destination_rule({"mode": "SIMPLE", "credentialName": "api-ca"})]) as eg:
        # a -cacert Secret with another CA: the server's certificate does not verify, nothing is sent
        await eg.api.create(generic_secret("api-ca-cacert", cacert=ThrowawayCa("someone else").pem))
        await eventually(lambda: eg.source.current.secrets, what="the Secret at the waypoint")
        status, body = await eg.request()
        assert status == 503 and b"TLS origination to api.example.test" in body, body
        assert b"CERTIFICATE_VERIFY_FAILED" in body
        # the right CA: SIMPLE presents no client certificate
        await eg.replace(generic_secret("api-ca-cacert", cacert=eg.server_ca.pem))
        await eventually(lambda: secret_data(eg, "api-ca-cacert") == {"cacert": _b64(eg.server_ca.pem)},
                         what="the right CA at the waypoint")
        assert await eg.request() == (200, b"-")
