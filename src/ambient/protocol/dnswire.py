"""Sans-IO DNS for the cluster DNS: parse queries, decide answers, build responses (RFC 1035). No sockets.

`answer(message, lookup)` takes the bytes of one DNS query and a record lookup and returns the bytes of the
response (or None when the input is not worth answering, e.g. it is itself a response). The decision is in
`resolve()`, a pure function of (name, type, lookup).

What the cluster DNS answers (authoritative for `cluster.local`, recursive for nothing):
- `<svc>.<ns>.svc.cluster.local` A -> the Service's ClusterIP; AAAA / other types -> NOERROR, no answer;
- `<a-b-c-d>.<ns>.pod.cluster.local` A -> a.b.c.d;
- any other name in `cluster.local` -> NXDOMAIN;
- names outside `cluster.local` -> REFUSED: nothing is ever forwarded outside the cluster;
- opcode other than QUERY -> NOTIMP; malformed query with a readable header -> FORMERR.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from ambient.protocol.errors import ProtocolError

# Types and classes we use by name.
TYPE_A = 1
TYPE_NS = 2
TYPE_SOA = 6
TYPE_AAAA = 28
TYPE_OPT = 41
CLASS_IN = 1

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5

OPCODE_QUERY = 0
TTL = 5  # seconds: Services change; resolvers must not hold stale VIPs for long
ZONE = "cluster.local"
MAX_UDP = 512

# lookup(service, namespace) -> list of IPv4 strings; None when the Service does not exist
ServiceLookup = Callable[[str, str], "list[str] | None"]


class DnsWireError(ProtocolError):
    """A DNS message could not be parsed."""


@dataclass(frozen=True)
class Question:
    name: str  # lowercase, no trailing dot
    qtype: int
    qclass: int


@dataclass(frozen=True)
class Message:
    id: int
    flags: int
    questions: list[Question] = field(default_factory=list)
    # EDNS0 UDP payload size from an OPT record, when present
    edns_udp_size: int | None = None

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """Read a (possibly compressed) domain name; return (name, offset after it in the original stream)."""
    labels: list[str] = []
    end: int | None = None
    jumps = 0
    total = 0
    while True:
        if offset >= len(data):
            raise DnsWireError("name runs past the end of the message")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise DnsWireError("truncated compression pointer")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            jumps += 1
            if jumps > 20:
                raise DnsWireError("compression pointer loop")
            continue
        if length & 0xC0:
            raise DnsWireError(f"unsupported label type 0x{length:02x}")
        offset += 1
        if length == 0:
            break
        label = data[offset:offset + length]
        if len(label) != length:
            raise DnsWireError("label runs past the end of the message")
        total += length + 1
        if total > 255:
            raise DnsWireError("name longer than 255 octets")
        labels.append(label.decode("ascii", errors="replace").lower())
        offset += length
    return ".".join(labels), (end if end is not None else offset)


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.strip(".").split("."):
        if not label:
            continue
        raw = label.encode("ascii")
        if len(raw) > 63:
            raise DnsWireError(f"label too long: {label!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


def parse_message(data: bytes) -> Message:
    if len(data) < 12:
        raise DnsWireError("message shorter than a DNS header")
    msg_id, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
    offset = 12
    questions = []
    for _ in range(qd):
        name, offset = _read_name(data, offset)
        if offset + 4 > len(data):
            raise DnsWireError("truncated question")
        qtype, qclass = struct.unpack("!HH", data[offset:offset + 4])
        offset += 4
        questions.append(Question(name, qtype, qclass))
    edns: int | None = None
    # Skip answer/authority records; look for OPT among the additional ones (EDNS0 payload size).
    for index in range(an + ns + ar):
        _, offset = _read_name(data, offset)
        if offset + 10 > len(data):
            raise DnsWireError("truncated resource record")
        rtype, rclass, _ttl, rdlen = struct.unpack("!HHIH", data[offset:offset + 10])
        offset += 10 + rdlen
        if offset > len(data):
            raise DnsWireError("resource record data runs past the end")
        if index >= an + ns and rtype == TYPE_OPT:
            edns = max(MAX_UDP, rclass)
    return Message(msg_id, flags, questions, edns)


def build_query(name: str, qtype: int = TYPE_A, msg_id: int = 0x1234, rd: bool = True) -> bytes:
    """A standard query (used by tests and diagnostics)."""
    flags = 0x0100 if rd else 0
    return struct.pack("!HHHHHH", msg_id, flags, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype,
                                                                                                CLASS_IN)


@dataclass(frozen=True)
class Answer:
    rcode: int
    addresses: list[str] = field(default_factory=list)  # IPv4 A records for the question name
    authoritative: bool = True


def resolve(name: str, qtype: int, qclass: int, lookup: ServiceLookup) -> Answer:
    """Decide the answer to one question (pure)."""
    name = name.lower().rstrip(".")
    if qclass not in (CLASS_IN, 255):
        return Answer(RCODE_REFUSED, authoritative=False)
    if name != ZONE and not name.endswith("." + ZONE):
        return Answer(RCODE_REFUSED, authoritative=False)  # never recurse / forward out of the cluster
    labels = name[: -len(ZONE)].rstrip(".").split(".") if name != ZONE else []
    if not labels:
        return Answer(RCODE_NOERROR)  # the zone apex exists
    kind = labels[-1]
    if kind == "svc" and len(labels) == 3:
        svc, ns = labels[0], labels[1]
        ips = lookup(svc, ns)
        if ips is None:
            return Answer(RCODE_NXDOMAIN)
        return Answer(RCODE_NOERROR, ips if qtype in (TYPE_A, 255) else [])
    if kind == "pod" and len(labels) == 3:
        try:
            ip = ipaddress.IPv4Address(labels[0].replace("-", "."))
        except ValueError:
            return Answer(RCODE_NXDOMAIN)
        return Answer(RCODE_NOERROR, [str(ip)] if qtype in (TYPE_A, 255) else [])
    if kind in ("svc", "pod") and len(labels) <= 2:
        return Answer(RCODE_NOERROR)  # empty non-terminals like `default.svc.cluster.local` exist
    return Answer(RCODE_NXDOMAIN)


def _header(msg_id: int, opcode: int, rd: bool, aa: bool, rcode: int, tc: bool, qd: int, an: int) -> bytes:
    flags = 0x8000 | (opcode << 11) | (0x0400 if aa else 0) | (0x0200 if tc else 0) | (0x0100 if rd else 0)
    flags |= rcode & 0xF
    return struct.pack("!HHHHHH", msg_id, flags, qd, an, 0, 0)


def build_response(query: Message, answer: Answer, max_size: int | None = None) -> bytes:
    """Response to the query's first question with A records from `answer` (truncated if over max_size)."""
    if not query.questions:
        return _header(query.id, query.opcode, query.rd, False, answer.rcode, False, 0, 0)
    q = query.questions[0]
    question = encode_name(q.name) + struct.pack("!HH", q.qtype, q.qclass)
    records = b"".join(
        # 0xC00C: compression pointer to the question name at offset 12
        struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL, 4) + ipaddress.IPv4Address(ip).packed
        for ip in answer.addresses
    )
    body = question + records
    count = len(answer.addresses)
    tc = False
    if max_size is not None and 12 + len(body) > max_size:
        body, count, tc = question, 0, True  # the client retries over TCP
    return _header(query.id, query.opcode, query.rd, answer.authoritative, answer.rcode, tc, 1, count) + body


def error_response(data: bytes, rcode: int) -> bytes | None:
    """A bare response with `rcode` echoing the id of whatever header we could read (None if none)."""
    if len(data) < 12:
        return None
    msg_id, flags = struct.unpack("!HH", data[:4])
    if flags & 0x8000:
        return None
    return _header(msg_id, (flags >> 11) & 0xF, bool(flags & 0x0100), False, rcode, False, 0, 0)


def answer(data: bytes, lookup: ServiceLookup, *, udp: bool = True) -> bytes | None:
    """The response bytes for one query message, or None when nothing should be sent back."""
    try:
        query = parse_message(data)
    except DnsWireError:
        return error_response(data, RCODE_FORMERR)
    if query.is_response:
        return None  # never answer answers (reflection loops)
    if query.opcode != OPCODE_QUERY:
        return build_response(query, Answer(RCODE_NOTIMP, authoritative=False))
    if len(query.questions) != 1:
        return build_response(query, Answer(RCODE_FORMERR, authoritative=False))
    q = query.questions[0]
    max_size = (query.edns_udp_size or MAX_UDP) if udp else 65535
    return build_response(query, resolve(q.name, q.qtype, q.qclass, lookup), max_size=max_size)


@dataclass(frozen=True)
class ParsedResponse:
    id: int
    rcode: int
    authoritative: bool
    truncated: bool
    addresses: list[str]


def parse_response(data: bytes) -> ParsedResponse:
    """Read the rcode and A records of a response (tests and diagnostics)."""
    msg_id, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", data[:12])
    offset = 12
    for _ in range(qd):
        _, offset = _read_name(data, offset)
        offset += 4
    addresses = []
    for _ in range(an):
        _, offset = _read_name(data, offset)
        rtype, _rclass, _ttl, rdlen = struct.unpack("!HHIH", data[offset:offset + 10])
        offset += 10
        if rtype == TYPE_A and rdlen == 4:
            addresses.append(str(ipaddress.IPv4Address(data[offset:offset + 4])))
        offset += rdlen
    return ParsedResponse(msg_id, flags & 0xF, bool(flags & 0x0400), bool(flags & 0x0200), addresses)
