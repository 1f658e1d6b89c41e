"""Kubelet probes in a real 1-node local cluster ("prb1"): liveness restarts, healthy liveness keeps the
container, startupProbe gates readiness, for a plain pod and for a meshed pod under an allow-nothing
AuthorizationPolicy (kubelet probes come from the node and take the probe bypass, 169.254.7.127).

The app is the httpbin sample: it logs one line per request (`<client ip> "GET <path>" <status>`) to the pod
log, which is how the tests see the probe requests arrive.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import in_pod, is_ready, local_cluster, pod_manifest, wait_ready

from ambient.cluster import podruntime as rt
from ambient.cluster import processes
from ambient.cni.rules import PROBE_SOURCE_V4
from helpers import wait_for

pytestmark = pytest.mark.root

CLUSTER = "prb1"
ENROLL = {"istio.io/dataplane-mode": "ambient"}
MESHED, PLAIN, CLIENT = "prb", "prbplain", "prbclient"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("prb1")
    with local_cluster(CLUSTER, tmp, 1, require=("ztunnel-node-1",)) as (layout, api, state):
        for ns, labels in ((MESHED, ENROLL), (CLIENT, ENROLL), (PLAIN, {})):
            api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})
        # allow-nothing: an ALLOW policy without rules denies every request to the namespace's pods
        api.create({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": "allow-nothing", "namespace": MESHED}, "spec": {}})
        api.create(pod_manifest("curl", ["sleep", "infinity"], ns=CLIENT))
        client = wait_ready(api, "curl", CLIENT, timeout=60)
        yield {"layout": layout, "api": api, "state": state, "client": client}


def httpbin(name: str, ns: str, **probes: dict[str, Any]) -> dict[str, Any]:
    pod = pod_manifest(name, ["python3", "-m", "ambient.samples.httpbin", "--port", "8080"], ns=ns,
                       ports=[{"name": "http", "containerPort": 8080}])
    pod["spec"]["containers"][0].update(probes)
    return pod


def requests(env: dict[str, Any], ns: str, name: str, path: str) -> list[str]:
    """The client addresses of the app's logged requests for `path` (across container restarts)."""
    log = rt.log_path(Path(env["state"]), ns, name, "app")
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [ln.split(" ", 1)[0] for ln in lines if f'"GET {path}"' in ln]


def kubelet_log(env: dict[str, Any]) -> str:
    return processes.log_file(env["layout"], "kubelet-node-1").read_text(errors="replace")


def status(env: dict[str, Any], ns: str, name: str) -> dict[str, Any]:
    return env["api"].get("Pod", name, ns)  # type: ignore[no-any-return]


def expected_source(env: dict[str, Any], ns: str) -> str:
    """Where the app sees kubelet probes come from: the node, or the probe bypass address when meshed."""
    return PROBE_SOURCE_V4 if ns == MESHED else env["layout"].node("node-1").pod_gateway


def delete(env: dict[str, Any], ns: str, name: str) -> None:
    with contextlib.suppress(Exception):
        env["api"].delete("Pod", name, ns)


def assert_meshed_traffic_denied(env: dict[str, Any], pod: dict[str, Any]) -> None:
    """The allow-nothing policy is in force for the meshed pod (what the probes must get past)."""
    def denied() -> subprocess.CompletedProcess[str] | None:
        proc = in_pod(env["layout"], env["client"], ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w",
                                                     "%{http_code}", f"http://{pod['status']['podIP']}:8080/get"])
        return proc if proc.returncode != 0 else None

    wait_for(denied, 30, "the meshed client's request refused by allow-nothing")


@pytest.mark.parametrize("ns", [PLAIN, MESHED])
def test_failing_liveness_probe_restarts_the_container(env: dict[str, Any], ns: str) -> None:
    name = "live-bad"
    env["api"].create(httpbin(name, ns, livenessProbe={"httpGet": {"path": "/status/500", "port": "http"},
                                                       "periodSeconds": 1, "failureThreshold": 2}))
    try:
        def restarted() -> dict[str, Any] | None:
            cs = status(env, ns, name)["status"]["containerStatuses"][0]
            return cs if cs["restartCount"] >= 2 and cs.get("lastState", {}).get("terminated") else None

        cs = wait_for(restarted, 60, f"{ns}/{name} restarted twice by its liveness probe", interval=0.3)
        last = cs["lastState"]["terminated"]
        assert isinstance(last["exitCode"], int) and last["reason"] in ("Error", "Completed"), last
        assert last["finishedAt"] and last["startedAt"], last
        def two() -> list[str] | None:
            seen = requests(env, ns, name, "/status/500")
            return seen if len(seen) >= 2 else None

        seen = wait_for(two, 60, "two liveness probe requests at the app")
        assert set(seen) == {expected_source(env, ns)}, seen
        log = kubelet_log(env)
        assert f"pod {ns}/{name} container app: Liveness probe failed: HTTP probe failed with statuscode: 500" in log
        assert f"pod {ns}/{name}: Container app failed liveness probe, will be restarted" in log
        if ns == MESHED:
            pod = wait_for(lambda: (p := status(env, ns, name))["status"].get("podIP") and p, 10, "pod IP")
            assert_meshed_traffic_denied(env, pod)
    finally:
        delete(env, ns, name)


@pytest.mark.parametrize("ns", [PLAIN, MESHED])
def test_passing_liveness_probe_keeps_the_container(env: dict[str, Any], ns: str) -> None:
    name = "live-ok"
    # The app needs a moment to listen (a probe before that fails, as with a real kubelet): startupProbe.
    env["api"].create(httpbin(name, ns, startupProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1,
                                                      "failureThreshold": 60},
                              livenessProbe={"httpGet": {"path": "/status/200", "port": 8080},
                                             "periodSeconds": 1, "failureThreshold": 1}))
    try:
        pod = wait_ready(env["api"], name, ns, timeout=60)
        def six() -> list[str] | None:
            seen = requests(env, ns, name, "/status/200")
            return seen if len(seen) >= 6 else None

        seen = wait_for(six, 30, "six liveness probe requests at the app")
        assert set(seen) == {expected_source(env, ns)}, seen
        now = status(env, ns, name)
        cs = now["status"]["containerStatuses"][0]
        assert cs["restartCount"] == 0 and "lastState" not in cs and is_ready(now), cs
        assert cs["state"]["running"]["startedAt"] == pod["status"]["containerStatuses"][0]["state"]["running"][
            "startedAt"]
        if ns == MESHED:
            assert_meshed_traffic_denied(env, pod)
    finally:
        delete(env, ns, name)


@pytest.mark.parametrize("ns", [PLAIN, MESHED])
def test_startup_probe_gates_readiness(env: dict[str, Any], ns: str, tmp_path: Path) -> None:
    name = "starting"
    flag, tries = tmp_path / f"{ns}-started", tmp_path / f"{ns}-tries"
    env["api"].create(httpbin(
        name, ns,
        startupProbe={"exec": {"command": ["sh", "-c", f"echo try >> {tries}; test -f {flag}"]},
                      "periodSeconds": 1, "failureThreshold": 120},
        readinessProbe={"httpGet": {"path": "/status/204", "port": "http"}, "periodSeconds": 1}))
    try:
        # Positive signal first: the startup probe ran (and failed) three times with the app listening.
        wait_for(lambda: tries.exists() and len(tries.read_text().splitlines()) >= 3, 30, "three startup probes")
        wait_for(lambda: in_pod(env["layout"], status(env, ns, name),
                                ["curl", "-s", "-m", "2", "http://127.0.0.1:8080/get"]).returncode == 0,
                 10, "the app answering inside its pod (readiness would pass if it ran)")
        pod = status(env, ns, name)
        cs = pod["status"]["containerStatuses"][0]
        assert pod["status"]["phase"] == "Running" and not is_ready(pod), pod["status"]
        assert cs["started"] is False and cs["ready"] is False, cs
        assert requests(env, ns, name, "/status/204") == []  # readiness does not run before startup succeeded
        flag.write_text("ok")
        ready = wait_ready(env["api"], name, ns, timeout=20)
        assert ready["status"]["containerStatuses"][0]["started"] is True
        assert ready["status"]["containerStatuses"][0]["restartCount"] == 0
        seen = requests(env, ns, name, "/status/204")
        assert seen and set(seen) == {expected_source(env, ns)}, seen
    finally:
        delete(env, ns, name)
        wait_for(lambda: all(p["metadata"]["name"] != name for p in env["api"].list("Pod", ns)[0]), 30, "pod gone")



def test_failing_startup_probe_restarts_the_container(env: dict[str, Any]) -> None:
    name = "never-starts"
    env["api"].create(httpbin(name, PLAIN, startupProbe={"exec": {"command": ["sh", "-c", "echo not yet; exit 1"]},
                                                         "periodSeconds": 1, "failureThreshold": 2},
                              readinessProbe={"tcpSocket": {"port": 8080}}))
    try:
        def restarted() -> dict[str, Any] | None:
            p = status(env, PLAIN, name)
            cs = p["status"]["containerStatuses"][0]
            return p if cs["restartCount"] >= 2 and cs.get("lastState", {}).get("terminated") else None

        p = wait_for(restarted, 60, "restarted twice by its startup probe", interval=0.3)
        assert not is_ready(p) and p["status"]["containerStatuses"][0]["started"] is False
        log = kubelet_log(env)
        assert f"pod {PLAIN}/{name} container app: Startup probe failed: not yet" in log
        assert f"pod {PLAIN}/{name}: Container app failed startup probe, will be restarted" in log
    finally:
        delete(env, PLAIN, name)
