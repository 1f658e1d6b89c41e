"""Identity matrix on both sides of an HBONE connection, TLS version and ALPN policy.

Every case must be rejected before any application byte reaches the handler, with an error that
names the reason."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ambient.hbone.client import HboneClient
from ambient.hbone.connection import HboneStream
from ambient.hbone.errors import HboneConnectError
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, HboneServer
from ambient.identity.ca import LocalCA
from ambient.identity.certs import CertBundle
from ambient.tls.contexts import client_context, server_context
from ambient.tls.verify import PeerIdentity
from helpers import eventually

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaked_tasks")]
SERVER_ID = "spiffe://cluster.local/ns/shop/sa/web"
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/curl"


class Mesh:
    def __init__(self) -> None:
        self.ca = LocalCA.create()
        self.evil_td = LocalCA.load(self.ca.root_pem, self.ca.key_pem, trust_domain="evil.local")
        self.other_root = LocalCA.create()
        now = datetime.now(UTC)
        self.expired = {"now": now - timedelta(days=2), "ttl": 3600}
        self.future = {"now": now + timedelta(days=1), "ttl": 3600}

    def bad(self, kind: str, ident: str) -> CertBundle:
        if kind == "wrong-trust-domain":
            return self.evil_td.issue(ident.replace("cluster.local", "evil.local"))
        if kind == "expired":
            return self.ca.issue(ident, **self.expired)  # type: ignore[arg-type]
        if kind == "not-yet-valid":
            return self.ca.issue(ident, **self.future)  # type: ignore[arg-type]
        if kind == "untrusted-ca":
            # signed by another root, but the holder trusts the real mesh root (so only the PEER rejects)
            other = self.other_root.issue(ident)
            return CertBundle(other.key_pem, other.chain_pem, (self.ca.root_pem,))
        if kind == "wrong-san":
            return self.ca.issue("spiffe://cluster.local/ns/shop/sa/impostor")
        raise AssertionError(kind)


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return Mesh()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[ConnectRequest, PeerIdentity]] = []
        self.bytes_seen = 0

    async def handler(self, req: ConnectRequest, peer: PeerIdentity) -> Decision:
        self.calls.append((req, peer))

        async def sink(stream: HboneStream) -> None:
            while data := await stream.read():
                self.bytes_seen += len(data)

        return Accept(serve=sink)


def listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


# client side: the SERVER presents a bad certificate ------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("wrong-san", "server identity spiffe://cluster.local/ns/shop/sa/impostor not in expected"),
        ("wrong-trust-domain", "server identity spiffe://evil.local/ns/shop/sa/web not in expected"),
        ("expired", "certificate has expired"),
        ("not-yet-valid", "certificate is not yet valid"),
        ("untrusted-ca", "unable to get local issuer certificate"),
    ],
)
async def test_client_rejects_bad_server(mesh: Mesh, kind: str, reason: str) -> None:
    rec = Recorder()
    server_cert = mesh.bad(kind, SERVER_ID)
    async with HboneServer(listener(), server_cert, rec.handler, trust_domain="cluster.local") as server, \
            HboneClient(connect_timeout=10) as client:
        with pytest.raises(HboneConnectError) as info:
            await client.connect(mesh.ca.issue(CLIENT_ID), server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        assert reason in str(info.value)
        # The server has seen the connection end (refused in the handshake, or established and then closed
        # by the client): a CONNECT the client had sent would have reached the handler before that.
        await eventually(lambda: server.stats.handshake_failures == 1 or (
            server.stats.tls_established == 1 and server.open_connections == 0), what="the connection's end")
    assert rec.calls == [] and rec.bytes_seen == 0
    assert server.stats.streams == 0


# server side: the CLIENT presents a bad certificate ------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "server_reason", "client_reason"),
    [
        ("wrong-trust-domain", "client identity spiffe://evil.local/ns/shop/sa/curl is not in trust domain",
         "is not in trust domain"),
        ("expired", "certificate has expired", "rejected our certificate"),
        ("not-yet-valid", "certificate is not yet valid", "rejected our certificate"),
        ("untrusted-ca", "unable to get local issuer certificate", "rejected our certificate"),
    ],
)
async def test_server_rejects_bad_client(mesh: Mesh, kind: str, server_reason: str, client_reason: str) -> None:
    rec = Recorder()
    async with HboneServer(listener(), mesh.ca.issue(SERVER_ID), rec.handler) as server, \
            HboneClient(connect_timeout=10) as client:
        with pytest.raises(HboneConnectError) as info:
            await client.connect(mesh.bad(kind, CLIENT_ID), server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        assert client_reason in str(info.value)
        await eventually(lambda: server.stats.rejections, what="the server's rejection")
    assert any(server_reason in r for r in server.stats.rejections), list(server.stats.rejections)
    assert rec.calls == [] and rec.bytes_seen == 0


async def test_good_pair_is_accepted(mesh: Mesh) -> None:
    """Control case: the same setup with valid certificates works (so the matrix tests can fail)."""
    rec = Recorder()
    async with HboneServer(listener(), mesh.ca.issue(SERVER_ID), rec.handler) as server, \
            HboneClient() as client:
        stream = await client.connect(mesh.ca.issue(CLIENT_ID), server.address[:2], {SERVER_ID}, "127.0.0.1:80")
        await stream.write(b"abc")
        await stream.write_eof()
        await eventually(lambda: rec.bytes_seen == 3, what="the 3 bytes at the server")
        stream.close()
    assert rec.bytes_seen == 3 and rec.calls[0][1].uri == CLIENT_ID


async def _raw_tls(address: tuple[str, int], ctx: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection(address[0], address[1], ssl=ctx, server_hostname="")
    try:
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 9)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_tls12_client_refused(mesh: Mesh) -> None:
    rec = Recorder()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    client_cert = mesh.ca.issue(CLIENT_ID)
    ctx.load_cert_chain  # noqa: B018 - certificate irrelevant: the version fails first
    async with HboneServer(listener(), mesh.ca.issue(SERVER_ID), rec.handler) as server:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _raw_tls(server.address[:2], ctx)
        await eventually(lambda: server.stats.handshake_failures, what="the server's handshake failure")
    assert server.stats.handshake_failures == 1
    assert any("protocol" in r.lower() for r in server.stats.rejections), list(server.stats.rejections)
    assert rec.calls == [] and client_cert.identity.uri == CLIENT_ID


async def test_alpn_other_than_h2_refused_by_server(mesh: Mesh) -> None:
    rec = Recorder()
    ctx = client_context(mesh.ca.issue(CLIENT_ID))
    ctx.set_alpn_protocols(["http/1.1"])
    async with HboneServer(listener(), mesh.ca.issue(SERVER_ID), rec.handler) as server:
        # as the reference (rustls): the handshake is aborted with the no_application_protocol alert
        with pytest.raises(ssl.SSLError, match="no application protocol"):
            await _raw_tls(server.address[:2], ctx)
        await eventually(lambda: server.stats.handshake_failures, what="the server's handshake failure")
    assert server.stats.tls_established == 0 and server.stats.handshake_failures == 1
    assert "NO_APPLICATION_PROTOCOL" in server.stats.rejections[0]
    assert server.stats.refused == {"handshake_failed": 1}
    assert rec.calls == []


async def test_alpn_h2_among_others_accepted(mesh: Mesh) -> None:
    rec = Recorder()
    ctx = client_context(mesh.ca.issue(CLIENT_ID))
    ctx.set_alpn_protocols(["http/1.1", "h2"])
    async with HboneServer(listener(), mesh.ca.issue(SERVER_ID), rec.handler) as server:
        _, writer = await asyncio.open_connection(*server.address[:2], ssl=ctx)
        try:
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        finally:
            writer.close()


async def test_client_refuses_server_without_h2(mesh: Mesh) -> None:
    ctx = server_context(mesh.ca.issue(SERVER_ID))
    ctx.set_alpn_protocols(["http/1.1"])
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, sock=listener(), ssl=ctx)
    try:
        async with HboneClient() as client:
            with pytest.raises(HboneConnectError, match="ALPN"):
                await client.connect(mesh.ca.issue(CLIENT_ID), server.sockets[0].getsockname()[:2],
                                     {SERVER_ID}, "127.0.0.1:80")
    finally:
        server.close()


async def test_handshake_timeout_reaps_silent_connections(mesh: Mesh) -> None:
    rec = Recorder()
    async with HboneServer(listener(), mesh.ca.issue(SERVER_ID), rec.handler, handshake_timeout=0.3) as server:
        reader, writer = await asyncio.open_connection(*server.address[:2])
        # never send a ClientHello: the server must close us
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    assert any("timed out" in r for r in server.stats.rejections)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize(("suite", "accepted"), [("TLS_CHACHA20_POLY1305_SHA256", False),
                                                 ("TLS_AES_128_GCM_SHA256", True)])
async def test_only_aes_gcm_suites_accepted(mesh: Mesh, tmp_path: Path, suite: str, accepted: bool) -> None:
    rec = Recorder()
    client = mesh.ca.issue(CLIENT_ID)
    (tmp_path / "c.pem").write_bytes(client.chain_bytes())
    (tmp_path / "k.pem").write_bytes(client.key_pem)
    async with HboneServer(listener(), mesh.ca.issue(SERVER_ID), rec.handler) as server:
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{server.address[1]}", "-tls1_3",
            "-ciphersuites", suite, "-alpn", "h2", "-cert", str(tmp_path / "c.pem"),
            "-key", str(tmp_path / "k.pem"), "-brief",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await eventually(lambda: server.stats.tls_established or server.stats.handshake_failures,
                         what="the server's handshake outcome")
    if accepted:
        assert server.stats.tls_established == 1, out
    else:
        assert server.stats.tls_established == 0 and server.stats.handshake_failures == 1, out
        assert any("cipher" in r.lower() for r in server.stats.rejections), list(server.stats.rejections)
    assert rec.calls == []
