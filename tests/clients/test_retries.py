"""A failure no retry can fix is sent once. Kiln answered 503 for an endpoint without weights and for a
request that ran out of device memory alone; @fal-ai/client retries 503 three times, so `fal.run`
ran the out-of-memory request four times and POSTed the weightless endpoint four times. Both
official clients are driven unmodified through a proxy that counts what reaches Kiln."""

from __future__ import annotations

import json
import shutil
import subprocess

import fal_client
import pytest

from testkit.servers import REPO, KilnProcess
from tests.fixtures.apps import TEST_PIPELINES
from tests.fixtures.counting_proxy import counting_proxy

pytestmark = pytest.mark.slow

JS = REPO / "tests" / "js"


def test_the_js_client_sends_each_permanent_failure_once(shared_kiln):
    assert shutil.which("node") and (JS / "node_modules" / "@fal-ai" / "client").is_dir(), "run `make test`"
    with counting_proxy(shared_kiln.url) as proxy:
        completed = subprocess.run(
            ["node", "permanent_failures.mjs", proxy.url], cwd=JS, capture_output=True, text=True, timeout=120
        )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report == {
        "runWithoutWeights": 501,
        "submitWithoutWeights": 501,
        "runOutOfMemory": 413,
        "subscribeOutOfMemory": 413,
    }
    assert proxy.count("POST", "//fal.run/kiln-test/needs-weights") == 1
    assert proxy.count("POST", "//queue.fal.run/kiln-test/needs-weights") == 1
    assert proxy.count("POST", "//fal.run/kiln-test/steps") == 1
    assert proxy.count("POST", "//queue.fal.run/kiln-test/steps") == 1
    results = [target for method, _, target in proxy.calls if method == "GET" and "/requests/" in target]
    assert sum(1 for target in results if not target.split("?")[0].endswith(("/status", "/status/stream"))) == 1


@pytest.fixture
def fal_through(tmp_path, monkeypatch):
    """fal_client pointed at a counting proxy in front of Kiln (the README's plain-HTTP rebind); Kiln's
    `--public-url` is the proxy, so the status and result URLs it hands out go through it too."""
    server = KilnProcess(tmp_path / "data", pipelines=TEST_PIPELINES)
    with counting_proxy(server.url) as proxy:
        server.extra_args = ("--public-url", proxy.url)
        server.start()
        try:
            monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{proxy.url}/queue/")
            monkeypatch.setattr(fal_client.client, "RUN_URL_FORMAT", f"{proxy.url}/run/")
            yield fal_client.SyncClient(key="kiln-python-test"), proxy
        finally:
            server.stop()


def test_the_python_client_sends_each_permanent_failure_once(fal_through):
    fal, proxy = fal_through
    for call, expected in (
        (lambda: fal.run("kiln-test/needs-weights", {}), 501),
        (lambda: fal.submit("kiln-test/needs-weights", {}), 501),
        (lambda: fal.run("kiln-test/steps", {"fail_with": "oom"}), 413),
        (lambda: fal.subscribe("kiln-test/steps", {"fail_with": "oom"}), 413),
    ):
        with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
            call()
        assert raised.value.status_code == expected
    assert proxy.count("POST", "/run/kiln-test/needs-weights") == 1
    assert proxy.count("POST", "/queue/kiln-test/needs-weights") == 1
    assert proxy.count("POST", "/run/kiln-test/steps") == 1
    assert proxy.count("POST", "/queue/kiln-test/steps") == 1
    results = [path for method, path, _ in proxy.calls if method == "GET" and not path.split("?")[0].endswith("/status")]
    assert len(results) == 1
