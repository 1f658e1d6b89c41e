"""HAProxy as the C baseline for the waypoint: HTTP/1.1 proxying with mutual TLS in and mutual TLS out.

Path (one `NetnsPair`, deleted afterwards):
    loadgen --TCP--> stunnel client (client netns, mTLS origination)
            --mTLS--> HAProxy (server netns, veth address; terminates mTLS, parses HTTP, re-originates mTLS)
            --mTLS--> stunnel server (server netns loopback) --TCP--> bench HTTP server
Only HAProxy's CPU is counted (from /proc), as the waypoint figure counts only the waypoint's: the
section reports HAProxy's cores per 1,000 req/s at a fixed offered rate, and the waypoint section
compares its own CPU per 1,000 req/s against it.

Invariants: the same bench CA and ECDSA P-256 certificates as the stunnel baseline; TLS 1.3 only; both
HAProxy sides verify the peer chain (`verify required`); the frontend requires a client certificate;
HAProxy runs one thread (the waypoint is one process on one core) with keep-alive upstream connections
reused (`http-reuse always`, as the waypoint pools its upstream connections).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ambient.bench.baselines import HTTP_PORT, fixed_rate_in, start_http_server
from ambient.bench.errors import BenchError
from ambient.bench.harness import BenchContext, Figure, Section, SectionOutput
from ambient.bench.nsenv import NetnsPair, cpu_seconds, require
from ambient.bench.stunnel import STUNNEL_COMMON, TLS_PORT, CertFiles, write_certs

UPSTREAM_PORT = 15444  # the stunnel server HAProxy originates mTLS to (server netns loopback)
CLIENT_PORT = 15000  # the client-side stunnel's loopback port


def haproxy_config(certs: CertFiles, server_pem: Path, client_pem: Path, listen: str) -> str:
    """The HAProxy configuration (pure): mTLS frontend on `listen`:TLS_PORT, mTLS backend to the upstream."""
    return f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend mtls_in
    bind {listen}:{TLS_PORT} ssl crt {server_pem} ca-file {certs.ca} verify required ssl-min-ver TLSv1.3
    default_backend mtls_out
backend mtls_out
    http-reuse always
    server app 127.0.0.1:{UPSTREAM_PORT} ssl crt {client_pem} ca-file {certs.ca} verify required ssl-min-ver TLSv1.3
"""


def start_haproxy_path(pair: NetnsPair) -> tuple[str, int, int]:
    """Start stunnel client, HAProxy and the upstream stunnel server; returns (host, port, haproxy pid)."""
    haproxy = require("haproxy")
    stunnel = require("stunnel4") if shutil.which("stunnel4") else require("stunnel")
    certdir = pair.tmp / "haproxy"
    certdir.mkdir()
    certs = write_certs(certdir, pair.server_addr)
    server_pem = certdir / "server-combined.pem"
    client_pem = certdir / "client-combined.pem"
    server_pem.write_bytes(certs.server_cert.read_bytes() + certs.server_key.read_bytes())
    client_pem.write_bytes(certs.client_cert.read_bytes() + certs.client_key.read_bytes())
    server_pem.chmod(0o600)
    client_pem.chmod(0o600)
    conf = certdir / "haproxy.cfg"
    conf.write_text(haproxy_config(certs, server_pem, client_pem, pair.server_addr))
    check = subprocess.run([haproxy, "-c", "-f", str(conf)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise BenchError(f"haproxy refused its configuration: {(check.stderr or check.stdout).strip()[-300:]}")
    upstream_conf = certdir / "upstream.conf"
    upstream_conf.write_text(
        STUNNEL_COMMON.format(ca=certs.ca)
        + f"accept = 127.0.0.1:{UPSTREAM_PORT}\nconnect = 127.0.0.1:{HTTP_PORT}\n"
        + f"cert = {certs.server_cert}\nkey = {certs.server_key}\nrequireCert = yes\n"
    )
    client_conf = certdir / "client.conf"
    client_conf.write_text(
        STUNNEL_COMMON.format(ca=certs.ca)
        + f"client = yes\naccept = 127.0.0.1:{CLIENT_PORT}\nconnect = {pair.server_addr}:{TLS_PORT}\n"
        + f"cert = {certs.client_cert}\nkey = {certs.client_key}\ncheckIP = {pair.server_addr}\n"
    )
    upstream = pair.spawn(pair.server, [stunnel, str(upstream_conf)], label="stunnel-upstream")
    proxy = pair.spawn(pair.server, [haproxy, "-db", "-f", str(conf)], label="haproxy")
    client = pair.spawn(pair.client, [stunnel, str(client_conf)], label="stunnel-client")
    pair.wait_listening(pair.server, UPSTREAM_PORT, upstream)
    pair.wait_listening(pair.server, TLS_PORT, proxy)
    pair.wait_listening(pair.client, CLIENT_PORT, client)
    return "127.0.0.1", CLIENT_PORT, proxy.pid


def run(ctx: BenchContext) -> SectionOutput:
    rate, seconds = (300.0, 1.0) if ctx.quick else (1500.0, 5.0)
    with NetnsPair() as pair:
        start_http_server(pair)
        host, port, pid = start_haproxy_path(pair)
        fixed_rate_in(pair, host, port, rate=rate / 4, seconds=0.5)  # warm-up: connections and sessions
        cpu0 = cpu_seconds([pid])
        result = fixed_rate_in(pair, host, port, rate=rate, seconds=seconds)
        cpu = cpu_seconds([pid]) - cpu0
    if result.get("errors") or not result.get("completed"):
        raise BenchError(f"through haproxy: {result.get('errors')} errors, {result.get('completed')} completed")
    achieved = float(result["achieved_rps"])
    per_1k = cpu / float(result["seconds"]) / (achieved / 1000.0)
    figures = [
        Figure("haproxy achieved rate", achieved, "req/s"),
        Figure("haproxy p50", result["p50_ms"], "ms", "lower"),
        Figure("haproxy p99", result["p99_ms"], "ms", "lower"),
        Figure("haproxy CPU per 1,000 req/s", per_1k, "cores", "lower", note="HAProxy process only"),
    ]
    conditions = {
        "offered_rate_rps": rate,
        "seconds": seconds,
        "connections": result["connections"],
        "response_bytes": result["response_body_bytes"],
        "http": "HTTP/1.1 keep-alive, mTLS in and out (TLS 1.3, ECDSA P-256), HAProxy nbthread 1",
    }
    return SectionOutput(figures, conditions)


SECTION = Section(
    "baseline-haproxy",
    "Baseline: HAProxy proxying HTTP with mTLS in and mTLS out",
    "stunnel client (client netns) -> HAProxy (server netns: mTLS frontend requiring a client certificate, "
    "HTTP/1.1, mTLS backend with reused keep-alive connections) -> stunnel server -> the bench HTTP server; "
    "fixed offered rate over 16 keep-alive connections; CPU is HAProxy's alone, from /proc.",
    run,
)
