"""Fixtures for CLI unit tests: `fake` (an in-memory API client) and `run` (invoke the real typer app
through CliRunner with that client)."""

from __future__ import annotations

import pytest
from cli_fakes import FakeClient, Runner
from typer.testing import CliRunner, Result

from ambient.cli.context import CliState
from ambient.cli.main import app


@pytest.fixture
def fake() -> FakeClient:
    return FakeClient()


@pytest.fixture
def run(fake: FakeClient) -> Runner:
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        obj = CliState(client_factory=lambda _state: fake)
        return runner.invoke(app, list(args), obj=obj, input=input, catch_exceptions=False)

    return invoke
