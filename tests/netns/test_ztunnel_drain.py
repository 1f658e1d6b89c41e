"""Root tests: drain on SIGTERM, handoff to a second proxy (SO_REUSEPORT) under a 20 ms request loop, and
the per-pod lifecycle driven by ZDS (idempotent re-add, delete drains the pod's proxy).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from ambient.bench.testbed import Testbed, echo_transfer, pod_socket, start_echo
from ambient.inpod.netns import open_netns
from ambient.inpod.zds import WorkloadInfo

pytestmark = pytest.mark.root

DEADLINE = 2.0


@pytest.fixture
def bed(tmp_path: os.PathLike[str]) -> Iterator[Testbed]:
    from pathlib import Path

    b = Testbed(f"ztd-{os.getpid()}-{time.monotonic_ns() % 100000}", Path(tmp_path))
    try:
        b.create({1: [("client", "client")], 2: [("server", "server")]})
        start_echo(b, b.pod("server"), [8080])
        yield b
    finally:
        b.destroy()


def _open(bed: Testbed) -> socket.socket:
    sock: socket.socket = pod_socket(bed.pod("client"))
    sock.settimeout(5)
    sock.connect((bed.pod("server").ip, 8080))
    return sock


def _ping(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(len(data) - len(got))
        if not chunk:
            break
        got += chunk
    return got


def test_sigterm_refuses_new_keeps_open_until_deadline(bed: Testbed) -> None:
    env = {"CONNECTION_TERMINATION_DEADLINE": f"{DEADLINE}s"}
    p1 = bed.start_proxy(1, env=env)
    bed.start_proxy(2)
    live = _open(bed)
    assert _ping(live, b"before") == b"before"
    t0 = time.monotonic()
    p1.terminate(signal.SIGTERM)
    # new connections are refused at once (the listener is gone: the redirect hits a closed port)
    refused_at = None
    for _ in range(50):
        try:
            probe = _open(bed)
        except (ConnectionRefusedError, ConnectionResetError, OSError):
            refused_at = time.monotonic() - t0
            break
        probe.close()
        time.sleep(0.02)
    assert refused_at is not None and refused_at < 1.0, "new connections still accepted after SIGTERM"
    # the open connection keeps working during the drain
    assert _ping(live, b"during-drain") == b"during-drain"
    # ... and is cut at the deadline; the process exits by deadline + 1 s
    p1.proc.wait(timeout=DEADLINE + 1.0 - (time.monotonic() - t0) + 0.5)
    exited_after = time.monotonic() - t0
    assert exited_after <= DEADLINE + 1.0, f"exited {exited_after:.2f}s after SIGTERM"
    with pytest.raises(OSError):
        live.sendall(b"x")
        if not live.recv(1):
            raise ConnectionResetError("closed")
    live.close()
    log = p1.log_text()
    assert "shutdown requested: draining" in log and "deadline reached, closing 1 connection(s)" in log
    print(f"\nrefused after {refused_at * 1000:.0f} ms, exited {exited_after:.2f}s after SIGTERM "
          f"(deadline {DEADLINE}s)")


def test_handoff_to_second_proxy_under_request_loop(bed: Testbed) -> None:
    env = {"CONNECTION_TERMINATION_DEADLINE": f"{DEADLINE}s"}
    old = bed.start_proxy(1, env=env)
    bed.start_proxy(2)
    client, server = bed.pod("client"), bed.pod("server")
    ok, failed, errors = 0, 0, []
    stop = threading.Event()

    def loop() -> None:
        nonlocal ok, failed
        n = 0
        while not stop.is_set():
            n += 1
            payload = f"req-{n:06d}".encode()
            try:
                if echo_transfer(client, server.ip, 8080, payload, timeout=5) == payload:
                    ok += 1
                else:
                    failed += 1
                    errors.append(f"{n}: short echo")
            except OSError as exc:
                failed += 1
                errors.append(f"{n}: {exc!r}")
            time.sleep(0.02)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        time.sleep(1.0)
        new = bed.start_proxy(1, env=env, tag="-new")  # listens beside the old one (SO_REUSEPORT)
        time.sleep(0.5)
        old.terminate(signal.SIGTERM)
        old.proc.wait(timeout=DEADLINE + 2)
        time.sleep(2.0)  # the new proxy alone
    finally:
        stop.set()
        t.join(10)
    total = ok + failed
    rate = ok / total if total else 0.0
    print(f"\nhandoff: {ok}/{total} new connections succeeded ({rate * 100:.2f}%)")
    assert total >= 100
    assert rate >= 0.999, errors[:5]
    assert new.proc.poll() is None
    assert new.access_lines(), "the new proxy carried traffic"


def test_zds_readd_is_idempotent_and_delete_drains_pod(bed: Testbed) -> None:
    p1 = bed.start_proxy(1)
    bed.start_proxy(2)
    client = bed.pod("client")
    feeder = bed.feeder(1)
    assert echo_transfer(client, bed.pod("server").ip, 8080, b"hello") == b"hello"
    fd = open_netns(client.path)
    try:
        feeder.call(feeder.server.add_pod(client.uid, WorkloadInfo(client.name, client.namespace, "client"), fd))
    finally:
        os.close(fd)
    time.sleep(0.2)
    assert p1.log_text().count("proxy started for pod mesh/client") == 1, "re-add with the same netns restarted"
    assert echo_transfer(client, bed.pod("server").ip, 8080, b"again") == b"again"
    feeder.delete(client)
    deadline = time.monotonic() + 5
    while "proxy for pod mesh/client drained and stopped" not in p1.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = p1.log_text()
    assert "removed from the mesh or deleted: draining its proxy" in log and "drained and stopped" in log
    with pytest.raises(OSError):
        _open(bed)  # nobody listens on 15001 in the pod any more: refused
