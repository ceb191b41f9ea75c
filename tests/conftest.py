"""Fixtures every test folder uses: Kiln servers as real subprocesses and in-process apps.

Helpers that tests import live in tests/fixtures/ (test-only) and testkit/ (shared with bench/).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.registry import Registry
from testkit.servers import KilnProcess, RedisServer
from tests.fixtures.apps import TEST_PIPELINES, start_app, test_registry
from tests.fixtures.redis_server import start_redis_server


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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """One real redis-server for the session (AOF, fsync always); each test takes a queue of its own
    on it (`redis_server.queue_url()`, a key prefix of its own)."""
    server = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def queue_backend() -> str:
    """The queue `make_client` servers use: `sqlite`; a module parametrises it to run on Redis too."""
    return "sqlite"


@pytest.fixture
def make_client(tmp_path, registry, queue_backend, request) -> Iterator[callable]:
    """Factory: `make_client(**settings)` -> a started TestClient; all are shut down after the test.
    With `queue_backend` "redis", each server gets a queue of its own on the session's Redis."""
    clients: list[TestClient] = []

    def make(**overrides) -> TestClient:
        if queue_backend == "redis" and "queue" not in overrides:
            overrides["queue"] = request.getfixturevalue("redis_server").queue_url()
        client = start_app(tmp_path / f"data{len(clients)}", registry, **overrides)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()
