"""ZDS codec: golden bytes, round trips, and every malformed-packet class mapped to its typed error."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambient.inpod.errors import (
    ZdsDecodeError,
    ZdsFdCountError,
    ZdsMalformedError,
    ZdsTruncatedError,
    ZdsUnknownMessageError,
)
from ambient.inpod.zds_codec import (
    Ack,
    AddPod,
    DelPod,
    Hello,
    KeepPod,
    SnapshotSent,
    WorkloadInfo,
    decode_hello,
    decode_request,
    decode_response,
    encode_ack,
    encode_hello,
    encode_request,
)

INFO = WorkloadInfo(name="n", namespace="ns", service_account="sa")
FD = 7  # the codec never touches fds: any number stands in for one


def test_requests_encode_to_reference_bytes_and_fds() -> None:
    # Same golden bytes as tests/unit/protocol (hand-computed from the field numbers).
    assert encode_request(AddPod("u", INFO, FD)) == (
        bytes.fromhex("0a10 0a0175 120b 0a016e 12026e73 1a027361"),
        [FD],
    )
    assert encode_request(KeepPod("u")) == (bytes.fromhex("2a03 0a0175"), [])
    assert encode_request(DelPod("u")) == (bytes.fromhex("1203 120175"), [])
    assert encode_request(SnapshotSent()) == (bytes.fromhex("1a00"), [])
    assert encode_hello() == bytes.fromhex("0801")
    assert encode_ack() == bytes.fromhex("0a00")
    assert encode_ack("e") == bytes.fromhex("0a03 0a0165")


@pytest.mark.parametrize("request_", [AddPod("u1", INFO, FD), KeepPod("u2"), DelPod("u3"), SnapshotSent()])
def test_request_round_trip(request_: AddPod | KeepPod | DelPod | SnapshotSent) -> None:
    data, fds = encode_request(request_)
    assert decode_request(data, fds) == request_


def test_hello_and_ack_round_trip() -> None:
    assert decode_hello(encode_hello()) == Hello(version=1)
    assert decode_hello(encode_hello(7)) == Hello(version=7)  # version policy is the state machine's job
    assert decode_response(encode_ack()) == Ack("")
    nack = decode_response(encode_ack("no such netns"))
    assert not nack.ok and nack.error == "no such netns"


def test_add_without_fd_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="netns fd"):
        encode_request(AddPod("u", INFO))


@pytest.mark.parametrize(
    ("data", "fds", "flags", "error", "text"),
    [
        # kernel flags
        (bytes.fromhex("1a00"), [], socket.MSG_TRUNC, ZdsTruncatedError, "MSG_TRUNC"),
        (bytes.fromhex("0a10 0a0175 120b 0a016e 12026e73 1a027361"), [FD], socket.MSG_CTRUNC,
         ZdsTruncatedError, "MSG_CTRUNC"),
        # protobuf cut short: Add says 16 bytes follow, 4 do
        (bytes.fromhex("0a10 0a017512"), [FD], 0, ZdsTruncatedError, "cannot decode"),
        # garbage: wire type 7 does not exist
        (bytes.fromhex("0f01"), [], 0, ZdsMalformedError, "cannot decode"),
        # invalid UTF-8 in a string field (Keep.uid)
        (bytes.fromhex("2a03 0a01ff"), [], 0, ZdsMalformedError, "cannot decode"),
        # valid protobuf, no known oneof: empty packet body / unknown field 4
        (b"", [], 0, ZdsUnknownMessageError, "no known message"),
        (bytes.fromhex("2200"), [], 0, ZdsUnknownMessageError, "no known message"),
        # fd counts
        (bytes.fromhex("0a10 0a0175 120b 0a016e 12026e73 1a027361"), [], 0, ZdsFdCountError, "carried 0 fds"),
        (bytes.fromhex("0a10 0a0175 120b 0a016e 12026e73 1a027361"), [FD, FD + 1], 0, ZdsFdCountError,
         "carried 2 fds"),
        (bytes.fromhex("2a03 0a0175"), [FD], 0, ZdsFdCountError, "Keep carried 1 fd"),
        (bytes.fromhex("1203 120175"), [FD], 0, ZdsFdCountError, "Del carried 1 fd"),
        (bytes.fromhex("1a00"), [FD], 0, ZdsFdCountError, "SnapshotSent carried 1 fd"),
    ],
    ids=[
        "msg-trunc", "msg-ctrunc", "cut-protobuf", "garbage", "bad-utf8", "empty", "unknown-oneof",
        "add-no-fd", "add-two-fds", "fd-on-keep", "fd-on-del", "fd-on-snapshot-sent",
    ],
)  # fmt: skip
def test_malformed_requests_raise_typed_errors(
    data: bytes, fds: list[int], flags: int, error: type[ZdsDecodeError], text: str
) -> None:
    with pytest.raises(error, match=text) as info:
        decode_request(data, fds, flags)
    assert isinstance(info.value, ZdsDecodeError)
    assert info.value.message  # actionable text, never an empty error


def test_malformed_responses_and_hellos() -> None:
    with pytest.raises(ZdsUnknownMessageError):
        decode_response(b"")  # no Ack inside
    with pytest.raises(ZdsFdCountError, match="Ack carried 1 fd"):
        decode_response(encode_ack(), [FD])
    with pytest.raises(ZdsFdCountError, match="Hello carried 1 fd"):
        decode_hello(encode_hello(), [FD])
    with pytest.raises(ZdsMalformedError):
        decode_hello(bytes.fromhex("0f01"))
    with pytest.raises(ZdsTruncatedError):
        decode_response(encode_ack(), [], socket.MSG_TRUNC)


@given(data=st.binary(max_size=64), nfds=st.integers(0, 2), flags=st.sampled_from([0, socket.MSG_TRUNC]))
def test_any_packet_decodes_or_raises_a_typed_error(data: bytes, nfds: int, flags: int) -> None:
    """Fuzz: arbitrary bytes never escape as anything but a request or a ZdsDecodeError."""
    for decode in (decode_request, decode_response, decode_hello):
        try:
            decode(data, [FD] * nfds, flags)
        except ZdsDecodeError:
            pass
