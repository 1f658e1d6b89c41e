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
- A server aborts the handshake with the no_application_protocol alert when the client offers ALPN
  without `h2` (as the reference does); OpenSSL calls `_select_h2` for that, through ctypes, with the
  same SSL_CTX check as the suites. A client offering no ALPN at all is refused right after the handshake.
"""

from __future__ import annotations

import _ssl
import ctypes
import os
import ssl
import threading
from collections import OrderedDict
from typing import Any

from ambient.identity.certs import CertBundle
from ambient.tls.errors import TlsError

ALPN_H2 = "h2"
ALLOWED_CIPHERS = frozenset({"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"})


def load_pem_key_pair(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes, what: str) -> None:
    """Load a PEM certificate chain and its private key into `ctx` (raises TlsError naming `what`)."""
    # SSLContext.load_cert_chain only takes paths; a memfd keeps the key off any disk.
    fd = os.memfd_create("ambient-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, chain_pem + b"\n" + key_pem)
        path = f"/proc/self/fd/{fd}"
        try:
            ctx.load_cert_chain(path)
        except ssl.SSLError as exc:
            raise TlsError(f"cannot load certificate for {what}: {exc}") from None
    finally:
        os.close(fd)


def _load_cert_chain(ctx: ssl.SSLContext, bundle: CertBundle) -> None:
    load_pem_key_pair(ctx, bundle.chain_bytes(), bundle.key_pem, str(bundle.identity))


_TLS13_SUITES = b"TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"


def _libssl() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(_ssl.__file__)  # dlsym on it also searches the libssl it links
    except OSError:
        return None


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int | None:
    """The OpenSSL SSL_CTX behind `ctx`, or None unless the pointer found behind the Python object
    provably is this context's SSL_CTX (checked with a distinctive option pattern before anything is
    written through it)."""
    try:
        get_options = lib.SSL_CTX_get_options
    except AttributeError:
        return None
    get_options.restype, get_options.argtypes = ctypes.c_uint64, [ctypes.c_void_p]
    # CPython's PySSLContext starts with PyObject_HEAD followed by `SSL_CTX *ctx`.
    ptr = ctypes.c_void_p.from_address(id(ctx) + 2 * ctypes.sizeof(ctypes.c_ssize_t)).value
    if not ptr:
        return None
    before = ctx.options
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ok = get_options(ptr) == int(ctx.options)
    ctx.options = before | ssl.OP_NO_RENEGOTIATION if ok else before
    if not ok or get_options(ptr) != int(ctx.options):
        return None
    return int(ptr)


def _restrict_tls13_suites(ctx: ssl.SSLContext) -> bool:
    """Set the TLS 1.3 suites on the context's SSL_CTX. Returns False (and changes nothing) unless the
    SSL_CTX was found (`_ssl_ctx_pointer`)."""
    lib = _libssl()
    ptr = _ssl_ctx_pointer(ctx, lib) if lib is not None else None
    if lib is None or ptr is None:
        return False
    try:
        set_suites = lib.SSL_CTX_set_ciphersuites
    except AttributeError:
        return False
    set_suites.restype, set_suites.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]
    return set_suites(ptr, _TLS13_SUITES) == 1 and {
        c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3"
    } <= ALLOWED_CIPHERS


# ALPN on the server: CPython's selection callback answers "no overlap" with SSL_TLSEXT_ERR_NOACK, so a
# client offering only http/1.1 completed the handshake (and was refused afterwards). The reference
# (rustls) aborts the handshake with the no_application_protocol alert instead: this callback does the
# same. A client that sends no ALPN extension at all is not called back (it is refused after the
# handshake by `verify.check_session`).
_SSL_TLSEXT_ERR_OK = 0
_SSL_TLSEXT_ERR_ALERT_FATAL = 2  # OpenSSL sends no_application_protocol for an ALPN callback's fatal answer
_ALPN_SELECT = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,  # SSL *
    ctypes.POINTER(ctypes.c_void_p),  # const unsigned char **out
    ctypes.POINTER(ctypes.c_ubyte),  # unsigned char *outlen
    ctypes.c_void_p,  # const unsigned char *in (the client's list: length-prefixed names)
    ctypes.c_uint,  # inlen
    ctypes.c_void_p,  # arg
)


def alpn_offset(offered: bytes, wanted: bytes = ALPN_H2.encode()) -> int | None:
    """Offset of `wanted` in an ALPN protocol list (length-prefixed names), None if absent or the list
    is malformed."""
    i = 0
    while i < len(offered):
        n = offered[i]
        if n == 0 or i + 1 + n > len(offered):
            return None
        if offered[i + 1 : i + 1 + n] == wanted:
            return i + 1
        i += 1 + n
    return None


def _select_h2(_ssl: int, out: Any, outlen: Any, offered: int, offered_len: int, _arg: int) -> int:
    try:
        at = alpn_offset(ctypes.string_at(offered, offered_len))
        if at is None:
            return _SSL_TLSEXT_ERR_ALERT_FATAL
        out[0] = offered + at  # points into the client's list, as OpenSSL requires
        outlen[0] = len(ALPN_H2)
        return _SSL_TLSEXT_ERR_OK
    except Exception:  # never let a Python error become "selected nothing"
        return _SSL_TLSEXT_ERR_ALERT_FATAL


_SELECT_H2 = _ALPN_SELECT(_select_h2)  # module lifetime: OpenSSL keeps the raw pointer


def _require_h2(ctx: ssl.SSLContext) -> bool:
    """Install `_select_h2` as the server context's ALPN callback; False (nothing changed) if the SSL_CTX
    or the OpenSSL function cannot be found."""
    lib = _libssl()
    ptr = _ssl_ctx_pointer(ctx, lib) if lib is not None else None
    if lib is None or ptr is None:
        return False
    try:
        set_cb = lib.SSL_CTX_set_alpn_select_cb
    except AttributeError:
        return False
    set_cb.restype, set_cb.argtypes = None, [ctypes.c_void_p, _ALPN_SELECT, ctypes.c_void_p]
    set_cb(ptr, _SELECT_H2, None)
    return True


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
    _require_h2(ctx)  # (if it cannot be installed, verify.check_session still refuses non-h2 sessions)
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
