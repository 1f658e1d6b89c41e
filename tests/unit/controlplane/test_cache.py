"""controlplane.xds_server.ResourceCache: content versions, incremental diffs, tombstone compaction;
controlplane.proxy_status rows."""

from __future__ import annotations

import pytest

from ambient.controlplane import proxy_status, xds_server
from ambient.controlplane.xds_server import ResourceCache
from ambient.protocol.gen.istio.workload import workload_pb2 as wl
from ambient.protocol.xds import ADDRESS_TYPE_URL as T


def w(uid: str, name: str = "n") -> wl.Address:
    return wl.Address(workload=wl.Workload(uid=uid, name=name))


def test_versions_are_content_hashes_and_noops_are_ignored() -> None:
    c = ResourceCache()
    assert c.apply(T, {"a": w("a")}) == 1
    assert c.apply(T, {"a": w("a")}) == 0  # same bytes: no change, no new sequence
    assert c.version(T) == "1"
    other = ResourceCache()
    other.apply(T, {"a": w("a")})
    send, _ = other.diff(T, {}, 0)
    send_c, _ = c.diff(T, {}, 0)
    assert send[0].version == send_c[0].version  # same content -> same version across restarts


def test_incremental_and_full_diffs_agree() -> None:
    c = ResourceCache()
    c.apply(T, {"a": w("a"), "b": w("b")})
    known = {r.name: r.version for r in c.diff(T, {}, 0)[0]}
    seen = c.type_seq(T)
    c.apply(T, {"a": w("a", "changed"), "b": None, "c": w("c")})
    inc_send, inc_removed = c.diff(T, known, seen)
    full_send, full_removed = c.diff(T, known, 0)
    assert sorted(r.name for r in inc_send) == sorted(r.name for r in full_send) == ["a", "c"]
    assert inc_removed == full_removed == ["b"]
    assert c.count(T) == 2


def test_compaction_falls_back_to_a_full_diff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xds_server, "MAX_TOMBSTONES", 2)
    c = ResourceCache()
    c.apply(T, {f"u{i}": w(f"u{i}") for i in range(5)})
    known = {r.name: r.version for r in c.diff(T, {}, 0)[0]}
    seen = c.type_seq(T)
    for i in range(4):
        c.apply(T, {f"u{i}": None})  # 4 tombstones > 2: compacted
    assert c._compacted[T] > seen  # the stream is now behind the compaction point
    send, removed = c.diff(T, known, seen)
    assert send == [] and sorted(removed) == ["u0", "u1", "u2", "u3"]


def test_proxy_status_rows() -> None:
    status = {
        "proxies": [
            {
                "node_id": "ztunnel~1.2.3.4~zt.istio-system~istio-system.svc.cluster.local",
                "peer": "ipv4:127.0.0.1:5000",
                "connected_at": 100.0,
                "types": {
                    "type.googleapis.com/istio.workload.Address": {
                        "synced": True,
                        "acked_version": "7",
                        "lag_versions": 0,
                    },
                    "type.googleapis.com/istio.security.Authorization": {
                        "synced": False,
                        "acked_version": "2",
                        "current_version": "4",
                        "lag_versions": 2,
                        "nacks": 1,
                    },
                },
            }
        ]
    }
    (row,) = proxy_status.rows(status, now=160.0)
    assert row[2] == "SYNCED (7)" and row[3] == "STALE (2 of 4)" and row[4:] == ["2", "1", "60s"]
