"""DestinationRule TLS origination at the waypoint, on loopback: `trafficPolicy.tls` parsed into the
resolved policy; a TLS server with a throw-away CA is reached (SNI = the host) when the CA is given, refused
(503, no plain-text fall back) when the peer's name or CA does not match."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from ambient.cluster.outside import write_certificates
from ambient.l7.traffic_policy import OriginationTls, resolve
from ambient.waypoint.errors import UpstreamError
from ambient.waypoint.origination import client_context, open_tls

pytestmark = pytest.mark.timeout(30)


def test_tls_section_resolves_to_an_origination_setting() -> None:
    policy = resolve({"tls": {"mode": "SIMPLE", "caCertificates": "/ca.crt", "sni": "x.test",
                              "subjectAltNames": ["x.test"]}}, None, 80)
    assert policy.tls == OriginationTls("SIMPLE", "x.test", "/ca.crt", subject_alt_names=("x.test",))
    assert resolve({"tls": {"mode": "ISTIO_MUTUAL"}}, None, 80).tls is None


def test_unusable_files_are_503() -> None:
    with pytest.raises(UpstreamError) as err:
        client_context(OriginationTls("SIMPLE", ca_certificates="/nonexistent/ca.crt"))
    assert err.value.status == 503
    with pytest.raises(UpstreamError, match="clientCertificate"):
        client_context(OriginationTls("MUTUAL"))


async def test_open_tls_verifies_the_host_against_the_given_ca(tmp_path: Path) -> None:
    ca, crt, key = write_certificates(tmp_path, ["httpbin.example.test"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(crt, key)
    sni_seen: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni_seen.append(name)  # type: ignore[assignment,func-returns-value]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        stream = await open_tls("127.0.0.1", port, OriginationTls("SIMPLE", ca_certificates=str(ca)),
                                "httpbin.example.test")
        await stream.write(b"hello")
        assert await stream.read() == b"echo:hello"
        stream.close()
        assert sni_seen == ["httpbin.example.test"]
        with pytest.raises(UpstreamError, match=r"TLS origination to other\.example\.test"):  # name mismatch
            await open_tls("127.0.0.1", port, OriginationTls("SIMPLE", ca_certificates=str(ca)), "other.example.test")
        with pytest.raises(UpstreamError, match="names none of"):
            await open_tls("127.0.0.1", port, OriginationTls("SIMPLE", ca_certificates=str(ca),
                                                             subject_alt_names=("spiffe://x",)), "httpbin.example.test")
        with pytest.raises(UpstreamError, match="TLS origination"):  # the system roots do not know this CA
            await open_tls("127.0.0.1", port, OriginationTls("SIMPLE"), "httpbin.example.test")
    finally:
        server.close()
        await server.wait_closed()
