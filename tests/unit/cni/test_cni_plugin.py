"""The chained CNI plugin run as a real executable, like a container runtime would run it.

A fake cluster API and a fake node agent are real HTTP servers on temporary Unix sockets.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ambient.cni.install import install_plugin, uninstall_plugin
from ambient.cni.plugin import PluginConfig, decide_enrollment, parse_cni_args

PREV_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
    "ips": [{"address": "10.99.1.5/24", "gateway": "10.99.1.1", "interface": 0}],
    "dns": {},
}


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@dataclass
class FakeHTTP:
    """Routes: path -> (status, JSON body). Records every (method, path, body)."""

    routes: dict[str, tuple[int, Any]] = field(default_factory=dict)
    default_status: int = 404
    requests: list[tuple[str, str, Any]] = field(default_factory=list)

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((self.command, self.path, body))
                status, obj = fake.routes.get(self.path, (fake.default_status, {"message": "not found"}))
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[_UnixHTTPServer] = []
    threads: list[threading.Thread] = []

    def start(path: Path, fake: FakeHTTP) -> FakeHTTP:
        server = _UnixHTTPServer(str(path), fake.handler())
        t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        t.start()
        servers.append(server)
        threads.append(t)
        return fake

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
    for t in threads:
        t.join(5)


def pod(ns: str, name: str, labels: dict[str, str] | None = None, host_network: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels or {}},
        "spec": {"hostNetwork": host_network, "containers": [{"name": "app", "image": "x"}]},
    }


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}


@dataclass
class Env:
    root: Path
    plugin: Path
    conflist: Path
    api: FakeHTTP
    agent: FakeHTTP | None

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def config(self, **extra: Any) -> dict[str, Any]:
        conf = json.loads(self.conflist.read_text())
        entry = dict(conf["plugins"][-1])
        entry.update(name=conf["name"], cniVersion=conf["cniVersion"], prevResult=PREV_RESULT, **extra)
        return entry

    def run(self, command: str, ns: str = "demo", name: str = "app", stdin: Any = None,
            drop: str = "") -> tuple[int, str, str]:  # fmt: skip
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "c0ffee",
            "CNI_NETNS": "/var/run/netns/h6-fake",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(self.plugin.parent),
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID=uid-{name}",
        }
        env.pop(drop, None)
        text = stdin if isinstance(stdin, str) else json.dumps(stdin if stdin is not None else self.config())
        proc = subprocess.run([str(self.plugin)], input=text, env=env, capture_output=True, text=True, timeout=30)
        return proc.returncode, proc.stdout, proc.stderr


def _make_env(tmp_path: Path, serve: Any, agent_status: int | None) -> Env:
    root = tmp_path
    (root / "run").mkdir()
    conflist = root / "10-net.conflist"
    conflist.write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "ambient-net",
        "plugins": [{"type": "bridge", "bridge": "br0"}, {"type": "portmap"}],
    }))  # fmt: skip
    api = serve(root / "api.sock", FakeHTTP())
    for ns, labels in (("demo", {"istio.io/dataplane-mode": "ambient"}), ("plain", {}), ("kube-system", {})):
        api.routes[f"/api/v1/namespaces/{ns}"] = (200, namespace(ns, labels))
    agent = None
    if agent_status is not None:
        agent = serve(root / "run" / "pluginevent.sock", FakeHTTP(routes={"/cmdadd": (agent_status, {})}))
    plugin = install_plugin(root / "bin", conflist, {
        "log_level": "debug", "agent_run_dir": str(root / "run"), "api_socket": str(root / "api.sock"),
        "ambient_enabled": True, "exclude_namespaces": ["kube-system"],
    })  # fmt: skip
    return Env(root, plugin, conflist, api, agent)


@pytest.fixture
def env(tmp_path: Path, serve: Any) -> Env:
    return _make_env(tmp_path, serve, 200)


def add_pod(env: Env, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    env.api.routes[f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"] = (200, obj)


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ambient.cni.plugin_main"],
        input='{"cniVersion":"1.0.0"}', env={**os.environ, "CNI_COMMAND": "VERSION"},
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout) == {"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}


def test_add_enrolled_by_namespace_label_notifies_agent_and_passes_prev_result(env: Env) -> None:
    add_pod(env, pod("demo", "app"))
    code, out, err = env.run("ADD")
    assert code == 0, err
    assert json.loads(out) == PREV_RESULT
    assert env.agent is not None
    assert env.agent.requests == [("POST", "/cmdadd", {
        "Netns": "/var/run/netns/h6-fake", "PodName": "app", "PodNamespace": "demo", "PodUID": "uid-app",
        "IPs": ["10.99.1.5"],
    })]  # fmt: skip


def test_add_enrolled_by_pod_label_skips_namespace_lookup(env: Env) -> None:
    add_pod(env, pod("plain", "web", {"istio.io/dataplane-mode": "ambient"}))
    code, out, _ = env.run("ADD", ns="plain", name="web")
    assert code == 0 and json.loads(out) == PREV_RESULT
    assert env.agent is not None and [r[2]["PodName"] for r in env.agent.requests] == ["web"]
    assert [r[1] for r in env.api.requests] == ["/api/v1/namespaces/plain/pods/web"]


@pytest.mark.parametrize(
    ("ns", "obj"),
    [
        ("demo", pod("demo", "opt-out", {"istio.io/dataplane-mode": "none"})),
        ("plain", pod("plain", "unlabelled")),
        ("demo", pod("demo", "hostnet", host_network=True)),
        ("demo", pod("demo", "ztunnel-abc", {"app": "ztunnel"})),
    ],
    ids=["pod-label-none", "no-labels", "host-network", "proxy-own-pod"],
)
def test_add_not_enrolled_does_not_call_agent(env: Env, ns: str, obj: dict[str, Any]) -> None:
    add_pod(env, obj)
    code, out, err = env.run("ADD", ns=ns, name=obj["metadata"]["name"])
    assert code == 0, err
    assert json.loads(out) == PREV_RESULT
    assert env.agent is not None and env.agent.requests == []


def test_excluded_namespace_decided_without_api_call(env: Env) -> None:
    add_pod(env, pod("kube-system", "dns", {"istio.io/dataplane-mode": "ambient"}))
    code, out, _ = env.run("ADD", ns="kube-system", name="dns")
    assert code == 0 and json.loads(out) == PREV_RESULT
    assert env.api.requests == [] and env.agent is not None and env.agent.requests == []


def test_agent_error_fails_closed_with_cni_error(tmp_path: Path, serve: Any) -> None:
    env = _make_env(tmp_path, serve, 500)
    add_pod(env, pod("demo", "app"))
    code, out, _ = env.run("ADD")
    assert code == 1
    err = json.loads(out)
    assert err["cniVersion"] == "1.0.0" and err["code"] == 100
    assert "refused pod demo/app (HTTP 500)" in err["msg"]


def test_agent_absent_fails_closed(tmp_path: Path, serve: Any) -> None:
    env = _make_env(tmp_path, serve, None)
    add_pod(env, pod("demo", "app"))
    code, out, _ = env.run("ADD")
    assert code == 1
    err = json.loads(out)
    assert err["code"] == 100 and "node agent not reachable" in err["msg"]
    assert "ambient node-agent" in err["details"]
    # but a pod that is not enrolled still starts without the agent
    add_pod(env, pod("plain", "other"))
    assert env.run("ADD", ns="plain", name="other")[0] == 0


def test_api_unreachable_fails_closed(env: Env) -> None:
    code, out, _ = env.run("ADD", stdin=env.config(api_socket=str(env.root / "missing.sock")))
    assert code == 1 and json.loads(out)["code"] == 101


@pytest.mark.parametrize("command", ["DEL", "CHECK"])
def test_del_and_check_succeed_even_without_agent(tmp_path: Path, serve: Any, command: str) -> None:
    env = _make_env(tmp_path, serve, None)
    add_pod(env, pod("demo", "app"))
    code, out, _ = env.run(command)
    assert (code, out) == (0, "")


def test_bad_input_gives_cni_errors(env: Env) -> None:
    code, out, _ = env.run("ADD", stdin="{not json")
    assert code == 1 and json.loads(out)["code"] == 6
    code, out, _ = env.run("ADD", drop="CNI_NETNS")
    assert code == 1 and json.loads(out)["code"] == 4 and "CNI_NETNS" in json.loads(out)["msg"]
    code, out, _ = env.run("FROB")
    assert code == 1 and json.loads(out)["code"] == 4


def test_install_is_idempotent_and_uninstall_keeps_deletion_working(env: Env) -> None:
    cfg = env.config()
    cfg.pop("prevResult")
    install_plugin(env.plugin.parent, env.conflist, {"type": "ambient-cni", **cfg})
    plugins = json.loads(env.conflist.read_text())["plugins"]
    assert [p["type"] for p in plugins] == ["bridge", "portmap", "ambient-cni"]
    uninstall_plugin(env.plugin.parent, env.conflist)
    assert [p["type"] for p in json.loads(env.conflist.read_text())["plugins"]] == ["bridge", "portmap"]
    # a runtime replaying DEL from its cached config still finds a working plugin
    assert env.run("DEL")[0] == 0
    uninstall_plugin(env.plugin.parent, env.conflist, remove_executable=True)
    assert not env.plugin.exists()


def test_symlinked_executable(tmp_path: Path, env: Env) -> None:
    target = install_plugin(tmp_path / "bin2", env.conflist, {"api_socket": "x"}, executable=env.plugin)
    assert target.is_symlink() and target.resolve() == env.plugin.resolve()


def test_decision_table_pure() -> None:
    cfg = PluginConfig()
    amb = {"istio.io/dataplane-mode": "ambient"}
    assert decide_enrollment(pod("a", "p", amb), None, cfg)[0] is True
    assert decide_enrollment(pod("a", "p"), namespace("a", amb), cfg) == (
        True, "namespace label istio.io/dataplane-mode=ambient",
    )  # fmt: skip
    assert decide_enrollment(pod("a", "p"), namespace("a"), cfg)[0] is False
    assert decide_enrollment(pod("a", "p", amb), None, PluginConfig(ambient_enabled=False))[0] is False
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=x;bogus") == {"IgnoreUnknown": "1", "K8S_POD_NAME": "x"}


def test_add_latency(env: Env) -> None:
    """Measures ADD wall time (process start included) for a not-enrolled and an enrolled pod."""
    add_pod(env, pod("plain", "cold"))
    add_pod(env, pod("demo", "warm"))
    figures = {}
    for label, ns, name in (("not-enrolled", "plain", "cold"), ("enrolled", "demo", "warm")):
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            code, _, err = env.run("ADD", ns=ns, name=name)
            samples.append(time.perf_counter() - t0)
            assert code == 0, err
        figures[label] = statistics.median(samples)
    print("\nambient-cni ADD latency (median of 5): " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in figures.items()))
    assert all(v < 3.0 for v in figures.values())  # generous: a noisy shared machine


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", (200, b"{}")),
        (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n', (200, b'{"a":1}')),
        (b"HTTP/1.0 500 Internal Server Error\r\n\r\nboom", (500, b"boom")),
    ],
)
def test_unix_http_client_parses_answers(tmp_path: Path, answer: bytes, expected: tuple[int, bytes]) -> None:
    from ambient.cni.plugin import _request

    path = str(tmp_path / "raw.sock")
    received: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)

        def answer_once() -> None:
            conn, _ = server.accept()
            with conn:
                received.append(conn.recv(65536))
                conn.sendall(answer)

        t = threading.Thread(target=answer_once)
        t.start()
        assert _request(path, "POST", "/cmdadd", b'{"x":1}', 5.0) == expected
        t.join(5)
    assert received[0].startswith(b"POST /cmdadd HTTP/1.1\r\n")
    assert b"Content-Length: 7\r\n" in received[0] and received[0].endswith(b'\r\n\r\n{"x":1}')


def test_unix_http_client_rejects_garbage(tmp_path: Path) -> None:
    from ambient.cni.plugin import _request

    path = str(tmp_path / "raw.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)

        def garbage() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"not http at all")

        t = threading.Thread(target=garbage)
        t.start()
        with pytest.raises(OSError, match="incomplete HTTP answer"):
            _request(path, "GET", "/x", None, 5.0)
        t.join(5)


def test_unknown_pod_fails_closed_with_api_status(env: Env) -> None:
    code, out, _ = env.run("ADD", ns="demo", name="ghost")
    err = json.loads(out)
    assert code == 1 and err["code"] == 101
    assert "answered 404 for GET /api/v1/namespaces/demo/pods/ghost" in err["msg"]
