"""Fail closed on a referenced-but-missing policy, with real node proxies in network namespaces.

In the cluster the control plane always sends a selector policy before (or with) the workloads that
reference it, so the gap cannot be provoked on demand there. Here the proxies' store is fed from a static
state file instead (`ambient ztunnel --static`, the testbed of the node-proxy tests): the server workload
references `mesh/late`, which the file does not contain yet, exactly the state a proxy is in when a
workload update arrives before its policy. Both meshed (HBONE) and plaintext (15006) clients must be
reset, and the access log must name the missing policy; once the policy arrives, traffic flows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ambient.bench.testbed import ProxyProcess, Testbed, echo_transfer, sh, start_echo
from ambient.runtime.accesslog import parse_fields

pytestmark = pytest.mark.root

MISSING = "mesh/late"
REASON = ("connection closed due to policy rejection: policy mesh/late referenced by workload mesh/server "
          "has not been received yet (fail closed)")


@dataclass
class RefBed(Testbed):
    """A testbed whose workloads may reference policies (pod name -> policy keys)."""

    refs: dict[str, list[str]] = field(default_factory=dict)

    def state_doc(self) -> dict[str, Any]:
        doc = super().state_doc()
        for w in doc["workloads"]:
            if w["name"] in self.refs:
                w["authorizationPolicies"] = self.refs[w["name"]]
        return doc


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RefBed, ProxyProcess]]:
    b = RefBed(f"h18f{os.getpid() % 100000}", tmp_path_factory.mktemp("h18fc"), refs={"server": [MISSING]})
    try:
        b.create({1: [("client", "client"), ("visitor-plain", "default")], 2: [("server", "server")]})
        start_echo(b, b.pod("server"), [8080])
        b.start_proxy(1)
        p2 = b.start_proxy(2)
        yield b, p2
    finally:
        b.destroy()


def _reset(pod: Any, ip: str) -> bool:
    try:
        return not echo_transfer(pod, ip, 8080, b"hello", timeout=10)
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return True


def _deny_metric(b: RefBed) -> float:
    text = sh("ip", "netns", "exec", b.node_ns(2), "curl", "-sf", "http://127.0.0.1:15020/metrics").stdout
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith("istio_tcp_connections_closed_total{") and 'response_flags="DENY"' in ln)


def test_missing_referenced_policy_denies_then_arrival_allows(bed: tuple[RefBed, ProxyProcess]) -> None:
    b, p2 = bed
    server = b.pod("server")
    assert _reset(b.pod("client"), server.ip), "meshed client must be reset while mesh/late is missing"
    assert _reset(b.pod("visitor-plain"), server.ip), "plaintext client must be reset too"
    deadline = time.monotonic() + 10
    while True:
        errors = [f.get("error") for f in map(parse_fields, p2.access_lines()) if f.get("error") == REASON]
        if len(errors) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(errors) >= 2, p2.access_lines()[-3:]
    assert _deny_metric(b) >= 2
    # The policy arrives (an unrelated DENY): the reference is satisfied and the server is reachable.
    b.policies.append({"name": "late", "namespace": "mesh", "scope": "WorkloadSelector", "action": "Deny",
                       "rules": [[[{"destinationPorts": [9999]}]]]})
    b.write_state()  # the proxies reload the static file within ~1 s
    deadline = time.monotonic() + 10
    while _reset(b.pod("client"), server.ip) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert echo_transfer(b.pod("client"), server.ip, 8080, b"hello", timeout=10) == b"hello"
    assert echo_transfer(b.pod("visitor-plain"), server.ip, 8080, b"hello", timeout=10) == b"hello"
