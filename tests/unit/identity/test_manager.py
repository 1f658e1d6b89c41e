"""identity.manager: fetch ahead, renew at half-life, keep the valid certificate through a CA outage."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from ambient.identity.ca import LocalCA
from ambient.identity.certs import CertBundle
from ambient.identity.manager import CertificateManager, CertificateUnavailableError
from ambient.identity.spiffe import SpiffeId

pytestmark = pytest.mark.timeout(60)
WEB = "spiffe://cluster.local/ns/default/sa/web"


class FakeCa:
    def __init__(self, tmp: Path, ttl: float) -> None:
        self.ca = LocalCA.load_or_create(tmp / "ca")
        self.ttl = ttl
        self.down = False
        self.calls = 0

    async def fetch(self, identity: SpiffeId) -> CertBundle:
        self.calls += 1
        if self.down:
            raise ConnectionError("CA unreachable")
        return self.ca.issue(identity, ttl=timedelta(seconds=self.ttl))


async def test_renews_at_half_life_and_keeps_serving(tmp_path: Path) -> None:
    ca = FakeCa(tmp_path, ttl=2.0)
    mgr = CertificateManager(ca.fetch, backoff_min=0.1, backoff_max=0.5)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(mgr.run())
        first = await mgr.get(WEB, timeout=10)
        assert first.identity.uri == WEB and mgr.cached(WEB) is first
        serials = {first.serial_number}
        for _ in range(30):  # ~3 s: at least two renewals, always a valid certificate available
            await asyncio.sleep(0.1)
            current = mgr.cached(WEB)
            assert current is not None and current.is_valid_at()
            serials.add(current.serial_number)
        assert len(serials) >= 3
        assert ca.calls <= 8  # renewal at half-life, not a storm
        snap = mgr.snapshot()
        assert snap[0]["identity"] == WEB and snap[0]["state"] == "Available"
        assert "PRIVATE KEY" not in str(snap)
        task.cancel()


async def test_keeps_the_valid_certificate_while_the_ca_is_down(tmp_path: Path) -> None:
    ca = FakeCa(tmp_path, ttl=4.0)
    mgr = CertificateManager(ca.fetch, backoff_min=0.1, backoff_max=0.4)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(mgr.run())
        first = await mgr.get(WEB, timeout=10)
        ca.down = True
        await asyncio.sleep(2.6)  # past the half-life: renewals fail, the old cert is still served
        assert mgr.cached(WEB) is first and first.is_valid_at()
        assert mgr.snapshot()[0]["state"] == "Available"
        calls_during_outage = ca.calls - 1
        assert 2 <= calls_during_outage <= 12  # retried with backoff, not a tight loop
        ca.down = False
        await asyncio.sleep(0.8)
        renewed = mgr.cached(WEB)
        assert renewed is not None and renewed.serial_number != first.serial_number
        task.cancel()


async def test_get_times_out_with_the_reason_and_set_identities(tmp_path: Path) -> None:
    ca = FakeCa(tmp_path, ttl=60)
    ca.down = True
    mgr = CertificateManager(ca.fetch, backoff_min=0.05, backoff_max=0.1, idle_grace=0.0)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(mgr.run())
        with pytest.raises(CertificateUnavailableError) as err:
            await mgr.get(WEB, timeout=0.5)
        assert "CA unreachable" in err.value.message
        assert mgr.snapshot()[0]["state"].startswith("Unavailable: CA unreachable")
        ca.down = False
        other = "spiffe://cluster.local/ns/default/sa/db"
        mgr.set_identities([other])
        bundle = await mgr.get(other, timeout=10)
        assert bundle.identity.service_account == "db"
        assert [s["identity"] for s in mgr.snapshot()] == [other]  # web is no longer tracked
        task.cancel()


async def test_an_identity_without_certificate_heals_soon_after_a_long_outage(tmp_path: Path) -> None:
    # The long back-off is for renewals (a valid certificate is still served); an identity with nothing to
    # serve retries at least every `pending_backoff_max`, so its pods work soon after the CA is back.
    ca = FakeCa(tmp_path, ttl=60.0)
    ca.down = True
    mgr = CertificateManager(ca.fetch, backoff_min=0.05, backoff_max=150.0, pending_backoff_max=0.3)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(mgr.run())
        waiter = tg.create_task(mgr.get(WEB, timeout=30))
        while ca.calls < 8:  # noqa: ASYNC110 - 0.05 .. 6.4 s uncapped; capped at 0.3 s, within ~2 s
            await asyncio.sleep(0.05)
        ca.down = False
        back = asyncio.get_running_loop().time()
        bundle = await waiter
        assert bundle.identity.uri == WEB
        assert asyncio.get_running_loop().time() - back < 1.0
        task.cancel()
