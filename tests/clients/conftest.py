"""The servers the client-parity suite shares.

`kiln`: one plain-HTTP server with API keys (one per client and mode) for every client test that does
not need a server of its own. `tls_kiln`: the same over HTTPS with a self-signed certificate, for
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


@pytest.fixture(scope="session")
def kiln(tmp_path_factory) -> Iterator[KilnProcess]:
    """The suite's shared server: keys required, loopback webhooks allowed (the receiver is local)."""
    data_dir = tmp_path_factory.mktemp("clients") / "data"
    process = KilnProcess(data_dir, *KEY_ARGS, "--allow-private-urls", pipelines=TEST_PIPELINES).start()
    yield process
    process.stop()


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
