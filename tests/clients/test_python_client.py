"""The real `fal-client` 1.0.3 against a Kiln it cannot tell from fal: every public surface, three ways.

Each test runs with `SyncClient` and with `AsyncClient` (its coroutines driven on one event loop in a
background thread, so the client's connection pool stays on one loop); one more calls every
module-level function (`fal_client.run`, ..., `fal_client.run_async`, ..., bound to two module-level
clients whose key is `FAL_KEY`). The client's URL settings point at Kiln as the README's recipe does
(the recipe itself runs in test_no_egress.py).

Covered: run (with `path`), submit (webhook, priority, hint, headers), status with logs, iter_events,
result and get, cancel of a queued and of a running request, subscribe with its callbacks, uploads of
every kind (both repositories, files, Pillow images, data URIs, 120 MiB multipart), 401/404/422 and a
failed request as `FalClientHTTPError`, client timeouts and start timeouts (504, a user timeout).
`stream` and `realtime` are fal surfaces no Kiln endpoint offers: they fail with 404 from Kiln.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fal_client
import fal_client.client
import httpx
import httpx_sse
import pytest
from fal_client import Completed, FalClientHTTPError, FalClientTimeoutError, InProgress, Queued
from PIL import Image

from server.files import FileStore
from testkit.images import gradient_image, png_bytes
from tests.fixtures.fal_clients import KEYS
from tests.fixtures.large_files import MIB, sha256_of, write_padded_png

pytestmark = pytest.mark.slow

PP = "fal-ai/post-processing"
STEPS = "kiln-test/steps"
UNKNOWN_ID = "00000000-0000-0000-0000-000000000000"


# -- the three ways to call the client -------------------------------------------------------------


class Blocking:
    """An `AsyncClient` (or its request handle) called from synchronous test code.

    Every coroutine runs on `loop` (one loop in a background thread for the whole session); an async
    iterator becomes a plain one; a returned `AsyncRequestHandle` is wrapped the same way.
    """

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: self._resolve(attribute(*args, **kwargs))

    def _resolve(self, value: Any) -> Any:
        if inspect.isasyncgen(value):
            return self._iterate(value)
        if inspect.iscoroutine(value):
            value = asyncio.run_coroutine_threadsafe(value, self._loop).result()
        if isinstance(value, fal_client.AsyncRequestHandle):
            return Blocking(value, self._loop)
        return value

    def _iterate(self, iterator) -> Iterator[Any]:
        while True:
            try:
                yield asyncio.run_coroutine_threadsafe(iterator.__anext__(), self._loop).result()
            except StopAsyncIteration:
                return


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fal-async-client", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture
def pointed_at_kiln(kiln, monkeypatch) -> str:
    """The README's plain-HTTP recipe: fal-client's five URL settings on Kiln."""
    base = kiln.url
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{base}/queue/")
    monkeypatch.setattr(fal_client.client, "RUN_URL_FORMAT", f"{base}/run/")
    monkeypatch.setattr(fal_client.client, "REST_URL", f"{base}/rest")
    monkeypatch.setattr(fal_client.client, "CDN_URL", f"{base}/cdn")
    monkeypatch.setattr(fal_client.client, "REALTIME_URL_FORMAT", base.replace("http", "ws", 1) + "/run/")
    return base


FLAVOURS = ("SyncClient", "AsyncClient")


def make_client(flavour: str, loop, key: str | None = None) -> Any:
    if flavour == "SyncClient":
        return fal_client.SyncClient(key=key or KEYS["python"])
    return Blocking(fal_client.AsyncClient(key=key or KEYS["python-async"]), loop)


@pytest.fixture(params=FLAVOURS)
def fal(request, pointed_at_kiln, loop) -> Any:
    return make_client(request.param, loop)


@pytest.fixture
def image_url(fal) -> str:
    return fal.upload(png_bytes(gradient_image(24, 16)), "image/png", file_name="input.png")


def wait_until(handle, kind: type, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not isinstance(status := handle.status(), kind):
        assert time.monotonic() < deadline, f"{handle.request_id} never reached {kind.__name__}"
        time.sleep(0.02)
    return status


def start_blocker(fal, **inputs):
    """A long request the worker is running (the only worker: what is submitted next waits)."""
    handle = fal.submit(STEPS, {"steps": 400, "step_seconds": 0.02, "tag": "blocker", **inputs})
    wait_until(handle, InProgress)
    return handle


# -- uploads ---------------------------------------------------------------------------------------


def test_uploads_of_every_kind_are_kiln_urls_that_work_as_inputs(fal, kiln, tmp_path):
    png = png_bytes(gradient_image(10, 8))
    path = tmp_path / "photo.png"
    path.write_bytes(png)
    urls = {
        "upload": fal.upload(png, "image/png", file_name="bytes.png", lifecycle=fal_client.StorageSettings(expires_in="1d")),
        "fallback repository": fal.upload(png, "image/png", repository="fal"),
        "upload_file": fal.upload_file(path),
        "upload_image": fal.upload_image(Image.fromarray(gradient_image(10, 8)), format="png"),
    }
    for how, url in urls.items():
        assert url.startswith(kiln.url + "/files/"), (how, url)
    assert urls["upload"].endswith("/bytes.png") and urls["upload_file"].endswith("/photo.png")
    inputs = [*urls.values(), fal_client.encode_file(path), fal_client.encode_image(Image.open(path), format="png")]
    for url in inputs:
        image = fal.run(PP, {"image_url": url, "enable_blur": True})["images"][0]
        assert (image["width"], image["height"]) == (10, 8)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_multipart_upload_of_120_mib_used_as_an_input(flavour, pointed_at_kiln, loop, kiln, tmp_path):
    """Issue 11 item 2: fal-client uploads a file over 100 MiB in 10 MiB parts
    (`/files/upload/multipart`, an ETag per part, complete with the part list), which answered 404.
    The real client uploads 120 MiB with `upload_file` (each client has its own multipart code); the
    file arrives byte for byte and its URL works as an input."""
    fal = make_client(flavour, loop)
    path = tmp_path / "large.png"
    digest = write_padded_png(path, 120 * MIB)
    try:
        url = fal.upload_file(path)
    finally:
        path.unlink()
    stored = FileStore(kiln.data_dir / "files", kiln.url).resolve(url)
    try:
        assert url.startswith(kiln.url + "/files/") and url.endswith("/large.png")
        assert stored.size == 120 * MIB and sha256_of(stored.path) == digest
        result = fal.run(PP, {"image_url": url, "enable_vignette": True})
        assert (result["images"][0]["width"], result["images"][0]["height"]) == (24, 16)
    finally:
        stored.path.unlink()


# -- run, submit, status, result -------------------------------------------------------------------


def test_run(fal, kiln, image_url):
    image = fal.run(PP, {"image_url": image_url, "enable_solarize": True})["images"][0]
    assert (image["width"], image["height"], image["content_type"]) == (24, 16, "image/png")
    assert image["url"].startswith(kiln.url + "/files/")
    inline = fal.run(PP, {"image_url": image_url, "enable_color_correction": True, "brightness": 20, "sync_mode": True})
    assert inline["images"][0]["url"].startswith("data:image/png;base64,")
    sharpened = fal.run(PP, {"image_url": image_url}, path="sharpen", start_timeout=30, hint="any")
    assert sharpened["provenance"]["endpoint"] == "fal-ai/post-processing/sharpen"


def test_submit_status_with_logs_iter_events_and_result(fal, kiln, image_url):
    handle = fal.submit(PP, {"image_url": image_url, "enable_vignette": True})
    assert handle.status_url.startswith(kiln.url + "/queue/fal-ai/post-processing/requests/")
    while not isinstance(status := handle.status(with_logs=True), Completed):
        assert isinstance(status, (Queued, InProgress))
        time.sleep(0.02)
    assert any(line["message"].startswith("Completed in") for line in status.logs)
    assert status.metrics["inference_time"] > 0 and status.error is None
    image = handle.get()["images"][0]
    assert (image["width"], image["height"], image["content_type"]) == (24, 16, "image/png")

    steps = fal.submit(STEPS, {"steps": 3, "step_seconds": 0.05, "tag": "events"})
    events = list(steps.iter_events(with_logs=True, interval=0.02))
    assert all(isinstance(event, (Queued, InProgress)) for event in events[:-1])
    assert isinstance(events[-1], Completed)
    assert [line["message"] for line in events[-1].logs if line["message"].startswith("step")] == [
        "step 1/3",
        "step 2/3",
        "step 3/3",
    ]
    assert steps.get()["tag"] == "events"

    sharpened = fal.submit(PP, {"image_url": image_url}, path="sharpen")
    assert sharpened.get()["provenance"]["endpoint"] == "fal-ai/post-processing/sharpen"

    # by request id: the client builds the URLs from the endpoint id (owner/alias only)
    assert fal.result(PP, handle.request_id)["images"][0]["width"] == 24
    assert isinstance(fal.status(STEPS, steps.request_id, with_logs=True), Completed)
    again = fal.get_handle("fal-ai/post-processing/sharpen", handle.request_id)
    assert again.get()["images"][0]["height"] == 16


def test_subscribe_with_logs_callbacks_and_queue_options(fal):
    events, enqueued = [], []
    result = fal.subscribe(
        STEPS,
        {"steps": 3, "step_seconds": 0.05, "tag": "subscribed"},
        with_logs=True,
        interval=0.02,
        on_enqueue=enqueued.append,
        on_queue_update=events.append,
        priority="low",
        hint="kiln",
        headers={"X-Custom": "1"},
        start_timeout=30,
    )
    assert result["tag"] == "subscribed" and len(enqueued) == 1
    assert result["provenance"]["request_id"] == enqueued[0]
    assert isinstance(events[-1], Completed)
    assert [line["message"] for line in events[-1].logs if line["message"].startswith("step")] == [
        "step 1/3",
        "step 2/3",
        "step 3/3",
    ]


def test_webhook_url(fal, webhooks):
    handle = fal.submit(STEPS, {"tag": "hooked"}, webhook_url=webhooks.url)
    assert handle.get()["tag"] == "hooked"
    delivery = webhooks.wait_for(handle.request_id)
    assert delivery["status"] == "OK" and delivery["payload"]["tag"] == "hooked"


# -- cancel ----------------------------------------------------------------------------------------


def test_cancel_a_queued_and_a_running_request(fal):
    blocker = start_blocker(fal)
    try:
        queued = fal.submit(STEPS, {"tag": "never"})
        assert isinstance(queued.status(), Queued)
        queued.cancel()
        status = queued.status()
        assert isinstance(status, Completed) and status.error_type == "client_cancelled"
        with pytest.raises(FalClientHTTPError) as raised:
            queued.get()
        assert raised.value.status_code == 499
    finally:
        fal.cancel(STEPS, blocker.request_id)  # by id: the client's own cancel(app, request_id)
    with pytest.raises(FalClientHTTPError) as raised:
        blocker.get()
    assert raised.value.status_code == 499 and raised.value.error_type == "client_cancelled"
    assert isinstance(fal.status(STEPS, blocker.request_id), Completed)
    with pytest.raises(FalClientHTTPError) as raised:
        blocker.cancel()  # a completed request cannot be cancelled
    assert raised.value.status_code == 400


# -- errors ----------------------------------------------------------------------------------------


def test_422_404_and_a_failed_request_raise_fal_client_http_error(fal, image_url):
    with pytest.raises(FalClientHTTPError) as raised:
        fal.submit(PP, {"image_url": image_url, "grain_style": "bogus"})
    assert raised.value.status_code == 422 and raised.value.message[0]["loc"] == ["body", "grain_style"]
    with pytest.raises(FalClientHTTPError) as raised:
        fal.run(PP, {"enable_blur": True})
    assert raised.value.status_code == 422 and raised.value.message[0]["loc"] == ["body", "image_url"]
    with pytest.raises(FalClientHTTPError) as raised:
        fal.subscribe(PP, {"image_url": "data:image/png;base64,bm90IGFuIGltYWdl"})
    assert raised.value.status_code == 422 and raised.value.message[0]["loc"] == ["body", "image_url"]

    with pytest.raises(FalClientHTTPError) as raised:
        fal.status(PP, UNKNOWN_ID)
    assert raised.value.status_code == 404 and raised.value.error_type == "not_found"
    for call in (fal.run, fal.submit):
        with pytest.raises(FalClientHTTPError) as raised:
            call("kiln-test/no-such-endpoint", {})
        assert raised.value.status_code == 404 and "kiln-test/no-such-endpoint" in raised.value.message

    with pytest.raises(FalClientHTTPError) as raised:
        fal.subscribe(STEPS, {"fail_with": "error"})
    assert raised.value.status_code == 500 and raised.value.error_type
    assert raised.value.response_headers["x-fal-request-id"]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_wrong_key_is_401(flavour, pointed_at_kiln, loop):
    fal = make_client(flavour, loop, key="not-a-kiln-key")
    image_url = fal_client.encode(png_bytes(gradient_image(8, 8)), "image/png")
    for call in (lambda: fal.run(PP, {"image_url": image_url}), lambda: fal.submit(PP, {"image_url": image_url})):
        with pytest.raises(FalClientHTTPError) as raised:
            call()
        assert raised.value.status_code == 401 and raised.value.error_type == "unauthorized"
    # SyncClient asks for its CDN token before its fallback begins, with a bare raise_for_status
    # (httpx's error); AsyncClient inside it, so it falls back to the `fal` repository and raises its own
    with pytest.raises((httpx.HTTPStatusError, FalClientHTTPError)) as raised:
        fal.upload(b"abc", "text/plain")
    assert raised.value.response.status_code == 401


# -- timeouts --------------------------------------------------------------------------------------


def test_client_timeout_cancels_and_start_timeout_is_a_user_504(fal):
    """`subscribe(client_timeout=)` gives up, cancels the running request and raises
    FalClientTimeoutError; requests whose `start_timeout` (X-Fal-Request-Timeout) passes while they
    wait fail with 504, marked a user timeout so no client retries them (test_retries.py counts)."""
    started, running = [], threading.Event()

    def on_update(status) -> None:
        if isinstance(status, InProgress):
            running.set()

    with ThreadPoolExecutor(2) as pool:
        impatient = pool.submit(
            fal.subscribe,
            STEPS,
            {"steps": 300, "step_seconds": 0.02, "tag": "impatient"},
            client_timeout=2.5,
            interval=0.02,
            on_enqueue=started.append,
            on_queue_update=on_update,
        )
        assert running.wait(20), "the request never started"
        late = fal.submit(STEPS, {"tag": "late"}, start_timeout=1.1)
        late_run = pool.submit(fal.run, STEPS, {"tag": "late-run"}, start_timeout=1.1)
        with pytest.raises(FalClientTimeoutError) as timed_out:
            impatient.result()
        with pytest.raises(FalClientHTTPError) as run_error:
            late_run.result()
    assert timed_out.value.request_id == started[0] and timed_out.value.timeout == 2.5
    with pytest.raises(FalClientHTTPError) as late_error:
        late.get()
    for error in (late_error.value, run_error.value):
        assert error.status_code == 504 and error.error_type == "request_timeout"
        assert error.response_headers["x-fal-request-timeout-type"] == "user"
    deadline = time.monotonic() + 10
    while not isinstance(status := fal.status(STEPS, started[0]), Completed):
        assert time.monotonic() < deadline, "the timed-out request was not cancelled"
        time.sleep(0.02)
    assert status.error_type == "client_cancelled"


# -- the module-level functions -------------------------------------------------------------------


def test_module_level_functions(pointed_at_kiln, loop, kiln, input_png, monkeypatch):
    """Every module-level function once: the sync ones on `fal_client.sync_client`, the `*_async` ones
    on `fal_client.async_client` (driven on the session's loop), both keyed by `FAL_KEY` (read once,
    on first use)."""
    monkeypatch.setenv("FAL_KEY", KEYS["python-module"])
    png = input_png.read_bytes()
    urls = [
        fal_client.upload(png, "image/png"),
        fal_client.upload_file(input_png),
        fal_client.upload_image(Image.open(input_png), format="png"),
    ]
    assert all(url.startswith(kiln.url + "/files/") for url in urls)
    assert fal_client.run(PP, {"image_url": urls[0]})["images"][0]["width"] == 20
    handle = fal_client.submit(STEPS, {"tag": "module"})
    assert fal_client.result(STEPS, handle.request_id)["tag"] == "module"
    assert isinstance(fal_client.status(STEPS, handle.request_id, with_logs=True), Completed)
    updates = []
    assert fal_client.subscribe(STEPS, {"tag": "subscribed"}, on_queue_update=updates.append)["tag"] == "subscribed"
    assert isinstance(updates[-1], Completed)
    blocker = start_blocker(fal_client)
    fal_client.cancel(STEPS, blocker.request_id)
    with pytest.raises(FalClientHTTPError) as raised:
        blocker.get()
    assert raised.value.status_code == 499

    def wait(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    urls = [
        wait(fal_client.upload_async(png, "image/png")),
        wait(fal_client.upload_file_async(input_png)),
        wait(fal_client.upload_image_async(Image.open(input_png), format="png")),
    ]
    assert all(url.startswith(kiln.url + "/files/") for url in urls)
    assert wait(fal_client.run_async(PP, {"image_url": urls[1]}))["images"][0]["height"] == 12
    handle = wait(fal_client.submit_async(STEPS, {"tag": "module-async"}))
    assert wait(fal_client.result_async(STEPS, handle.request_id))["tag"] == "module-async"
    assert isinstance(wait(fal_client.status_async(STEPS, handle.request_id, with_logs=True)), Completed)
    assert wait(fal_client.subscribe_async(STEPS, {"tag": "subscribed-async"}))["tag"] == "subscribed-async"
    blocker = wait(fal_client.submit_async(STEPS, {"steps": 400, "step_seconds": 0.02}))
    while not isinstance(wait(blocker.status()), InProgress):
        time.sleep(0.02)
    wait(fal_client.cancel_async(STEPS, blocker.request_id))
    with pytest.raises(FalClientHTTPError) as raised:
        wait(blocker.get())
    assert raised.value.status_code == 499


# -- what Kiln does not serve ----------------------------------------------------------------------


def test_stream_and_realtime_are_answered_404_by_kiln(pointed_at_kiln, loop):
    """No Kiln endpoint streams or has a realtime app; both calls reach Kiln (never fal) and fail."""
    fal = make_client("SyncClient", loop)
    image_url = fal_client.encode(png_bytes(gradient_image(8, 8)), "image/png")
    with pytest.raises(httpx_sse.SSEError, match="application/json"):
        next(fal.stream(PP, {"image_url": image_url}))
    with pytest.raises(FalClientHTTPError) as raised:
        with fal.realtime(PP):
            pass
    assert raised.value.status_code == 404
    assert raised.value.response.request.url.host == "127.0.0.1"
