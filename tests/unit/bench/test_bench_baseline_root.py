"""Root: the direct iperf3 baseline in a real namespace pair (1 s), and the pair's cleanup."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ambient.bench.baselines import IPERF_PORT, iperf3_throughput, start_iperf3_server
from ambient.bench.nsenv import NetnsPair, remove_stale
from helpers import wait_for


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.mark.root
@pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 not installed")
def test_direct_iperf3_baseline_measures_positive_throughput() -> None:
    with NetnsPair() as pair:
        names = {pair.client, pair.server}
        assert names <= _netns()
        server = start_iperf3_server(pair)
        result = iperf3_throughput(pair, pair.server_addr, IPERF_PORT, 1.0)
    assert result["bits_per_second"] > 1e6  # a veth moves far more than 1 Mb/s
    assert server.poll() is not None  # the server was stopped with the pair
    assert not names & _netns()


@pytest.mark.root
def test_pair_is_deleted_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), NetnsPair() as pair:
        names = {pair.client, pair.server}
        raise RuntimeError("boom")
    assert not names & _netns()


@pytest.mark.root
def test_remove_stale_deletes_namespaces_of_dead_runs_and_their_processes() -> None:
    dead_pid = 4_194_304  # never a pid: pids are below pid_max, which is at most 4194304
    name = f"bench-{dead_pid}-1c"
    subprocess.run(["ip", "netns", "add", name], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "30"])
    try:
        # `ip netns exec` enters the namespace a moment after it starts: only then is the sleeper one of its
        # processes for remove_stale to find
        wait_for(lambda: str(sleeper.pid) in subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                                            text=True, check=False).stdout.split(),
                 timeout=10, what="the sleeper inside the namespace")
        assert name in remove_stale()
        assert sleeper.wait(timeout=10) != 0  # killed, not finished
        assert name not in _netns()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
