"""The node agent's CNI install step on Kubernetes: chaining into a primary conflist, the host shim, the pod
lookup relay, and the preStop decision (upgrade keeps the plugin, uninstall removes it)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kube_fakeapi import FakeKubeApi, recorded, write_kubeconfig

from ambient.cni.plugin import PLUGIN_TYPE
from ambient.kube import cninode
from ambient.kube.source import KubeSource
from helpers import eventually

PRIMARY = {
    "cniVersion": "1.0.0",
    "name": "kindnet",
    "plugins": [
        {"type": "ptp", "ipMasq": False, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
DS_PATH = "/apis/apps/v1/namespaces/ambient-system/daemonsets/ambient-node-agent"


@pytest.fixture
def host(tmp_path: Path) -> cninode.Settings:
    (tmp_path / "bin").mkdir()
    (tmp_path / "net.d").mkdir()
    (tmp_path / "net.d" / "10-kindnet.conflist").write_text(json.dumps(PRIMARY))
    (tmp_path / "net.d" / "99-loopback.conf").write_text("{}")  # not a conflist: never chosen
    return cninode.Settings({
        "CNI_BIN_DIR": str(tmp_path / "bin"),
        "CNI_CONF_DIR": str(tmp_path / "net.d"),
        "AMBIENT_RUN_DIR": str(tmp_path / "run"),
        "AMBIENT_EXCLUDE_NAMESPACES": "kube-system, ambient-system",
    })


def plugins(cfg: cninode.Settings) -> list[dict[str, Any]]:
    return json.loads((cfg.conf_dir / "10-kindnet.conflist").read_text())["plugins"]  # type: ignore[no-any-return]


def run_shim(cfg: cninode.Settings, command: str, stdin: str = "{}", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cfg.bin_dir / PLUGIN_TYPE)], input=stdin, capture_output=True, text=True, timeout=30,
        env={"PATH": os.environ["PATH"], "CNI_COMMAND": command, **env},
    )


def test_chains_once_last_and_points_at_the_shim(host: cninode.Settings) -> None:
    assert cninode.keep_chained(host) == host.conf_dir / "10-kindnet.conflist"
    cninode.keep_chained(host)
    got = plugins(host)
    assert [p["type"] for p in got] == ["ptp", "portmap", PLUGIN_TYPE]
    entry = got[-1]
    assert entry["api_socket"] == f"{host.run_dir}/kubeapi.sock"
    assert entry["agent_run_dir"] == host.run_dir
    assert entry["exclude_namespaces"] == ["kube-system", "ambient-system"]
    plugin = host.bin_dir / PLUGIN_TYPE
    assert plugin.is_symlink() and plugin.resolve() == host.bin_dir / cninode.SHIM_NAME
    assert os.access(plugin, os.X_OK)


def test_rechains_after_the_primary_cni_rewrites_its_conflist(host: cninode.Settings) -> None:
    cninode.keep_chained(host)
    (host.conf_dir / "10-kindnet.conflist").write_text(json.dumps(PRIMARY))  # e.g. the primary CNI restarted
    assert not cninode.is_chained(host.conf_dir / "10-kindnet.conflist")
    cninode.keep_chained(host)
    assert [p["type"] for p in plugins(host)] == ["ptp", "portmap", PLUGIN_TYPE]


def test_waits_for_a_conflist(tmp_path: Path) -> None:
    cfg = cninode.Settings({"CNI_BIN_DIR": str(tmp_path), "CNI_CONF_DIR": str(tmp_path / "none")})
    assert cninode.keep_chained(cfg) is None
    assert not (tmp_path / PLUGIN_TYPE).exists()


def test_shim_never_blocks_deletion_and_answers_version(host: cninode.Settings) -> None:
    cninode.keep_chained(host)
    cninode.unchain(host)  # uninstalled; the runtime may still replay DEL with its cached config
    assert [p["type"] for p in plugins(host)] == ["ptp", "portmap"]
    for command in ("DEL", "CHECK", "GC", "STATUS"):
        done = run_shim(host, command)
        assert (done.returncode, done.stdout) == (0, ""), command
    done = run_shim(host, "VERSION")
    assert done.returncode == 0 and "1.0.0" in json.loads(done.stdout)["supportedVersions"]


def test_shim_add_without_a_running_installer_fails_closed(host: cninode.Settings) -> None:
    cninode.keep_chained(host)
    done = run_shim(host, "ADD")
    assert done.returncode == 1
    err = json.loads(done.stdout)
    assert err["code"] == 100 and "not started un-captured" in err["msg"]


NS_PATH = "/api/v1/namespaces/ambient-system"
NAMESPACE = {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "ambient-system"}}
TERMINATING = {**NAMESPACE, "metadata": {"name": "ambient-system", "deletionTimestamp": "2026-11-22T03:00:00Z"}}
DAEMONSET = {"kind": "DaemonSet", "apiVersion": "apps/v1", "metadata": {"name": "ambient-node-agent"}}
DELETING = {**DAEMONSET, "metadata": {"name": "ambient-node-agent", "deletionTimestamp": "2026-11-22T03:00:00Z"}}


@pytest.mark.parametrize(
    ("namespace", "daemonset", "forbidden", "removed"),
    [
        (NAMESPACE, DAEMONSET, False, False),  # upgrade or restart: keep the plugin chained
        (NAMESPACE, DELETING, False, True),  # DaemonSet being deleted
        (NAMESPACE, None, False, True),  # DaemonSet gone
        (TERMINATING, DAEMONSET, False, True),  # namespace deleted, its pods go before its DaemonSet
        (NAMESPACE, DAEMONSET, True, True),  # `kubectl delete -k` removed our RBAC before the pods ended
    ],
)
async def test_prestop_unchains_only_on_uninstall(
    host: cninode.Settings, fake_api: FakeKubeApi, source: KubeSource,
    namespace: dict[str, Any], daemonset: dict[str, Any] | None, forbidden: bool, removed: bool,
) -> None:
    cninode.keep_chained(host)
    fake_api.objects[NS_PATH] = namespace
    if daemonset is not None:
        fake_api.objects[DS_PATH] = daemonset
    if forbidden:
        fake_api.forbidden.update({NS_PATH, DS_PATH})
    assert await cninode.prestop(host, source) is removed
    assert cninode.is_chained(host.conf_dir / "10-kindnet.conflist") is not removed
    assert (host.bin_dir / PLUGIN_TYPE).exists()  # kept either way (DEL replays)


async def test_prestop_keeps_the_plugin_when_the_api_is_unreachable(host: cninode.Settings, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cninode.keep_chained(host)
    async with await KubeSource.connect(str(write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}"))) as src:
        assert await cninode.prestop(host, src) is False
    assert cninode.is_chained(host.conf_dir / "10-kindnet.conflist")


@pytest.fixture
async def relay(fake_api: FakeKubeApi, source: KubeSource, tmp_path: Path) -> AsyncIterator[Path]:
    sock = tmp_path / "kubeapi.sock"
    runner = await cninode.serve_relay(source, sock)
    try:
        yield sock
    finally:
        await runner.cleanup()


async def test_relay_answers_pod_and_namespace_lookups(fake_api: FakeKubeApi, relay: Path) -> None:
    pod = recorded("pods")["items"][0]
    fake_api.objects["/api/v1/namespaces/demo/pods/" + pod["metadata"]["name"]] = pod
    fake_api.objects["/api/v1/namespaces/demo"] = recorded("namespaces")["items"][1]
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(relay))) as http:
        async with http.get("http://localhost/api/v1/namespaces/demo/pods/" + pod["metadata"]["name"]) as resp:
            got = await resp.json()
            assert resp.status == 200 and got["metadata"]["uid"] == pod["metadata"]["uid"]
        async with http.get("http://localhost/api/v1/namespaces/demo") as resp:
            assert (await resp.json())["metadata"]["labels"]["istio.io/dataplane-mode"] == "ambient"
        async with http.get("http://localhost/api/v1/namespaces/demo/pods/missing") as resp:
            assert resp.status == 404 and (await resp.json())["kind"] == "Status"
        async with http.delete("http://localhost/api/v1/namespaces/demo") as resp:
            assert resp.status == 405  # read-only


@pytest.mark.root
async def test_add_through_the_host_shim_reaches_the_node_agent(
    host: cninode.Settings, fake_api: FakeKubeApi, source: KubeSource
) -> None:
    """The whole host path: runtime -> shim -> chroot into the installer's root (/proc/<pid>/root; here our
    own process, whose root is /) -> the real ambient-cni -> relay -> Kubernetes API -> POST /cmdadd."""
    pods = recorded("pods")["items"]
    for pod in pods:
        meta = pod["metadata"]
        fake_api.objects[f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"] = pod
    for ns in recorded("namespaces")["items"]:
        fake_api.objects[f"/api/v1/namespaces/{ns['metadata']['name']}"] = ns
    received: list[dict[str, Any]] = []

    async def cmdadd(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({})

    agent = web.Application()
    agent.router.add_post("/cmdadd", cmdadd)
    runner = web.AppRunner(agent)
    await runner.setup()
    run_dir = Path(host.run_dir)
    os.makedirs(run_dir)
    await web.UnixSite(runner, str(run_dir / "pluginevent.sock")).start()
    plugin = str(Path(sys.executable).parent / "ambient-cni")
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(cninode.run(host, source, stop, plugin=plugin, interval=0.1))
            async with asyncio.timeout(20):
                while not (run_dir / "kubeapi.sock").exists() or not cninode.is_chained(  # noqa: ASYNC110
                    host.conf_dir / "10-kindnet.conflist"
                ):
                    await asyncio.sleep(0.05)
            conf = json.loads((host.conf_dir / "10-kindnet.conflist").read_text())
            entry = dict(conf["plugins"][-1], cniVersion="1.0.0", name="kindnet",
                         prevResult={"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.5/24"}]})
            results = {}
            for pod in pods:
                meta = pod["metadata"]
                proc = await asyncio.create_subprocess_exec(
                    str(host.bin_dir / PLUGIN_TYPE),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                    env={"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee",
                         "CNI_NETNS": "/var/run/netns/cni-test", "CNI_IFNAME": "eth0",
                         "CNI_ARGS": f"K8S_POD_NAMESPACE={meta['namespace']};K8S_POD_NAME={meta['name']}"},
                )
                raw_out, raw_err = await asyncio.wait_for(proc.communicate(json.dumps(entry).encode()), 30)
                results[meta["name"]] = (proc.returncode, raw_out.decode(), raw_err.decode())
            stop.set()
    finally:
        await runner.cleanup()
    for name, (code, out, err) in results.items():
        assert code == 0, (name, out, err)
        assert json.loads(out)["ips"] == [{"address": "10.244.1.5/24"}]  # prevResult passed through
    # demo is labelled ambient: both demo pods handed to the agent; kube-system is excluded
    assert sorted(r["PodName"] for r in received) == ["client", "web-7d9c6b5f4-x2lqp"]
    web_add = next(r for r in received if r["PodName"].startswith("web"))
    assert web_add["Netns"] == "/var/run/netns/cni-test" and web_add["PodNamespace"] == "demo"
    assert web_add["PodUID"] == pods[0]["metadata"]["uid"]


async def test_run_survives_a_half_written_conflist_and_chains_when_it_is_fixed(
    host: cninode.Settings, source: KubeSource, caplog: pytest.LogCaptureFixture
) -> None:
    conflist = host.conf_dir / "10-kindnet.conflist"
    conflist.write_text('{"cniVersion": "1.0.0", "plugins": [')  # the primary CNI is mid-write
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(cninode.run(host, source, stop, interval=0.05))
        # the positive signal: the agent tried the half-written file (and refused to chain into it)
        await eventually(lambda: "cannot chain" in caplog.text, what="an attempt on the half-written conflist")
        assert not cninode.is_chained(conflist)
        conflist.write_text(json.dumps(PRIMARY))
        async with asyncio.timeout(20):
            while not cninode.is_chained(conflist):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        pid = (Path(host.run_dir) / cninode.PID_FILE).read_text().strip()
        stop.set()
    assert pid == str(os.getpid())
    assert not (Path(host.run_dir) / cninode.RELAY_SOCKET).exists()  # cleaned up on stop
    assert not (Path(host.run_dir) / cninode.PID_FILE).exists()
    done = run_shim(host, "ADD")  # a stopped installer: ADD fails closed at once
    assert done.returncode == 1 and json.loads(done.stdout)["code"] == 100
