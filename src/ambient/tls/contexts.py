"""`ssl.SSLContext` builders for HBONE (protocols.md section 2).

Role: one place that turns a `CertBundle` into client and server contexts with the HBONE policy:
TLS 1.3 only, ALPN `h2`, mutual authentication against the mesh roots, no SNI/hostname checks (identity
is checked on the URI SAN by `ambient.tls.verify` instead), no session tickets or resumption.

Invariants:
- Every context requires and verifies the peer chain against the bundle's roots (CERT_REQUIRED), so
  expired, not-yet-valid and foreign-CA certificates fail in the handshake, before any HTTP/2 byte.
- Only AES-256-GCM / AES-128-GCM (TLS 1.3 suites). Python's `ssl` has no API for TLS 1.3 suites, so
  `_restrict_tls13_suites` calls OpenSSL's SSL_CTX_set_ciphersuites through ctypes after checking it
  found the right SSL_CTX; if that check fails it does nothing and `verify.check_session` still
  rejects any other suite right after the handshake (defence in depth either way).
- The private key is loaded through an anonymous memfd, never written to a file system.
"""

from __future__ import annotations

import _ssl
import ctypes
import os
import ssl
import threading
from collections import OrderedDict

from ambient.identity.certs import CertBundle
from ambient.tls.errors import TlsError

ALPN_H2 = "h2"
ALLOWED_CIPHERS = frozenset({"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"})


def _load_cert_chain(ctx: ssl.SSLContext, bundle: CertBundle) -> None:
    # SSLContext.load_cert_chain only takes paths; a memfd keeps the key off any disk.
    fd = os.memfd_create("ambient-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, bundle.chain_bytes() + b"\n" + bundle.key_pem)
        path = f"/proc/self/fd/{fd}"
        try:
            ctx.load_cert_chain(path)
        except ssl.SSLError as exc:
            raise TlsError(f"cannot load certificate for {bundle.identity}: {exc}") from None
    finally:
        os.close(fd)


_TLS13_SUITES = b"TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"


def _restrict_tls13_suites(ctx: ssl.SSLContext) -> bool:
    """Set the TLS 1.3 suites on the context's SSL_CTX. Returns False (and changes nothing) unless the
    pointer found behind the Python object provably is this context's SSL_CTX."""
    try:
        lib = ctypes.CDLL(_ssl.__file__)  # dlsym on it also searches the libssl it links
        get_options = lib.SSL_CTX_get_options
        get_options.restype, get_options.argtypes = ctypes.c_uint64, [ctypes.c_void_p]
        set_suites = lib.SSL_CTX_set_ciphersuites
        set_suites.restype, set_suites.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]
    except (OSError, AttributeError):
        return False
    # CPython's PySSLContext starts with PyObject_HEAD followed by `SSL_CTX *ctx`.
    ptr = ctypes.c_void_p.from_address(id(ctx) + 2 * ctypes.sizeof(ctypes.c_ssize_t)).value
    if not ptr:
        return False
    # Sanity check with a distinctive option pattern before writing anything through the pointer.
    before = ctx.options
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ok = get_options(ptr) == int(ctx.options)
    ctx.options = before | ssl.OP_NO_RENEGOTIATION if ok else before
    if not ok or get_options(ptr) != int(ctx.options):
        return False
    return set_suites(ptr, _TLS13_SUITES) == 1 and {
        c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3"
    } <= ALLOWED_CIPHERS


def _base(purpose: int, bundle: CertBundle) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols([ALPN_H2])
    _restrict_tls13_suites(ctx)
    try:
        ctx.load_verify_locations(cadata=bundle.roots_bytes().decode())
    except ssl.SSLError as exc:
        raise TlsError(f"cannot load mesh roots: {exc}") from None
    _load_cert_chain(ctx, bundle)
    return ctx


def client_context(bundle: CertBundle) -> ssl.SSLContext:
    """Context for dialling an HBONE server as the workload of `bundle`."""
    return _base(ssl.PROTOCOL_TLS_CLIENT, bundle)


def server_context(bundle: CertBundle) -> ssl.SSLContext:
    """Context for accepting HBONE connections as the workload of `bundle`."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, bundle)
    ctx.num_tickets = 0  # no TLS 1.3 session tickets: no resumption
    return ctx


class ContextCache:
    """Contexts keyed by (role, certificate fingerprint): building one costs ~1 ms, a handshake reuses it.
    A rotated certificate has a new fingerprint and so gets a new context; old ones age out (LRU)."""

    def __init__(self, max_entries: int = 256) -> None:
        self._max = max_entries
        self._entries: OrderedDict[tuple[bool, str], ssl.SSLContext] = OrderedDict()
        self._lock = threading.Lock()  # contexts may be requested from executor threads too

    def get(self, bundle: CertBundle, *, server: bool) -> ssl.SSLContext:
        key = (server, bundle.fingerprint)
        with self._lock:
            ctx = self._entries.get(key)
            if ctx is not None:
                self._entries.move_to_end(key)
                return ctx
        ctx = server_context(bundle) if server else client_context(bundle)
        with self._lock:
            self._entries[key] = ctx
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return ctx
