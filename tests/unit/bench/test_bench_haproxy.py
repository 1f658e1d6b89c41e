"""The HAProxy waypoint baseline's configuration and the bench's bounded CPU hog."""

from __future__ import annotations

from pathlib import Path

from ambient.bench.__main__ import all_sections, start_hog
from ambient.bench.haproxy import haproxy_config
from ambient.bench.stunnel import CertFiles


def test_haproxy_verifies_mutual_tls_on_both_sides() -> None:
    d = Path("/certs")
    certs = CertFiles(d / "ca.pem", d / "s.pem", d / "s.key", d / "c.pem", d / "c.key")
    conf = haproxy_config(certs, d / "server-combined.pem", d / "client-combined.pem", "10.0.0.2")
    bind = next(line for line in conf.splitlines() if line.strip().startswith("bind"))
    server = next(line for line in conf.splitlines() if line.strip().startswith("server"))
    for line in (bind, server):
        assert "verify required" in line and "ca-file /certs/ca.pem" in line and "ssl-min-ver TLSv1.3" in line
    assert "10.0.0.2:15443" in bind and "crt /certs/server-combined.pem" in bind
    assert "crt /certs/client-combined.pem" in server
    assert "mode http" in conf and "nbthread 1" in conf


def test_haproxy_baseline_runs_before_the_waypoint_section() -> None:
    names = [s.name for s in all_sections()]
    assert names.index("baseline-haproxy") < names.index("waypoint")


def test_cpu_hog_ends_by_itself() -> None:
    hog = start_hog(limit=0.2)
    assert hog.wait(timeout=10) == 0
