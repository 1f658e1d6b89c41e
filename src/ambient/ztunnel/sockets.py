"""Linux socket options the node proxy depends on, in one small platform module.

- `original_dst`: where an iptables/nft REDIRECT-ed connection was really going (SO_ORIGINAL_DST for IPv4,
  IP6T_SO_ORIGINAL_DST for IPv6).
- `mark`: every socket the proxy opens inside a pod netns carries SO_MARK 0x539 so the in-pod redirect
  rules skip it (no loops).
- `transparent`: inbound delivery to the app binds the client's IP (IP_TRANSPARENT + IP_FREEBIND) so the
  app sees the real source address.
- `listener`: the proxy's listeners use SO_REUSEPORT (an old and a new proxy can listen together during an
  upgrade) and a backlog of 128, and are created non-blocking for asyncio.

Invariant: nothing here decides anything; it only sets and reads kernel options, and raises
`SocketOptionError` with the option's name when the kernel refuses (usually: missing CAP_NET_ADMIN).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from ambient.core.errors import AmbientError

PROXY_MARK = 0x539  # 1337: the in-pod rules never redirect sockets carrying it
LISTEN_BACKLOG = 128

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h, level SOL_IP
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h, level SOL_IPV6
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_TRANSPARENT = 75
IPV6_FREEBIND = 78
SO_MARK = getattr(socket, "SO_MARK", 36)
SOL_IPV6 = 41  # SOL_IPV6 is not exposed on every build; IPPROTO_IPV6 has the same value


class SocketOptionError(AmbientError):
    """The kernel refused a socket option the proxy needs."""


def _set(sock: socket.socket, level: int, option: int, value: int, name: str) -> None:
    try:
        sock.setsockopt(level, option, value)
    except OSError as exc:
        raise SocketOptionError(
            f"cannot set {name} on a proxy socket: {exc.strerror}",
            hint="the node proxy needs CAP_NET_ADMIN (run as root in the local cluster)",
        ) from exc


def set_mark(sock: socket.socket, mark: int = PROXY_MARK) -> None:
    _set(sock, socket.SOL_SOCKET, SO_MARK, mark, f"SO_MARK {mark:#x}")


def set_transparent(sock: socket.socket) -> None:
    """Allow binding a non-local (the client's) address, for inbound delivery with the real source IP."""
    if sock.family == socket.AF_INET6:
        _set(sock, SOL_IPV6, IPV6_TRANSPARENT, 1, "IPV6_TRANSPARENT")
        _set(sock, SOL_IPV6, IPV6_FREEBIND, 1, "IPV6_FREEBIND")
    # IPv4-mapped traffic on an AF_INET6 socket also consults the IPv4 options.
    _set(sock, socket.SOL_IP, IP_TRANSPARENT, 1, "IP_TRANSPARENT")
    _set(sock, socket.SOL_IP, IP_FREEBIND, 1, "IP_FREEBIND")


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """The (ip, port) a redirected connection was addressed to before REDIRECT rewrote it."""
    try:
        if sock.family == socket.AF_INET6:
            try:
                raw = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)
                port = struct.unpack_from("!H", raw, 2)[0]
                addr = ipaddress.IPv6Address(raw[8:24])
                return (str(addr.ipv4_mapped or addr), port)
            except OSError:
                pass  # an IPv4 connection accepted on a dual-stack socket: ask the IPv4 table
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError as exc:
        raise SocketOptionError(
            f"cannot read the original destination of a redirected connection: {exc.strerror}",
            hint="the connection did not come through the in-pod REDIRECT rules (is the pod enrolled?)",
        ) from exc
    port = struct.unpack_from("!H", raw, 2)[0]
    return (socket.inet_ntoa(raw[4:8]), port)


def set_freebind(sock: socket.socket) -> None:
    """Allow binding an address the netns does not have yet (e.g. 127.0.0.1 before the runtime set up lo)."""
    _set(sock, socket.SOL_IP, IP_FREEBIND, 1, "IP_FREEBIND")


def listener(
    host: str, port: int, *, mark: int | None = PROXY_MARK, transparent: bool = False, freebind: bool = False
) -> socket.socket:
    """A non-blocking listening TCP socket with SO_REUSEPORT (and SO_MARK unless `mark` is None).

    Must be called on a thread that is inside the target network namespace: a socket stays in the
    namespace it was created in.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if mark is not None:
            set_mark(sock, mark)
        if transparent:
            set_transparent(sock)
        if freebind:
            set_freebind(sock)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SocketOptionError(
                f"cannot listen on [{host}]:{port}: {exc.strerror}",
                hint="another process holds the port without SO_REUSEPORT (check `ss -ntlp`)",
            ) from exc
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


def udp_socket(host: str, port: int, *, mark: int | None = PROXY_MARK, freebind: bool = False) -> socket.socket:
    """A non-blocking bound UDP socket (the DNS proxy's), marked like every proxy socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if mark is not None:
            set_mark(sock, mark)
        if freebind:
            set_freebind(sock)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SocketOptionError(f"cannot bind UDP [{host}]:{port}: {exc.strerror}") from exc
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise
