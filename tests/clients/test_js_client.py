"""The real `@fal-ai/client` 1.10.1, run by node, against Kiln: every public surface, two ways.

`proxy`: the client's own proxy mode (`proxyUrl: {url: <kiln>/api/fal/proxy, when: "always"}`), no
custom code. `middleware`: a `requestMiddleware` that rewrites fal's three hosts onto Kiln. One node
run per mode (tests/js/parity.mjs) makes every call and reports what each returned or threw; each
test here checks one surface of that report.

Covered: storage.upload (small, and 120 MiB in parts), Blob and File inputs uploaded by the client,
run, subscribe (polling with logs and callbacks, and streaming), queue.submit/status/streamStatus/
result/cancel (queued and running), webhookUrl, 401/404/422 and a failed request as ApiError /
ValidationError, the `timeout` of subscribe and `startTimeout` (504, a user timeout), and AbortSignals
on run, submit, subscribe, result and a status stream. `fal.stream` reaches Kiln and gets 404: no
Kiln endpoint streams. `fal.realtime` is not covered: its WebSocket URL is fixed to wss://fal.run.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from server.files import FileStore
from testkit.images import gradient_image, png_bytes
from tests.fixtures.fal_clients import JS, KEYS, last_json_line, require_node_client
from tests.fixtures.large_files import MIB, sha256_of, write_padded_png

pytestmark = pytest.mark.slow

MODES = ("proxy", "middleware")


def node(mode: str, server_url: str, key: str, *args: str, timeout: float = 120, env: dict | None = None) -> dict:
    require_node_client()
    completed = subprocess.run(
        ["node", "parity.mjs", mode, server_url, key, *args],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return last_json_line(completed.stdout)


@pytest.fixture(scope="module", params=MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def report(mode, kiln, webhooks, tmp_path_factory) -> dict:
    """Every call of one mode, made by one node run."""
    image = tmp_path_factory.mktemp(f"js-{mode}") / "input.png"
    image.write_bytes(png_bytes(gradient_image(32, 20)))
    return node(mode, kiln.url, KEYS[f"js-{mode}"], str(image), env={"WEBHOOK_URL": webhooks.url})


def test_calls_go_only_to_kiln(report, mode):
    prefixes = ("/api/fal/proxy", "/cdn/") if mode == "proxy" else ("/queue/", "/run/", "/rest/", "/cdn/")
    assert report["calls"] and all(call.split(" ")[1].startswith(prefixes) for call in report["calls"])


def test_upload_and_blob_and_file_inputs(report, kiln):
    assert report["upload"].startswith(kiln.url + "/files/") and report["upload"].endswith(".png")
    auto = report["autoUpload"]
    for image in (auto["file"], auto["blob"]):
        assert (image["width"], image["height"]) == (32, 20)
    assert auto["stepsImageSize"] == [32, 20]


def test_run(report):
    run = report["run"]
    assert run["requestId"] and run["data"]["provenance"]["request_id"] == run["requestId"]
    assert (run["data"]["images"][0]["width"], run["data"]["images"][0]["height"]) == (32, 20)


def test_subscribe_polling_with_logs_and_callbacks(report):
    subscribed = report["subscribe"]
    assert subscribed["requestId"] == subscribed["enqueued"] and subscribed["data"]["tag"] == "polled"
    assert subscribed["statuses"][-1] == "COMPLETED" and set(subscribed["statuses"]) <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    assert [m for m in subscribed["logs"] if m.startswith("step")] == ["step 1/3", "step 2/3", "step 3/3"]


def test_subscribe_streaming(report):
    streaming = report["streaming"]
    assert streaming["data"]["tag"] == "streamed" and streaming["statuses"][-1] == "COMPLETED"
    assert [m for m in streaming["logs"] if m.startswith("step")] == ["step 1/3", "step 2/3", "step 3/3"]


def test_queue_submit_status_result(report, kiln):
    queue = report["queue"]
    request_id = queue["submitted"]["request_id"]
    assert queue["submitted"]["status_url"] == f"{kiln.url}/queue/fal-ai/post-processing/requests/{request_id}/status"
    assert queue["result"]["requestId"] == request_id
    assert queue["result"]["data"]["images"][0]["content_type"] == "image/png"
    assert queue["statuses"][-1] == "COMPLETED" and any(m.startswith("Completed in") for m in queue["logs"])


def test_stream_status(report):
    watched = report["streamStatus"]
    assert watched["statuses"][-1] == "COMPLETED" == watched["done"]
    assert [m for m in watched["logs"] if m.startswith("step")] == ["step 1/3", "step 2/3", "step 3/3"]
    assert watched["requestId"] and watched["result"] == "watched"


def test_webhook_url(report, webhooks):
    delivery = webhooks.wait_for(report["webhook"]["requestId"])
    assert delivery["status"] == "OK" and delivery["payload"]["tag"] == "hooked"


def test_cancel_a_queued_and_a_running_request(report):
    queued, running = report["cancel"]["queued"], report["cancel"]["running"]
    assert queued["before"] == "IN_QUEUE"
    assert queued["after"]["status"] == "COMPLETED" and queued["after"]["error_type"] == "client_cancelled"
    assert running["after"]["status"] == "COMPLETED" and running["after"]["error_type"] == "client_cancelled"
    for cancelled in (queued, running):
        error = cancelled["result"]["error"]
        assert error["isApiError"] and error["status"] == 499 and error["body"]["error_type"] == "client_cancelled"
    again = report["cancel"]["again"]["error"]  # a completed request cannot be cancelled
    assert again["isApiError"] and again["status"] == 400


def test_errors_as_the_client_raises_them(report):
    errors = report["errors"]
    invalid = errors["invalid"]["error"]
    assert invalid["isValidationError"] and invalid["status"] == 422 and invalid["fields"] == [["body", "grain_style"]]
    missing = errors["missing"]["error"]
    assert missing["isValidationError"] and missing["fields"] == [["body", "image_url"]]
    for name in ("unknownRequest", "unknownEndpoint", "stream"):
        error = errors[name]["error"]
        assert error["isApiError"] and error["status"] == 404 and error["body"]["error_type"] == "not_found", name
    failed = errors["failed"]["error"]
    assert failed["isApiError"] and failed["status"] == 500 and failed["requestId"]
    for name in ("wrongKey", "wrongKeyUpload"):
        error = errors[name]["error"]
        assert error["isApiError"] and error["status"] == 401 and error["body"]["error_type"] == "unauthorized", name


def test_client_timeout_and_start_timeout(report):
    timeouts = report["timeouts"]
    assert timeouts["client"]["error"]["message"] == "Client timed out waiting for the request to complete after 2500ms"
    assert timeouts["clientCancelled"]["error_type"] == "client_cancelled"
    for name in ("startQueue", "startRun"):
        error = timeouts[name]["error"]
        assert error["status"] == 504 and error["timeoutType"] == "user" and error["isUserTimeout"], name
        assert error["body"]["error_type"] == "request_timeout"


def test_abort_signals(report):
    abort = report["abort"]
    for name in ("run", "submit", "subscribe", "result"):
        assert abort[name]["error"]["name"] == "AbortError", name
    assert abort["subscribeStillRunning"] == "IN_PROGRESS"
    assert abort["streamFirstEvent"] == "IN_PROGRESS" and "ok" in abort["streamDone"]
    assert abort["polled"]["error_type"] == "client_cancelled"
    # the aborted fal.run (8 s of work) was cancelled by Kiln when its connection closed
    assert abort["nextRanAfterMs"] < 5000


def test_multipart_upload_of_120_mib_used_as_an_input(kiln, tmp_path):
    """Issue 11 item 2: @fal-ai/client uploads a file over 90 MiB through `initiate-multipart`, then
    10 MiB parts and a complete call, which answered 404. The real client uploads 120 MiB through
    the proxy recipe; the file arrives byte for byte and its URL works as an input. (The middleware
    recipe rewrites `https://rest.fal.ai/` as a prefix, so it sends `initiate-multipart` to the same
    route; the parts go to the URL Kiln returns in both.)"""
    path = tmp_path / "large.png"
    digest = write_padded_png(path, 120 * MIB)
    try:
        report = node("proxy", kiln.url, KEYS["js"], str(path), "multipart", timeout=180)
    finally:
        path.unlink()
    stored = FileStore(kiln.data_dir / "files", kiln.url).resolve(report["uploadedUrl"])
    try:
        assert stored is not None and stored.size == 120 * MIB and sha256_of(stored.path) == digest
        upload_id = report["uploadCalls"][1].split("/")[3]
        assert report["uploadCalls"] == [
            "POST /api/fal/proxy",
            *(f"PUT /cdn/multipart/{upload_id}/{n}" for n in range(1, 13)),
            f"POST /cdn/multipart/{upload_id}/complete",
        ]
        assert (report["image"]["width"], report["image"]["height"]) == (24, 16)
    finally:
        stored.path.unlink()
