"""The admin `/config_dump` document (protocols.md s.7): keys `workloads`, `services`, `policies`
(state.dump), `certificates` (per identity: state and chain with type/serial/validity) and
`workloadState` (per pod uid: state, info, live inbound/outbound connections).

Pure rendering of what it is handed; `ambient zc` reads exactly this shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from ambient.identity.certs import CertBundle
from ambient.state.store import StateView
from ambient.ztunnel.telemetry import ConnectionEntry


def _cert_entry(pem: bytes, kind: str, now: datetime) -> dict[str, Any]:
    cert = x509.load_pem_x509_certificate(pem)
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    return {
        "type": kind,
        "serialNumber": f"{cert.serial_number:x}",
        "validFrom": nb.isoformat(),
        "expirationTime": na.isoformat(),
        "valid": nb <= now < na,
    }


def dump_certificates(bundles: Iterable[CertBundle], now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or datetime.now(UTC)
    out = []
    for b in sorted(bundles, key=lambda b: b.identity.uri):
        chain = [_cert_entry(b.chain_pem[0], "Leaf", now)]
        chain += [_cert_entry(p, "Intermediate", now) for p in b.chain_pem[1:]]
        chain += [_cert_entry(p, "Root", now) for p in b.roots_pem]
        out.append({
            "identity": b.identity.uri,
            "state": "Available" if b.is_valid_at(now) else "Expired",
            "certChain": chain,
        })
    return out


def dump_workload_state(
    pods: Mapping[str, dict[str, Any]], connections: Iterable[ConnectionEntry]
) -> dict[str, Any]:
    """`pods`: uid -> {"state": ..., "info": {...}}; connections are grouped under their pod."""
    out: dict[str, Any] = {uid: {**p, "connections": {"inbound": [], "outbound": []}} for uid, p in pods.items()}
    for c in connections:
        pod = out.setdefault(c.pod_uid, {"state": "Up", "info": {}, "connections": {"inbound": [], "outbound": []}})
        pod["connections"][c.direction].append(c.dump())
    return out


def build_config_dump(
    view: StateView,
    bundles: Iterable[CertBundle],
    pods: Mapping[str, dict[str, Any]],
    connections: Iterable[ConnectionEntry],
) -> dict[str, Any]:
    doc = view.config_dump()
    doc["certificates"] = dump_certificates(bundles)
    doc["workloadState"] = dump_workload_state(pods, connections)
    return doc
