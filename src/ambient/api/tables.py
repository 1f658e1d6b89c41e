"""Per-kind table columns (kubectl's printer columns, computed from objects), shared by `ambient get` and
the API server's Table responses (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), so that
`kubectl get` and `ambient get` print the same columns.

A printer is `(headers, row(obj, wide) -> cells)`; NAME, NAMESPACE (with -A), AGE and LABELS are added
around it by `build_table`, so a new kind only lists what is special about it in `_PRINTERS`.
Pure functions: no I/O, everything derived from the object dict (missing fields show as `<none>` or 0).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ambient.api.kinds import KindInfo

Obj = dict[str, Any]
Row = Callable[[Obj, bool], list[str]]

NONE = "<none>"


def parse_timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """kubectl's short durations: 45s, 5m30s, 3h, 2d4h, 400d, 3y."""
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    return f"{d // 365}y"


def age(obj: dict[str, Any], now: datetime | None = None) -> str:
    ts = parse_timestamp((obj.get("metadata") or {}).get("creationTimestamp"))
    if ts is None:
        return "<unknown>"
    now = now if now is not None else datetime.now(UTC)
    return human_duration((now - ts).total_seconds())


def _spec(obj: Obj) -> Obj:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _status(obj: Obj) -> Obj:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def _condition(obj: Obj, ctype: str) -> str | None:
    for cond in _status(obj).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == ctype:
            return str(cond.get("status", "Unknown"))
    return None


def _terminating(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _selector_text(selector: Any) -> str:
    if not isinstance(selector, dict) or not selector:
        return NONE
    return ",".join(f"{k}={v}" for k, v in selector.items())


def _pod(obj: Obj, wide: bool) -> list[str]:
    spec, status = _spec(obj), _status(obj)
    containers = spec.get("containers") or []
    statuses = [s for s in status.get("containerStatuses") or [] if isinstance(s, dict)]
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses)
    phase = "Terminating" if _terminating(obj) else str(status.get("reason") or status.get("phase") or "Pending")
    cells = [f"{ready}/{len(containers)}", phase, str(restarts)]
    if wide:
        cells += [str(status.get("podIP") or NONE), str(spec.get("nodeName") or NONE)]
    return cells


def _service(obj: Obj, wide: bool) -> list[str]:
    spec = _spec(obj)
    ports = ",".join(
        f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [] if isinstance(p, dict)
    )
    cells = [str(spec.get("type") or "ClusterIP"), str(spec.get("clusterIP") or NONE), ports or NONE]
    if wide:
        cells.append(_selector_text(spec.get("selector")))
    return cells


def _deployment(obj: Obj, wide: bool) -> list[str]:
    spec, status = _spec(obj), _status(obj)
    cells = [
        f"{status.get('readyReplicas') or 0}/{spec.get('replicas', 1)}",
        str(status.get("updatedReplicas") or 0),
        str(status.get("availableReplicas") or 0),
    ]
    if wide:
        cells.append(_selector_text((spec.get("selector") or {}).get("matchLabels")))
    return cells


def _daemon_set(obj: Obj, wide: bool) -> list[str]:
    spec, status = _spec(obj), _status(obj)
    selector = ((spec.get("template") or {}).get("spec") or {}).get("nodeSelector")
    cells = [str(status.get(key) or 0) for key in ("desiredNumberScheduled", "currentNumberScheduled",
                                                   "numberReady", "updatedNumberScheduled", "numberAvailable")]
    cells.append(_selector_text(selector))
    if wide:
        cells.append(_selector_text((spec.get("selector") or {}).get("matchLabels")))
    return cells


def _node(obj: Obj, wide: bool) -> list[str]:
    ready = _condition(obj, "Ready")
    state = "Ready" if ready == "True" else "NotReady"
    if _spec(obj).get("unschedulable"):
        state += ",SchedulingDisabled"
    addresses = [a for a in _status(obj).get("addresses") or [] if isinstance(a, dict)]
    internal = next((str(a.get("address")) for a in addresses if a.get("type") == "InternalIP"), NONE)
    return [state, internal, str(_spec(obj).get("podCIDR") or NONE)]


def _namespace(obj: Obj, wide: bool) -> list[str]:
    phase = "Terminating" if _terminating(obj) else str(_status(obj).get("phase") or "Active")
    return [phase]


def _authorization_policy(obj: Obj, wide: bool) -> list[str]:
    return [str(_spec(obj).get("action") or "ALLOW")]


def _peer_authentication(obj: Obj, wide: bool) -> list[str]:
    mtls = _spec(obj).get("mtls") or {}
    return [str(mtls.get("mode") or "UNSET") if isinstance(mtls, dict) else "UNSET"]


def _gateway(obj: Obj, wide: bool) -> list[str]:
    addresses = [a for a in _status(obj).get("addresses") or [] if isinstance(a, dict)]
    address = str(addresses[0].get("value")) if addresses else ""
    return [str(_spec(obj).get("gatewayClassName") or ""), address, _condition(obj, "Programmed") or "Unknown"]


def _http_route(obj: Obj, wide: bool) -> list[str]:
    hostnames = _spec(obj).get("hostnames") or []
    return [",".join(str(h) for h in hostnames) or ""]


def _service_entry(obj: Obj, wide: bool) -> list[str]:
    spec = _spec(obj)
    return [",".join(str(h) for h in spec.get("hosts") or []) or NONE, str(spec.get("location") or ""),
            str(spec.get("resolution") or "")]


def _secret(obj: Obj, wide: bool) -> list[str]:
    data = obj.get("data")
    return [str(obj.get("type") or "Opaque"), str(len(data) if isinstance(data, dict) else 0)]


def _endpoints(obj: Obj, wide: bool) -> list[str]:
    eps = []
    for subset in obj.get("subsets") or []:
        if not isinstance(subset, dict):
            continue
        for addr in subset.get("addresses") or []:
            for port in subset.get("ports") or [{}]:
                ip = addr.get("ip") if isinstance(addr, dict) else None
                number = port.get("port") if isinstance(port, dict) else None
                eps.append(f"{ip}:{number}" if number else str(ip))
    text = ",".join(eps[:3]) + (f" + {len(eps) - 3} more..." if len(eps) > 3 else "")
    return [text or NONE]


_PRINTERS: dict[str, tuple[tuple[str, ...], tuple[str, ...], Row]] = {
    # kind: (headers, extra headers with -o wide, row function)
    "Pod": (("READY", "STATUS", "RESTARTS"), ("IP", "NODE"), _pod),
    "Service": (("TYPE", "CLUSTER-IP", "PORT(S)"), ("SELECTOR",), _service),
    "Deployment": (("READY", "UP-TO-DATE", "AVAILABLE"), ("SELECTOR",), _deployment),
    "DaemonSet": (("DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "NODE SELECTOR"), ("SELECTOR",),
                  _daemon_set),
    "Node": (("STATUS", "INTERNAL-IP", "POD-CIDR"), (), _node),
    "Namespace": (("STATUS",), (), _namespace),
    "AuthorizationPolicy": (("ACTION",), (), _authorization_policy),
    "PeerAuthentication": (("MODE",), (), _peer_authentication),
    "Gateway": (("CLASS", "ADDRESS", "PROGRAMMED"), (), _gateway),
    "HTTPRoute": (("HOSTNAMES",), (), _http_route),
    "Endpoints": (("ENDPOINTS",), (), _endpoints),
    "ServiceEntry": (("HOSTS", "LOCATION", "RESOLUTION"), (), _service_entry),
    "Secret": (("TYPE", "DATA"), (), _secret),
}


# Events have kube-apiserver's own columns (no NAME/AGE first): LAST SEEN, TYPE, REASON, OBJECT, MESSAGE, and
# with -o wide SUBOBJECT, SOURCE, FIRST SEEN, COUNT, NAME. (column, priority) in the Table's order.
_EVENT_COLUMNS = (("LAST SEEN", 0), ("TYPE", 0), ("REASON", 0), ("OBJECT", 0), ("SUBOBJECT", 1), ("SOURCE", 1),
                  ("MESSAGE", 0), ("FIRST SEEN", 1), ("COUNT", 1), ("NAME", 1))


def _since(value: Any, now: datetime) -> str:
    ts = parse_timestamp(value)
    return "<unknown>" if ts is None else human_duration((now - ts).total_seconds())


def _event_cells(obj: Obj, now: datetime) -> list[str]:
    """One Event's cells in `_EVENT_COLUMNS` order, worded as kube-apiserver's printer words them."""
    ref = obj.get("involvedObject") if isinstance(obj.get("involvedObject"), dict) else {}
    ref = ref or {}
    series = obj.get("series") if isinstance(obj.get("series"), dict) else {}
    first = obj.get("firstTimestamp") or obj.get("eventTime")
    last = obj.get("lastTimestamp") or (series or {}).get("lastObservedTime") or obj.get("eventTime") or first
    count = obj.get("count") if isinstance(obj.get("count"), int) else (series or {}).get("count")
    last_seen = _since(last, now)
    if isinstance(count, int) and count > 1:
        last_seen = f"{last_seen} (x{count} over {_since(first, now)})"
    source = obj.get("source") if isinstance(obj.get("source"), dict) else {}
    component = (source or {}).get("component") or obj.get("reportingComponent") or ""
    host = (source or {}).get("host") or obj.get("reportingInstance") or ""
    kind = str(ref.get("kind") or "").lower()
    return [
        last_seen, str(obj.get("type") or ""), str(obj.get("reason") or ""), f"{kind}/{ref.get('name', '')}",
        str(ref.get("fieldPath") or ""), ", ".join(str(p) for p in (component, host) if p),
        str(obj.get("message") or "").strip(), _since(first, now), str(count if isinstance(count, int) else 1),
        str((obj.get("metadata") or {}).get("name", "")),
    ]


def _event_table(objs: list[Obj], wide: bool, all_namespaces: bool, now: datetime) -> tuple[list[str], list[list[str]]]:
    keep = [i for i, (_, priority) in enumerate(_EVENT_COLUMNS) if wide or priority == 0]
    headers = (["NAMESPACE"] if all_namespaces else []) + [_EVENT_COLUMNS[i][0] for i in keep]
    rows = []
    for obj in objs:
        cells = _event_cells(obj, now)
        rows.append(([str((obj.get("metadata") or {}).get("namespace", ""))] if all_namespaces else [])
                    + [cells[i] for i in keep])
    return headers, rows


def display_name(info: KindInfo, name: str) -> str:
    """kubectl's `kind.group/name` form: pod/web, deployment.apps/web."""
    prefix = f"{info.singular}.{info.group}" if info.group else info.singular
    return f"{prefix}/{name}"


def build_table(
    info: KindInfo,
    objs: list[Obj],
    *,
    wide: bool = False,
    all_namespaces: bool = False,
    show_kind: bool = False,
    show_labels: bool = False,
    label_columns: tuple[str, ...] = (),
    now: datetime | None = None,
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows for `objs` (all of kind `info`).

    `label_columns` (`-L`) adds one column per label key, as kubectl heads them (the key's last `/` segment,
    upper-cased) and fills them (the value, or nothing), before the LABELS column of `show_labels`."""
    now = now if now is not None else datetime.now(UTC)
    if info.kind == "Event":
        return _event_table(objs, wide, all_namespaces, now)
    headers, wide_headers, row = _PRINTERS.get(info.kind, ((), (), lambda _o, _w: []))
    namespace_col = all_namespaces and info.namespaced
    out_headers = (["NAMESPACE"] if namespace_col else []) + ["NAME", *headers, "AGE"]
    if wide:
        out_headers += list(wide_headers)
    out_headers += [key.split("/")[-1].upper() for key in label_columns]
    if show_labels:
        out_headers.append("LABELS")
    rows = []
    for obj in objs:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        cells = row(obj, wide)
        n_base = len(headers)
        line = [str(meta.get("namespace", ""))] if namespace_col else []
        line += [display_name(info, name) if show_kind else name, *cells[:n_base], age(obj, now)]
        if wide:
            line += cells[n_base:]
        labels = meta.get("labels")
        line += [str(labels.get(key, "")) if isinstance(labels, dict) else "" for key in label_columns]
        if show_labels:
            line.append(_selector_text(meta.get("labels")))
        rows.append(line)
    return out_headers, rows


# ----------------------------------------------------------------------------- meta.k8s.io Table

_DESCRIPTIONS = {"NAME": "Name must be unique within a namespace.", "AGE": "CreationTimestamp of the object."}


def table_columns(info: KindInfo) -> list[dict[str, Any]]:
    """Column definitions of a kind's Table: NAME, its columns, AGE, then the `-o wide` ones (priority 1).
    kubectl adds NAMESPACE (-A) and LABELS (--show-labels) itself, as `build_table` does."""
    headers, wide_headers, _ = _PRINTERS.get(info.kind, ((), (), lambda _o, _w: []))
    cols = [("NAME", 0), *((h, 0) for h in headers), ("AGE", 0), *((h, 1) for h in wide_headers)]
    if info.kind == "Event":
        cols = list(_EVENT_COLUMNS)
    return [
        {"name": name.title() if info.kind == "Event" else name, "type": "string",
         "format": "name" if name == "NAME" else "", "description": _DESCRIPTIONS.get(name, name.title()),
         "priority": priority}
        for name, priority in cols
    ]


def table_row(info: KindInfo, obj: Obj, now: datetime | None = None) -> dict[str, Any]:
    """One Table row: the cells in `table_columns` order, and the object itself (includeObject=Object)."""
    if info.kind == "Event":  # the Table's own column order (the wide ones are interleaved)
        return {"cells": _event_cells(obj, now if now is not None else datetime.now(UTC)), "object": obj}
    _, rows = build_table(info, [obj], wide=True, now=now)
    return {"cells": rows[0], "object": obj}


def table(info: KindInfo, objs: list[Obj], resource_version: str, now: datetime | None = None) -> dict[str, Any]:
    """A `meta.k8s.io/v1` Table of `objs` (all of kind `info`)."""
    now = now if now is not None else datetime.now(UTC)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": table_columns(info),
        "rows": [table_row(info, obj, now) for obj in objs],
    }


def wants_table(accept: str | None) -> str | None:
    """The Table version (`v1`, `v1beta1`) an Accept header asks for first, or None (plain JSON wanted)."""
    for part in (accept or "").split(","):
        params = dict(
            (k.strip(), v.strip()) for k, _, v in (p.partition("=") for p in part.split(";")[1:])
        )
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return params.get("v") or "v1"
    return None
