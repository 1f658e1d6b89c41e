"""Root tests: one pod cannot starve a node proxy (bounded reproductions of a socket-hoarding and an
HTTP/2 rapid-reset attack).

Two nodes; on node 1 the attackers and an ordinary client, on node 2 the attacked pod and another pod,
each running an echo app, and the node proxy (`ambient ztunnel`, in-pod mode) on both nodes. The attackers
speak HBONE directly to the node-2 proxy (their own mesh certificate, a marked socket so their own proxy
does not capture it):
- burst: 10 HTTP/2 connections x 200 CONNECT streams held open (2,000 streams). The proxy refuses what
  exceeds the per-source limit with 503 (counted by reason), the ordinary client's 200 connections to the
  other pod all succeed during and after the burst, and 30 s after it the proxy's open files are back
  within +300 of the baseline (spare sockets were once kept by the thousand);
- plaintext flood: a pod outside the mesh (PERMISSIVE) holds 1,100 connections to the attacked pod: what
  exceeds the per-source limit is reset, counted, and the files come back;
- rapid reset from a reconnecting client: connections of 50 CONNECTs each reset at once (below the
  per-connection guard of 100): the per-source early-reset limit refuses the source across connections,
  the app is not dialled for reset streams, and the ordinary client still succeeds.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ambient.bench.testbed import Pod, ProxyProcess, Testbed, echo_transfer, pod_socket, sh, start_echo
from ambient.identity.ca import LocalCA
from ambient.tls.contexts import client_context
from ambient.ztunnel.admission import DEFAULT_PER_SOURCE

pytestmark = pytest.mark.root

CLUSTER = "lim1"  # netns prefix of this module's testbed


@dataclass
class Bed:
    bed: Testbed
    p2: ProxyProcess
    target_peers: Path
    other_peers: Path

    def pod(self, name: str) -> Pod:
        return self.bed.pod(name)


@pytest.fixture(scope="module")
def lim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    bed = Testbed(CLUSTER, tmp_path_factory.mktemp("lim1"))
    try:
        bed.create({1: [("attacker", "attacker"), ("resetter", "resetter"), ("client", "client"),
                        ("visitor-plain", "default")],
                    2: [("target", "target"), ("other", "other")]})
        target_peers = start_echo(bed, bed.pod("target"), [8080])
        other_peers = start_echo(bed, bed.pod("other"), [8080])
        bed.start_proxy(1)
        p2 = bed.start_proxy(2)
        yield Bed(bed, p2, target_peers, other_peers)
    finally:
        bed.destroy()


def _open_files(pp: ProxyProcess) -> int:
    return len(os.listdir(f"/proc/{pp.proc.pid}/fd"))


def _refused(bed: Testbed, node: int) -> dict[tuple[str, str], float]:
    text = sh("ip", "netns", "exec", bed.node_ns(node), "curl", "-sf", "http://127.0.0.1:15020/metrics").stdout
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "ambient_ztunnel_inbound_refused_total":
                out[(s.labels["protocol"], s.labels["reason"])] = s.value
    return out


def _active(bed: Testbed, node: int) -> float:
    text = sh("ip", "netns", "exec", bed.node_ns(node), "curl", "-sf", "http://127.0.0.1:15020/metrics").stdout
    return next(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                if s.name == "ambient_ztunnel_inbound_active")


class RawHbone:
    """A raw HTTP/2 client over mTLS from inside `pod`, to drive the proxy the way an attacker would."""

    def __init__(self, bed: Testbed, pod: Pod, dst_ip: str) -> None:
        bundle = LocalCA.load_or_create(bed.ca_dir).issue(f"spiffe://cluster.local/ns/mesh/sa/{pod.service_account}")
        raw = pod_socket(pod, mark=0x539)  # marked: not captured by the pod's own proxy
        raw.settimeout(30)
        raw.connect((dst_ip, 15008))
        self.tls: ssl.SSLSocket = client_context(bundle).wrap_socket(raw, server_hostname=None)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self._send()
        self.status: dict[int, int] = {}  # stream -> :status, or -1 when reset by the server
        self.goaway = False
        self._pump(lambda evs: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in evs))

    def _send(self) -> None:
        if out := self.h2.data_to_send():
            self.tls.sendall(out)

    def _pump(self, done) -> None:  # type: ignore[no-untyped-def]
        while True:
            data = self.tls.recv(65536)
            if not data:
                self.goaway = True
                return
            events = self.h2.receive_data(data)
            for ev in events:
                if isinstance(ev, h2.events.ResponseReceived):
                    self.status[ev.stream_id] = int(dict(ev.headers)[":status"])  # type: ignore[index]
                elif isinstance(ev, h2.events.StreamReset):
                    self.status.setdefault(ev.stream_id, -1)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.goaway = True
            self._send()
            if self.goaway or done(events):
                return

    def connect_streams(self, authority: str, n: int, *, reset: bool = False) -> list[int]:
        ids = []
        for _ in range(n):
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
            if reset:
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            ids.append(sid)
        self._send()
        return ids

    def wait_answers(self, ids: list[int]) -> list[int]:
        self._pump(lambda _evs: all(i in self.status for i in ids))
        return [self.status.get(i, 0) for i in ids]

    def close(self) -> None:
        try:
            self.tls.close()
        except OSError:
            pass


def _ordinary(lim: Bed, n: int) -> int:
    """`n` echo round trips from the ordinary client to the other pod through the mesh; the successes."""
    client, other = lim.pod("client"), lim.pod("other")

    def one(i: int) -> bool:
        msg = f"hello {i}".encode()
        try:
            return echo_transfer(client, other.ip, 8080, msg, timeout=30) == msg
        except OSError:
            return False

    with ThreadPoolExecutor(16) as pool:
        return sum(pool.map(one, range(n)))


def test_stream_burst_does_not_starve_others_and_files_come_back(lim: Bed) -> None:
    target = lim.pod("target")
    assert _ordinary(lim, 20) == 20  # warm: pools and caches of the ordinary path exist
    baseline = _open_files(lim.p2)
    conns: list[RawHbone] = []
    statuses: list[int] = []
    try:
        for _ in range(10):
            conn = RawHbone(lim.bed, lim.pod("attacker"), target.ip)
            conns.append(conn)
            statuses += conn.wait_answers(conn.connect_streams(f"{target.ip}:8080", 200))
        peak = _open_files(lim.p2)
        during = _ordinary(lim, 200)  # while the attacker holds its streams
    finally:
        for conn in conns:
            conn.close()
    after = _ordinary(lim, 200)
    refused = _refused(lim.bed, 2)
    print(f"\nopen files: baseline {baseline}, peak {peak}; attacker: {statuses.count(200)} x 200, "
          f"{statuses.count(503)} x 503; refused {refused}")
    assert len(statuses) == 2000 and set(statuses) <= {200, 503}
    assert statuses.count(200) <= 1024  # the default per-source limit
    assert refused.get(("hbone", "source_limit"), 0) == statuses.count(503) > 0
    assert during == 200 and after == 200
    deadline = time.monotonic() + 30
    while _active(lim.bed, 2) > 0 and time.monotonic() < deadline:  # every admitted slot was released
        time.sleep(0.2)
    assert _active(lim.bed, 2) == 0
    files = _open_files(lim.p2)
    while files > baseline + 300 and time.monotonic() < deadline:
        time.sleep(0.5)
        files = _open_files(lim.p2)
    assert files <= baseline + 300, (baseline, peak, files)


def test_rapid_reset_across_connections_is_limited_per_source(lim: Bed) -> None:
    target, resetter = lim.pod("target"), lim.pod("resetter")
    dialled_before = lim.target_peers.read_text().count(f"{resetter.ip}:")
    before = _refused(lim.bed, 2).get(("hbone", "early_resets"), 0)
    stop = threading.Event()
    sent = [0]

    def attack() -> None:
        while not stop.is_set() and sent[0] < 2000:  # bounded: at most 2,000 streams in 40 connections
            conn = RawHbone(lim.bed, resetter, target.ip)
            try:
                conn.connect_streams(f"{target.ip}:8080", 50, reset=True)
                sent[0] += 50
                # a PING round trip: the server has read every frame sent before it
                conn.h2.ping(b"12345678")
                conn._send()
                conn._pump(lambda evs: any(isinstance(e, h2.events.PingAckReceived) for e in evs))
            finally:
                conn.close()

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        deadline = time.monotonic() + 60
        refused = before
        while refused <= before and time.monotonic() < deadline:
            time.sleep(0.2)
            refused = _refused(lim.bed, 2).get(("hbone", "early_resets"), 0)
        victim = _ordinary(lim, 100)  # while the reset storm goes on
    finally:
        stop.set()
        attacker.join(60)
    dialled = lim.target_peers.read_text().count(f"{resetter.ip}:") - dialled_before
    refused = _refused(lim.bed, 2).get(("hbone", "early_resets"), 0)
    print(f"\nrapid reset: {sent[0]} streams reset, {refused - before:.0f} refused, {dialled} app dials")
    assert refused > before  # the per-source limit held across connections
    assert victim == 100
    assert dialled <= 100  # never more app dials than the early-reset allowance


def test_plaintext_flood_from_outside_the_mesh_is_bounded(lim: Bed) -> None:
    target, visitor = lim.pod("target"), lim.pod("visitor-plain")
    baseline = _open_files(lim.p2)
    before = _refused(lim.bed, 2).get(("tcp", "source_limit"), 0)
    socks = []
    served = refused = 0
    attempts = 1100
    # Every socket stays open until the `finally` below: no admitted connection is released before the
    # last one is attempted, so exactly the per-source limit is admitted and the rest refused.
    try:
        for _ in range(attempts):
            s = pod_socket(visitor)
            s.settimeout(30)
            socks.append(s)
            try:
                s.connect((target.ip, 8080))
            except ConnectionResetError:  # refused so fast that the reset beat connect() back
                refused += 1
                s.close()
        for s in socks:  # one round trip each: echoed (admitted) or reset (refused)
            if s.fileno() == -1:
                continue
            try:
                s.sendall(b"x")
                if s.recv(1) == b"x":
                    served += 1
                else:
                    refused += 1
            except OSError:
                refused += 1
        peak = _open_files(lim.p2)
        held = _active(lim.bed, 2)  # the admitted connections are still open here
        during = _ordinary(lim, 50)
    finally:
        for s in socks:
            s.close()
    counted = _refused(lim.bed, 2).get(("tcp", "source_limit"), 0) - before
    print(f"\nplaintext: {served} served, {refused} refused ({counted:.0f} counted); files {baseline} -> {peak}")
    assert held >= DEFAULT_PER_SOURCE
    assert served == DEFAULT_PER_SOURCE and refused == counted == attempts - DEFAULT_PER_SOURCE
    assert during == 50
    deadline = time.monotonic() + 30
    files = _open_files(lim.p2)
    while files > baseline + 300 and time.monotonic() < deadline:
        time.sleep(0.5)
        files = _open_files(lim.p2)
    assert files <= baseline + 300, (baseline, peak, files)
