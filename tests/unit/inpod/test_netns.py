"""Tests for the ctypes setns helpers (root: they create network namespaces named h6-*)."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from ambient.inpod.netns import (
    NetnsError,
    current_netns_inode,
    in_netns,
    netns_inode,
    open_netns,
    run_in_netns,
)

_counter = itertools.count()


def test_open_missing_netns_is_a_clear_error() -> None:
    with pytest.raises(NetnsError, match="cannot open network namespace '/nonexistent/ns'"):
        open_netns("/nonexistent/ns")


@pytest.fixture
def netns_path() -> Iterator[str]:
    name = f"h6-{os.getpid()}-ns{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
    try:
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.mark.root
def test_in_netns_switches_current_thread_and_back(netns_path: str) -> None:
    home = current_netns_inode()
    # a thread started before the switch: it must not move (netns is per thread; threads started
    # *inside* the block would inherit the new netns, as clone() copies the creator's namespaces)
    go, seen = threading.Event(), []
    other = threading.Thread(target=lambda: (go.wait(5), seen.append(current_netns_inode())))
    other.start()
    fd = open_netns(netns_path)
    try:
        target = netns_inode(fd)
        assert target != home
        with in_netns(fd):
            assert current_netns_inode() == target
            go.set()
            other.join()
            assert seen == [home]
        assert current_netns_inode() == home
        os.fstat(fd)  # a caller-owned fd stays open
    finally:
        os.close(fd)


@pytest.mark.root
def test_in_netns_switches_back_after_an_exception(netns_path: str) -> None:
    home = current_netns_inode()
    with pytest.raises(RuntimeError, match="boom"), in_netns(netns_path):
        raise RuntimeError("boom")
    assert current_netns_inode() == home


@pytest.mark.root
def test_run_in_netns_returns_result_and_socket_stays_in_that_netns(netns_path: str) -> None:
    fd = open_netns(netns_path)
    try:
        target = netns_inode(fd)
    finally:
        os.close(fd)
    home = current_netns_inode()
    assert run_in_netns(netns_path, current_netns_inode) == target
    assert current_netns_inode() == home

    def bring_lo_up_and_listen() -> socket.socket:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True, timeout=10)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        return s

    listener = run_in_netns(netns_path, bring_lo_up_and_listen)
    with listener:
        port = listener.getsockname()[1]
        # from our own netns the port is not reachable; from inside the target netns it is
        with socket.socket() as probe:
            probe.settimeout(2)
            assert probe.connect_ex(("127.0.0.1", port)) != 0
        inside = run_in_netns(netns_path, socket.socket)
        with inside:
            inside.settimeout(5)
            inside.connect(("127.0.0.1", port))
            conn, _ = listener.accept()
            conn.close()


@pytest.mark.root
def test_run_in_netns_reraises_errors(netns_path: str) -> None:
    def fail() -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        run_in_netns(netns_path, fail)
