"""A failure no retry can fix is sent once. Kiln answered 503 for an endpoint without weights and for a
request that ran out of device memory alone; @fal-ai/client retries 503 three times, so `fal.run`
ran the out-of-memory request four times and POSTed the weightless endpoint four times. Both
official clients are driven unmodified through a proxy that counts what reaches Kiln.

A start timeout (`X-Fal-Request-Timeout`) that passes is the same kind of failure: Kiln answers 504
with `X-Fal-Request-Timeout-Type: user`, which both clients treat as final; and fal-client does not
retry a request that timed out on the client's side when it carried that header.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import fal_client
import httpx
import pytest

from testkit.images import data_uri, gradient_image, png_bytes
from testkit.servers import KilnProcess
from tests.fixtures.fal_clients import JS, KEYS, last_json_line, require_node_client
from tests.fixtures.apps import TEST_PIPELINES
from tests.fixtures.counting_proxy import counting_proxy

pytestmark = pytest.mark.slow

PP = "fal-ai/post-processing"


def occupy_the_worker(server_url: str, key: str) -> dict:
    """A long request, sent straight to Kiln (not counted), that the only worker is running."""
    headers = {"Authorization": f"Key {key}"}
    blocker = httpx.post(f"{server_url}/queue/kiln-test/steps", json={"steps": 400, "step_seconds": 0.02}, headers=headers).json()
    while httpx.get(blocker["status_url"], headers=headers).json()["status"] != "IN_PROGRESS":
        time.sleep(0.02)
    return blocker


def test_the_js_client_sends_each_permanent_failure_once(kiln):
    require_node_client()
    with counting_proxy(kiln.url) as proxy:
        completed = subprocess.run(
            ["node", "permanent_failures.mjs", proxy.url, kiln.url], cwd=JS, capture_output=True, text=True, timeout=120
        )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert last_json_line(completed.stdout) == {
        "runWithoutWeights": 501,
        "submitWithoutWeights": 501,
        "runOutOfMemory": 413,
        "subscribeOutOfMemory": 413,
        "runStartTimeout": 504,
        "subscribeStartTimeout": 504,
    }
    assert proxy.count("POST", "//fal.run/kiln-test/needs-weights") == 1
    assert proxy.count("POST", "//queue.fal.run/kiln-test/needs-weights") == 1
    assert proxy.count("POST", "//fal.run/kiln-test/steps") == 1
    assert proxy.count("POST", "//queue.fal.run/kiln-test/steps") == 1
    assert proxy.count("POST", "//fal.run/fal-ai/post-processing") == 1
    assert proxy.count("POST", "//queue.fal.run/fal-ai/post-processing") == 1
    results = [
        target.split("?")[0]
        for method, _, target in proxy.calls
        if method == "GET" and "/requests/" in target and not target.split("?")[0].endswith(("/status", "/status/stream"))
    ]
    assert len(results) == 2 and {result.split("/")[3] for result in results} == {"kiln-test", "fal-ai"}


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
            yield fal_client.SyncClient(key=KEYS["python"]), proxy, server
        finally:
            server.stop()


def test_the_python_client_sends_each_permanent_failure_once(fal_through):
    fal, proxy, server = fal_through
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

    # start timeouts (sync and async clients) and a client timeout, while the worker is busy
    blocker = occupy_the_worker(server.url, KEYS["python"])
    image = {"image_url": data_uri(png_bytes(gradient_image(8, 8))), "enable_blur": True}

    def run_async():
        return asyncio.run(fal_client.AsyncClient(key=KEYS["python"]).run(PP, image, start_timeout=1.1))

    try:
        with ThreadPoolExecutor(4) as pool:
            calls = {
                "run": pool.submit(fal.run, PP, image, start_timeout=1.1),
                "run_async": pool.submit(run_async),
                "subscribe": pool.submit(fal.subscribe, PP, image, start_timeout=1.1),
                "client_timeout": pool.submit(fal.run, PP, image, timeout=0.5, start_timeout=30),
            }
            outcomes = {name: call.exception(timeout=60) for name, call in calls.items()}
    finally:
        httpx.put(blocker["cancel_url"], headers={"Authorization": f"Key {KEYS['python']}"})
    for name in ("run", "run_async", "subscribe"):
        error = outcomes[name]
        assert isinstance(error, fal_client.FalClientHTTPError) and error.status_code == 504, (name, error)
        assert error.response_headers["x-fal-request-timeout-type"] == "user"
    assert isinstance(outcomes["client_timeout"], httpx.ReadTimeout)
    assert proxy.count("POST", "/run/fal-ai/post-processing") == 3
    assert proxy.count("POST", "/queue/fal-ai/post-processing") == 1
    results = [path for method, path, _ in proxy.calls if method == "GET" and "/fal-ai/post-processing/requests/" in path]
    assert len([path for path in results if not path.split("?")[0].endswith("/status")]) == 1
