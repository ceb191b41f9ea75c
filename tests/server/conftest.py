"""In-process Kiln apps for protocol tests (Starlette's TestClient drives the ASGI app directly)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.registry import Registry
from tests.conftest import TEST_PIPELINES


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry.discover(("pipelines", *TEST_PIPELINES))


@pytest.fixture
def make_client(tmp_path, registry) -> Iterator[callable]:
    """Factory: `make_client(**settings)` -> a started TestClient; all are shut down after the test."""
    clients: list[TestClient] = []

    def make(**overrides) -> TestClient:
        settings = dataclasses.replace(Settings(data_dir=tmp_path / f"data{len(clients)}"), **overrides)
        client = TestClient(create_app(settings, registry))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def wait_completed(client: TestClient, status_url: str, timeout: float = 30.0, **headers) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(status_url, headers=headers)
        if response.json()["status"] == "COMPLETED":
            return response.json()
        time.sleep(0.02)
    raise AssertionError(f"{status_url} did not complete in {timeout}s")
