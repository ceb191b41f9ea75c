"""The pages in a real headless Chromium against `kiln serve` with an API key: the home page, a
playground run from an uploaded PNG, progress and cancel, the form's checks and the server's 422s
beside their fields, history reopening a request, a 2 x 2 comparison, and the copy-as-code
snippets run as programs. Every tab fails its test if it asked for anything outside Kiln or threw;
each page's screenshot is written to tests/ui/artifacts/."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import httpx
import pytest
from playwright.sync_api import expect

from testkit.images import data_uri, gradient_image, png_bytes
from testkit.servers import REPO, wait_completed

pytestmark = pytest.mark.slow

PP = "fal-ai/post-processing"
JS_MODULES = REPO / "tests" / "js" / "node_modules"


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "input.png"
    path.write_bytes(png_bytes(gradient_image(96, 64)))
    return path


def upload_into(page, field: str, path) -> None:
    """Chooses a file in an image field and waits for its upload through the storage API."""
    page.locator(f'[data-field="{field}"] input[type=file]').first.set_input_files(str(path))
    expect(page.locator(f'[data-field="{field}"] .image-url').first).to_have_value(re.compile(r"/files/"))


def run_post_processing(page, png) -> dict:
    """Upload, two effects, run; the result's JSON as the page shows it."""
    upload_into(page, "image_url", png)
    page.check("#field-enable_vignette")
    page.fill("#field-vignette_strength", "0.8")
    page.check("#field-enable_solarize")
    page.click("#submit")
    expect(page.locator("#run")).to_have_attribute("data-phase", "done", timeout=30_000)
    expect(page.locator("#run-status")).to_have_text("COMPLETED")
    return json.loads(page.locator("#json").text_content())


def test_home_lists_every_endpoint_with_its_state_workers_and_links(ui, tab):
    opened = tab()
    page = opened.goto("/")
    served = httpx.get(ui.url + "/health").json()["endpoints"]
    expect(page.locator("#endpoints tbody tr")).to_have_count(len(served))
    available = page.locator(f'tr[data-endpoint="{PP}"]')
    expect(available.locator(".badge")).to_have_text("available")
    assert available.locator("a", has_text="Playground").get_attribute("href") == f"/playground/{PP}"
    openapi = available.locator("a", has_text="OpenAPI").get_attribute("href")
    assert PP in httpx.get(ui.url + openapi).json()["info"]["title"]
    missing_weights = page.locator('tr[data-endpoint="fal-ai/pixart-sigma"]')
    expect(missing_weights.locator(".badge")).to_have_text("unavailable")
    expect(missing_weights.locator(".reason code").first).to_contain_text("kiln weights")
    expect(page.locator("#workers tbody tr")).to_have_count(1)
    expect(page.locator("#recent li").first).not_to_have_text("Loading…")
    opened.screenshot("home")


def test_the_key_is_typed_once_kept_in_the_browser_and_sent_as_a_header(ui, tab):
    opened = tab(with_key=False)
    page = opened.goto("/history")
    expect(page.locator("#history-error")).to_contain_text("Enter your API key")
    page.fill("#api-key", ui.key)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#history-error")).to_be_hidden()
    with page.expect_request(lambda request: "/ui/api/history" in request.url) as sent:
        page.reload()
    assert sent.value.headers["authorization"] == f"Key {ui.key}"
    assert page.evaluate("localStorage.getItem('kiln.apiKey')") == ui.key
    assert opened.context.cookies() == []
    page.click("#key-forget")
    assert page.evaluate("localStorage.getItem('kiln.apiKey')") is None


def test_playground_runs_an_uploaded_png_with_two_effects(ui, tab, png):
    opened = tab()
    page = opened.goto(f"/playground/{PP}")
    body = run_post_processing(page, png)

    assert body["provenance"]["effects"] == ["vignette", "solarize"]
    assert page.locator("#progress").evaluate("bar => bar.value") == 1
    expect(page.locator("#logs")).to_contain_text("Completed in")
    image = page.locator("#images img")
    expect(image).to_have_count(1)
    page.wait_for_function("() => document.querySelector('#images img').naturalWidth > 0")
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [96, 64]
    assert page.locator("#images a[download]").get_attribute("href") == body["images"][0]["url"]
    expect(page.locator("#json")).to_be_hidden()
    page.click("#result-json summary")
    expect(page.locator("#json")).to_be_visible()
    expect(page.locator("#json")).to_contain_text('"provenance"')
    assert re.search(r"\?request=[0-9a-f-]{36}$", page.url)
    opened.screenshot("playground-post-processing")


def test_progress_comes_from_the_step_logs_and_cancel_stops_the_run(ui, tab):
    opened = tab()
    page = opened.goto("/playground/kiln-test/steps")
    page.fill("#field-steps", "400")
    page.fill("#field-step_seconds", "0.05")
    page.click("#submit")
    page.wait_for_function(
        "() => { const bar = document.querySelector('#progress');"
        " return bar.hasAttribute('value') && bar.value > 0 && bar.value < 1 }"
    )
    expect(page.locator("#run-status")).to_have_text("IN_PROGRESS")
    expect(page.locator("#logs")).to_contain_text(re.compile(r"step \d+/400"))
    opened.screenshot("playground-progress")
    page.click("#cancel")
    expect(page.locator("#run-status")).to_have_text("ERROR")
    expect(page.locator("#run-error")).to_contain_text("client_cancelled")


def test_the_form_checks_ranges_and_shows_the_servers_422_beside_the_field(ui, tab):
    opened = tab()
    page = opened.goto(f"/playground/{PP}")
    submits = []
    page.on(
        "request", lambda request: request.method == "POST" and "/queue/" in request.url and submits.append(request)
    )
    page.fill('[data-field="image_url"] .image-url', data_uri(png_bytes(gradient_image(8, 6))))

    # the schema's range, checked in the page: nothing is sent
    page.fill("#field-vignette_strength", "99")
    page.click("#submit")
    expect(page.locator('[data-error-for="vignette_strength"]')).to_contain_text("≤ 10")
    assert submits == []

    # a rule only the server knows: its 422 at submit, beside the field it names
    page.fill("#field-vignette_strength", "0.5")
    page.check("#field-enable_dissolve")
    page.click("#submit")
    expect(page.locator('[data-error-for="dissolve_image_url"]')).to_contain_text("is required when")
    expect(page.locator('[data-field="dissolve_image_url"]')).to_have_class(re.compile("invalid"))
    assert len(submits) == 1
    opened.screenshot("playground-422")

    # an image the worker cannot decode: the result's 422, beside image_url
    page.uncheck("#field-enable_dissolve")
    page.fill('[data-field="image_url"] .image-url', "data:image/png;base64,AAAA")
    page.click("#submit")
    expect(page.locator("#run")).to_have_attribute("data-phase", "done", timeout=30_000)
    expect(page.locator("#run-status")).to_have_text("ERROR")
    expect(page.locator('[data-error-for="image_url"]')).not_to_be_empty()
    expect(page.locator('[data-error-for="dissolve_image_url"]')).to_be_empty()


def test_history_lists_the_keys_requests_and_reopens_one_with_its_inputs(ui, tab):
    headers = {"Authorization": f"Key {ui.key}"}
    inputs = {"image_url": data_uri(png_bytes(gradient_image(20, 10))), "enable_tint": True, "tint_mode": "cool"}
    queued = httpx.post(f"{ui.url}/queue/{PP}", json=inputs, headers=headers).json()
    with httpx.Client(headers=headers) as client:
        wait_completed(client, queued["status_url"])
    opened = tab()
    page = opened.goto("/history")
    row = page.locator(f'tr[data-request-id="{queued["request_id"]}"]')
    expect(row).to_contain_text("OK")
    page.select_option("#filter-endpoint", "kiln-test/steps")
    expect(row).to_have_count(0)
    page.select_option("#filter-endpoint", PP)
    page.select_option("#filter-status", "COMPLETED")
    expect(row).to_have_count(1)
    opened.screenshot("history")

    row.locator("a").click()
    expect(page).to_have_url(re.compile(rf"/playground/{PP}\?request={queued['request_id']}$"))
    expect(page.locator("#field-enable_tint")).to_be_checked()
    assert page.locator("#field-tint_mode option:checked").text_content() == "cool"
    expect(page.locator('[data-field="image_url"] .image-url')).to_have_value(inputs["image_url"])
    expect(page.locator("#run")).to_have_attribute("data-phase", "done")
    expect(page.locator("#run-status")).to_have_text("COMPLETED")
    expect(page.locator("#images img")).to_have_count(1)
    opened.screenshot("playground-reopened")


def test_compare_runs_a_two_by_two_grid_with_labels_provenance_and_a_permalink(ui, tab, png):
    opened = tab()
    page = opened.goto(f"/compare?endpoint={PP}")
    upload_into(page, "image_url", png)
    page.check("#field-enable_vignette")
    page.select_option("#vary-name-0", "vignette_strength")
    page.fill("#vary-values-0", "0.5, 3")
    page.select_option("#vary-name-1", "enable_solarize")
    page.fill("#vary-values-1", "false, true")
    page.click("#run-compare")

    expect(page.locator("#grid td.cell.done img")).to_have_count(4, timeout=60_000)
    assert page.locator("#grid th.column-label").all_text_contents() == [
        "enable_solarize=false",
        "enable_solarize=true",
    ]
    assert page.locator("#grid th.row-label").all_text_contents() == ["vignette_strength=0.5", "vignette_strength=3"]
    expect(page.locator("#provenance tbody tr")).to_have_count(4)
    expect(page.locator("#provenance tbody tr").first).to_contain_text(PP)
    expect(page.locator("#compare-state")).to_have_text("4 cells done")
    expect(page).to_have_url(re.compile(r"/compare/[0-9a-f]{32}$"))
    expect(page.locator("#permalink")).to_be_visible()
    opened.screenshot("compare")

    page.reload()  # the permalink: the same form and the same four results
    expect(page.locator("#grid td.cell.done img")).to_have_count(4, timeout=30_000)
    expect(page.locator("#vary-values-0")).to_have_value("0.5, 3")
    expect(page.locator("#field-enable_vignette")).to_be_checked()


def test_copy_as_code_snippets_run_against_the_server(ui, tab, png, tmp_path):
    page = tab().goto(f"/playground/{PP}")
    shown = run_post_processing(page, png)
    python = page.locator("#snippet-python").text_content()
    page.click('[data-tab="js"]')
    javascript = page.locator("#snippet-js").text_content()
    environment = {**os.environ, "FAL_KEY": ui.key}

    script = tmp_path / "run.py"
    script.write_text(python)
    ran = subprocess.run([sys.executable, str(script)], env=environment, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads(ran.stdout)
    assert result["provenance"]["effects"] == shown["provenance"]["effects"]
    assert (result["images"][0]["width"], result["images"][0]["height"]) == (96, 64)

    assert shutil.which("node"), "node is needed: `make test` installs the JS client"
    assert (JS_MODULES / "@fal-ai" / "client").is_dir(), "run `npm ci --prefix tests/js` (make test does)"
    (tmp_path / "node_modules").symlink_to(JS_MODULES)
    module = tmp_path / "run.mjs"
    module.write_text(javascript)
    ran = subprocess.run(
        ["node", str(module)], env=environment, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads(ran.stdout)
    assert result["provenance"]["effects"] == shown["provenance"]["effects"]
    assert (result["images"][0]["width"], result["images"][0]["height"]) == (96, 64)
