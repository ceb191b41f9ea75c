"""Fixtures every test folder uses: Kiln servers as real subprocesses and in-process apps.

Helpers that tests import live in tests/fixtures/ (test-only) and testkit/ (shared with bench/).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.registry import Registry
from testkit.servers import KilnProcess
from tests.fixtures.apps import TEST_PIPELINES, start_app, test_registry


@pytest.fixture
def kiln_process(tmp_path) -> Iterator[callable]:
    """Factory: `kiln_process(*args)` starts a server on a fresh data dir; all are stopped after."""
    started: list[KilnProcess] = []

    def start(*args: str, data_dir: Path | None = None, **kwargs) -> KilnProcess:
        directory = data_dir or tmp_path / f"data{len(started)}"
        process = KilnProcess(directory, *args, pipelines=TEST_PIPELINES, **kwargs).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def shared_kiln(tmp_path_factory) -> Iterator[KilnProcess]:
    """One plain-HTTP server, no keys, shared by the client tests that do not restart it."""
    process = KilnProcess(tmp_path_factory.mktemp("shared") / "data", pipelines=TEST_PIPELINES).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The built-in endpoints and the test pipelines (tests/fixtures/pipelines.py)."""
    return test_registry()


@pytest.fixture
def make_client(tmp_path, registry) -> Iterator[callable]:
    """Factory: `make_client(**settings)` -> a started TestClient; all are shut down after the test."""
    clients: list[TestClient] = []

    def make(**overrides) -> TestClient:
        client = start_app(tmp_path / f"data{len(clients)}", registry, **overrides)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()
