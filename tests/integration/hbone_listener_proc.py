"""The node proxy in a process of its own, for the HBONE memory tests (run as a script).

`python hbone_listener_proc.py DIR`: runs the node proxy (`ambient.ztunnel.app.App`, shared mode, loopback,
under uvloop as `ambient ztunnel` runs) with one HBONE workload on 127.0.0.5 and its local CA in DIR/ca
(the test issues its client certificates from the same directory). Prints the HBONE (15008) listener's
port, then answers each line on stdin with one JSON line: {"rss_mb", "refused" (the non-zero counts of
`ambient.hbone.refusals`), "metrics" (the ambient_hbone_refusals_total lines of the proxy's metrics)}.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from pathlib import Path

import uvloop

from ambient.hbone import refusals
from ambient.ztunnel.app import App, AppOptions
from ambient.ztunnel.certs import LocalCaSource
from ambient.ztunnel.settings import Ports, Settings
from ambient.ztunnel.static_config import StaticStateSource

WORKLOAD_IP = "127.0.0.5"
STATE = f"""
workloads:
- {{uid: w1, name: web, namespace: mem, workloadIps: [{WORKLOAD_IP}], protocol: HBONE, serviceAccount: web}}
"""


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def main(directory: Path) -> None:
    settings = Settings(
        mode="shared", serve_http=False, mark=None, transparent_inbound=False,
        ports=Ports(outbound=0, inbound_plaintext=0, inbound=0), shared_host="127.0.0.1", source_wait=0.1,
        drain_deadline=1.0,
    )
    app = App(settings, StaticStateSource(directory / "state.yaml"), LocalCaSource.from_dir(directory / "ca"),
              AppOptions())
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(app.run())
        while app.shared is None:  # noqa: ASYNC110 - the app creates its shared proxy as it starts
            await asyncio.sleep(0.01)
        await app.shared.listening.wait()
        print(next(p for c, _h, p in app.shared.addresses if c == "inbound"), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.readline():
            gc.collect()
            metrics = [line for line in app.telemetry.metrics.exposition().decode().splitlines()
                       if line.startswith("ambient_hbone_refusals_total")]
            print(json.dumps({"rss_mb": rss_mb(), "refused": {k: v for k, v in refusals.snapshot().items() if v},
                              "metrics": metrics}), flush=True)
        run.cancel()


if __name__ == "__main__":
    work = Path(sys.argv[1])
    (work / "state.yaml").write_text(STATE)
    uvloop.run(main(work))
