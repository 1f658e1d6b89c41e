"""Token files hold the bare token: ztunnel sends a token file's bytes verbatim after `Bearer `, so a
trailing newline would make an invalid header. Readers strip, so files from older versions still work."""

from __future__ import annotations

import re
from pathlib import Path

from ambient.cluster import podruntime as rt
from ambient.controlplane import pod_tokens as T
from ambient.controlplane.ca_server import NodeTokens, node_token_path

# RFC 9110 field-value: visible ASCII, no CR/LF, no leading or trailing whitespace.
HEADER_SAFE = re.compile(rb"[\x21-\x7e]+")


def test_node_token_file_is_the_bare_token(tmp_path: Path) -> None:
    token = NodeTokens(tmp_path).ensure("node-1")
    raw = node_token_path(tmp_path, "node-1").read_bytes()
    assert raw == token.encode()
    assert HEADER_SAFE.fullmatch(b"Bearer-" + raw)


def test_node_token_file_with_a_newline_is_still_accepted(tmp_path: Path) -> None:
    path = node_token_path(tmp_path, "node-1")
    path.parent.mkdir(parents=True)
    path.write_text("old-token-from-an-older-version\n")
    assert NodeTokens(tmp_path).node_for("old-token-from-an-older-version") == "node-1"  # found by reload
    assert NodeTokens(tmp_path).ensure("node-1") == "old-token-from-an-older-version"


def test_pod_token_file_is_the_bare_token(tmp_path: Path) -> None:
    pod = {"metadata": {"name": "w", "namespace": "shop", "uid": "uid-1"}, "spec": {"serviceAccountName": "w"}}
    raw = rt.write_pod_token(tmp_path, "node-1", pod).read_bytes()
    assert HEADER_SAFE.fullmatch(raw)
    assert T.verify(T.load_or_create_key(tmp_path), raw.decode()).pod == "w"
