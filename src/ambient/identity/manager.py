"""The node proxy's certificate manager: one certificate per local identity, always fresh.

Role: fetch ahead the certificates of the identities the proxy serves (the service accounts of its node's
pods), renew each at half its lifetime, keep the current certificate while renewal fails (retrying with
backoff 0.5 s -> 150 s), and hand certificates to the data path: `await get(identity)` (waits for the first
fetch) and `cached(identity)` (non-blocking, for per-handshake TLS callbacks). While an identity has no
certificate yet its pods cannot talk at all, so those retries are capped at `pending_backoff_max` (2 s): a
pod created during a control-plane outage gets its certificate within ~2 s of the CA answering again.
`snapshot()` is the config_dump `certificates` section. Implements `ztunnel.certs.CertSource` (`fetch`,
`cached`, `bundles`).

Invariants: at most one worker (and so one in-flight CSR) per identity; a bundle is replaced only by a
newly issued valid one; an expired bundle is never handed out (callers wait for a renewal instead);
workers are tasks of the TaskGroup of `run()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ambient.core.backoff import Backoff
from ambient.identity.certs import CertBundle
from ambient.identity.errors import IdentityError
from ambient.identity.spiffe import SpiffeId

log = logging.getLogger(__name__)

Fetcher = Callable[[SpiffeId], Awaitable[CertBundle]]


class CertificateUnavailableError(IdentityError):
    """No valid certificate for an identity (the first fetch has not succeeded yet, or it expired)."""


@dataclass
class _Slot:
    identity: SpiffeId
    bundle: CertBundle | None = None
    error: str = ""
    attempts: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set (and replaced) on each new bundle
    task: asyncio.Task[None] | None = None
    next_refresh: datetime | None = None
    last_used: float = field(default_factory=time.monotonic)


class CertificateManager:
    def __init__(
        self,
        fetch: Fetcher,
        *,
        backoff_min: float = 0.5,
        backoff_max: float = 150.0,
        pending_backoff_max: float = 2.0,
        idle_grace: float = 60.0,
    ) -> None:
        self._fetch = fetch
        self.idle_grace = idle_grace
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.pending_backoff_max = pending_backoff_max
        self._slots: dict[str, _Slot] = {}
        self._tg: asyncio.TaskGroup | None = None

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Own the per-identity workers until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                for slot in self._slots.values():
                    self._start(slot)
                await asyncio.Event().wait()
            finally:
                self._tg = None

    def _start(self, slot: _Slot) -> None:
        if self._tg is not None and (slot.task is None or slot.task.done()):
            slot.task = self._tg.create_task(self._worker(slot), name=f"cert {slot.identity}")

    # ------------------------------------------------------------------ which identities
    def track(self, identity: SpiffeId | str) -> None:
        """Fetch (and keep renewing) the certificate of `identity`."""
        ident = identity if isinstance(identity, SpiffeId) else SpiffeId.parse(identity)
        slot = self._slots.get(ident.uri)
        if slot is None:
            slot = self._slots[ident.uri] = _Slot(ident)
        self._start(slot)

    def untrack(self, identity: SpiffeId | str) -> None:
        uri = identity.uri if isinstance(identity, SpiffeId) else identity
        slot = self._slots.pop(uri, None)
        if slot is not None and slot.task is not None:
            slot.task.cancel()

    def set_identities(self, identities: Iterable[SpiffeId | str]) -> None:
        """Fetch ahead exactly these identities (the service accounts of the node's pods). An identity no
        longer listed is dropped once nobody asked for it for `idle_grace` seconds, so a pod whose
        certificate was requested just before the state listed it is not dropped."""
        wanted = {(i if isinstance(i, SpiffeId) else SpiffeId.parse(i)).uri: i for i in identities}
        now = time.monotonic()
        for uri, slot in list(self._slots.items()):
            if uri not in wanted and now - slot.last_used > self.idle_grace:
                self.untrack(uri)
        for ident in wanted.values():
            self.track(ident)

    # ------------------------------------------------------------------ access
    def cached(self, identity: str) -> CertBundle | None:
        slot = self._slots.get(identity)
        if slot is None or slot.bundle is None or slot.bundle.is_expired():
            return None
        slot.last_used = time.monotonic()
        return slot.bundle

    def bundles(self) -> Iterable[CertBundle]:
        return [s.bundle for s in self._slots.values() if s.bundle is not None]

    async def get(self, identity: SpiffeId | str, timeout: float | None = None) -> CertBundle:  # noqa: ASYNC109
        """A valid certificate for `identity`, tracking it and waiting for the first fetch if needed."""
        uri = identity.uri if isinstance(identity, SpiffeId) else identity
        self.track(identity)
        self._slots[uri].last_used = time.monotonic()

        async def wait() -> CertBundle:
            while True:
                slot = self._slots.get(uri)
                if slot is None:
                    raise CertificateUnavailableError(f"{uri} is no longer tracked")
                if slot.bundle is not None and not slot.bundle.is_expired():
                    return slot.bundle
                await slot.changed.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            slot = self._slots.get(uri)
            reason = slot.error if slot and slot.error else "no answer from the CA yet"
            raise CertificateUnavailableError(
                f"no valid certificate for {uri} after {timeout}s: {reason}",
                hint="check the control plane (ambient logs controlplane) and the node token",
            ) from None

    async def fetch(self, identity: str) -> CertBundle:
        """`ztunnel.certs.CertSource.fetch`."""
        return await self.get(identity)

    # ------------------------------------------------------------------ worker
    async def _worker(self, slot: _Slot) -> None:
        backoff = Backoff(self.backoff_min, self.backoff_max, jitter=0.1)
        while True:
            slot.attempts += 1
            try:
                bundle = await self._fetch(slot.identity)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the current certificate; retry with backoff
                slot.error = str(exc)
                delay = backoff.next()
                if slot.bundle is None:
                    # Nothing to serve meanwhile: retry often enough to heal soon after the CA is back.
                    delay = min(delay, self.pending_backoff_max)
                else:
                    # Never sleep past the expiry of the certificate we still serve.
                    delay = min(delay, max(slot.bundle.expires_in().total_seconds(), self.backoff_min))
                log.warning("certificate for %s: fetch failed (%s); retry in %.1fs", slot.identity, exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            slot.bundle, slot.error = bundle, ""
            # Half of the remaining life from receipt: CAs back-date not_before for clock skew, which would
            # put `bundle.refresh_at` of a short-lived certificate in the past (a renewal storm).
            received = max(bundle.not_before, datetime.now(UTC))
            slot.next_refresh = received + (bundle.not_after - received) / 2
            ev, slot.changed = slot.changed, asyncio.Event()
            ev.set()
            log.info("certificate for %s issued, valid until %s", slot.identity, bundle.not_after.isoformat())
            wait = (slot.next_refresh - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(max(wait, 0.05))

    # ------------------------------------------------------------------ debug
    def snapshot(self) -> list[dict[str, Any]]:
        """config_dump `certificates`: per identity its state, chain and roots (no private keys)."""
        out = []
        for uri, slot in sorted(self._slots.items()):
            b = slot.bundle
            if b is not None and not b.is_expired():
                state = "Available"
            elif slot.error:
                state = f"Unavailable: {slot.error}"
            else:
                state = "Initializing"
            entry: dict[str, Any] = {
                "identity": uri,
                "state": state,
                "last_error": slot.error,
                "cert_chain": [],
                "root_certs": [],
            }
            if b is not None:
                entry["cert_chain"] = [
                    {
                        "pem": pem.decode(),
                        "serial_number": f"{b.serial_number:x}" if i == 0 else "",
                        "valid_from": b.not_before.isoformat() if i == 0 else "",
                        "expiration_time": b.not_after.isoformat() if i == 0 else "",
                    }
                    for i, pem in enumerate(b.chain_pem)
                ]
                entry["root_certs"] = [{"pem": pem.decode()} for pem in b.roots_pem]
                entry["next_refresh"] = slot.next_refresh.isoformat() if slot.next_refresh else ""
            out.append(entry)
        return out
