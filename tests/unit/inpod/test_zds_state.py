"""Playbook tests of the sans-IO ZDS state machines: message in -> decision out, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambient.inpod.errors import ZdsProtocolError
from ambient.inpod.zds_codec import Ack, AddPod, DelPod, Hello, KeepPod, Request, SnapshotSent, WorkloadInfo
from ambient.inpod.zds_state import (
    AckResult,
    AgentPhase,
    AgentZds,
    AlreadyServing,
    KeepServing,
    ProxyPhase,
    ProxyZds,
    SnapshotDone,
    StartPod,
    StopPod,
)

INFO = WorkloadInfo("web-1", "shop", "web")


def add(uid: str, fd: int = 10) -> AddPod:
    return AddPod(uid, INFO, fd)


# --- proxy side -------------------------------------------------------------------------------------------


def test_proxy_first_connection_playbook() -> None:
    p = ProxyZds()
    assert p.connection_started() == Hello(version=1)
    assert p.receive(add("a"), netns_inode=100) == StartPod("a", INFO, 10, replace=False)
    assert p.receive(add("b", 11), netns_inode=200) == StartPod("b", INFO, 11, replace=False)
    assert p.receive(SnapshotSent()) == SnapshotDone(frozenset({"a", "b"}), frozenset())
    assert p.phase is ProxyPhase.RUNNING
    assert p.receive(add("c", 12), netns_inode=300) == StartPod("c", INFO, 12, replace=False)
    assert p.receive(DelPod("a")) == StopPod("a", known=True)
    assert p.receive(DelPod("a")) == StopPod("a", known=False)  # idempotent
    assert p.served == {"b": 200, "c": 300}


def test_proxy_reconnect_snapshot_reconciles_stale_pods() -> None:
    p = ProxyZds()
    p.connection_started()
    for uid, ino in [("a", 1), ("b", 2), ("c", 3)]:
        p.receive(add(uid), netns_inode=ino)
    p.receive(SnapshotSent())
    p.connection_lost()
    assert p.served == {"a": 1, "b": 2, "c": 3}  # pods keep being served while the agent is away

    p.connection_started()
    assert p.receive(KeepPod("a")) == KeepServing("a", known=True)
    assert p.receive(add("b"), netns_inode=2) == AlreadyServing("b", 10)  # same netns: idempotent
    assert p.receive(KeepPod("zz")) == KeepServing("zz", known=False)  # never had it: cannot serve it
    # "c" is in neither Add nor Keep: tear it down.
    assert p.receive(SnapshotSent()) == SnapshotDone(frozenset({"a", "b"}), frozenset({"c"}))
    assert p.served == {"a": 1, "b": 2}


def test_proxy_readd_with_new_netns_replaces() -> None:
    p = ProxyZds()
    p.connection_started()
    p.receive(SnapshotSent())
    assert p.receive(add("a"), netns_inode=1) == StartPod("a", INFO, 10, replace=False)
    assert p.receive(add("a", 11), netns_inode=1) == AlreadyServing("a", 11)
    assert p.receive(add("a", 12), netns_inode=2) == StartPod("a", INFO, 12, replace=True)
    assert p.served == {"a": 2}


@pytest.mark.parametrize(
    ("before_snapshot_done", "request_", "text"),
    [
        (False, DelPod("a"), "Del for pod a during the snapshot"),
        (True, KeepPod("a"), "Keep for pod a after the snapshot"),
        (True, SnapshotSent(), "second ZDS SnapshotSent"),
    ],
    ids=["del-during-snapshot", "keep-after-snapshot", "double-snapshot-sent"],
)
def test_proxy_protocol_errors_leave_state_unchanged(before_snapshot_done: bool, request_: Request, text: str) -> None:
    p = ProxyZds()
    p.connection_started()
    p.receive(add("a"), netns_inode=1)
    if before_snapshot_done:
        p.receive(SnapshotSent())
    phase, served = p.phase, dict(p.served)
    with pytest.raises(ZdsProtocolError, match=text):
        p.receive(request_)
    assert (p.phase, p.served) == (phase, served)


def test_proxy_rejects_requests_before_connection_and_add_without_inode() -> None:
    p = ProxyZds()
    with pytest.raises(ZdsProtocolError, match="before the connection started"):
        p.receive(SnapshotSent())
    p.connection_started()
    with pytest.raises(ValueError, match="inode"):
        p.receive(add("a"))


def test_proxy_forget_after_failed_start() -> None:
    p = ProxyZds()
    p.connection_started()
    p.receive(add("a"), netns_inode=1)
    p.forget("a")  # on_add failed: a retry with the same netns must start it again, not be "idempotent"
    assert p.receive(add("a"), netns_inode=1) == StartPod("a", INFO, 10, replace=False)


# --- agent side -------------------------------------------------------------------------------------------


def test_agent_playbook() -> None:
    a = AgentZds()
    a.receive_hello(Hello(1))
    assert a.phase is AgentPhase.SNAPSHOT
    a.send(add("a"))
    assert a.receive_ack(Ack()) == AckResult(add("a"), "")
    a.send(KeepPod("b"))
    assert a.receive_ack(Ack("gone")) == AckResult(KeepPod("b"), "gone")
    a.send(SnapshotSent())
    assert a.receive_ack(Ack()).ok
    assert a.phase is AgentPhase.READY
    a.send(DelPod("a"))
    nack = a.receive_ack(Ack("busy"))
    assert not nack.ok and nack.error == "busy" and nack.request == DelPod("a")


def test_agent_wrong_hello_version() -> None:
    a = AgentZds()
    with pytest.raises(ZdsProtocolError, match="unsupported version 0"):
        a.receive_hello(Hello(0))
    assert a.phase is AgentPhase.AWAIT_HELLO


def test_agent_protocol_errors() -> None:
    a = AgentZds()
    with pytest.raises(ZdsProtocolError, match="before the proxy's Hello"):
        a.send(add("a"))
    a.receive_hello(Hello(1))
    with pytest.raises(ZdsProtocolError, match="Hello received twice"):
        a.receive_hello(Hello(1))
    with pytest.raises(ZdsProtocolError, match="no request outstanding"):
        a.receive_ack(Ack())
    with pytest.raises(ZdsProtocolError, match="DelPod is not allowed in phase snapshot"):
        a.send(DelPod("a"))
    a.send(add("a"))
    with pytest.raises(ZdsProtocolError, match="still awaits its Ack"):
        a.send(add("b"))
    a.receive_ack(Ack())
    a.send(SnapshotSent())
    a.receive_ack(Ack())
    for late in (KeepPod("a"), SnapshotSent()):
        with pytest.raises(ZdsProtocolError, match="not allowed in phase ready"):
            a.send(late)


def test_agent_nacked_snapshot_sent_does_not_become_ready() -> None:
    a = AgentZds()
    a.receive_hello(Hello(1))
    a.send(SnapshotSent())
    assert not a.receive_ack(Ack("no")).ok
    assert a.phase is AgentPhase.SNAPSHOT


_requests = st.one_of(
    st.builds(AddPod, st.sampled_from("abc"), st.just(INFO), st.just(3)),
    st.builds(KeepPod, st.sampled_from("abc")),
    st.builds(DelPod, st.sampled_from("abc")),
    st.just(SnapshotSent()),
)


@given(st.lists(st.tuples(_requests, st.integers(1, 3)), max_size=25))
def test_proxy_any_sequence_is_a_decision_or_a_protocol_error(steps: list[tuple[Request, int]]) -> None:
    """Whatever the agent sends, the proxy either decides or raises ZdsProtocolError (never anything else),
    and after a SnapshotDone it serves exactly the pods the snapshot listed (that it had an fd for)."""
    p = ProxyZds()
    p.connection_started()
    for request, inode in steps:
        try:
            decision = p.receive(request, netns_inode=inode)
        except ZdsProtocolError:
            continue
        if isinstance(decision, SnapshotDone):
            assert set(p.served) == decision.keep_uids
            assert not decision.keep_uids & decision.stale_uids
