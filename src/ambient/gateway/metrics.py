"""The ingress gateway's Prometheus metrics (served on 15020 at /stats/prometheus and /metrics).

Role: as an Istio ingress gateway's Envoy reports, one `istio_requests_total` series per (destination
service, response code, response flags) with `reporter="source"` (the gateway is the client side of the
mesh request) and the standard Istio labels; `istio_request_duration_milliseconds` sum/count alike; and the
gateway's own answers counted by reason in `ambient_gateway_refusals_total` (no_listener, bad_request,
no_route, backend_not_found, upstream_unreachable, timeout).

Invariants: label values are escaped; series are bounded by the routes' destinations (a request no route
takes is counted with destination_service="unknown"); counting is a dictionary increment per request.
"""

from __future__ import annotations

from collections import Counter

REFUSAL_REASONS = ("no_listener", "bad_request", "no_route", "backend_not_found", "upstream_unreachable",
                   "timeout")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class GatewayMetrics:
    def __init__(self, workload: str, namespace: str, principal: str, app: str = "") -> None:
        self._source = (("reporter", "source"), ("source_workload", workload),
                        ("source_workload_namespace", namespace), ("source_principal", principal),
                        ("source_app", app or workload), ("source_canonical_service", app or workload))
        self.requests: Counter[tuple[str, str, str, str, str]] = Counter()
        self.duration_ms: dict[tuple[str, str, str, str, str], float] = {}
        self.refusals: Counter[str] = Counter({r: 0 for r in REFUSAL_REASONS})

    def request(self, dst_service: str, code: int, flags: str, duration_ms: float) -> None:
        """Count one request: `dst_service` is the backend's FQDN ("" when no route took it)."""
        host = dst_service or "unknown"
        name, _, rest = host.partition(".")
        ns = rest.partition(".")[0] if rest else "unknown"
        key = (host, name if dst_service else "unknown", ns, str(code), flags or "-")
        self.requests[key] += 1
        self.duration_ms[key] = self.duration_ms.get(key, 0.0) + duration_ms

    def refused(self, reason: str) -> None:
        self.refusals[reason] += 1

    def exposition(self) -> bytes:
        lines = ["# TYPE istio_requests_total counter"]
        durations = ["# TYPE istio_request_duration_milliseconds summary"]
        for key, n in sorted(self.requests.items()):
            host, name, ns, code, flags = key
            labels = (*self._source, ("destination_service", host), ("destination_service_name", name),
                      ("destination_service_namespace", ns), ("destination_workload", "unknown"),
                      ("request_protocol", "http"), ("response_code", code), ("response_flags", flags),
                      ("connection_security_policy", "unknown"))
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"istio_requests_total{{{text}}} {n}")
            durations.append(f"istio_request_duration_milliseconds_sum{{{text}}} {self.duration_ms[key]:.3f}")
            durations.append(f"istio_request_duration_milliseconds_count{{{text}}} {n}")
        lines += durations
        lines.append("# TYPE ambient_gateway_refusals_total counter")
        lines += [f'ambient_gateway_refusals_total{{reason="{r}"}} {n}' for r, n in sorted(self.refusals.items())]
        return ("\n".join(lines) + "\n").encode()
