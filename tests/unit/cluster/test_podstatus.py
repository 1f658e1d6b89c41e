"""Pod status as the kubelet writes it: phases, reasons and conditions (pure), and command resolution."""

from __future__ import annotations

from typing import Any

import pytest

from ambient.cluster import podruntime as rt
from ambient.cluster.podstatus import ContainerState, pod_status


def status(policy: str, *states: ContainerState, ip: str = "10.244.1.2", net_err: str | None = None) -> dict[str, Any]:
    pod = {"metadata": {"name": "p"}, "spec": {"restartPolicy": policy}}
    return pod_status(pod, list(states), host_ip="172.18.0.11", pod_ip=ip, network_error=net_err,
                      start_time="2026-01-01T00:00:00Z")


def running(name: str = "c", ready: bool = True) -> ContainerState:
    c = ContainerState(name=name, spec={"image": "img"})
    c._running("2026-01-01T00:00:01Z")
    c.ready = ready
    return c


def exited(code: int, name: str = "c") -> ContainerState:
    c = running(name)
    c.set_terminated(code)
    return c


def cond(st: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == ctype)


def test_running_and_ready() -> None:
    st = status("Always", running())
    assert st["phase"] == "Running" and st["podIP"] == "10.244.1.2" and st["podIPs"] == [{"ip": "10.244.1.2"}]
    assert cond(st, "Ready")["status"] == "True" and st["reason"] is None
    assert st["containerStatuses"][0]["state"] == {"running": {"startedAt": "2026-01-01T00:00:01Z"}}


def test_network_not_ready_keeps_pod_pending_with_cni_message() -> None:
    c = ContainerState(name="c", spec={})
    st = status("Always", c, ip="", net_err="CNI plugin bridge ADD failed: boom")
    assert st["phase"] == "Pending" and st["reason"] == "NetworkNotReady"
    assert "boom" in st["message"] and cond(st, "Ready")["reason"] == "NetworkNotReady"
    assert st["podIP"] is None  # merge patch: removes a stale IP


def test_start_error_is_visible_and_final_under_never() -> None:
    c = ContainerState(name="app", spec={})
    c.set_start_error("executable not found: xyz")
    st = status("Always", c)
    assert st["phase"] == "Pending" and st["reason"] == "StartError"
    assert st["message"] == "container app: executable not found: xyz"
    assert st["containerStatuses"][0]["state"]["waiting"] == {"reason": "StartError",
                                                             "message": "executable not found: xyz"}
    assert status("Never", c)["phase"] == "Failed"


@pytest.mark.parametrize(("policy", "codes", "phase"), [
    ("Never", (0, 0), "Succeeded"),
    ("Never", (0, 1), "Failed"),
    ("OnFailure", (0, 0), "Succeeded"),
    ("OnFailure", (0, 1), "Running"),  # the failed one restarts
    ("Always", (0, 0), "Running"),
])
def test_terminal_phases(policy: str, codes: tuple[int, int], phase: str) -> None:
    st = status(policy, exited(codes[0], "a"), exited(codes[1], "b"))
    assert st["phase"] == phase


def test_restarted_container_reports_last_state() -> None:
    c = exited(3)
    c.restart_count = 1
    c._running("2026-01-01T00:00:09Z")
    s = c.to_status()
    assert s["restartCount"] == 1 and s["lastState"]["terminated"]["exitCode"] == 3


def test_resolve_command_errors_are_clear() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    with pytest.raises(rt.StartError, match="executable not found: xyz-nope"):
        rt.resolve_command({"command": ["xyz-nope"]}, env)
    with pytest.raises(rt.StartError, match="executable not found: /nope/bin"):
        rt.resolve_command({"command": ["/nope/bin"]}, env)
    with pytest.raises(rt.StartError, match="no command"):
        rt.resolve_command({"image": "nginx"}, env)
    assert rt.resolve_command({"command": ["sh"], "args": ["-c", "true"]}, env)[1:] == ["-c", "true"]


def test_container_env_values_and_field_refs() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": {"serviceAccountName": "sa"}}
    c = {"env": [{"name": "A", "value": "1"},
                 {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                 {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}
    env = rt.container_env(pod, c, "node-1", "10.244.1.7")
    assert env["A"] == "1" and env["IP"] == "10.244.1.7" and env["NODE"] == "node-1" and env["HOSTNAME"] == "p"


def test_resolv_conf_has_cluster_search_path() -> None:
    text = rt.resolv_conf_text("shop")
    assert "nameserver 10.96.0.10" in text
    assert "search shop.svc.cluster.local svc.cluster.local cluster.local" in text


@pytest.mark.parametrize(("annotation", "ready", "reason"), [
    (None, "True", None),
    ("enabled", "True", None),
    ("pending", "False", "RedirectionPending"),  # captured, not yet served by its node proxy
])
def test_ready_waits_for_the_node_proxy(annotation: str | None, ready: str, reason: str | None) -> None:
    pod: dict[str, Any] = {"metadata": {"name": "p", "annotations": {}}, "spec": {}}
    if annotation:
        pod["metadata"]["annotations"]["ambient.istio.io/redirection"] = annotation
    st = pod_status(pod, [running()], host_ip="172.18.0.11", pod_ip="10.244.1.2", network_error=None,
                    start_time="2026-01-01T00:00:00Z")
    assert cond(st, "ContainersReady")["status"] == "True"  # the containers themselves are fine
    assert cond(st, "Ready")["status"] == ready and cond(st, "Ready").get("reason") == reason
    if reason:
        assert "not acknowledged" in cond(st, "Ready")["message"]
    # a pod that is not Ready for its own reasons keeps them
    assert cond(pod_status(pod, [running(ready=False)], host_ip="h", pod_ip="10.244.1.2", network_error=None,
                           start_time="t"), "Ready")["reason"] == "ContainersNotReady"


def test_signal_exit_is_reported_as_128_plus_signal() -> None:
    import subprocess

    c = ContainerState(name="c", spec={})
    proc = subprocess.Popen(["sleep", "30"])
    c.set_running(proc)
    proc.kill()
    proc.wait()
    assert c.poll() == 137
