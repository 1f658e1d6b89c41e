"""Cluster naming and addressing (pure): names, addresses, paths, JSON round trip, registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambient.cluster import layout as L
from ambient.cluster.errors import ClusterNotFoundError, InvalidClusterNameError


def test_two_node_layout_addresses_and_names(tmp_path: Path) -> None:
    lay = L.build_layout("t3x", 2, tmp_path)
    assert lay.underlay_netns == "amb-t3x-underlay"
    assert [n.name for n in lay.nodes] == ["node-1", "node-2"]
    n1, n2 = lay.nodes
    assert (n1.netns, n1.ip, n1.pod_cidr, n1.pod_gateway) == ("amb-t3x-node-1", "172.18.0.11", "10.244.1.0/24",
                                                              "10.244.1.1")
    assert (n2.ip, n2.pod_cidr) == ("172.18.0.12", "10.244.2.0/24")
    assert n1.cni_conf_dir == str(tmp_path / "nodes/node-1/cni/net.d")
    assert n1.cni_conflist_path == tmp_path / "nodes/node-1/cni/net.d/10-ambient.conflist"
    assert lay.api_socket == tmp_path / "apiserver.sock"
    assert all(L.is_cluster_netns("t3x", ns) for ns in [lay.underlay_netns, n1.netns, n2.netns])
    assert lay.node_for_ip("10.244.2.7") == n2 and lay.node_for_ip("10.9.9.9") is None


def test_pod_netns_name_and_prefixes_are_unambiguous() -> None:
    uid = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"
    assert L.pod_netns_name("ambient", uid) == "amb-ambient-pod-3f2504e04f89"
    assert L.cluster_of_netns("amb-ambient-pod-3f2504e04f89") == "ambient"
    assert L.cluster_of_netns("cni-1234") is None
    # no '-' in names: the prefix of cluster "t3" is never a prefix of another cluster's namespaces
    assert not L.is_cluster_netns("t3", "amb-t3b-node-1")
    with pytest.raises(InvalidClusterNameError, match="lowercase"):
        L.validate_cluster_name("t3-b")
    for bad in ["", "Ambient", "1abc", "a" * 33, "a b"]:
        with pytest.raises(InvalidClusterNameError):
            L.build_layout(bad)


def test_state_dir_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMBIENT_STATE_DIR", raising=False)
    monkeypatch.delenv("AMBIENT_CLUSTER", raising=False)
    assert L.default_state_dir() == Path("/var/lib/ambient/ambient")
    monkeypatch.setenv("AMBIENT_CLUSTER", "dev")
    assert L.default_cluster_name() == "dev"
    assert L.default_state_dir() == Path("/var/lib/ambient/dev")
    monkeypatch.setenv("AMBIENT_STATE_DIR", "/tmp/x")
    assert L.default_state_dir("other") == Path("/tmp/x")


def test_save_load_round_trip_and_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMBIENT_REGISTRY_DIR", str(tmp_path / "reg"))
    lay = L.build_layout("t3x", 3, tmp_path / "st")
    L.save_layout(lay)
    assert L.load_layout(tmp_path / "st") == lay
    with pytest.raises(ClusterNotFoundError, match="no cluster 't3x'"):
        L.load_layout("t3x")  # not registered, and the default state dir has nothing
    L.register_cluster("t3x", tmp_path / "st")
    assert L.load_layout("t3x") == lay
    assert L.registered_clusters() == {"t3x": tmp_path / "st"}
    L.unregister_cluster("t3x")
    L.unregister_cluster("t3x")  # idempotent
    assert L.registered_clusters() == {}


def test_node_count_bounds() -> None:
    with pytest.raises(Exception, match="between 1 and"):
        L.build_layout("t3x", 0)
    assert L.build_layout("t3x", 200).nodes[-1].ip == "172.18.0.210"


def test_a_cluster_name_is_never_taken_for_a_folder_of_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMBIENT_REGISTRY_DIR", str(tmp_path / "reg"))
    monkeypatch.chdir(tmp_path)
    decoy = L.build_layout("decoy", 1, tmp_path / "t3y")  # a folder named like the cluster, with a cluster.json
    L.save_layout(decoy)
    real = L.build_layout("t3y", 2, tmp_path / "real-state")
    L.save_layout(real)
    L.register_cluster("t3y", tmp_path / "real-state")
    assert L.load_layout("t3y") == real          # the name: its registered state dir
    assert L.load_layout(Path("t3y")) == decoy   # a Path is a state dir
    assert L.load_layout("./t3y") == decoy       # and so is a string with a slash


def test_a_state_dir_too_long_for_unix_sockets_is_refused_with_the_limit() -> None:
    from ambient.cluster.errors import ClusterError
    from ambient.cluster.lifecycle import UNIX_PATH_MAX, _check_socket_paths

    _check_socket_paths(L.build_layout("t3z", 2, Path("/var/lib/ambient/t3z")))  # the default: fine
    long_dir = Path("/tmp/" + "x" * 80)
    with pytest.raises(ClusterError, match=f"too long for the cluster's Unix sockets .* the limit is {UNIX_PATH_MAX}"):
        _check_socket_paths(L.build_layout("t3z", 2, long_dir))
