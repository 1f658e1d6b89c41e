"""Fixtures of the Kubernetes tests: a scripted API server on 127.0.0.1 and a KubeSource pointed at it
through a kubeconfig file (so the real client library's configuration loading is exercised too)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kube_fakeapi import FakeKubeApi, write_kubeconfig

from ambient.kube.source import KubeSource


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeKubeApi]:
    api = FakeKubeApi()
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
async def source(fake_api: FakeKubeApi, tmp_path: Path) -> AsyncIterator[KubeSource]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake_api.url)
    src = await KubeSource.connect(str(kubeconfig), watch_timeout=30)
    try:
        yield src
    finally:
        await src.aclose()
