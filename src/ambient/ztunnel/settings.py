"""Settings of the node proxy: one frozen value built from CLI flags and the environment.

Environment (reference names where the reference has them):
- CONNECTION_TERMINATION_DEADLINE: drain deadline in seconds (default 5; "5s" / "500ms" accepted).
- AMBIENT_ZTUNNEL_SOURCE_WAIT: how long outbound waits for an unknown source workload to appear (default 5 s).
- On/off settings take 1/true/on/yes or 0/false/off/no (ambient.core.flags; anything else is refused):
  AMBIENT_TRACE_IDS (default on; see `trace_ids`).
- AMBIENT_UVLOOP: off disables uvloop (on by default: ~15% less proxy CPU per request and lower p50 than
  the default loop in the node-pair bench; bulk throughput about the same).
- AMBIENT_DNS_UPSTREAM: host:port the DNS proxy forwards unknown names to (default 10.96.0.10:53).
- AMBIENT_ZTUNNEL_WORKERS: processes serving the pods (default 1; `auto` = one per core, at most 64). In
  in-pod mode the first process talks ZDS with the node agent and hands every pod's netns to the others
  (`ztunnel.workers`); each opens its own SO_REUSEPORT listeners in the pod, so the kernel spreads the
  pod's connections over the processes. Each worker has its own xDS stream, certificates and HBONE pools.
- Inbound admission limits (ambient.ztunnel.admission; 0 turns a limit off):
  AMBIENT_ZTUNNEL_INBOUND_MAX_PER_SOURCE: concurrent inbound connections + HBONE streams from one source IP
  (default 1024); AMBIENT_ZTUNNEL_INBOUND_MAX: concurrent inbound connections + streams of the whole proxy
  (default 8192); AMBIENT_ZTUNNEL_EARLY_RESETS_PER_SOURCE: streams one source may reset before their
  tunnel opened per 10 s window, across its connections, before it is refused for the rest of the window
  (default 100).
- HBONE handshake limits of each 15008 listener (ambient.hbone.server.HandshakeLimits):
  AMBIENT_HBONE_HANDSHAKE_TIMEOUT (seconds, default 10), AMBIENT_HBONE_MAX_PENDING_HANDSHAKES (default 1024),
  AMBIENT_HBONE_MAX_PENDING_HANDSHAKES_PER_SOURCE (default 256), AMBIENT_HBONE_PRESSURE_HANDSHAKE_TIMEOUT
  (seconds, default 2; applies once half the listener's cap is pending).

Invariant: nothing reads the environment after `Settings.from_env` built the value; components get the
settings (or a narrower piece of them) injected.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Literal

from ambient.core.flags import FlagError, env_flag
from ambient.hbone.server import HandshakeLimits
from ambient.runtime.workers import WorkerError, parse_worker_count, worker_index
from ambient.ztunnel.admission import DEFAULT_EARLY_RESETS, DEFAULT_PER_SOURCE, DEFAULT_TOTAL, Limits
from ambient.ztunnel.errors import ConfigError
from ambient.ztunnel.workers import WorkerRole

Mode = Literal["inpod", "shared"]
LogFormat = Literal["text", "json"]

DEFAULT_DRAIN_DEADLINE = 5.0
DEFAULT_SOURCE_WAIT = 5.0
DEFAULT_UPSTREAM_CONNECT_TIMEOUT = 10.0


def parse_duration(text: str, what: str) -> float:
    """'5', '5s', '500ms', '1m' -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m)?\s*", text)
    if not m:
        raise ConfigError(f"{what}: cannot parse duration {text!r}", hint="use e.g. 5, 5s, 500ms or 1m")
    value = float(m.group(1))
    unit = m.group(2) or "s"
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


def parse_count(text: str, what: str) -> int:
    """A non-negative integer limit ('0' = no limit)."""
    value = text.strip()
    if not value.isdigit():
        raise ConfigError(f"{what}: expected a non-negative integer, got {text!r}", hint="0 turns the limit off")
    return int(value)


def parse_workers(text: str) -> int:
    """AMBIENT_ZTUNNEL_WORKERS: a count in 1..64, or `auto` (one per core)."""
    try:
        return parse_worker_count(text, "AMBIENT_ZTUNNEL_WORKERS")
    except WorkerError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from None


_LIMIT_ENV = {
    "AMBIENT_ZTUNNEL_INBOUND_MAX_PER_SOURCE": "inbound_max_per_source",
    "AMBIENT_ZTUNNEL_INBOUND_MAX": "inbound_max_total",
    "AMBIENT_ZTUNNEL_EARLY_RESETS_PER_SOURCE": "early_resets_per_source",
}


@dataclass(frozen=True)
class Ports:
    """Listener ports inside each pod (fixed by the redirect rules) and the proxy's own endpoints."""

    outbound: int = 15001
    inbound_plaintext: int = 15006
    inbound: int = 15008
    dns: int = 15053  # the DNS proxy (127.0.0.1 only, UDP and TCP)
    admin: int = 15000
    metrics: int = 15020
    readiness: int = 15021

    @property
    def proxy_ports(self) -> frozenset[int]:
        """Ports a CONNECT or a redirected connection may never target (self-call / loop)."""
        return frozenset({self.outbound, self.inbound_plaintext, self.inbound, self.admin, self.metrics,
                          self.readiness, self.dns})


@dataclass(frozen=True)
class Settings:
    mode: Mode = "inpod"
    node: str = ""
    cluster_id: str = "Kubernetes"
    ports: Ports = field(default_factory=Ports)
    admin_host: str = "127.0.0.1"
    stats_host: str = "0.0.0.0"
    admin_socket: str | None = None  # also serve admin on this Unix socket (what `ambient zc` reads)
    serve_http: bool = True  # admin/metrics/readiness TCP listeners (tests running several proxies turn it off)
    drain_deadline: float = DEFAULT_DRAIN_DEADLINE
    source_wait: float = DEFAULT_SOURCE_WAIT
    upstream_connect_timeout: float = DEFAULT_UPSTREAM_CONNECT_TIMEOUT
    transparent_inbound: bool = True  # bind the client's IP when delivering to the app
    mark: int | None = 0x539
    log_format: LogFormat = "text"
    uvloop: bool = True  # AMBIENT_UVLOOP=0 falls back to the default asyncio loop
    # shared mode: bind host of the three listeners
    shared_host: str = "0.0.0.0"
    dns_proxy: bool = True  # in-pod mode: serve 127.0.0.1:15053 (the pods' captured DNS)
    dns_upstream: tuple[str, int] = ("10.96.0.10", 53)  # where names not in the proxy's state go
    # inbound admission (see ambient.ztunnel.admission); 0 = no limit
    inbound_max_per_source: int = DEFAULT_PER_SOURCE
    inbound_max_total: int = DEFAULT_TOTAL
    early_resets_per_source: int = DEFAULT_EARLY_RESETS
    hbone_handshake: HandshakeLimits = field(default_factory=HandshakeLimits)  # each 15008 listener's
    # Correlation ids: the outbound leg's `traceparent` trace id (and the routing decision, the inbound
    # authorization verdict) written in the access lines, for `ambient trace`. AMBIENT_TRACE_IDS=0 turns
    # the fields off (the CONNECT still carries a random traceparent, as ztunnel's).
    trace_ids: bool = True
    workers: int = 1  # processes serving the pods (AMBIENT_ZTUNNEL_WORKERS; see ztunnel.workers)
    worker: WorkerRole | None = None  # set in a worker process (by its primary, through the environment)

    @property
    def admission_limits(self) -> Limits:
        return Limits(per_source=self.inbound_max_per_source, total=self.inbound_max_total,
                      early_resets=self.early_resets_per_source)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = dict(os.environ if env is None else env)
        base = cls()
        values: dict[str, object] = {}
        if raw := env.get("CONNECTION_TERMINATION_DEADLINE"):
            values["drain_deadline"] = parse_duration(raw, "CONNECTION_TERMINATION_DEADLINE")
        if raw := env.get("AMBIENT_ZTUNNEL_SOURCE_WAIT"):
            values["source_wait"] = parse_duration(raw, "AMBIENT_ZTUNNEL_SOURCE_WAIT")
        if raw := env.get("AMBIENT_DNS_UPSTREAM"):
            host, _, port = raw.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"AMBIENT_DNS_UPSTREAM: expected host:port, got {raw!r}")
            values["dns_upstream"] = (host.strip("[]"), int(port))
        if (raw := env.get("AMBIENT_ZTUNNEL_WORKERS")) is not None and raw.strip():
            values["workers"] = parse_workers(raw)
        try:
            index = worker_index(env)
        except WorkerError as exc:
            raise ConfigError(exc.message, hint=exc.hint) from None
        if index:
            values["worker"] = WorkerRole.from_env(index, env)
        for name, key in _LIMIT_ENV.items():
            if (raw := env.get(name)) is not None and raw.strip():
                values[key] = parse_count(raw, name)
        try:
            values["trace_ids"] = env_flag(env, "AMBIENT_TRACE_IDS", base.trace_ids)
            values["uvloop"] = env_flag(env, "AMBIENT_UVLOOP", base.uvloop)
        except FlagError as exc:
            raise ConfigError(exc.message, hint=exc.hint) from None
        try:
            values["hbone_handshake"] = HandshakeLimits.from_env(env)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(base, **values)  # type: ignore[arg-type]
