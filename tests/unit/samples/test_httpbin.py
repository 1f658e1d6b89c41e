"""The sample httpbin answers its endpoints with the client address it saw."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ambient.samples.httpbin import make_app


@pytest.fixture
async def client() -> TestClient:  # type: ignore[misc]
    async with TestClient(TestServer(make_app(), host="127.0.0.1")) as c:
        yield c


async def test_ip_reports_client_address(client: TestClient) -> None:
    resp = await client.get("/ip")
    assert resp.status == 200
    assert (await resp.json()) == {"origin": "127.0.0.1"}


async def test_get_echoes_method_args_headers(client: TestClient) -> None:
    resp = await client.get("/get?a=1", headers={"X-Probe": "yes"})
    body = await resp.json()
    assert body["args"] == {"a": "1"}
    assert body["headers"]["X-Probe"] == "yes"
    assert body["method"] == "GET"


async def test_status_bytes_stream(client: TestClient) -> None:
    assert (await client.get("/status/418")).status == 418
    assert (await client.get("/status/abc")).status == 400
    data = await (await client.get("/bytes/1000")).read()
    assert len(data) == 1000
    text = await (await client.get("/stream/3")).text()
    assert [json.loads(line)["id"] for line in text.splitlines()] == [0, 1, 2]


async def test_bytes_limit_is_enforced(client: TestClient) -> None:
    resp = await client.get(f"/bytes/{200 * 1024 * 1024}")
    assert resp.status == 400
    assert "between" in await resp.text()


async def test_a_name_given_to_make_app_answers_instead_of_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "from-env")
    async with TestClient(TestServer(make_app(pod_name="api.example.test"), host="127.0.0.1")) as named:
        assert (await (await named.get("/")).json())["pod"] == "api.example.test"
    async with TestClient(TestServer(make_app(), host="127.0.0.1")) as plain:
        assert (await (await plain.get("/")).json())["pod"] == "from-env"
