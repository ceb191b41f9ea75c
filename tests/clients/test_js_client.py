"""The real `@fal-ai/client` 1.10.1, run by node, through its `proxyUrl` mode against Kiln."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from server.files import FileStore
from testkit.images import gradient_image, png_bytes
from testkit.servers import REPO
from tests.fixtures.large_files import MIB, sha256_of, write_padded_png

pytestmark = pytest.mark.slow

JS = REPO / "tests" / "js"


def test_js_client_through_proxy_url(shared_kiln, tmp_path):
    assert shutil.which("node"), "node is needed: `make test` installs the JS client"
    assert (JS / "node_modules" / "@fal-ai" / "client").is_dir(), "run `npm ci --prefix tests/js` (make test does)"
    image = tmp_path / "input.png"
    image.write_bytes(png_bytes(gradient_image(32, 20)))
    completed = subprocess.run(
        ["node", "drive.mjs", shared_kiln.url, str(image)], cwd=JS, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])

    assert report["uploadedUrl"].startswith(shared_kiln.url + "/files/")
    subscribed = report["subscribe"]
    assert subscribed["requestId"] and subscribed["statuses"][-1] == "COMPLETED"
    image_out = subscribed["data"]["images"][0]
    assert (image_out["width"], image_out["height"]) == (32, 20)

    streaming = report["streaming"]
    assert streaming["data"]["tag"] == "streamed" and streaming["statuses"][-1] == "COMPLETED"
    assert [m for m in streaming["logs"] if m.startswith("step")] == ["step 1/3", "step 2/3", "step 3/3"]

    queue = report["queue"]
    assert queue["result"]["requestId"] == queue["requestId"]
    assert queue["result"]["data"]["images"][0]["content_type"] == "image/png"
    assert queue["statuses"][-1] == "COMPLETED" and any(m.startswith("Completed in") for m in queue["logs"])

    assert report["invalid"] == {"thrown": True, "status": 422, "isValidationError": True, "fields": [["body", "grain_style"]]}


def test_multipart_upload_of_120_mib_used_as_an_input(shared_kiln, tmp_path):
    """Issue 11 item 2: @fal-ai/client uploads a file over 90 MiB through `initiate-multipart`, then
    10 MiB parts and a complete call, which answered 404. The real client uploads 120 MiB through
    the proxy recipe; the file arrives byte for byte and its URL works as an input."""
    path = tmp_path / "large.png"
    digest = write_padded_png(path, 120 * MIB)
    try:
        completed = subprocess.run(
            ["node", "drive.mjs", shared_kiln.url, str(path), "multipart"],
            cwd=JS,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        path.unlink()
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    stored = FileStore(shared_kiln.data_dir / "files", shared_kiln.url).resolve(report["uploadedUrl"])
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
