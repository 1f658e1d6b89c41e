"""`python -m ambient.waypoint --static FILE --ca-dir DIR` as a real process on loopback: serves routed
requests with its own identity, denies with 403, logs access lines, exits on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from ambient.bench.waypoint import standalone_state
from ambient.hbone.client import HboneClient
from ambient.hbone.pipe import TcpByteStream
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, HboneServer
from ambient.identity.ca import LocalCA
from ambient.tls.verify import PeerIdentity

pytestmark = pytest.mark.timeout(60)
WAYPOINT_ID = "spiffe://cluster.local/ns/shop/sa/waypoint"


async def _http_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    path = head.split(b" ")[1]
    body = b"app saw " + path
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()


async def test_waypoint_process_end_to_end(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    ca = LocalCA.load_or_create(ca_dir)
    app = await asyncio.start_server(_http_app, "127.0.0.1", 0)
    app_port = app.sockets[0].getsockname()[1]
    seen: list[str] = []

    async def backend_handler(req: ConnectRequest, peer: PeerIdentity) -> Decision:
        seen.append(peer.uri)
        assert req.authority == f"127.0.0.1:{app_port}"
        return Accept(upstream=await TcpByteStream.connect("127.0.0.1", app_port))

    backend_certs = ca.issue("spiffe://cluster.local/ns/shop/sa/web")
    async with app, HboneServer(socket.create_server(("127.0.0.1", 0)), backend_certs, backend_handler) as backend:
        static = tmp_path / "waypoint.yaml"
        static.write_text(standalone_state(app_port) + textwrap.dedent("""\
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: no-secret, namespace: shop}
            spec:
              targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
              action: DENY
              rules: [{to: [{operation: {paths: ["/secret*"]}}]}]
            """))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ambient.waypoint", "--static", str(static), "--ca-dir", str(ca_dir),
            "--listen", "127.0.0.1:0", "--namespace", "shop", "--hbone-port", str(backend.address[1]),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()  # type: ignore[union-attr]
            assert line.startswith("waypoint listening on 127.0.0.1:"), line
            port = int(line.split()[3].rsplit(":", 1)[1])
            client_certs = ca.issue("spiffe://cluster.local/ns/shop/sa/curl")
            async with HboneClient() as client:
                results = []
                for path in ("/hello", "/secret/x"):
                    s = await client.connect(client_certs, ("127.0.0.1", port), {WAYPOINT_ID}, "10.96.0.50:80")
                    await s.write(f"GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
                    out = bytearray()
                    while data := await s.read():
                        out += data
                    s.close()
                    results.append(bytes(out))
            assert results[0].startswith(b"HTTP/1.1 200 ") and results[0].endswith(b"app saw /hello")
            assert results[1].startswith(b"HTTP/1.1 403 ") and results[1].endswith(b"RBAC: access denied\n")
            assert seen == [WAYPOINT_ID]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        err = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        assert proc.returncode == 0, err
        assert "http.status=200" in err and "http.status=403" in err and "response_flags=RBAC" in err


def test_a_bad_on_off_setting_stops_the_waypoint_naming_it(tmp_path: Path) -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-m", "ambient.waypoint", "--ca-dir", str(tmp_path / "ca")],
                         env={**os.environ, "AMBIENT_UVLOOP": "maybe"}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "AMBIENT_UVLOOP" in out.stderr and "Traceback" not in out.stderr
