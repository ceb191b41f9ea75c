"""Fixtures the server tests share (helpers they import are in tests/fixtures/)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.fixtures.apps import start_app
from tests.fixtures.file_server import FileServer, file_server


@pytest.fixture(scope="module")
def loopback_kiln(tmp_path_factory, registry) -> Iterator[TestClient]:
    """An in-process server allowed to fetch private URLs, so that a loopback test server can stand in
    for a host on the internet."""
    client = start_app(tmp_path_factory.mktemp("loopback"), registry, allow_private_urls=True)
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def file_host() -> Iterator[FileServer]:
    """A loopback HTTP server whose replies a test sets per path."""
    with file_server() as running:
        yield running
