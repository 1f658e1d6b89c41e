"""Where the node proxy gets workload certificates: a small seam with a local-CA implementation.

`CertSource` is all the data path needs: `fetch(identity)` (async; issues or renews when due),
`cached(identity)` (sync, for the TLS server's per-handshake provider) and `bundles()` (config_dump).
`LocalCaSource` issues in-process from a CA key pair on disk (`--ca-dir`, `identity.ca.LocalCA`): the
standalone mode and the tests. The control-plane CA client (`identity.manager`) plugs in behind
the same Protocol.

Invariants: one issuance per identity at a time (concurrent callers share it); a bundle is replaced
only by a newer valid one, and kept until it expires if renewal fails (istio/istio#56452).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from ambient.identity.ca import LocalCA
from ambient.identity.certs import CertBundle
from ambient.ztunnel.errors import ConfigError

log = logging.getLogger("ambient.ztunnel.certs")


class CertSource(Protocol):
    async def fetch(self, identity: str) -> CertBundle: ...

    def cached(self, identity: str) -> CertBundle | None: ...

    def bundles(self) -> Iterable[CertBundle]: ...


class LocalCaSource:
    """Certificates issued in-process by a local CA."""

    def __init__(self, ca: LocalCA, ttl: timedelta = timedelta(hours=24)) -> None:
        self._ca = ca
        self._ttl = ttl
        self._bundles: dict[str, CertBundle] = {}
        self._pending: dict[str, asyncio.Future[CertBundle]] = {}

    @classmethod
    def from_dir(cls, directory: str | Path, ttl: timedelta = timedelta(hours=24)) -> LocalCaSource:
        path = Path(directory)
        try:
            ca = LocalCA.load_or_create(path)
        except OSError as exc:
            raise ConfigError(
                f"cannot load or create the local CA in {path}: {exc.strerror or exc}",
                hint="pass a writable --ca-dir (root-cert.pem + root-key.pem are created when absent)",
            ) from exc
        return cls(ca, ttl)

    def cached(self, identity: str) -> CertBundle | None:
        return self._bundles.get(identity)

    def bundles(self) -> Iterable[CertBundle]:
        return list(self._bundles.values())

    async def fetch(self, identity: str) -> CertBundle:
        current = self._bundles.get(identity)
        now = datetime.now(UTC)
        if current is not None and now < current.refresh_at:
            return current
        pending = self._pending.get(identity)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[CertBundle] = asyncio.get_running_loop().create_future()
        self._pending[identity] = fut
        try:
            bundle = self._ca.issue(identity, ttl=self._ttl)
        except Exception as exc:
            del self._pending[identity]
            if current is not None and current.is_valid_at(now):
                log.warning("certificate renewal for %s failed, keeping the current one: %s", identity, exc)
                fut.set_result(current)
                return current
            fut.set_exception(exc)
            fut.exception()
            raise
        del self._pending[identity]
        self._bundles[identity] = bundle
        log.info("certificate issued for %s (serial %x, expires %s)", identity, bundle.serial_number,
                 bundle.not_after.isoformat())
        fut.set_result(bundle)
        return bundle
