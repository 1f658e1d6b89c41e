"""One scrape of a proxy's metrics through a loopback forward, shared by the local and Kubernetes sources.

Invariant: only 127.0.0.1 is dialled (the forward's local end); a non-200 answer raises like a failed request,
so callers handle one family of errors (`TimeoutError`, `aiohttp.ClientError`).
"""

from __future__ import annotations

import aiohttp

from ambient.dashboard.model import metrics_summary

METRICS_PATH = "/stats/prometheus"
SCRAPE_TIMEOUT = 5.0  # seconds for one scrape (the sessions' total timeout)


def metrics_url(port: int) -> str:
    return f"http://127.0.0.1:{port}{METRICS_PATH}"


async def scrape(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """The metrics summary (`model.metrics_summary`) behind the forward on 127.0.0.1:`port`."""
    async with http.get(metrics_url(port)) as resp:
        if resp.status != 200:
            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message=resp.reason or "")
        return metrics_summary(await resp.text())
