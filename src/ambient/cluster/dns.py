"""The cluster DNS server: answers `<svc>.<ns>.svc.cluster.local` from the API's Services, over UDP and TCP.

A Service's A records are its ClusterIP; a headless Service's (`clusterIP: None`) are the addresses of its
Ready endpoints (from the Endpoints object of the same name), as in Kubernetes.

Runs as the component "dns" inside the underlay netns, listening on 172.18.0.2:53 (`layout.DNS_SERVER_IP`);
the kube-proxy rules in every node DNAT the DNS VIP 10.96.0.10:53 to it. Decisions are in `dnswire` (pure);
this module only does I/O: sockets, and a Service table kept current with list + watch.

Invariants:
- nothing is ever forwarded: names outside `cluster.local` are REFUSED (see dnswire.resolve), except the
  outside world's test domain `example.test`, answered from `<state>/outside/hosts.json` (cluster.outside);
- the Service table has one writer (`ServiceWatcher`: one informer per watched kind, in one TaskGroup, on
  one event loop); readers see a consistent dict (replaced, never mutated while a lookup could read it
  half-updated: single-threaded asyncio);
- when the API is unreachable the server keeps answering from the last table it had; the informers resume
  (or re-list) with back-off;
- every task is owned by a TaskGroup.

`python -m ambient.cluster.dns --state-dir DIR [--listen 172.18.0.2] [--port 53]`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from ambient.api.client import AsyncApiClient, WatchEvent
from ambient.api.informer import inform
from ambient.cluster.layout import DNS_SERVER_IP
from ambient.core import process
from ambient.protocol import dnswire

log = logging.getLogger("ambient.cluster.dns")

TCP_IDLE_TIMEOUT = 10.0


class ServiceTable:
    """(service, namespace) -> ClusterIPs; `lookup` is the `dnswire.ServiceLookup` the resolver uses."""

    def __init__(self, records: dict[tuple[str, str], list[str]] | None = None) -> None:
        self._records: dict[tuple[str, str], list[str]] = dict(records or {})

    def lookup(self, name: str, namespace: str) -> list[str] | None:
        return self._records.get((name, namespace))

    def replace(self, records: dict[tuple[str, str], list[str]]) -> None:
        self._records = dict(records)

    def upsert(self, name: str, namespace: str, ips: list[str]) -> None:
        self._records = {**self._records, (name, namespace): ips}

    def remove(self, name: str, namespace: str) -> None:
        self._records = {k: v for k, v in self._records.items() if k != (name, namespace)}

    def __len__(self) -> int:
        return len(self._records)


def service_ips(svc: dict[str, Any]) -> list[str]:
    """The A records of a Service: its IPv4 ClusterIP(s); none for headless or not-yet-allocated."""
    spec = svc.get("spec") or {}
    ips = list(spec.get("clusterIPs") or [])
    if not ips and spec.get("clusterIP"):
        ips = [spec["clusterIP"]]
    return [ip for ip in ips if isinstance(ip, str) and ip.count(".") == 3]


def is_headless(svc: dict[str, Any]) -> bool:
    return (svc.get("spec") or {}).get("clusterIP") == "None"


def endpoint_ips(endpoints: dict[str, Any]) -> list[str]:
    """The Ready IPv4 addresses of an Endpoints object (not-ready ones are not published), sorted, unique."""
    ips = {
        str(addr.get("ip"))
        for subset in endpoints.get("subsets") or []
        for addr in subset.get("addresses") or []
        if isinstance(addr.get("ip"), str) and addr["ip"].count(".") == 3
    }
    return sorted(ips)


def _key(svc: dict[str, Any]) -> tuple[str, str]:
    meta = svc.get("metadata") or {}
    return str(meta.get("name", "")), str(meta.get("namespace") or "default")


class ServiceWatcher:
    """Keeps a ServiceTable in sync with the API: Services and Endpoints, each listed then watched from the
    list's version (`api.informer.inform`). `synced` once both were listed."""

    def __init__(self, socket_path: Path, table: ServiceTable) -> None:
        self.socket_path = socket_path
        self.table = table
        self.synced = asyncio.Event()
        self._services: dict[tuple[str, str], dict[str, Any]] = {}
        self._endpoints: dict[tuple[str, str], list[str]] = {}
        self._listed: set[str] = set()

    async def run(self) -> None:
        async with AsyncApiClient(self.socket_path, timeout=10.0) as api, asyncio.TaskGroup() as tg:
            for kind in ("Service", "Endpoints"):
                tg.create_task(inform(api, kind, self._replace, self._on_event))

    def _records(self) -> dict[tuple[str, str], list[str]]:
        return {key: self._ips(key, svc) for key, svc in self._services.items()}

    def _ips(self, key: tuple[str, str], svc: dict[str, Any]) -> list[str]:
        return self._endpoints.get(key, []) if is_headless(svc) else service_ips(svc)

    def _refresh(self, key: tuple[str, str]) -> None:
        svc = self._services.get(key)
        if svc is None:
            self.table.remove(*key)
        else:
            self.table.upsert(key[0], key[1], self._ips(key, svc))

    def _replace(self, kind: str, items: list[dict[str, Any]]) -> None:
        if kind == "Service":
            self._services = {_key(s): s for s in items}
        else:
            self._endpoints = {_key(e): endpoint_ips(e) for e in items}
        self.table.replace(self._records())
        self._listed.add(kind)
        if len(self._listed) == 2:
            self.synced.set()
        log.info("synced %d %s", len(items), kind)

    def _on_event(self, kind: str, event: WatchEvent) -> None:
        self._apply(kind, event.type, event.object)

    def _apply(self, kind: str, event_type: str, obj: dict[str, Any]) -> None:
        key = _key(obj)
        if kind == "Service":
            if event_type == "DELETED":
                self._services.pop(key, None)
            else:
                self._services[key] = obj
        elif event_type == "DELETED":
            self._endpoints.pop(key, None)
        else:
            self._endpoints[key] = endpoint_ips(obj)
        self._refresh(key)


OutsideLookup = Callable[[str], "list[str] | None"]


class OutsideRecords:
    """The outside world's names (`cluster.outside.records`), re-read when `<state>/outside/hosts.json`
    changes (checked at most once a second): the outside world may be added to a running cluster."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._records: dict[str, list[str]] = {}
        self._stamp: float | None = None
        self._checked = 0.0

    def lookup(self, name: str) -> list[str] | None:
        from ambient.cluster import outside

        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            try:
                stamp: float | None = (outside.outside_dir(self.state_dir) / "hosts.json").stat().st_mtime
            except OSError:
                stamp = None
            if stamp != self._stamp:
                self._stamp, self._records = stamp, outside.records(self.state_dir)
        return self._records.get(name.lower().rstrip("."))


def answer(data: bytes, lookup: dnswire.ServiceLookup, outside: OutsideLookup | None, *, udp: bool) -> bytes | None:
    """`dnswire.answer`, except that names of the outside world's test domain are answered from `outside`
    (A records; NXDOMAIN for unknown names of that domain). Nothing is forwarded either way."""
    from ambient.cluster.outside import in_outside_zone

    if outside is not None:
        try:
            query = dnswire.parse_message(data)
        except dnswire.DnsWireError:
            query = None
        if (query is not None and not query.is_response and query.opcode == dnswire.OPCODE_QUERY
                and len(query.questions) == 1 and in_outside_zone(query.questions[0].name)):
            q = query.questions[0]
            ips = outside(q.name)
            result = (dnswire.Answer(dnswire.RCODE_NXDOMAIN) if ips is None else
                      dnswire.Answer(dnswire.RCODE_NOERROR, ips if q.qtype in (dnswire.TYPE_A, 255) else []))
            max_size = (query.edns_udp_size or dnswire.MAX_UDP) if udp else 65535
            return dnswire.build_response(query, result, max_size=max_size)
    return dnswire.answer(data, lookup, udp=udp)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, lookup: dnswire.ServiceLookup, outside: OutsideLookup | None = None) -> None:
        self.lookup = lookup
        self.outside = outside
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer(data, self.lookup, self.outside, udp=True)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def _serve_tcp_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            lookup: dnswire.ServiceLookup, outside: OutsideLookup | None = None) -> None:
    try:
        while True:
            try:
                header = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                (length,) = struct.unpack("!H", header)
                data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            reply = answer(data, lookup, outside, udp=False)
            if reply is None:
                continue
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


class DnsServer:
    """UDP + TCP listeners answering from `lookup`. Use `async with DnsServer(...)`; `.port` is the bound port."""

    def __init__(self, lookup: dnswire.ServiceLookup, host: str = DNS_SERVER_IP, port: int = 53,
                 outside: OutsideLookup | None = None) -> None:
        self.lookup = lookup
        self.outside = outside
        self.host = host
        self.port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    async def __aenter__(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(
            lambda r, w: _serve_tcp_client(r, w, self.lookup, self.outside), self.host, self.port, reuse_address=True)
        # With port 0 the kernel picks one for TCP; UDP binds the same number so both are one "server".
        self.port = self._tcp.sockets[0].getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self.lookup, self.outside),
                                                           local_addr=(self.host, self.port))
        self._udp = transport
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()


async def serve(state_dir: Path, host: str, port: int, stop: asyncio.Event,
                on_ready: Callable[[int], None] | None = None) -> None:
    table = ServiceTable()
    watcher = ServiceWatcher(state_dir / "apiserver.sock", table)
    async with DnsServer(table.lookup, host, port, outside=OutsideRecords(state_dir).lookup) as server:
        log.info("cluster DNS listening on %s:%d (udp+tcp)", host, server.port)
        if on_ready is not None:
            on_ready(server.port)
        async with asyncio.TaskGroup() as tg:
            watch_task = tg.create_task(watcher.run())
            await stop.wait()
            watch_task.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ambient.cluster.dns", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--listen", default=DNS_SERVER_IP)
    parser.add_argument("--port", type=int, default=53)
    args = parser.parse_args(argv)
    process.configure_logging("INFO", fmt="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def run(shutdown: process.Shutdown) -> None:
        stop = asyncio.Event()
        shutdown.on_signal(stop.set)
        await serve(args.state_dir, args.listen, args.port, stop)

    process.run(run)


if __name__ == "__main__":
    main()
