"""The cluster DNS server on loopback: UDP and TCP with a static table, and the Service watch from a real API."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest

from ambient.cluster.dns import DnsServer, ServiceTable, ServiceWatcher, endpoint_ips, service_ips
from ambient.protocol import dnswire as W


async def udp_query(port: int, name: str, qtype: int = W.TYPE_A) -> W.ParsedResponse:
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[bytes] = loop.create_future()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if not reply.done():
                reply.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Proto, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(W.build_query(name, qtype, msg_id=99))
        data = await asyncio.wait_for(reply, 5)
    finally:
        transport.close()
    resp = W.parse_response(data)
    assert resp.id == 99
    return resp


async def tcp_queries(port: int, names: list[str]) -> list[W.ParsedResponse]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    try:
        for i, name in enumerate(names):  # several queries on one connection
            q = W.build_query(name, msg_id=i)
            writer.write(struct.pack("!H", len(q)) + q)
            await writer.drain()
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))
            out.append(W.parse_response(await reader.readexactly(length)))
    finally:
        writer.close()
        await writer.wait_closed()
    return out


async def test_udp_and_tcp_answers_from_static_table(no_leaked_tasks: object) -> None:
    table = ServiceTable({("web", "default"): ["10.96.0.20"]})
    async with DnsServer(table.lookup, "127.0.0.1", 0) as server:
        r = await udp_query(server.port, "web.default.svc.cluster.local")
        assert (r.rcode, r.addresses) == (W.RCODE_NOERROR, ["10.96.0.20"])
        assert (await udp_query(server.port, "gone.default.svc.cluster.local")).rcode == W.RCODE_NXDOMAIN
        assert (await udp_query(server.port, "example.com")).rcode == W.RCODE_REFUSED
        table.upsert("api", "prod", ["10.96.0.21"])
        rs = await tcp_queries(server.port, ["api.prod.svc.cluster.local", "web.default.svc.cluster.local",
                                             "nope.prod.svc.cluster.local"])
        assert [(x.rcode, x.addresses) for x in rs] == [
            (W.RCODE_NOERROR, ["10.96.0.21"]), (W.RCODE_NOERROR, ["10.96.0.20"]), (W.RCODE_NXDOMAIN, [])]
        table.remove("web", "default")
        assert (await udp_query(server.port, "web.default.svc.cluster.local")).rcode == W.RCODE_NXDOMAIN
        # garbage over UDP does not kill the server
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\xff" * 7, ("127.0.0.1", server.port))
        assert (await udp_query(server.port, "api.prod.svc.cluster.local")).addresses == ["10.96.0.21"]


def test_service_ips_shapes() -> None:
    assert service_ips({"spec": {"clusterIP": "10.96.0.5"}}) == ["10.96.0.5"]
    assert service_ips({"spec": {"clusterIPs": ["10.96.0.5", "fd00::5"]}}) == ["10.96.0.5"]
    assert service_ips({"spec": {"clusterIP": "None"}}) == []
    assert service_ips({"spec": {}}) == []


def _service(name: str, ns: str, ip: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "selector": {"app": name}, "ports": [{"port": 80}]}}


async def test_watcher_follows_services_of_a_real_api(tmp_path: Path, no_leaked_tasks: object) -> None:
    server_mod = pytest.importorskip("ambient.api.server")
    from ambient.api.client import ApiClient

    with server_mod.serve_in_thread(tmp_path) as api_server:
        sock = Path(api_server.socket_path)
        with ApiClient(sock) as api:
            api.apply(_service("web", "default", "10.96.0.30"))
        table = ServiceTable()
        watcher = ServiceWatcher(sock, table)
        async with asyncio.TaskGroup() as tg, DnsServer(table.lookup, "127.0.0.1", 0) as dns:
            task = tg.create_task(watcher.run())
            try:
                await asyncio.wait_for(watcher.synced.wait(), 10)
                name = "web.default.svc.cluster.local"
                assert (await udp_query(dns.port, name)).addresses == ["10.96.0.30"]
                with ApiClient(sock) as api:
                    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}
                    await asyncio.to_thread(api.apply, ns)
                    await asyncio.to_thread(api.apply, _service("db", "prod", "10.96.0.31"))
                    await asyncio.to_thread(api.delete, "Service", "web", "default")
                for _ in range(200):  # the watch delivers both changes
                    if table.lookup("db", "prod") and table.lookup("web", "default") is None:
                        break
                    await asyncio.sleep(0.02)
                assert (await udp_query(dns.port, "db.prod.svc.cluster.local")).addresses == ["10.96.0.31"]
                assert (await udp_query(dns.port, name)).rcode == W.RCODE_NXDOMAIN
            finally:
                task.cancel()


def _endpoints(name: str, ns: str, ready: list[str], not_ready: list[str] | None = None) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns},
            "subsets": [{"addresses": [{"ip": ip} for ip in ready],
                         "notReadyAddresses": [{"ip": ip} for ip in not_ready or []],
                         "ports": [{"port": 5432}]}]}


def test_endpoint_ips_are_the_ready_ipv4_addresses() -> None:
    assert endpoint_ips(_endpoints("db", "prod", ["10.244.1.5", "10.244.0.4", "fd00::1"], ["10.244.1.9"])) == [
        "10.244.0.4", "10.244.1.5"]
    assert endpoint_ips({"subsets": None}) == []


async def test_headless_service_answers_with_its_ready_endpoints(tmp_path: Path, no_leaked_tasks: object) -> None:
    server_mod = pytest.importorskip("ambient.api.server")
    from ambient.api.client import ApiClient

    with server_mod.serve_in_thread(tmp_path) as api_server:
        sock = Path(api_server.socket_path)
        with ApiClient(sock) as api:
            api.apply(_service("db", "default", "None"))
            api.apply(_endpoints("db", "default", ["10.244.1.5"], ["10.244.2.7"]))
        table = ServiceTable()
        watcher = ServiceWatcher(sock, table)
        async with asyncio.TaskGroup() as tg, DnsServer(table.lookup, "127.0.0.1", 0) as dns:
            task = tg.create_task(watcher.run())
            try:
                await asyncio.wait_for(watcher.synced.wait(), 10)
                name = "db.default.svc.cluster.local"
                assert (await udp_query(dns.port, name)).addresses == ["10.244.1.5"]
                with ApiClient(sock) as api:  # a second pod becomes Ready
                    await asyncio.to_thread(api.apply, _endpoints("db", "default", ["10.244.1.5", "10.244.2.7"]))
                for _ in range(200):
                    if table.lookup("db", "default") == ["10.244.1.5", "10.244.2.7"]:
                        break
                    await asyncio.sleep(0.02)
                assert sorted((await udp_query(dns.port, name)).addresses) == ["10.244.1.5", "10.244.2.7"]
                with ApiClient(sock) as api:
                    await asyncio.to_thread(api.delete, "Service", "db", "default")
                for _ in range(200):
                    if table.lookup("db", "default") is None:
                        break
                    await asyncio.sleep(0.02)
                assert (await udp_query(dns.port, name)).rcode == W.RCODE_NXDOMAIN
            finally:
                task.cancel()
