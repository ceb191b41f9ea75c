"""The README's client recipes keep every call on Kiln (issue 11 items 3 and 4).

Each recipe runs unmodified, as printed in the README (the `recipe_*` files here and in tests/js/),
in a process whose network layer reaches loopback only and records anything else it tries: for
Python a `sitecustomize` (tests/fixtures/egress_guard.py), for node a module loaded with `--import`
(tests/js/egress_guard.mjs). A refused call fails the recipe and is listed in the guard's log.

What the clients' source says, and these tests pin:
- fal-client 1.0.3 takes its run and queue hosts from FAL_RUN_HOST / FAL_QUEUE_RUN_HOST (https only),
  but `REST_URL = "https://rest.fal.ai"` (CDN tokens, the `fal` upload repository, realtime tokens)
  and `CDN_URL = "https://v3.fal.media"` (uploads) are constants with no variable. So with
  environment variables only, every upload and realtime call goes to fal: the env-only recipe sends
  images as data URIs instead; the rebind recipe sets all five URL settings and keeps everything,
  uploads included, on Kiln over HTTP or HTTPS.
- @fal-ai/serverless-client 0.15.0 (deprecated) applies `proxyUrl` only where `window` exists, so in
  node it calls fal; its `requestMiddleware` rewrites every URL it sends (rest host
  rest.alpha.fal.ai), and the upload PUT goes to the URL Kiln returns.
- @fal-ai/client 1.10.1: `proxyUrl` as a plain string is likewise browser-only; `{url, when: "always"}`
  and a `requestMiddleware` rewrite work everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.servers import REPO
from tests.fixtures.fal_clients import INPUT_SIZE, JS, KEYS, last_json_line, require_node_client
from tests.fixtures import egress_guard

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
VENV_BIN = str(Path(sys.executable).parent)


class Guard:
    """The egress guard for one process: its environment variables and what it refused."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(egress_guard.__file__, folder / "sitecustomize.py")
        self.folder = folder
        self.log = folder / "egress.log"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
            "PYTHONPATH": str(self.folder),
            "KILN_EGRESS_LOG": str(self.log),
            **extra,
        }

    def refused(self) -> list[str]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        assert any(line.startswith("active ") for line in lines), "the guard was not installed"
        return sorted({line.removeprefix("refused ") for line in lines if line.startswith("refused ")})


@pytest.fixture
def guard(tmp_path) -> Guard:
    return Guard(tmp_path / "guard")


def run(command: list[str], guard: Guard, cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=guard.env(**env), capture_output=True, text=True, timeout=timeout)


def node(script: str, *args: str, guard: Guard, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    require_node_client("@fal-ai/serverless-client")
    command = ["node", "--import", str(JS / "egress_guard.mjs"), str(JS / script), *args]
    return run(command, guard, cwd, **env)


def assert_printed_a_kiln_file(completed: subprocess.CompletedProcess, base: str) -> None:
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().splitlines()[-1].startswith(base + "/files/"), completed.stdout


# -- fal-client ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "https"])
def test_python_rebind_recipe_keeps_every_call_on_kiln(transport, request, guard, input_png):
    """The five URL settings: uploads included, nothing leaves Kiln, over HTTP and over HTTPS."""
    if transport == "http":
        base, extra = request.getfixturevalue("kiln").url, {}
    else:
        tls = request.getfixturevalue("tls_kiln")
        base, extra = tls.server.url, {"SSL_CERT_FILE": str(tls.cert)}
    completed = run(
        [sys.executable, str(HERE / "recipe_python.py")],
        guard,
        input_png.parent,
        KILN_URL=base,
        FAL_KEY=KEYS["recipe"],
        **extra,
    )
    assert_printed_a_kiln_file(completed, base)
    assert guard.refused() == []


def test_python_environment_only_recipe_keeps_every_call_on_kiln(tls_kiln, guard, input_png):
    completed = run(
        ["bash", str(HERE / "recipe_python_env.sh")],
        guard,
        input_png.parent,
        KILN_HOST=tls_kiln.host,
        FAL_KEY=KEYS["recipe"],
        SSL_CERT_FILE=str(tls_kiln.cert),
    )
    assert_printed_a_kiln_file(completed, tls_kiln.server.url)
    assert guard.refused() == []


UNREDIRECTED_SCRIPT = r"""
import json
import fal_client
from PIL import Image

calls = {
    "upload": lambda: fal_client.upload(b"abc", "text/plain"),
    "upload_file": lambda: fal_client.upload_file("input.png"),
    "upload_image": lambda: fal_client.upload_image(Image.open("input.png")),
    "realtime": lambda: fal_client.realtime("fal-ai/post-processing").__enter__(),
}
outcome = {}
for name, call in calls.items():
    try:
        call()
        outcome[name] = None
    except Exception as error:
        outcome[name] = type(error).__name__
print(json.dumps(outcome))
"""


def test_with_environment_variables_only_uploads_and_realtime_tokens_go_to_fal(tls_kiln, guard, input_png):
    """Why the env-only recipe uses data URIs: fal-client's upload and realtime calls go to
    rest.fal.ai (the CDN token first, so v3.fal.media is never reached) whatever the variables say."""
    completed = run(
        [sys.executable, "-c", UNREDIRECTED_SCRIPT],
        guard,
        input_png.parent,
        FAL_KEY=KEYS["recipe"],
        FAL_RUN_HOST=f"{tls_kiln.host}/run",
        FAL_QUEUE_RUN_HOST=f"{tls_kiln.host}/queue",
        SSL_CERT_FILE=str(tls_kiln.cert),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert last_json_line(completed.stdout) == dict.fromkeys(["upload", "upload_file", "upload_image", "realtime"], "EgressRefused")
    assert guard.refused() == ["rest.fal.ai:443"]


TLS_SCRIPT = r"""
import asyncio, json, sys, time
import fal_client
from testkit.images import data_uri, gradient_image, png_bytes

report = {}
image = data_uri(png_bytes(gradient_image(20, 10)))
handle = fal_client.submit("fal-ai/post-processing", {"image_url": image, "enable_vignette": True})
status = handle.status(with_logs=True)
while not isinstance(status, fal_client.Completed):
    time.sleep(0.05)
    status = handle.status(with_logs=True)
report["status_logs"] = [line["message"] for line in status.logs]
report["result"] = handle.get()
report["subscribe"] = fal_client.subscribe("kiln-test/steps", {"steps": 2, "tag": "tls"}, with_logs=True)
report["run"] = fal_client.run("fal-ai/post-processing", {"image_url": image, "sync_mode": True})
blocker = fal_client.submit("kiln-test/steps", {"steps": 400, "step_seconds": 0.02})
while not isinstance(blocker.status(), fal_client.InProgress):
    time.sleep(0.02)
queued = fal_client.submit("kiln-test/steps", {})
queued.cancel()
report["cancelled"] = queued.status().error_type
blocker.cancel()


async def async_calls():
    handle = await fal_client.submit_async("kiln-test/steps", {"tag": "async"})
    ran = await fal_client.run_async("kiln-test/steps", {"tag": "async-run"})
    return [(await handle.get())["tag"], ran["tag"], type(await fal_client.status_async("kiln-test/steps", handle.request_id)).__name__]


report["async"] = asyncio.run(async_calls())
errors = {}
for name, call in [
    ("invalid_enum", lambda: fal_client.run("fal-ai/post-processing", {"image_url": image, "tint_mode": "plaid"})),
    ("missing_image_url", lambda: fal_client.run("fal-ai/post-processing", {})),
    ("unknown_id", lambda: fal_client.status("fal-ai/post-processing", "no-such-request")),
    ("wrong_key", lambda: fal_client.SyncClient(key="not-a-kiln-key").run("kiln-test/steps", {})),
]:
    try:
        call()
        errors[name] = None
    except fal_client.client.FalClientHTTPError as error:
        errors[name] = error.status_code
report["errors"] = errors
print(json.dumps(report))
"""


def test_tls_with_environment_variables_only(tls_kiln, guard, tmp_path):
    """fal's own variables and a certificate the client trusts: the queue, sync and status calls of
    the module-level functions (sync and async) reach Kiln and nothing else."""
    completed = run(
        [sys.executable, "-c", TLS_SCRIPT],
        guard,
        REPO,
        PYTHONPATH=f"{guard.folder}:{REPO}",
        FAL_KEY=KEYS["recipe"],
        FAL_RUN_HOST=f"{tls_kiln.host}/run",
        FAL_QUEUE_RUN_HOST=f"{tls_kiln.host}/queue",
        SSL_CERT_FILE=str(tls_kiln.cert),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = last_json_line(completed.stdout)
    assert any(line.startswith("Completed in") for line in report["status_logs"])
    assert report["result"]["images"][0]["url"].startswith(f"https://{tls_kiln.host}/files/")
    assert report["subscribe"]["tag"] == "tls"
    assert report["run"]["images"][0]["url"].startswith("data:image/png;base64,")
    assert report["cancelled"] == "client_cancelled"
    assert report["async"] == ["async", "async-run", "Completed"]
    assert report["errors"] == {"invalid_enum": 422, "missing_image_url": 422, "unknown_id": 404, "wrong_key": 401}
    assert guard.refused() == []


# -- the JS clients --------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["recipe_proxy.mjs", "recipe_middleware.mjs", "recipe_serverless_client.mjs"])
def test_js_recipes_keep_every_call_on_kiln(recipe, kiln, guard, input_png):
    """Each recipe uploads its Blob input through Kiln and runs a request; nothing leaves Kiln."""
    completed = node(recipe, guard=guard, cwd=input_png.parent, KILN_URL=kiln.url, FAL_KEY=KEYS["recipe"])
    assert_printed_a_kiln_file(completed, kiln.url)
    assert guard.refused() == []


def test_browser_only_proxy_settings_leave_node_calls_on_fal(kiln, guard, tmp_path):
    """Why the README gives @fal-ai/serverless-client a requestMiddleware and @fal-ai/client the
    `{url, when: "always"}` form: in node a string `proxyUrl` is ignored and the call goes to fal."""
    completed = node("unredirected.mjs", kiln.url, KEYS["recipe"], guard=guard, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert last_json_line(completed.stdout) == {
        "serverlessClientProxyUrl": "EgressRefused",
        "clientStringProxyUrl": "EgressRefused",
    }
    assert guard.refused() == ["queue.fal.run"]


def test_serverless_client_surfaces_through_the_middleware_recipe(kiln, guard, input_png):
    """@fal-ai/serverless-client 0.15.0 through the recipe's rewrite: uploads (also of a Blob
    input), run, subscribe (polling and streaming), the queue calls, cancel and its errors."""
    key = KEYS["js-serverless"]
    completed = node("serverless_client.mjs", kiln.url, key, str(input_png), guard=guard, cwd=input_png.parent)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = last_json_line(completed.stdout)
    assert guard.refused() == []
    assert report["upload"].startswith(kiln.url + "/files/")
    assert (report["run"]["images"][0]["width"], report["run"]["images"][0]["height"]) == INPUT_SIZE
    assert report["subscribe"]["tag"] == "polled" and report["streaming"]["tag"] == "streamed"
    assert [m for m in report["subscribeLogs"] if m.startswith("step")] == ["step 1/3", "step 2/3", "step 3/3"]
    assert report["streamingStatuses"][-1] == "COMPLETED"
    assert report["streamStatus"]["done"] == "COMPLETED" and report["streamStatus"]["events"][-1] == "COMPLETED"
    assert report["status"]["status"] == "COMPLETED" and report["status"]["logs"]
    assert report["result"]["tag"] == "queued"
    queued, running = report["cancelled"]
    assert queued["error"]["status"] == 499 and running["error_type"] == "client_cancelled"
    errors = report["errors"]
    assert errors["invalid"]["error"]["name"] == "ValidationError" and errors["invalid"]["error"]["fields"] == [
        ["body", "grain_style"]
    ]
    assert errors["unknownRequest"]["error"]["status"] == 404 and errors["unknownEndpoint"]["error"]["status"] == 404
    assert errors["wrongKey"]["error"]["status"] == 401
