"""Schemathesis against the whole `/openapi.json`: no generated request may produce a 5xx.

Runs on the built-in endpoints only (the test pipelines fail and crash on purpose), with DNS
answered locally so generated http URLs fail fast instead of waiting on a resolver. No model weights
are installed here, so a valid request to a diffusion endpoint gets the documented 501 naming the
`kiln weights` command, and a generated `X-Fal-Request-Timeout` of a few microseconds gets the
documented 504 of a request that did not start in time; those two answers are allowed, every other
5xx fails.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from server.app import create_app
from server.config import Settings
from server.registry import Registry

pytestmark = pytest.mark.slow

_real_getaddrinfo = socket.getaddrinfo


def _numeric_only_getaddrinfo(host, *args, **kwargs):
    if host in ("testserver", "127.0.0.1", "localhost"):
        return _real_getaddrinfo(host, *args, **kwargs)
    try:
        return _real_getaddrinfo(host, *args, **{**kwargs, "flags": socket.AI_NUMERICHOST})
    except socket.gaierror:
        raise socket.gaierror(socket.EAI_NONAME, "no DNS in this test") from None


# schemathesis drives the app's lifespan itself, which starts and stops its services
_APP = create_app(Settings(data_dir=Path(tempfile.mkdtemp(prefix="kiln-fuzz-"))), Registry.discover(Settings.pipeline_modules))
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@pytest.fixture(scope="module", autouse=True)
def offline_dns():
    socket.getaddrinfo = _numeric_only_getaddrinfo
    yield
    socket.getaddrinfo = _real_getaddrinfo


def not_a_server_error_except_documented(ctx, response, case):
    if response.status_code == 501 and response.json().get("error_type") == "endpoint_unavailable":
        assert "kiln weights" in response.json()["detail"]
        return None
    if response.status_code == 504 and response.json().get("error_type") == "request_timeout":
        assert "X-Fal-Request-Timeout" in case.headers
        return None
    return not_a_server_error(ctx, response, case)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    case.call_and_validate(checks=[not_a_server_error_except_documented])
