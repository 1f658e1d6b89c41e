"""The dashboard's Kubernetes source when kubectl fails, with a scripted kubectl (no cluster; loopback only):
each failure shows up in its source row with kubectl's reason and a hint, what still works keeps working,
and every stream heals by itself once kubectl succeeds again.

The fake kubectl reads its behaviour from files in `$FAKE_KUBECTL_DIR`: `pods-<selector>.json` for
`get pods`, `policies.json` for policies, `log-<pod>.txt` (followed as it grows) for `logs -f`,
`metrics.txt` served at /stats/prometheus on 127.0.0.1 for `port-forward`; a file `<verb>.err` makes that
verb print its content on stderr and exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ambient.dashboard.errors import DashboardError
from ambient.dashboard.kubernetes import Kubectl, KubeSource
from ambient.dashboard.model import snapshot
from ambient.dashboard.server import EntryStore
from helpers import eventually

FAKE = r'''
import http.server, os, sys, threading, time
from pathlib import Path
d = Path(os.environ["FAKE_KUBECTL_DIR"])
args = sys.argv[1:]
verb = args[0]
err = d / f"{verb}.err"
if err.exists():
    sys.stderr.write(err.read_text()); sys.exit(1)
if verb == "get":
    if args[1] == "pods":
        sel = args[args.index("-l") + 1].replace("/", "_")
        print((d / f"pods-{sel}.json").read_text())
    else:
        print((d / "policies.json").read_text())
elif verb == "logs":
    pod = args[args.index("-n") + 2]
    f, offset = d / f"log-{pod}.txt", 0
    while True:
        data = f.read_bytes()[offset:] if f.exists() else b""
        if data:
            sys.stdout.buffer.write(data); sys.stdout.flush(); offset += len(data)
        time.sleep(0.05)
elif verb == "port-forward":
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (d / "metrics.txt").read_bytes()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    print(f"Forwarding from 127.0.0.1:{srv.server_address[1]} -> 15020", flush=True)
    srv.serve_forever()
'''

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
LINE = ("{time}\tinfo\taccess\tconnection complete\tsrc.addr=10.244.1.2:1 src.workload=\"client\" "
        "src.namespace=\"demo\" dst.workload=\"web\" dst.namespace=\"demo\" direction=\"outbound\" bytes_sent=5 "
        "bytes_recv=7 trace_id={tid}\n")
PROXY_POD = {"metadata": {"name": "ztunnel-a", "namespace": "ambient-system", "uid": "u1"},
             "spec": {"nodeName": "n1", "containers": [{"name": "ztunnel"}]}, "status": {"phase": "Running"}}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Kubectl]:
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f"#!{sys.executable}\n{FAKE}")
    kubectl.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    (state / "pods-app=ztunnel.json").write_text(json.dumps({"items": [PROXY_POD]}))
    (state / "pods-gateway.istio.io_managed=istio.io-mesh-controller.json").write_text('{"items": []}')
    (state / "policies.json").write_text(json.dumps({"items": [
        {"metadata": {"name": "allow", "namespace": "demo"}, "spec": {"action": "ALLOW"}}]}))
    (state / "metrics.txt").write_text('istio_tcp_connections_opened_total{reporter="source"} 4\n')
    monkeypatch.setenv("FAKE_KUBECTL_DIR", str(state))
    return state, Kubectl(str(kubectl))


@contextlib.asynccontextmanager
async def _running(kubectl: Kubectl) -> AsyncIterator[tuple[EntryStore, KubeSource]]:
    """A Kubernetes source over `kubectl` (and its entry store), running from its first discovery until the
    block ends."""
    store = EntryStore(window=600)
    source = KubeSource(kubectl, store, refresh=0.2)
    first = await asyncio.to_thread(source.discover)
    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(source.run(first))
        yield store, source
        runner.cancel()


def _row(source: KubeSource) -> dict[str, Any] | None:
    return next((r for r in source.status() if r["source"].startswith("ztunnel-n1")), None)


async def test_a_failing_log_stream_says_why_and_heals(fake: tuple[Path, Kubectl]) -> None:
    state, kubectl = fake
    (state / "logs.err").write_text('Error from server (Forbidden): pods "ztunnel-a" is forbidden: User "dev" '
                                    'cannot get resource "pods/log"\n')
    async with _running(kubectl) as (store, source):
        row = await eventually(lambda: (r := _row(source)) and r["state"] == "retrying" and r, 10,
                               "the stream's failure in its row")
        assert "kubectl logs exited 1" in row["detail"] and "forbidden" in row["detail"], row
        assert "pods/log" in row["detail"], row  # the hint names the access needed
        # what does work is unaffected: metrics through the forward, the policies
        await eventually(lambda: (r := _row(source)) and r["metrics_state"] == "up"
                         and r["metrics"]["connections_opened"] == 4, 10, "the metrics scraped")
        assert [p["metadata"]["name"] for p in source.policies()] == ["allow"]
        # access restored: the stream starts again by itself (back-off 1 s, 2 s, ...) and reads the lines
        (state / "log-ztunnel-a.txt").write_text(LINE.format(time=_now(), tid=TID))
        (state / "logs.err").unlink()
        await eventually(lambda: (r := _row(source)) and r["state"] == "streaming" and r["lines"] == 1, 15,
                         "the stream healed and its line read")
        snap = snapshot(list(store.entries), time.time(), window=600)
        assert [(e["src"], e["dst"], e["count"]) for e in snap["edges"]] == [("demo/client", "demo/web", 1)]
        assert [e.component for e in store.entries] == ["ztunnel-n1"]


async def test_a_failing_forward_discovery_or_policy_list_is_reported_and_heals(fake: tuple[Path, Kubectl]) -> None:
    state, kubectl = fake
    (state / "port-forward.err").write_text("error: unable to forward port because pod is not running. "
                                            "Current status=Pending\n")
    async with _running(kubectl) as (_, source):
        row = await eventually(lambda: (r := _row(source)) and r["metrics_state"] == "down"
                               and "port-forward exited 1" in r["metrics_detail"] and r, 10, "the forward's failure")
        assert "pod is not running" in row["metrics_detail"], row
        (state / "port-forward.err").unlink()
        await eventually(lambda: (r := _row(source)) and r["metrics_state"] == "up", 15, "the forward healed")
        # the API refuses the policy list: the page says why, the rest goes on
        (state / "get.err").write_text("error: You must be logged in to the server (Unauthorized)\n")
        def refused() -> bool:
            try:
                source.policies()
            except DashboardError as exc:
                return "Unauthorized" in str(exc)
            return False

        # (a discovery that was under way when the file appeared may have listed the policies still)
        await eventually(lambda: refused() and any(r["source"] == "discovery" and r["state"] == "error"
                                                   for r in source.status()), 10, "the failures reported")
        assert (r := _row(source)) and r["state"] == "streaming", r  # the stream found before is still followed
        (state / "get.err").unlink()
        await eventually(lambda: not refused() and not any(r["source"] == "discovery" for r in source.status()),
                         10, "the discovery and the policy list healed")
        assert [p["metadata"]["name"] for p in source.policies()] == ["allow"]
        # the pod is gone from the listing: its stream and forward are stopped
        (state / "pods-app=ztunnel.json").write_text('{"items": []}')
        await eventually(lambda: _row(source) is None, 10, "the gone pod's row removed")
