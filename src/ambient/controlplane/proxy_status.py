"""`ambient proxy-status`: which proxies are connected to the control plane and how far behind they are.

Role: fetch the control plane's admin `/proxy-status` over its Unix socket
(`<state>/controlplane-admin.sock`) and turn it into table rows (istioctl proxy-status-like).

Invariants: read-only; a missing socket is a `AdminUnavailableError` with a hint, never a traceback.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ambient.controlplane.errors import AdminUnavailableError

ADMIN_SOCKET = "controlplane-admin.sock"
HEADERS = ("NAME", "PEER", "ADDRESSES", "AUTHORIZATIONS", "LAG", "NACKS", "CONNECTED")
_SHORT = {
    "type.googleapis.com/istio.workload.Address": "ADDRESSES",
    "type.googleapis.com/istio.security.Authorization": "AUTHORIZATIONS",
}


def fetch(state_dir: Path | str, timeout: float = 5.0) -> dict[str, Any]:
    import httpx

    sock = Path(state_dir) / ADMIN_SOCKET
    if not sock.exists():
        raise AdminUnavailableError(
            f"the control plane admin socket {sock} does not exist",
            hint="is the control plane running? `ambient logs controlplane`",
        )
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=timeout) as client:
            resp = client.get("http://controlplane/proxy-status")
            resp.raise_for_status()
            return resp.json()  # type: ignore[no-any-return]
    except httpx.HTTPError as exc:
        raise AdminUnavailableError(
            f"cannot read proxy status from {sock}: {exc}", hint="`ambient logs controlplane`"
        ) from None


def rows(status: dict[str, Any], now: float | None = None) -> list[list[str]]:
    """One row per proxy: per type `SYNCED`/`STALE (acked v, current v)`/`NACKED (v: message)` (the last
    version sent was refused), total lag, NACKs, uptime."""
    now = now or time.time()
    out = []
    for proxy in status.get("proxies", []):
        cols: dict[str, str] = {"ADDRESSES": "NOT SENT", "AUTHORIZATIONS": "NOT SENT"}
        lag = nacks = 0
        for type_url, t in proxy.get("types", {}).items():
            short = _SHORT.get(type_url, type_url)
            if t.get("nacked_version"):  # the proxy refused the last version sent
                cols[short] = f"NACKED ({t.get('nacked_version')}: {(t.get('last_nack') or '-')[:60]})"
            elif t.get("synced"):
                cols[short] = f"SYNCED ({t.get('acked_version')})"
            else:
                cols[short] = f"STALE ({t.get('acked_version') or '-'} of {t.get('current_version')})"
            lag += int(t.get("lag_versions") or 0)
            nacks += int(t.get("nacks") or 0)
        age = max(0, int(now - float(proxy.get("connected_at") or now)))
        out.append(
            [
                str(proxy.get("node_id")),
                str(proxy.get("peer")),
                cols["ADDRESSES"],
                cols["AUTHORIZATIONS"],
                str(lag),
                str(nacks),
                f"{age}s",
            ]
        )
    return out
