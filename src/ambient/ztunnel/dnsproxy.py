"""The node proxy's DNS proxy on 127.0.0.1:15053 inside each enrolled pod (UDP and TCP).

The in-pod rules redirect the pod's DNS queries (port 53) here. Names of Services the proxy knows from xDS
(`<svc>.<ns>.svc.cluster.local`, and the hosts of ServiceEntries: their own or auto-allocated VIPs) are
answered at once from its state, with the Service VIPs; everything
else (search-path misses, pod names, names outside the cluster) is forwarded unchanged to the upstream
resolver (the cluster DNS, 10.96.0.10:53 by default) from a marked socket inside the pod netns, so the
redirect rules let it through; the upstream's answer is relayed byte for byte. An upstream that does not
answer within the timeout gets the client a SERVFAIL, never silence.

With trace ids on (`settings.trace_ids`), every answered query is logged after its answer was sent, as a
`query answered` line on the access stream (`runtime.accesslog.format_dns`, stamped when the answer was
ready): the pod, the question, the addresses answered, who answered (the Service or ServiceEntry of the
mesh state, or the upstream), the rcode and the time taken. `ambient trace` joins a connection to the answer
that gave the address its app dialled. Off, nothing is timed, parsed or written beyond the answer itself.

`state_answer` / `answer_from_state` and `describe_upstream` are pure; the serve functions do the I/O. The
wire format is `protocol.dnswire`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ambient.protocol import dnswire
from ambient.runtime.accesslog import DnsAnswerRecord
from ambient.state.model import Service
from ambient.state.store import StateView
from ambient.ztunnel import sockets as so

if TYPE_CHECKING:
    from ambient.ztunnel.proxy import PodContext

log = logging.getLogger("ambient.ztunnel.dnsproxy")

UPSTREAM_TIMEOUT_S = 2.0
TCP_IDLE_TIMEOUT_S = 10.0
MAX_UDP_QUERY = 4096


_TYPE_NAMES = {dnswire.TYPE_A: "A", dnswire.TYPE_NS: "NS", 5: "CNAME", dnswire.TYPE_SOA: "SOA", 12: "PTR",
               15: "MX", 16: "TXT", dnswire.TYPE_AAAA: "AAAA", 33: "SRV", 65: "HTTPS", 255: "ANY"}
_RCODE_NAMES = {dnswire.RCODE_NOERROR: "NOERROR", dnswire.RCODE_FORMERR: "FORMERR",
                dnswire.RCODE_SERVFAIL: "SERVFAIL", dnswire.RCODE_NXDOMAIN: "NXDOMAIN",
                dnswire.RCODE_NOTIMP: "NOTIMP", dnswire.RCODE_REFUSED: "REFUSED"}


def type_name(qtype: int) -> str:
    return _TYPE_NAMES.get(qtype, f"TYPE{qtype}")


def rcode_name(rcode: int) -> str:
    return _RCODE_NAMES.get(rcode, f"RCODE{rcode}")


@dataclass(frozen=True)
class StateAnswer:
    """An answer from the mesh state: the response bytes and what the log says of it."""

    response: bytes
    domain: str = ""
    qtype: int = 0
    rcode: int = dnswire.RCODE_NOERROR
    addresses: tuple[str, ...] = ()
    answered_by: str = ""  # "Service ns/name" | "ServiceEntry ns/name" ("" for a malformed query's FORMERR)


def state_answer(query: bytes, view: StateView, *, udp: bool = True) -> StateAnswer | None:
    """The answer to a query about a Service the proxy knows, or None to forward it upstream."""
    try:
        msg = dnswire.parse_message(query)
    except dnswire.DnsWireError:
        formerr = dnswire.error_response(query, dnswire.RCODE_FORMERR)
        return StateAnswer(formerr, rcode=dnswire.RCODE_FORMERR) if formerr is not None else None
    if msg.is_response or msg.opcode != dnswire.OPCODE_QUERY or len(msg.questions) != 1:
        return None  # odd messages: let the real resolver have its say
    question = msg.questions[0]
    found: list[Service] = []

    def lookup(name: str, namespace: str) -> list[str] | None:
        service = view.service_by_hostname(namespace, f"{name}.{namespace}.svc.{dnswire.ZONE}")
        if service is None:
            return None
        found.append(service)
        return [str(a.address) for a in service.addresses if a.address.version == 4]

    result = dnswire.resolve(question.name, question.qtype, question.qclass, lookup)
    if result.rcode == dnswire.RCODE_NOERROR and result.addresses and found:
        by = f"Service {found[0].namespace}/{found[0].name}"
    else:
        entry = _entry_answer(question.name, question.qtype, view)
        if entry is None:
            return None
        result, service = entry
        by = f"ServiceEntry {service.namespace}/{service.name}"
    max_size = (msg.edns_udp_size or dnswire.MAX_UDP) if udp else 65535
    response = dnswire.build_response(msg, result, max_size=max_size)
    return StateAnswer(response, question.name, question.qtype, result.rcode, tuple(result.addresses), by)


def answer_from_state(query: bytes, view: StateView, *, udp: bool = True) -> bytes | None:
    """The response for a query about a Service the proxy knows, or None to forward it upstream."""
    answer = state_answer(query, view, udp=udp)
    return answer.response if answer is not None else None


def _entry_answer(name: str, qtype: int, view: StateView) -> tuple[dnswire.Answer, Service] | None:
    """A host of a ServiceEntry (any name a Service of the proxy's state is known by, outside the
    cluster zone) is answered with its VIPs, as ztunnel's DNS proxy does for auto-allocated addresses:
    A records for an A query, an empty NOERROR for other types. None: not such a host."""
    host = name.lower().rstrip(".")
    if host == dnswire.ZONE or host.endswith("." + dnswire.ZONE):
        return None
    for service in sorted(view.services_by_hostname(host), key=lambda s: s.key):
        ips = [str(a.address) for a in service.addresses if a.address.version == 4]
        if ips:
            addresses = ips if qtype in (dnswire.TYPE_A, 255) else []
            return dnswire.Answer(dnswire.RCODE_NOERROR, addresses), service
    return None


def _result(rcode: int, addresses: tuple[str, ...] | list[str]) -> str:
    """ztunnel's `result` words for an answer from the mesh state."""
    if rcode == dnswire.RCODE_FORMERR:
        return "malformed query"
    return "success" if addresses else "no records"


def describe_state(answer: StateAnswer, src_addr: str, scope_label: str, duration_s: float) -> DnsAnswerRecord:
    """The log record of an answer from the mesh state."""
    namespace, _, workload = scope_label.partition("/")
    return DnsAnswerRecord(src_addr, workload, namespace, type_name(answer.qtype) if answer.domain else "",
                           answer.domain, _result(answer.rcode, answer.addresses), answer.addresses,
                           answer.answered_by, rcode_name(answer.rcode), duration_s)


def describe_upstream(query: bytes, response: bytes, failure: str, upstream: str, src_addr: str,
                      scope_label: str, duration_s: float) -> DnsAnswerRecord:
    """The log record of a forwarded query: its question (from the query), the rcode and A records of the
    upstream's response (what the client got), `failure` when the proxy answered SERVFAIL itself."""
    namespace, _, workload = scope_label.partition("/")
    domain, qtype = "", ""
    try:
        msg = dnswire.parse_message(query)
        if msg.questions:
            domain, qtype = msg.questions[0].name, type_name(msg.questions[0].qtype)
    except dnswire.DnsWireError:
        pass
    rcode, addresses = "", ()  # type: tuple[str, tuple[str, ...]]
    try:
        parsed = dnswire.parse_response(response)
        rcode, addresses = rcode_name(parsed.rcode), tuple(parsed.addresses)
    except (struct.error, IndexError, ValueError, dnswire.DnsWireError):
        rcode = "unreadable" if response else ""
    result = f"forwarding failed ({failure})" if failure else "forwarded"
    return DnsAnswerRecord(src_addr, workload, namespace, qtype, domain, result, addresses,
                           f"upstream {upstream}", rcode, duration_s)


async def resolve_hostname(ctx: PodContext, hostname: str) -> list[str]:
    """The IPv4 addresses of `hostname` from the upstream resolver (never from the proxy's own state: a
    ServiceEntry host resolves to its real endpoints here, not to its VIP). Empty when it does not resolve."""
    query = dnswire.build_query(hostname.rstrip("."), dnswire.TYPE_A, msg_id=random.getrandbits(16))
    response = await forward_udp(ctx, query)
    try:
        parsed = dnswire.parse_response(response)
    except (struct.error, IndexError, dnswire.DnsWireError):
        return []
    return parsed.addresses if parsed.rcode == dnswire.RCODE_NOERROR else []


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _recvfrom(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> tuple[bytes, Any]:
    """`loop.sock_recvfrom` for every loop: uvloop does not implement it (NotImplementedError)."""
    fd = sock.fileno()
    while True:
        try:
            return sock.recvfrom(n)
        except (BlockingIOError, InterruptedError):
            pass
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _wake, ready)
        try:
            await ready
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(fd)


async def _sendto(loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes, addr: Any) -> None:
    """`loop.sock_sendto` for every loop (uvloop lacks it). A datagram send that would block waits for
    the socket to become writable once, then tries again."""
    fd = sock.fileno()
    while True:
        try:
            sock.sendto(data, addr)
            return
        except (BlockingIOError, InterruptedError):
            pass
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, _wake, ready)
        try:
            await ready
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_writer(fd)


async def _udp_socket(ctx: PodContext, family: int) -> socket.socket:
    mark = ctx.settings.mark

    def make() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if mark is not None:
                so.set_mark(sock, mark)
            sock.setblocking(False)
            return sock
        except BaseException:
            sock.close()
            raise

    return await ctx.sockets.call(make)


def upstream_failure_reason(exc: BaseException) -> str:
    """Why an upstream query failed, never empty (a TimeoutError has no message: str() of it is "")."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {UPSTREAM_TIMEOUT_S:g}s"
    return str(exc) or type(exc).__name__


def _query_name(query: bytes) -> str:
    """The question's name for the log ("?" when the query does not parse: it was forwarded as is)."""
    try:
        msg = dnswire.parse_message(query)
    except dnswire.DnsWireError:
        return "?"
    return msg.questions[0].name if msg.questions else "?"


async def forward_udp(ctx: PodContext, query: bytes) -> bytes:
    """Ask the upstream resolver over UDP from inside the pod netns; SERVFAIL when it stays silent."""
    return (await _forward_udp(ctx, query))[0]


async def _forward_udp(ctx: PodContext, query: bytes) -> tuple[bytes, str]:
    """The upstream's response and "" or, when it failed, the SERVFAIL the proxy answers and why."""
    host, port = ctx.settings.dns_upstream
    loop = asyncio.get_running_loop()
    sock = await _udp_socket(ctx, socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        await _sendto(loop, sock, query, (host, port))
        async with asyncio.timeout(UPSTREAM_TIMEOUT_S):
            while True:
                data, _ = await _recvfrom(loop, sock, 65535)
                if data[:2] == query[:2]:  # same id: ours (a stray datagram is ignored)
                    return data, ""
    except (TimeoutError, OSError) as exc:
        reason = upstream_failure_reason(exc)
        log.warning("DNS upstream %s:%d failed for %s (query %s): %s", host, port, ctx.scope.label,
                    _query_name(query), reason)
        return dnswire.error_response(query, dnswire.RCODE_SERVFAIL) or b"", reason
    finally:
        sock.close()


async def resolve_query(ctx: PodContext, query: bytes, *, udp: bool) -> bytes | None:
    local = answer_from_state(query, ctx.core.view(), udp=udp)
    if local is not None:
        return local
    return await forward_udp(ctx, query)


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return ""


async def _answer(ctx: PodContext, query: bytes, *, udp: bool,
                  peer: Any) -> tuple[bytes | None, Callable[[], None] | None]:
    """The response, and with trace ids on, a callable that logs it (called once the answer was sent, so
    the log write never delays the answer; the line is stamped with the time the answer was ready)."""
    if not ctx.settings.trace_ids:
        return await resolve_query(ctx, query, udp=udp), None
    started = time.monotonic()
    local = state_answer(query, ctx.core.view(), udp=udp)
    if local is not None:
        response: bytes | None = local.response
        record = describe_state(local, _peer_text(peer), ctx.scope.label, time.monotonic() - started)
    else:
        response, failure = await _forward_udp(ctx, query)
        host, port = ctx.settings.dns_upstream
        record = describe_upstream(query, response, failure, f"{host}:{port}", _peer_text(peer), ctx.scope.label,
                                   time.monotonic() - started)
    ready = time.time()
    access = ctx.core.telemetry.access

    def note() -> None:
        access.dns(record, now=ready)

    return response, note


async def serve_udp(ctx: PodContext, sock: socket.socket) -> None:
    """Answer datagrams until cancelled (the drain cancels this task and closes the socket)."""
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as tg:
        while True:
            try:
                data, peer = await _recvfrom(loop, sock, MAX_UDP_QUERY)
            except OSError as exc:
                log.warning("DNS proxy for %s stopped: %s", ctx.scope.label, exc)
                return
            tg.create_task(_reply_udp(ctx, sock, data, peer))


async def _reply_udp(ctx: PodContext, sock: socket.socket, data: bytes, peer: tuple[str, int]) -> None:
    response, note = await _answer(ctx, data, udp=True, peer=peer)
    if response:
        try:
            await _sendto(asyncio.get_running_loop(), sock, response, peer)
        except OSError:
            return  # the client went away: it got no answer
        if note is not None:
            note()


async def serve_tcp(ctx: PodContext, conn: socket.socket) -> None:
    """DNS over TCP: 2-byte length-prefixed messages, several per connection, until idle or closed."""
    loop = asyncio.get_running_loop()
    try:
        peer = conn.getpeername() if ctx.settings.trace_ids else None
        while True:
            async with asyncio.timeout(TCP_IDLE_TIMEOUT_S):
                header = await _recv_exact(loop, conn, 2)
                if not header:
                    return
                query = await _recv_exact(loop, conn, struct.unpack("!H", header)[0])
            if not query:
                return
            response, note = await _answer(ctx, query, udp=False, peer=peer)
            if response:
                await loop.sock_sendall(conn, struct.pack("!H", len(response)) + response)
                if note is not None:
                    note()
    except (TimeoutError, OSError):
        return
    finally:
        conn.close()


async def _recv_exact(loop: asyncio.AbstractEventLoop, conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(conn, n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf
