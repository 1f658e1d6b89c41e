"""The dashboard's view of the mesh, from access lines (pure: no I/O).

- nodes: workloads ("ns/name", grouped by namespace), waypoints, addresses outside the mesh, and the node
  proxies that reported (one per node);
- edges: source -> destination for the connections of the last `window` seconds, as the source node proxy
  (or the waypoint, for its upstream leg) logged them: count, rate per second, bytes both ways, the mTLS
  identity of the source, denials (a destination's policy rejection, a waypoint's 403 RBAC);
- a waypoint's upstream leg (waypoint -> backend) runs with the waypoint's own identity (the source proxy's
  `route="waypoint <identity>"` of the same trace id, else the destination proxy's `src.identity`), and its
  bytes are the destination node proxy's (`inbound` lines of the same trace: the waypoint logs bytes only
  for upgraded sessions). A pooled upstream connection logs when it closes, so its bytes can lag;
- a waypoint is one node however it is named: its pod's log names it `<ns>/<gateway>`, the source
  proxy's route `<ns>/<service account>`; a trace id seen in both joins the two (else the route's name);
- connections: the latest `limit` connections, newest first, with their trace id (the page opens the trace).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ambient.runtime.trace import AccessEntry

_REJECTION = "connection closed due to policy rejection: "


def entry_time(e: AccessEntry) -> float:
    """The line's timestamp (RFC 3339, Z) as seconds since the epoch; 0 when unreadable."""
    try:
        return datetime.fromisoformat(e.time.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _name(ns: str | None, name: str | None) -> str:
    return f"{ns}/{name}" if ns and name else (name or "")


def _denied(e: AccessEntry) -> bool:
    f = e.fields
    error = f.get("error", "")
    return (error.startswith(_REJECTION) or "401 Unauthorized" in error or f.get("response_flags") == "RBAC"
            or f.get("authz", "").startswith("denied"))


def _waypoint_name(identity: str) -> str:
    # spiffe://<td>/ns/<ns>/sa/<sa> -> "<ns>/<sa>" (the name when its pod's log is not joined to it)
    parts = identity.split("/")
    return f"{parts[4]}/{parts[6]}" if len(parts) >= 7 and parts[3] == "ns" else identity


@dataclass
class _Edge:
    src: str
    dst: str
    count: int = 0
    denied: int = 0
    bytes_sent: int = 0
    bytes_recv: int = 0
    identities: set[str] = field(default_factory=set)


def _route_waypoint(e: AccessEntry) -> str:
    """The waypoint identity of a source proxy line routed through one; "" otherwise."""
    route = e.fields.get("route", "")
    return route[len("waypoint "):] if e.direction == "outbound" and route.startswith("waypoint ") else ""


def _ends(e: AccessEntry, waypoint_names: dict[str, str]) -> tuple[str, str, str]:
    """(source node, destination node, destination kind) of an outbound, waypoint or inbound line."""
    f = e.fields
    src = _name(f.get("src.namespace"), f.get("src.workload")) or (f.get("src.addr") or "").rpartition(":")[0]
    if identity := _route_waypoint(e):
        return src, waypoint_names.get(identity) or _waypoint_name(identity), "waypoint"
    dst = _name(f.get("dst.namespace"), f.get("dst.workload"))
    if dst:
        return src, dst, "workload"
    return src, f.get("dst.service") or f.get("dst.addr") or "?", "external"


def _int(e: AccessEntry, name: str) -> int:
    try:
        return int(e.fields.get(name, "0") or 0)
    except ValueError:
        return 0


def snapshot(entries: Iterable[AccessEntry], now: float, *, window: float = 60.0, limit: int = 100,
             policies: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    recent = [(entry_time(e), e) for e in entries]
    recent = [(t, e) for t, e in recent if now - window <= t <= now + 5]
    recent.sort(key=lambda te: te[0])
    nodes: dict[str, dict[str, Any]] = {}
    proxies: set[str] = set()
    edges: dict[tuple[str, str], _Edge] = {}
    rows: list[dict[str, Any]] = []

    def node(name: str, kind: str) -> None:
        if name and name not in nodes:
            ns = name.split("/", 1)[0] if "/" in name else ""
            nodes[name] = {"id": name, "namespace": ns, "kind": kind}
        elif name and kind == "waypoint":
            nodes[name]["kind"] = kind

    # the trace id joins what each hop knows of a waypoint: its identity (the source proxy's route, or the
    # destination proxy's peer) and its node name (the waypoint pod's log)
    route_identity: dict[str, str] = {}  # trace id -> the waypoint identity the source proxy routed to
    peer_identity: dict[str, str] = {}  # trace id -> src.identity the destination proxy saw
    waypoint_of: dict[str, str] = {}  # trace id -> the waypoint node whose pod logged it
    for _t, e in recent:
        if not e.trace_id:
            continue
        if identity := _route_waypoint(e):
            route_identity[e.trace_id] = identity
        elif e.direction == "waypoint":
            waypoint_of[e.trace_id] = _waypoint_from_component(e.component)
        elif e.direction == "inbound" and e.fields.get("src.identity"):
            peer_identity[e.trace_id] = e.fields["src.identity"]
    waypoint_names = {identity: waypoint_of[t] for t, identity in route_identity.items() if t in waypoint_of}

    for _t, e in recent:
        if e.component.startswith("ztunnel"):
            proxies.add(e.component)
        if e.direction == "inbound":
            # the destination proxy's side of a waypoint's upstream leg: that leg's bytes (its count,
            # identity and denials come from the waypoint's own line)
            wp = waypoint_of.get(e.trace_id)
            dst = _name(e.fields.get("dst.namespace"), e.fields.get("dst.workload"))
            if wp and dst:
                edge = edges.setdefault((wp, dst), _Edge(wp, dst))
                edge.bytes_sent += _int(e, "bytes_recv")  # what the app received, the waypoint sent
                edge.bytes_recv += _int(e, "bytes_sent")
            continue
        # edges come from the client side of each leg: the source proxy (which also logs a destination's
        # denial, as the failed CONNECT) and the waypoint (its upstream leg)
        if e.direction not in ("outbound", "waypoint"):
            continue
        src, dst, kind = _ends(e, waypoint_names)
        if e.direction == "waypoint":
            # the upstream leg runs with the waypoint's identity, not its downstream client's (src.identity)
            src_ident = route_identity.get(e.trace_id) or peer_identity.get(e.trace_id, "")
            src = _name(e.fields.get("src.namespace"), e.fields.get("src.workload")) or src
            wp = _waypoint_from_component(e.component)
            node(src, "workload")
            node(wp, "waypoint")
            node(dst, kind)
            key = (wp, dst)
            # bytes: the destination proxy's inbound line (the waypoint logs them for upgraded sessions only)
            sent = recv = 0
        else:
            src_ident = e.fields.get("src.identity", "")
            node(src, "workload")
            node(dst, kind)
            key = (src, dst)
            sent, recv = _int(e, "bytes_sent"), _int(e, "bytes_recv")
        edge = edges.setdefault(key, _Edge(*key))
        edge.count += 1
        denied = _denied(e)
        edge.denied += int(denied)
        edge.bytes_sent += sent
        edge.bytes_recv += recv
        if src_ident:
            edge.identities.add(src_ident)
        rows.append({
            "time": e.time, "src": key[0], "dst": key[1], "via": e.component, "direction": e.direction,
            "route": e.fields.get("route", ""), "status": e.fields.get("http.status", ""),
            "bytes_sent": _int(e, "bytes_sent"), "bytes_recv": _int(e, "bytes_recv"),
            "identity": src_ident, "outcome": "denied" if denied else ("error" if e.level == "error" else "ok"),
            "error": e.fields.get("error", ""), "trace_id": e.trace_id, "duration": e.fields.get("duration", ""),
        })
    rows.reverse()
    return {
        "now": now,
        "window": window,
        "nodes": sorted(nodes.values(), key=lambda n: (n["namespace"], n["id"])),
        "proxies": sorted(proxies),
        "edges": [{"src": k[0], "dst": k[1], "count": v.count, "rate": round(v.count / window, 3),
                   "denied": v.denied, "bytes_sent": v.bytes_sent, "bytes_recv": v.bytes_recv,
                   "identities": sorted(v.identities)} for k, v in sorted(edges.items())],
        "connections": rows[:limit],
        "policies": policies or [],
    }


def _waypoint_from_component(component: str) -> str:
    """The waypoint node of a waypoint line's component: "waypoint <ns>/<name>" (a source that knows the
    Gateway's name: `kubectl logs` of a pod labelled with it) -> "<ns>/<name>"; "pod <ns>_<pod>_<container>"
    (the local cluster's pod log file) -> "<ns>/<pod without its last -suffix>"; else the component."""
    if component.startswith("waypoint "):
        return component[len("waypoint "):]
    if component.startswith("pod "):
        ns, _, rest = component[4:].partition("_")
        pod = rest.rsplit("_", 1)[0]
        return f"{ns}/{pod.rsplit('-', 1)[0] if '-' in pod else pod}"
    return component


def policy_rows(objects: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """AuthorizationPolicies as the page lists them: namespace, name, action, the workloads they select."""
    out = []
    for obj in objects:
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        targets = [f"{r.get('kind', '')}/{r.get('name', '')}" for r in spec.get("targetRefs") or []]
        applies = (", ".join(f"{k}={v}" for k, v in sorted(selector.items())) or ", ".join(targets)
                   or "every workload of the namespace")
        out.append({"namespace": meta.get("namespace", ""), "name": meta.get("name", ""),
                    "action": spec.get("action", "ALLOW"), "applies_to": applies})
    return sorted(out, key=lambda p: (p["namespace"], p["name"]))


def source_row(source: str, state: str, *, kind: str = "", detail: str = "", lines: int = 0, restarts: int = 0,
               metrics_state: str = "", metrics_detail: str = "",
               metrics: dict[str, float] | None = None) -> dict[str, Any]:
    """One row of the page's sources table, the same shape from the local cluster and from a Kubernetes install
    (the page draws both alike): `source` the component (and its pod), `kind` ztunnel / waypoint /
    ingressgateway ("" for a row about discovery), `state` of its access log (the Kubernetes stream's
    starting / streaming / retrying, the local file's reading / missing; discovery's error / empty),
    `lines` access lines read, `metrics_state` up / down / starting / off ("" when it has no metrics), the
    last `metrics_summary` (kept while down: the last known values) and the reasons in the details."""
    return {"source": source, "kind": kind, "state": state, "detail": detail, "lines": lines, "restarts": restarts,
            "metrics_state": metrics_state, "metrics_detail": metrics_detail, "metrics": metrics}


# what a proxy's metrics endpoint adds to its source row: counter sums over every label set
_SUMS = {
    "istio_tcp_connections_opened_total": "connections_opened",
    "istio_tcp_connections_closed_total": "connections_closed",
    "istio_tcp_sent_bytes_total": "bytes",
    "istio_tcp_received_bytes_total": "bytes",
    "istio_requests_total": "requests",
}


def metrics_summary(text: str) -> dict[str, float]:
    """A Prometheus text exposition -> the few sums the page shows per proxy (pure): connections opened and
    still open (opened - closed, both reporters), TCP bytes both ways, HTTP requests (waypoints), and
    refusals (every `*_refusals_total` / `*_refused_total` series: limits and handshake guards)."""
    out = {"connections_opened": 0.0, "connections_open": 0.0, "bytes": 0.0, "requests": 0.0, "refusals": 0.0}
    closed = 0.0
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, rest = line[:line.index("{")], line[line.rindex("}") + 1:]
        else:
            name, _, rest = line.partition(" ")
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        key = _SUMS.get(name)
        if key == "connections_closed":
            closed += value
        elif key is not None:
            out[key] += value
        elif name.endswith(("_refusals_total", "_refused_total")):
            out["refusals"] += value
    out["connections_open"] = max(0.0, out["connections_opened"] - closed)
    return out
