"""`ssl.SSLContext` builders for HBONE (protocols.md section 2).

Role: one place that turns a `CertBundle` into client and server contexts with the HBONE policy:
TLS 1.3 only, ALPN `h2`, mutual authentication against the mesh roots, no SNI/hostname checks (identity
is checked on the URI SAN by `ambient.tls.verify` instead), no session tickets or resumption.

Invariants:
- Every context requires and verifies the peer chain against the bundle's roots (CERT_REQUIRED), so
  expired, not-yet-valid and foreign-CA certificates fail in the handshake, before any HTTP/2 byte.
- Python's `ssl` cannot restrict TLS 1.3 cipher suites; OpenSSL's default set also allows
  CHACHA20-POLY1305, so `verify.check_session` rejects any suite other than AES-256-GCM / AES-128-GCM
  right after the handshake. The server prefers its own order (AES-256-GCM first).
- The private key is loaded through an anonymous memfd, never written to a file system.
"""

from __future__ import annotations

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


def _base(purpose: int, bundle: CertBundle) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols([ALPN_H2])
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
