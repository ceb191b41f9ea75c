"""The real `@fal-ai/client` 1.10.1, run by node, through its `proxyUrl` mode against Kiln."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from testkit.images import gradient_image, png_bytes
from testkit.servers import REPO

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
