"""TLS origination at the waypoint (DestinationRule `trafficPolicy.tls` SIMPLE / MUTUAL), as Istio's egress
TLS origination task: the client speaks plain HTTP to a ServiceEntry host, the waypoint opens TLS to the
endpoint (typically the entry's port 80 with `targetPort: 443`).

Role: `client_context(tls)` builds the client SSLContext once per distinct setting (CA file or the system
roots, client certificate + key for MUTUAL, verification on unless `insecureSkipVerify`), `open_tls` dials
and handshakes with SNI = `sni` or the Service's host; the peer must present a certificate for that name,
or for one of `subjectAltNames` when given.

Invariants: contexts are built when a connection is opened, never per request (pooled connections are
reused); a file that cannot be read or a failed handshake is a 503 (flag UF) naming the endpoint and the
reason, never a fall back to plain text.
"""

from __future__ import annotations

import asyncio
import ssl
from functools import lru_cache
from typing import Any

from ambient.hbone.pipe import CHUNK, TcpByteStream
from ambient.l7.traffic_policy import OriginationTls
from ambient.waypoint.errors import UpstreamError


@lru_cache(maxsize=64)
def client_context(tls: OriginationTls) -> ssl.SSLContext:
    """The client context for `tls` (raises UpstreamError when a file is unusable)."""
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_certificates or None)
        if tls.mode == "MUTUAL":
            if not tls.client_certificate or not tls.private_key:
                raise UpstreamError("tls MUTUAL needs clientCertificate and privateKey (files on the waypoint)",
                                    status=503, flags="UF")
            ctx.load_cert_chain(tls.client_certificate, tls.private_key)
    except (OSError, ssl.SSLError) as exc:
        raise UpstreamError(f"TLS origination settings unusable: {exc}", status=503, flags="UF") from None
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif tls.subject_alt_names:
        ctx.check_hostname = False  # checked against subjectAltNames after the handshake
    return ctx


def _names(cert: Any) -> set[str]:
    return {str(v) for kind, v in cert.get("subjectAltName", ()) if kind in ("DNS", "URI", "IP Address")}


async def open_tls(ip: str, port: int, tls: OriginationTls, host: str) -> TcpByteStream:
    """TLS to `ip:port` with SNI `tls.sni` or `host` (raises UpstreamError 503 / UF)."""
    ctx = client_context(tls)
    sni = tls.sni or host
    try:
        reader, writer = await asyncio.open_connection(ip, port, ssl=ctx, server_hostname=sni, limit=CHUNK)
    except ssl.SSLError as exc:
        raise UpstreamError(f"TLS origination to {sni} ({ip}:{port}) failed: {exc.reason or exc}", status=503,
                            flags="UF") from None
    except OSError as exc:
        raise UpstreamError(f"cannot connect to {ip}:{port}: {exc.strerror or exc}", flags="UF") from None
    if tls.subject_alt_names and not tls.insecure_skip_verify:
        cert = writer.get_extra_info("peercert") or {}
        if not _names(cert) & set(tls.subject_alt_names):
            writer.close()
            raise UpstreamError(f"TLS origination to {sni}: the certificate names none of "
                                f"{', '.join(tls.subject_alt_names)}", status=503, flags="UF")
    return TcpByteStream(reader, writer)
