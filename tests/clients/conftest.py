"""The servers the client-parity suite shares.

`kiln`: one plain-HTTP server with API keys (one per client and mode) for every client test that does
not need a server of its own, on the embedded queue and again on a Redis queue: the queue-dependent
client tests (`REDIS_TESTS`) run on both, one server per queue. `tls_kiln`: the same over HTTPS with a self-signed certificate, for
the recipes that use fal's host variables, from which fal-client builds only `https://` URLs. The
README's Python recipes live here as files (`recipe_*`, the JS ones in tests/js/), run as printed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.images import gradient_image, png_bytes
from testkit.servers import KilnProcess
from tests.fixtures.apps import TEST_PIPELINES
from tests.fixtures.fal_clients import INPUT_SIZE, KEY_ARGS, WebhookReceiver, self_signed_certificate, webhook_receiver

# the README recipes are scripts a test runs as printed, not modules to import
collect_ignore_glob = ["recipe_*.py"]

# the client tests that also run against a Redis queue: everything the queue decides (submit,
# status with logs, the status stream, result, cancel, start timeouts, webhooks), with both clients;
# the rest (uploads, errors, recipes) does not touch the queue and runs on the embedded one only
REDIS_TESTS = {
    "test_python_client.py": {
        "test_run",
        "test_submit_status_with_logs_iter_events_and_result",
        "test_subscribe_with_logs_callbacks_and_queue_options",
        "test_webhook_url",
        "test_cancel_a_queued_and_a_running_request",
        "test_client_timeout_cancels_and_start_timeout_is_a_user_504",
    },
    # one node run of the proxy mode makes every call; these check its report
    "test_js_client.py": {
        "test_run",
        "test_subscribe_polling_with_logs_and_callbacks",
        "test_subscribe_streaming",
        "test_queue_submit_status_result",
        "test_stream_status",
        "test_webhook_url",
        "test_cancel_a_queued_and_a_running_request",
        "test_client_timeout_and_start_timeout",
    },
}


@pytest.fixture(scope="session")
def kiln_queue() -> str:
    """The queue of `kiln`; tests that name `kiln` are parametrised over both (pytest_generate_tests)."""
    return "sqlite"


def pytest_generate_tests(metafunc) -> None:
    if "kiln" in metafunc.fixturenames:
        metafunc.parametrize("kiln_queue", ["sqlite", "redis"], scope="session")


@pytest.fixture(scope="session")
def kiln(kiln_queue, request, tmp_path_factory) -> Iterator[KilnProcess]:
    """The suite's shared server: keys required, loopback webhooks allowed (the receiver is local);
    on the embedded queue, then on a queue of its own on the session's redis-server."""
    data_dir = tmp_path_factory.mktemp(f"clients-{kiln_queue}") / "data"
    queue = ["--queue", request.getfixturevalue("redis_server").queue_url()] if kiln_queue == "redis" else []
    process = KilnProcess(data_dir, *KEY_ARGS, "--allow-private-urls", *queue, pipelines=TEST_PIPELINES).start()
    yield process
    process.stop()


def pytest_collection_modifyitems(config, items) -> None:
    """Leaves out the Redis runs of the tests not in REDIS_TESTS (and of the JS middleware mode)."""
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("kiln_queue") != "redis":
            keep.append(item)
            continue
        chosen = REDIS_TESTS.get(item.path.name, set())
        if item.originalname in chosen and params.get("mode", "proxy") == "proxy":
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@dataclass(frozen=True)
class TlsKiln:
    server: KilnProcess
    cert: Path

    @property
    def host(self) -> str:
        """What fal's host variables take: `host:port`, no scheme."""
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture(scope="session")
def tls_kiln(tmp_path_factory) -> Iterator[TlsKiln]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_certificate(folder)
    process = KilnProcess(folder / "data", *KEY_ARGS, pipelines=TEST_PIPELINES, tls=(cert, key)).start()
    yield TlsKiln(process, cert)
    process.stop()


@pytest.fixture
def input_png(tmp_path) -> Path:
    """`input.png`, the file name the recipes read, alone in a folder."""
    path = tmp_path / "input.png"
    path.write_bytes(png_bytes(gradient_image(*INPUT_SIZE)))
    return path


@pytest.fixture(scope="session")
def webhooks() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as receiver:
        yield receiver
