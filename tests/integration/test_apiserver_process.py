"""The API server as a real process: restart and kill -9 without losing or duplicating events, crash safety
of a batch apply, and two writer processes racing on one object without a lost update."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ambient.api.client import ApiClient, WatchEvent
from ambient.api.errors import ApiError, UnavailableError
from ambient.api.server import serve_in_thread

Obj = dict[str, Any]


def pod(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }


class ServerProcess:
    """`python -m ambient.api.server` on a state dir; always reaped by the fixture."""

    def __init__(self, state_dir: Path, *extra: str) -> None:
        self.state_dir = state_dir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.socket = state_dir / "apiserver.sock"

    def start(self) -> None:
        log = open(self.state_dir / "apiserver.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ambient.api.server", "--state-dir", str(self.state_dir), *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 30
        with ApiClient(self.socket, timeout=5) as api:
            while not api.healthy():
                assert self.proc.poll() is None, (self.state_dir / "apiserver.log").read_text()
                assert time.monotonic() < deadline, "API server did not become healthy"
                time.sleep(0.05)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        self.proc = None
        return rc

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)
        self.proc = None


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    sp = ServerProcess(tmp_path, "--max-events", "100000")
    try:
        yield sp
    finally:
        if sp.proc is not None:
            sp.proc.kill()
            sp.proc.wait(30)


def _changes(events: list[WatchEvent]) -> list[tuple[str, str, int]]:
    return [(e.type, e.object["metadata"]["name"], int(e.resource_version)) for e in events if e.type != "BOOKMARK"]


def test_watch_across_restart_and_kill9_loses_and_duplicates_nothing(server_process: ServerProcess) -> None:
    sp = server_process
    sp.start()
    api = ApiClient(sp.socket)
    _, rv0 = api.list("pods")

    # A watcher follows along; when the server goes away it resumes from the last version it saw.
    got: list[WatchEvent] = []
    done = threading.Event()

    def follow() -> None:
        last = rv0
        with ApiClient(sp.socket) as watcher:
            while not done.is_set():
                try:
                    for event in watcher.watch("pods", resource_version=last, timeout=30):
                        got.append(event)
                        last = event.resource_version
                except UnavailableError:
                    time.sleep(0.05)  # server restarting: retry from `last`

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    for name in ("a", "b", "c"):
        api.create(pod(name))
    assert sp.stop() == 0  # graceful: SIGTERM
    assert not sp.socket.exists()
    sp.start()
    api.create(pod("d"))
    api.delete("pods", "a")
    api.patch("pods", "b", "default", {"metadata": {"labels": {"x": "y"}}})
    sp.kill9()
    sp.start()
    api.create(pod("e"))
    expected = [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("ADDED", "c"),
        ("ADDED", "d"),
        ("DELETED", "a"),
        ("MODIFIED", "b"),
        ("ADDED", "e"),
    ]
    versions = list(range(int(rv0) + 1, int(rv0) + 8))
    # A fresh watch from the old version, after two restarts, sees exactly the history.
    fresh = _changes(list(api.watch("pods", resource_version=rv0, timeout=0.5)))
    assert [(t, n) for t, n, _ in fresh] == expected
    assert [v for _, _, v in fresh] == versions
    # The follower (which reconnected twice) saw each event exactly once, in order.
    deadline = time.monotonic() + 20
    while len(_changes(got)) < len(expected) and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    sp.stop()
    thread.join(30)
    assert _changes(got) == fresh
    api.close()


def test_kill9_mid_batch_apply_leaves_all_or_nothing(server_process: ServerProcess) -> None:
    sp = server_process
    sp.start()
    with ApiClient(sp.socket) as api:
        api.apply_many([pod(f"pre-{i}") for i in range(5)])
    outcomes: list[str] = []
    batch = 6000
    # Time one full batch first, then kill at fractions of that: measured here, ~30-55% lands inside the
    # transaction (SQLite has spilled uncommitted pages to the WAL), earlier before it, later after it.
    with ApiClient(sp.socket, timeout=60) as api:
        t0 = time.perf_counter()
        api.apply_many([pod(f"warm-{i}") for i in range(batch)])
        full = time.perf_counter() - t0
    for round_, delay in enumerate(f * full for f in (0.3, 0.4, 0.5, 0.9)):
        with ApiClient(sp.socket, timeout=60) as api:
            _, rv_before = api.list("pods")
            result: list[Any] = []

            def apply(api: ApiClient = api, round_: int = round_, result: list[Any] = result) -> None:
                try:
                    result.append(api.apply_many([pod(f"r{round_}-{i}") for i in range(batch)]))
                except ApiError as exc:
                    result.append(exc)

            wal = sp.state_dir / "apiserver.db-wal"
            wal_before = wal.stat().st_mtime_ns
            thread = threading.Thread(target=apply, daemon=True)
            thread.start()
            time.sleep(delay)
            sp.kill9()
            thread.join(60)
            # Pages written to the WAL but not committed: the kill landed inside the transaction.
            wal_touched = wal.stat().st_mtime_ns != wal_before
        sp.start()
        with ApiClient(sp.socket) as api:
            items, rv_after = api.list("pods")
            names = {p["metadata"]["name"] for p in items}
            in_batch = sum(1 for n in names if n.startswith(f"r{round_}-"))
            assert in_batch in (0, batch), f"partial batch after kill -9: {in_batch}/{batch}"
            assert {f"pre-{i}" for i in range(5)} <= names
            if isinstance(result[0], list):
                assert in_batch == batch  # acknowledged means durable
            outcomes.append("all" if in_batch else ("none (killed mid-transaction)" if wal_touched else "none"))
            # versions stay monotonic and the change log matches the objects exactly
            assert int(rv_after) == int(rv_before) + in_batch
            newer = api.create(pod(f"after-{round_}"))
            assert int(newer["metadata"]["resourceVersion"]) == int(rv_after) + 1
            assert max(int(p["metadata"]["resourceVersion"]) for p in items) <= int(rv_after)
            # Read the change log up to the pod just created (the last write): up to 6,001 events, so no
            # short stream timeout that a loaded machine could hit first.
            log: list[str] = []
            for event in api.watch("pods", resource_version=rv_before, timeout=60):
                if event.type != "BOOKMARK":
                    log.append(event.object["metadata"]["name"])
                    if log[-1] == f"after-{round_}":
                        break
            assert len(log) == in_batch + 1 and len(set(log)) == len(log)
        db = sqlite3.connect(sp.state_dir / "apiserver.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
    print(f"\nkill -9 during a {batch}-object apply ({full:.2f}s when not killed), outcomes: {outcomes}")


WRITER = textwrap.dedent(
    """
    import os, sys, time
    from ambient.api.client import ApiClient
    from ambient.api.errors import ConflictError
    sock, go = sys.argv[1], sys.argv[2]
    while not os.path.exists(go):
        time.sleep(0.005)
    conflicts = 0
    with ApiClient(sock) as api:
        done = 0
        while done < 50:
            obj = api.get("pods", "counter", "default")
            n = int(obj["metadata"]["annotations"]["count"])
            obj["metadata"]["annotations"]["count"] = str(n + 1)
            try:
                api.update(obj)
                done += 1
            except ConflictError:
                conflicts += 1
    print(conflicts)
    """
)


def test_two_writer_processes_lose_no_update(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with serve_in_thread(state) as server, ApiClient(server.socket_path) as api:
        counter = pod("counter")
        counter["metadata"]["annotations"] = {"count": "0"}
        api.create(counter)
        go = tmp_path / "go"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(server.socket_path), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            for _ in range(2)
        ]
        time.sleep(0.5)  # both importing; the file starts them together
        go.touch()
        conflicts = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
            conflicts.append(int(out))
        final = api.get("pods", "counter")
        print(f"\ntwo writers: 100 increments, conflicts reported and retried: {conflicts}")
        assert final["metadata"]["annotations"]["count"] == "100"
        assert final["metadata"]["generation"] == 1
