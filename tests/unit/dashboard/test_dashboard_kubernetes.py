"""The dashboard's Kubernetes sources, the pure parts: which pods are followed and under which name, what a
restarted `kubectl logs` replay is skipped, how kubectl's errors are explained, the metrics summary; and the
CLI's refusals before anything is served."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ambient.dashboard.errors import DashboardError
from ambient.dashboard.kubernetes import Kubectl, Resume, Stream, explain, find_kubectl, streams
from ambient.dashboard.model import metrics_summary, snapshot
from ambient.runtime.trace import parse_line


def _pod(name: str, ns: str, *, phase: str = "Running", node: str = "n1", containers: tuple[str, ...] = ("app",),
         labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels or {}},
            "spec": {"nodeName": node, "containers": [{"name": c} for c in containers]},
            "status": {"phase": phase}}


@pytest.mark.parametrize(("proxies", "waypoints", "expected"), [
    ([_pod("ztunnel-abc", "ambient-system", containers=("ztunnel",))], [],
     [Stream("ztunnel", "ambient-system", "ztunnel-abc", "uid-ztunnel-abc", "ztunnel", "ztunnel-n1")]),
    # Istio's ztunnel pod names its container istio-proxy; a sidecar-ish extra container is not followed
    ([_pod("z", "istio-system", containers=("debug", "istio-proxy"), node="kind-worker")], [],
     [Stream("ztunnel", "istio-system", "z", "uid-z", "istio-proxy", "ztunnel-kind-worker")]),
    ([_pod("z", "ambient-system", phase="Pending", containers=("ztunnel",))], [], []),
    ([_pod("z", "ambient-system", containers=())], [], []),
    # a waypoint is named after its Gateway (the label), not its ReplicaSet-hashed pod name
    ([], [_pod("waypoint-7d9f8b6c5d-x2x9z", "demo", containers=("istio-proxy",),
               labels={"gateway.networking.k8s.io/gateway-name": "waypoint"})],
     [Stream("waypoint", "demo", "waypoint-7d9f8b6c5d-x2x9z", "uid-waypoint-7d9f8b6c5d-x2x9z", "istio-proxy",
             "waypoint demo/waypoint")]),
    ([], [_pod("wp", "demo", containers=("proxy",))], [Stream("waypoint", "demo", "wp", "uid-wp", "proxy",
                                                              "waypoint demo/wp")]),
])
def test_streams(proxies: list[dict[str, Any]], waypoints: list[dict[str, Any]], expected: list[Stream]) -> None:
    assert streams(proxies, waypoints) == expected


def test_streams_list_node_proxies_first() -> None:
    found = streams([_pod("z2", "a", node="n2"), _pod("z1", "a", node="n1")],
                    [_pod("w", "b", labels={"gateway.networking.k8s.io/gateway-name": "w"})])
    assert [s.component for s in found] == ["ztunnel-n1", "ztunnel-n2", "waypoint b/w"]


def test_resume_skips_only_what_a_restart_replays() -> None:
    r = Resume()
    assert [r.accept(t, line) for t, line in [(1.0, "a"), (2.0, "b"), (2.0, "c"), (1.5, "late")]] == [True] * 4
    r.restart()
    # the replay: everything up to the last line read, and what was read at its very time, is skipped
    assert [r.accept(t, line) for t, line in [(1.0, "a"), (1.5, "late"), (2.0, "b"), (2.0, "c")]] == [False] * 4
    assert r.accept(2.0, "d")  # new at the same time
    assert r.accept(3.0, "e")  # newer: the replay is over
    assert r.accept(1.0, "out of order")  # lines of one stream out of order are kept once it is live


def test_a_first_stream_is_not_a_replay() -> None:
    r = Resume()
    r.restart()
    assert r.last == -math.inf and r.accept(0.0, "x")


@pytest.mark.parametrize(("stderr", "line", "hint"), [
    ("E1206 memcache.go:265] couldn't get current server API group list\n"
     "error: You must be logged in to the server (Unauthorized)\n",
     "error: You must be logged in to the server (Unauthorized)", "credentials were refused"),
    ('Error from server (Forbidden): pods is forbidden: User "dev" cannot list resource "pods"\n',
     'Error from server (Forbidden): pods is forbidden: User "dev" cannot list resource "pods"', "pods/log"),
    ('error: context "nope" does not exist\n', 'error: context "nope" does not exist', "get-contexts"),
    ("The connection to the server 127.0.0.1:1 was refused - did you specify the right host or port?\n",
     "The connection to the server 127.0.0.1:1 was refused - did you specify the right host or port?",
     "unreachable"),
    ('error: the server doesn\'t have a resource type "authorizationpolicies"\n',
     'error: the server doesn\'t have a resource type "authorizationpolicies"', "CRD"),
    ("Unable to connect to the server: x509: certificate signed by unknown authority\n",
     "Unable to connect to the server: x509: certificate signed by unknown authority", "not trusted"),
    ("error: something else\n", "error: something else", None),
    ("", "no error output", None),
])
def test_explain(stderr: str, line: str, hint: str | None) -> None:
    got_line, got_hint = explain(stderr)
    assert got_line == line
    if hint is None:
        assert got_hint is None
    else:
        assert got_hint is not None and hint in got_hint


def test_kubectl_argv_adds_kubeconfig_and_context_only_when_set() -> None:
    assert Kubectl("kubectl").argv("get", "pods") == ["kubectl", "get", "pods"]
    assert Kubectl("/k", "/cfg", "ctx").argv("logs") == ["/k", "--kubeconfig", "/cfg", "--context", "ctx", "logs"]


def test_a_missing_kubectl_is_named() -> None:
    with pytest.raises(DashboardError, match="kubectl not found") as err:
        find_kubectl("/nonexistent/kubectl")
    assert err.value.hint and "--kubectl" in err.value.hint


def test_a_failing_kubectl_gives_its_reason(tmp_path: Path) -> None:
    fake = tmp_path / "kubectl"
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.stderr.write('error: You must be logged in to the "
                    "server (Unauthorized)\\n')\nsys.exit(1)\n")
    fake.chmod(0o755)
    with pytest.raises(DashboardError, match=r"`kubectl get pods -n x` failed: .*Unauthorized") as err:
        Kubectl(str(fake)).get_json("pods", "-n", "x")
    assert err.value.hint and "credentials" in err.value.hint


METRICS = """# HELP istio_tcp_connections_opened_total x
# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{reporter="source",destination_workload="web"} 3
istio_tcp_connections_opened_total{reporter="destination",destination_workload="web"} 2
istio_tcp_connections_closed_total{reporter="source",destination_workload="web"} 4
istio_tcp_sent_bytes_total{reporter="source",note="a } in a label"} 100
istio_tcp_received_bytes_total 50 1712345678000
istio_requests_total{response_code="200"} 7
ambient_hbone_refusals_total{reason="rapid_reset"} 1
ambient_ztunnel_inbound_refused_total{protocol="hbone",reason="source_limit"} 2
ambient_ztunnel_inbound_active 1
garbage line
"""


def test_metrics_summary() -> None:
    assert metrics_summary(METRICS) == {"connections_opened": 5.0, "connections_open": 1.0, "bytes": 150.0,
                                        "requests": 7.0, "refusals": 3.0}
    assert metrics_summary("") == {"connections_opened": 0.0, "connections_open": 0.0, "bytes": 0.0,
                                   "requests": 0.0, "refusals": 0.0}


def test_a_waypoint_named_by_its_gateway_is_one_node() -> None:
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    line = ("2026-12-06T04:00:00.000000Z\tinfo\taccess\trequest complete\tsrc.addr=10.244.1.2:1 "
            'src.workload="client" src.namespace="demo" dst.workload="web" dst.namespace="demo" '
            f'direction="waypoint" http.status=200 trace_id={tid}')
    e = parse_line("waypoint demo/waypoint", line)
    assert e is not None
    snap = snapshot([e], 1796529600.0 + 1)
    assert [(n["id"], n["kind"]) for n in snap["nodes"]] == [
        ("demo/client", "workload"), ("demo/waypoint", "waypoint"), ("demo/web", "workload")]
    assert [(x["src"], x["dst"]) for x in snap["edges"]] == [("demo/waypoint", "demo/web")]


@pytest.mark.parametrize(("args", "message"), [
    (["--kubeconfig", "/nonexistent/kubeconfig"], "kubeconfig /nonexistent/kubeconfig does not exist"),
    (["--context", "x", "--kubectl", "/nonexistent/kubectl"], "kubectl not found"),
    (["--context", "x", "--refresh", "0"], "--refresh must be positive"),
])
def test_the_cli_refuses_before_serving(args: list[str], message: str) -> None:
    from ambient.cli.main import app

    result = CliRunner().invoke(app, ["dashboard", "--no-open", "--port", "0", *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "dashboard on" not in result.output
