"""Network-namespace helpers: open a netns, switch the current thread into it and back (ctypes `setns`).

Role: the node agent applies rules inside a pod's netns and the node proxy creates its listeners there.
Python 3.11 has no `os.setns`, so we call libc `setns(fd, CLONE_NEWNET)` through ctypes.

Invariants:
- A network namespace is per *thread*: `in_netns` switches only the calling thread, and always switches it
  back (to the netns it had on entry); threads *started* inside the block inherit the new netns. If
  switching back fails the thread is in an unknown netns (unrecoverable for a shared thread): we raise
  `NetnsError` and the caller must not reuse the thread.
- Sockets stay in the netns they were created in, and child processes inherit the netns of the thread that
  forked them; so creating sockets or running `iptables-restore` inside `in_netns` acts on that netns.
- `run_in_netns` uses a dedicated short-lived thread, so the caller's (event-loop) thread never moves.
- File descriptors we open are O_CLOEXEC and closed by us; fds passed in by the caller stay open.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ambient.inpod.errors import InpodError

CLONE_NEWNET = 0x40000000
_SELF_NETNS = "/proc/thread-self/ns/net"

T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.setns.restype = ctypes.c_int


class NetnsError(InpodError):
    """A network namespace could not be opened or entered."""


NetnsRef = int | str | os.PathLike[str]


def open_netns(path: str | os.PathLike[str]) -> int:
    """Open a netns file (`/var/run/netns/NAME`, `/proc/PID/ns/net`) and return an O_CLOEXEC fd."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise NetnsError(
            f"cannot open network namespace {os.fspath(path)!r}: {e.strerror}",
            hint="check that the pod sandbox still exists (the netns path comes from the runtime)",
        ) from e


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(
            f"setns into network namespace {what} failed: {os.strerror(err)}",
            hint="setns needs CAP_SYS_ADMIN (run as root) and a netns file descriptor",
        )


def netns_inode(fd: int) -> int:
    """The netns inode number: identifies a netns across different fds/paths (e.g. to detect re-Adds)."""
    return os.fstat(fd).st_ino


def current_netns_inode() -> int:
    """The inode of the netns the *calling thread* is in."""
    return os.stat(_SELF_NETNS).st_ino


@contextmanager
def in_netns(target: NetnsRef) -> Iterator[None]:
    """Switch the current thread into `target` (fd or path) for the block, then back."""
    own_fd = not isinstance(target, int)
    fd = open_netns(target) if not isinstance(target, int) else target
    try:
        origin = os.open(_SELF_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(fd, repr(target))
            try:
                yield
            finally:
                try:
                    _setns(origin, "of origin")
                except NetnsError as e:
                    raise NetnsError(
                        f"could not return the thread to its original network namespace: {e.message}",
                        hint="this thread is now in an unknown netns and must not be reused",
                    ) from e
        finally:
            os.close(origin)
    finally:
        if own_fd:
            os.close(fd)


def run_in_netns(target: NetnsRef, fn: Callable[[], T], *, name: str = "netns") -> T:
    """Run `fn()` inside `target` on a dedicated thread; return its result or re-raise its exception.

    Blocking: from asyncio, call it via `await asyncio.to_thread(run_in_netns, path, fn)`.
    """
    box: dict[str, object] = {}

    def runner() -> None:
        try:
            with in_netns(target):
                box["result"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=runner, name=f"{name}-{os.getpid()}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
