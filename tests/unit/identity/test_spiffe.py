from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ambient.identity.errors import InvalidSpiffeIdError
from ambient.identity.spiffe import SpiffeId, is_valid


def test_parse_and_format_round_trip() -> None:
    sid = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/web")
    assert (sid.trust_domain, sid.namespace, sid.service_account) == ("cluster.local", "shop", "web")
    assert str(sid) == "spiffe://cluster.local/ns/shop/sa/web"
    assert sid.principal == "cluster.local/ns/shop/sa/web"
    assert SpiffeId.parse(str(sid)) == sid


def test_for_workload_defaults() -> None:
    assert SpiffeId.for_workload("shop").uri == "spiffe://cluster.local/ns/shop/sa/default"
    assert SpiffeId.for_workload("shop", "", "").uri == "spiffe://cluster.local/ns/shop/sa/default"


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("http://cluster.local/ns/a/sa/b", "does not start"),
        ("spiffe://Cluster.local/ns/a/sa/b", "trust domain"),
        ("spiffe://cluster.local/ns/a/sa/b/extra", "not of the form"),
        ("spiffe://cluster.local/ns/a/sb/b", "not of the form"),
        ("spiffe://cluster.local/ns//sa/b", "namespace"),
        ("spiffe://cluster.local/ns/../sa/b", "namespace"),
        ("spiffe://cluster.local/ns/a/sa/b?x=1", "query"),
        ("spiffe://cluster.local/ns/a/sa/b%41", "escape"),
        ("spiffe://cluster.local:443/ns/a/sa/b", "port"),
        ("spiffe://cluster.local/ns/a/sa/b\x00c", "NUL"),
        ("spiffe:///ns/a/sa/b", "trust domain"),
        ("spiffe://cluster.local/ns/a b/sa/b", "namespace"),
    ],
)
def test_rejects_malformed(uri: str, why: str) -> None:
    with pytest.raises(InvalidSpiffeIdError) as info:
        SpiffeId.parse(uri)
    assert why in str(info.value)
    assert not is_valid(uri)


def test_constructor_validates() -> None:
    with pytest.raises(InvalidSpiffeIdError):
        SpiffeId("cluster.local", "a/b", "c")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.builds(lambda a, b, c: f"spiffe://{a}/ns/{b}/sa/{c}",
                                                 st.text(max_size=12), st.text(max_size=12), st.text(max_size=12))))
def test_parse_never_crashes_and_round_trips(uri: str) -> None:
    try:
        sid = SpiffeId.parse(uri)
    except InvalidSpiffeIdError:
        return
    assert sid.uri == uri and SpiffeId.parse(sid.uri) == sid
