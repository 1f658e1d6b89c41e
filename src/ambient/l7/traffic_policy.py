"""DestinationRule traffic policies resolved for one upstream (Service, port, subset), pure.

Role: `resolve(rule, port, subset)` merges what applies to requests towards `subset` of the rule's Service on
`port` into one immutable `TrafficPolicy`: the subset's own `trafficPolicy` over the rule's top-level one,
and in each of them `portLevelSettings` for the port over the policy's own settings (Istio: a subset's
policy overrides the top level; port-level settings override the policy they sit in). Each section
(`connectionPool`, `outlierDetection`, `loadBalancer`, `tls`) is taken whole from the most specific place
that sets it, as Istio does.

Defaults are Istio's / Envoy's: connection pool limits unlimited (Envoy's circuit breaker thresholds are
raised by Istio to 2^32-1); outlier detection off unless the section is present, then consecutive5xxErrors
5 (`consecutiveErrors` is its deprecated alias), consecutiveGatewayErrors off, interval 10 s,
baseEjectionTime 30 s, maxEjectionPercent 10 (at least one endpoint can always be ejected).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

UNLIMITED = 2**32 - 1
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|us|ns|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def _seconds(text: Any, default: float) -> float:
    if not isinstance(text, str) or not text:
        return default
    return sum(float(n) * _UNITS[u] for n, u in _PART.findall(text)) or default


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    max_connections: int = UNLIMITED  # tcp.maxConnections
    max_pending: int = UNLIMITED  # http.http1MaxPendingRequests
    max_requests: int = UNLIMITED  # http.http2MaxRequests: concurrent requests
    max_requests_per_connection: int = 0  # http.maxRequestsPerConnection (0: no limit)

    @property
    def limited(self) -> bool:
        return self != _NO_LIMITS


_NO_LIMITS = ConnectionPool()  # (compared per request: one instance, not one per comparison)


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int = 5  # 0: off
    consecutive_gateway: int = 0  # 502/503/504 and connection failures; 0: off
    interval: float = 10.0
    base_ejection: float = 30.0
    max_ejection_percent: int = 10


@dataclass(frozen=True, slots=True)
class OriginationTls:
    """`trafficPolicy.tls` SIMPLE / MUTUAL: TLS the waypoint originates towards an endpoint outside the mesh
    (a ServiceEntry host). Files are paths on the waypoint's filesystem, as Istio's `caCertificates`,
    `clientCertificate` and `privateKey`; no CA file: the system roots. `credential_name` names a Secret of
    the waypoint's own namespace holding the client certificate and the CA (`ambient.tls.credentials`); when
    set, the three file fields are ignored, as Istio's cluster builder does (its validation refuses both
    at once). `sni` "" means the Service's host."""

    mode: str
    sni: str = ""
    ca_certificates: str = ""
    client_certificate: str = ""
    private_key: str = ""
    subject_alt_names: tuple[str, ...] = ()
    insecure_skip_verify: bool = False
    credential_name: str = ""


def _origination(tls: Mapping[str, Any]) -> OriginationTls | None:
    mode = str(tls.get("mode") or "")
    if mode not in ("SIMPLE", "MUTUAL"):
        return None
    return OriginationTls(
        mode, str(tls.get("sni") or ""), str(tls.get("caCertificates") or ""),
        str(tls.get("clientCertificate") or ""), str(tls.get("privateKey") or ""),
        tuple(str(x) for x in tls.get("subjectAltNames") or ()), bool(tls.get("insecureSkipVerify")),
        str(tls.get("credentialName") or ""))


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    pool: ConnectionPool = ConnectionPool()
    outlier: OutlierDetection | None = None
    lb_simple: str = ""  # ROUND_ROBIN, LEAST_REQUEST, RANDOM, ... ("" when unset)
    hash_header: str = ""  # consistentHash.httpHeaderName
    hash_source_ip: bool = False  # consistentHash.useSourceIp
    tls_mode: str = ""  # DISABLE / SIMPLE / MUTUAL / ISTIO_MUTUAL ("" when unset)
    tls: OriginationTls | None = None  # SIMPLE / MUTUAL towards an endpoint outside the mesh


DEFAULT = TrafficPolicy()


def _int(d: Mapping[str, Any], key: str, default: int) -> int:
    value = d.get(key)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _pool(obj: Mapping[str, Any]) -> ConnectionPool:
    tcp = obj.get("tcp") or {}
    http = obj.get("http") or {}
    return ConnectionPool(_int(tcp, "maxConnections", UNLIMITED), _int(http, "http1MaxPendingRequests", UNLIMITED),
                          _int(http, "http2MaxRequests", UNLIMITED), _int(http, "maxRequestsPerConnection", 0))


def _outlier(obj: Mapping[str, Any]) -> OutlierDetection:
    five = obj.get("consecutive5xxErrors", obj.get("consecutiveErrors"))
    gateway = obj.get("consecutiveGatewayErrors")
    pct = obj.get("maxEjectionPercent")
    return OutlierDetection(
        int(five) if isinstance(five, int) else 5, int(gateway) if isinstance(gateway, int) else 0,
        _seconds(obj.get("interval"), 10.0), _seconds(obj.get("baseEjectionTime"), 30.0),
        int(pct) if isinstance(pct, int) else 10)


def _sections(policy: Mapping[str, Any], port: int) -> dict[str, Any]:
    """The sections of one trafficPolicy for `port`: its port-level entry over its own settings."""
    out = {k: policy[k] for k in ("connectionPool", "outlierDetection", "loadBalancer", "tls") if policy.get(k)}
    for level in policy.get("portLevelSettings") or ():
        if (level.get("port") or {}).get("number") == port:
            out.update({k: level[k] for k in ("connectionPool", "outlierDetection", "loadBalancer", "tls")
                        if level.get(k)})
    return out


def resolve(top: Mapping[str, Any], subset_policy: Mapping[str, Any] | None, port: int) -> TrafficPolicy:
    """The policy for requests to `port` (of the subset whose own trafficPolicy is `subset_policy`)."""
    sections = _sections(top, port)
    if subset_policy:
        sections.update(_sections(subset_policy, port))
    if not sections:
        return DEFAULT
    lb = sections.get("loadBalancer") or {}
    ch = lb.get("consistentHash") or {}
    return TrafficPolicy(
        _pool(sections.get("connectionPool") or {}),
        _outlier(sections["outlierDetection"]) if "outlierDetection" in sections else None,
        str(lb.get("simple") or ""), str(ch.get("httpHeaderName") or "").lower(), bool(ch.get("useSourceIp")),
        str((sections.get("tls") or {}).get("mode") or ""),
        _origination(sections.get("tls") or {}),
    )
